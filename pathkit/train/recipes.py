"""Staged training recipes as data: which parts learn, at what learning rate, on which data, for how long.

A :class:`Recipe` is a name, the kind of visual input (``image`` tiles or ``slide`` feature bags), Config
overrides (which encoder, connector and LLM the seed used) and an ordered tuple of :class:`Stage` s. A stage
names its data (:class:`DataSpec`), its *trainable* parts (the freeze policy: ``{"connector": True}`` trains
the projector only), its optimiser settings and where its weights start (``init_from``). The runner has no
per-stage code branches: everything that differs between LLaVA's projector alignment and PA-LLaVA's LoRA
instruction tuning is in these fields. Recipes round-trip through YAML (``recipe.to_yaml()``,
``Recipe.from_yaml(text)``).

Presets (``get_recipe(name, preset)``):
    paper  the seed systems' published settings (shared/reference/seed-systems.md §0.4, §2.5, §3.3, §4.3, §5);
           per-device batch sizes with the global batch in ``notes`` (the seeds ran on 4-16 GPUs).
    gpu    one GPU, small real-sized models (the gpu Config preset), a few epochs.
    tiny   tiny models on 2 CPU cores, sized so each recipe visibly learns in a few minutes. Full fine-tuning
           recipes start from the random-init ``tiny`` LLM; LoRA recipes from ``tiny-pretrained`` (text-only
           pre-trained, as the seeds' LLMs are). Learning rates are higher than the paper's (tiny models).

This module never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from pathkit.config import Config, ConfigError, check_known_fields, dump_yaml

KINDS = ("contrastive", "vlm")
PARTS = ("vision", "connector", "llm", "lora", "slide_encoder", "text")
SOURCES = ("tiles", "slides")
FORMATS = ("captions", "describe", "instruct", "pairs")
PRESETS = ("tiny", "gpu", "paper")
# The towers a contrastive stage can train, by data source (the image tower on tiles, LongNet on slides).
CONTRASTIVE_PARTS = {"tiles": ("vision", "text"), "slides": ("slide_encoder", "text")}


@dataclass
class DataSpec:
    """Which data a stage trains on.

    ``path``: the stage's training file (LLaVA JSON or JSONL; a recipe's data is a path). When None, the file
    comes from ``pathkit train --train-data`` or, for the tutorial, from the synthetic data that ``source``
    names (:func:`pathkit.workdir.tutorial_data`). ``source``: ``tiles`` (pathkit.synthetic tile dataset) or
    ``slides`` (slide feature files). ``format`` (the view the stage takes of its file's records):
    ``captions`` (``<image>`` then the caption, LLaVA's stage-1 ``plain`` pre-training),
    ``describe`` (a describe-the-image question answered by the caption inside the chat template: PA-LLaVA's
    domain alignment, HuatuoGPT-Vision's alignment VQA), ``instruct`` (the LLaVA instruction conversations),
    ``pairs`` (image-text pairs for contrastive training). ``template``: chat template for this stage (None =
    ``cfg.llm.chat_template``). ``extra_closed``: for ``instruct`` on tiles, that many more single-turn closed
    questions per training tile (balanced yes/no about a drawn class, lettered choices), written from the tile's
    ground-truth label by the same generator as the dataset's own questions: more supervision, no new images.
    """

    source: str = "tiles"
    format: str = "instruct"
    path: str | None = None
    split: str = "train"
    template: str | None = None
    max_samples: int | None = None
    extra_closed: int = 0  # extra single-turn closed questions per training image, from its ground-truth label

    def __post_init__(self) -> None:
        if self.path is not None:
            self.path = str(self.path)
        _need(self.extra_closed >= 0, "DataSpec.extra_closed", self.extra_closed, "must be >= 0")
        _need(self.source in SOURCES, "DataSpec.source", self.source, f"must be one of {SOURCES}")
        _need(self.format in FORMATS, "DataSpec.format", self.format, f"must be one of {FORMATS}")
        _need(self.template in (None, "plain", "vicuna_v1", "llama3", "huatuo", "qwen2"), "DataSpec.template",
              self.template, "must be plain, vicuna_v1, llama3, huatuo, qwen2 or None")


@dataclass
class Stage:
    """One training stage. ``trainable`` is the freeze policy: parts not named (or False) are frozen.

    The stage is the one source of its optimiser settings: AdamW(``lr``, ``betas``, ``weight_decay`` on
    matrices only), the projector at ``projector_lr``, linear warm-up over ``warmup_ratio`` of the optimiser
    steps then cosine to ``min_lr``, ``batch_size`` per device times ``grad_accum`` (Lightning's
    ``accumulate_grad_batches``) per step, gradient norm clipped at ``grad_clip``. Every field is read by the
    stage's kind; a field that kind never reads must keep its default (a ConfigError says so), so an override
    cannot silently change nothing.
    """

    name: str
    kind: str = "vlm"
    data: DataSpec = field(default_factory=DataSpec)
    trainable: dict[str, bool] = field(default_factory=lambda: {"connector": True})
    init_from: dict[str, str] = field(default_factory=dict)  # part -> earlier stage whose output it loads
    lr: float = 1e-3
    projector_lr: float | None = None  # None = lr (LLaVA's --mm_projector_lr); VLM stages only
    min_lr: float = 0.0  # cosine floor of ``lr`` (every group ends at its base lr x min_lr / lr)
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW; HF Trainer's default, as LLaVA and PA-LLaVA use
    warmup_ratio: float = 0.03
    epochs: int = 1
    max_steps: int = -1  # > 0 caps the optimiser steps (and sets the schedule length)
    batch_size: int = 16  # per device
    grad_accum: int = 1
    grad_clip: float = 1.0  # max global gradient norm; 0 = no clipping
    max_length: int | None = None  # None = cfg.llm.max_length (contrastive: cfg.text_encoder.max_length)
    # > 0: hold out this fraction of the stage's training images (by image, deterministic) and keep the weights of
    # the epoch with the lowest validation loss, as a user selects a checkpoint, instead of the last step's
    val_fraction: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)  # Config overrides for this stage only
    notes: str = ""

    def __post_init__(self) -> None:
        where = f"Stage[{self.name}]"
        if isinstance(self.data, dict):
            self.data = DataSpec(**self.data)
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)
        for name in ("lr", "projector_lr", "min_lr", "weight_decay", "warmup_ratio", "grad_clip", "val_fraction"):
            value = getattr(self, name)
            if isinstance(value, (int, str)) and not isinstance(value, bool):
                setattr(self, name, float(value))
        _need(bool(self.name) and "/" not in self.name, f"{where}.name", self.name, "must be a folder name")
        _need(self.kind in KINDS, f"{where}.kind", self.kind, f"must be one of {KINDS}")
        unknown = sorted(set(self.trainable) - set(PARTS))
        _need(not unknown, f"{where}.trainable", self.trainable, f"unknown part(s) {unknown}; parts: {PARTS}")
        _need(any(self.trainable.values()), f"{where}.trainable", self.trainable, "trains nothing")
        unknown = sorted(set(self.init_from) - set(PARTS))
        _need(not unknown, f"{where}.init_from", self.init_from, f"unknown part(s) {unknown}")
        _need(self.lr > 0, f"{where}.lr", self.lr, "must be > 0")
        _need(self.projector_lr is None or self.projector_lr > 0, f"{where}.projector_lr", self.projector_lr,
              "must be > 0 or None")
        _need(0 <= self.min_lr <= self.lr, f"{where}.min_lr", self.min_lr, "must be in [0, lr]")
        _need(0 <= self.warmup_ratio < 1, f"{where}.warmup_ratio", self.warmup_ratio, "must be in [0, 1)")
        _need(self.epochs >= 1, f"{where}.epochs", self.epochs, "must be >= 1")
        _need(self.batch_size >= 1, f"{where}.batch_size", self.batch_size, "must be >= 1")
        _need(self.grad_accum >= 1, f"{where}.grad_accum", self.grad_accum, "must be >= 1")
        _need(0 <= self.val_fraction < 0.5, f"{where}.val_fraction", self.val_fraction, "must be in [0, 0.5)")
        _need(self.weight_decay >= 0, f"{where}.weight_decay", self.weight_decay, "must be >= 0")
        _need(self.grad_clip >= 0, f"{where}.grad_clip", self.grad_clip, "must be >= 0 (0 = no clipping)")
        _need(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"{where}.betas", self.betas,
              "must be two numbers in [0, 1)")
        self._check_read_by_kind(where)

    def _check_read_by_kind(self, where: str) -> None:
        """Refuse settings that this kind of stage never reads (an override of them would change nothing)."""
        unread = "{} stages never read it: {}"
        if self.kind == "contrastive":
            towers = CONTRASTIVE_PARTS.get(self.data.source, ("vision", "slide_encoder", "text"))
            extra = sorted(p for p in self.trainable_parts if p not in towers)
            _need(not extra, f"{where}.trainable", self.trainable,
                  unread.format("contrastive", f"{extra}; on {self.data.source} they train {towers}"))
            _need(self.projector_lr is None, f"{where}.projector_lr", self.projector_lr,
                  unread.format("contrastive", "they have no projector; set lr"))
            _need(not self.init_from, f"{where}.init_from", self.init_from,
                  unread.format("contrastive", "their towers start from the Config's encoders"))
            _need(self.val_fraction == 0, f"{where}.val_fraction", self.val_fraction,
                  unread.format("contrastive", "they report held-out retrieval instead"))
            defaults = DataSpec(source=self.data.source, format="pairs")
            for name in ("format", "split", "template", "max_samples", "extra_closed"):
                _need(getattr(self.data, name) == getattr(defaults, name), f"{where}.data.{name}",
                      getattr(self.data, name),
                      unread.format("contrastive", f"they train on every {self.data.source} pair "
                                    f"(keep {getattr(defaults, name)!r})"))
        else:
            _need(not self.trainable.get("text"), f"{where}.trainable.text", True,
                  unread.format("vlm", "the text tower belongs to contrastive stages"))
            _need(self.projector_lr is None or bool(self.trainable.get("connector")), f"{where}.projector_lr",
                  self.projector_lr, unread.format("vlm", "when the connector does not train"))

    @property
    def trainable_parts(self) -> tuple[str, ...]:
        return tuple(p for p in PARTS if self.trainable.get(p, False))

    def freeze_policy(self) -> dict[str, bool]:
        """Every part named, True = trains (the form ``VisionLanguageModel.apply_freeze`` takes)."""
        return {p: bool(self.trainable.get(p, False)) for p in PARTS}

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["data"] = {f.name: getattr(self.data, f.name) for f in fields(self.data)}
        out["betas"] = list(self.betas)
        out["trainable"] = dict(self.trainable)
        out["init_from"] = dict(self.init_from)
        out["config"] = dict(self.config)
        return out


@dataclass
class Recipe:
    """A seed system's training: stages run in order, stage N+1 starting from stage N's model."""

    name: str
    vision: str = "image"  # image | slide
    stages: tuple[Stage, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)  # Config overrides for the whole recipe
    notes: str = ""

    def __post_init__(self) -> None:
        self.stages = tuple(Stage(**s) if isinstance(s, dict) else s for s in self.stages)
        _need(self.vision in ("image", "slide"), f"Recipe[{self.name}].vision", self.vision, "must be image or slide")
        _need(len(self.stages) > 0, f"Recipe[{self.name}].stages", [], "needs at least one stage")
        names = [s.name for s in self.stages]
        _need(len(set(names)) == len(names), f"Recipe[{self.name}].stages", names, "stage names must be unique")
        for i, stage in enumerate(self.stages):
            for part, source in stage.init_from.items():
                _need(source in names[:i], f"Stage[{stage.name}].init_from.{part}", source,
                      f"must name an earlier stage of {names[:i]}")
        self._check_vlm_parts()
        self.check_config_keys(self.config, f"Recipe[{self.name}].config")
        for stage in self.stages:
            self.check_config_keys(stage.config, f"Stage[{stage.name}].config")

    def unread_config_sections(self) -> tuple[str, ...]:
        """Config sections that training this recipe never reads (videos and instruction generation always;
        the slide encoder for image recipes; the CLIP towers without a contrastive stage)."""
        unread = ["video", "instruct"]
        if self.vision == "image":
            unread += ["wsi", "longnet"]
        if not any(s.kind == "contrastive" for s in self.stages):
            unread += ["clip", "text_encoder"]
        return tuple(unread)

    def check_config_keys(self, changes: dict[str, Any], where: str = "override") -> None:
        """Raise a ConfigError naming the first Config key in ``changes`` that is unknown or that this recipe
        never reads (so ``--set longnet.depth=4`` on an image recipe is an error, not a silent no-op)."""
        known = _config_fields()
        unread = self.unread_config_sections()
        for key in changes:
            section, _, name = key.partition(".")
            if section not in known or (name == "") != (known[section] is None) or (
                    name and name not in known[section]):
                raise ConfigError(f"{where}: {key!r} is not a Config field")
            if section in unread:
                raise ConfigError(f"{where}: {key!r} changes nothing: recipe {self.name} never reads "
                                  f"Config.{section}")

    def _check_vlm_parts(self) -> None:
        """Refuse VLM-stage parts the model of this recipe does not have (training them would change nothing)."""
        tower = "vision" if self.vision == "image" else "slide_encoder"
        absent = "slide_encoder" if self.vision == "image" else "vision"
        vlm = [s for s in self.stages if s.kind == "vlm"]
        for k, stage in enumerate(vlm):
            _need(not stage.trainable.get(absent), f"Stage[{stage.name}].trainable.{absent}", True,
                  f"a {self.vision} recipe's model has no {absent}")
            # build_vlm reads init_from once, for the first VLM stage; later stages continue the previous model.
            for part, source in stage.init_from.items():
                _need(k == 0 and part == tower and self.stage(source).kind == "contrastive",
                      f"Stage[{stage.name}].init_from.{part}", source,
                      f"never read: only the first VLM stage loads its {tower}, from a contrastive stage")

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise ConfigError(f"Recipe[{self.name}]: no stage {name!r}; stages: {[s.name for s in self.stages]}")

    def table(self) -> list[dict[str, Any]]:
        """One row per stage (what trains, on what, how fast; ``batch`` is per device x accumulation): for
        notebooks and reports."""
        rows = []
        absent = {"text", "slide_encoder" if self.vision == "image" else "vision"}
        for s in self.stages:
            rows.append({"stage": s.name, "kind": s.kind, "data": f"{s.data.source}/{s.data.format}",
                         "view": s.data.format,
                         "template": s.data.template or "(preset)", "trains": ", ".join(s.trainable_parts),
                         "frozen": ", ".join(p for p in PARTS if not s.trainable.get(p) and p not in absent),
                         "init_from": ", ".join(f"{k}<-{v}" for k, v in s.init_from.items()) or "-",
                         "lr": s.lr, "projector_lr": s.projector_lr or s.lr, "epochs": s.epochs,
                         "batch": f"{s.batch_size}x{s.grad_accum}",
                         "schedule": f"warm-up {s.warmup_ratio:.0%}, cosine to {s.min_lr:g}",
                         "weight_decay": s.weight_decay})
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "vision": self.vision, "config": dict(self.config), "notes": self.notes,
                "stages": [s.to_dict() for s in self.stages]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        check_known_fields(cls, data)
        return cls(**data)

    def to_yaml(self, path: str | Path | None = None) -> str:
        return dump_yaml(self.to_dict(), path)

    @classmethod
    def from_yaml(cls, path_or_text: str | Path) -> Recipe:
        text = str(path_or_text)
        if "\n" not in text and Path(text).is_file():
            text = Path(text).read_text()
        data = yaml.safe_load(text)
        if not isinstance(data, dict):
            raise ConfigError(f"{str(path_or_text)[:80]!r}: a recipe YAML must be a mapping")
        return cls.from_dict(data)

    def override(self, changes: dict[str, Any]) -> Recipe:
        """Copy with ``{"<stage>.<field>": value}`` (e.g. ``{"instruct.lr": 1e-4, "instruct.data.max_samples": 64}``)
        or ``{"*.<field>": value}`` for every stage replaced."""
        data = self.to_dict()
        for key, value in changes.items():
            stage_name, _, rest = key.partition(".")
            targets = [s for s in data["stages"] if stage_name in ("*", s["name"])]
            if not targets or not rest:
                raise ConfigError(f"Recipe[{self.name}] override {key!r}: expected <stage>.<field>, stages: "
                                  f"{[s['name'] for s in data['stages']]}")
            for stage in targets:
                node, parts = stage, rest.split(".")
                for part in parts[:-1]:
                    if not isinstance(node.get(part), dict):
                        raise ConfigError(f"Recipe[{self.name}] override {key!r}: no section {part!r}")
                    node = node[part]
                if parts[-1] not in node and parts[0] not in ("trainable", "init_from", "config"):
                    raise ConfigError(f"Recipe[{self.name}] override {key!r}: unknown field {parts[-1]!r}")
                node[parts[-1]] = value
        return Recipe.from_dict(data)


def split_overrides(changes: dict[str, Any], recipes: tuple[Recipe, ...] | list[Recipe], where: str = "--set"
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(Config changes, stage changes)`` of ``--set`` keys; a key's first part names a Config section or a stage.

    ``SECTION.field`` is a Config key, ``STAGE.field`` / ``*.field`` a stage key. Where a name is both (pa_llava's
    stage ``clip`` and Config's ``clip``), the field decides (``clip.init_temperature`` is Config's,
    ``clip.lr`` the stage's); ``config.clip.FIELD`` and ``stage.clip.FIELD`` say which explicitly, and a key that
    fits both readings or neither is a ConfigError naming both.
    """
    known = _config_fields()
    stages = {s.name: s for r in recipes for s in r.stages}
    stage_fields = {f.name for f in fields(Stage)} | {"data"}
    cfg_changes: dict[str, Any] = {}
    stage_changes: dict[str, Any] = {}
    for key, value in changes.items():
        key = str(key)
        head, _, rest = key.partition(".")
        if head == "config":
            cfg_changes[rest] = value
            continue
        if head == "stage":
            if rest.partition(".")[0] not in stages.keys() | {"*"}:
                raise ConfigError(f"{where} {key}: no stage {rest.partition('.')[0]!r}; stages: {sorted(stages)}")
            stage_changes[rest] = value
            continue
        is_stage, is_section = head in stages or head == "*", head in known
        if is_stage and is_section:
            field_name = rest.split(".")[0]
            in_cfg, in_stage = field_name in (known[head] or ()), field_name in stage_fields
            if in_cfg == in_stage:
                raise ConfigError(
                    f"{where} {key}: {head!r} is both a Config section and a stage, and {field_name!r} is "
                    f"{'a field of both' if in_cfg else 'a field of neither'} (Config.{head}: "
                    f"{', '.join(sorted(known[head] or ()))}); write config.{key} or stage.{key}")
            is_stage = in_stage
        (stage_changes if is_stage else cfg_changes)[key] = value
    return cfg_changes, stage_changes


def with_overrides(cfg: Config, recipe: Recipe, changes: dict[str, Any]) -> tuple[Config, Recipe]:
    """Apply ``--set`` changes (:func:`split_overrides`): stage keys to the recipe's stages, Config keys to the
    Config. Config changes are also folded into the recipe's own overrides, so they win over the recipe's
    settings (``--set llm.lora_r=8`` on pa_llava trains rank 8, not the recipe's 16) and are recorded in the
    run's ``recipe.yaml``."""
    cfg_changes, stage_changes = split_overrides(changes, [recipe])
    if cfg_changes:
        cfg = cfg.override(cfg_changes)
        recipe = Recipe.from_dict({**recipe.to_dict(), "config": {**recipe.config, **cfg_changes}})
    if stage_changes:
        recipe = recipe.override(stage_changes)
    return cfg, recipe


_CONFIG_FIELDS: dict[str, set[str] | None] = {}


def _config_fields() -> dict[str, set[str] | None]:
    """Config's sections and their field names (None for a top-level scalar such as ``seed``)."""
    if not _CONFIG_FIELDS:
        cfg = Config()
        for f in fields(cfg):
            value = getattr(cfg, f.name)
            _CONFIG_FIELDS[f.name] = {g.name for g in fields(value)} if hasattr(value, "__dataclass_fields__") \
                else None
    return _CONFIG_FIELDS


def _need(cond: bool, where: str, value: Any, why: str) -> None:
    if not cond:
        raise ConfigError(f"{where}={value!r}: {why}")


# ------------------------------------------------------------------------------------------------ the seeds

PROJECTOR = {"connector": True}
# The LoRA recipes (pa_llava, wsi_llava) start, as the seeds do, from a *pretrained* LLM: at the tiny preset that is
# ``tiny-pretrained`` (pathkit.models.tiny_pretrain: the tiny Llama after text-only pre-training on synthetic
# pathology text). Measured on the random-init ``tiny`` instead, LoRA learned only the answer prior (held-out
# yes/no 0.50, 4-way slide diagnosis <= 0.25). The tiny LoRA also adapts ``lm_head`` (still low rank, base frozen):
# the tiny LLM's head was trained on a ~300-token text corpus, the visual answers need it to move a little.
TINY_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
TINY_LORA = {"llm.name": "tiny-pretrained", "llm.lora_r": 16, "llm.lora_alpha": 32, "llm.lora_dropout": 0.0,
             "llm.lora_targets": TINY_LORA_TARGETS}
PROJECTOR_LORA = {"connector": True, "lora": True}
PROJECTOR_LLM = {"connector": True, "llm": True}
# Contrastive stages: AdamW betas of CLIP training (beta2 0.98, as OpenCLIP's ViT recipes), not HF's 0.999.
CLIP_BETAS = (0.9, 0.98)


def _by_preset(preset: str, tiny: Any, gpu: Any, paper: Any) -> Any:
    return {"tiny": tiny, "gpu": gpu, "paper": paper}[preset]


def quilt_llava(preset: str) -> Recipe:
    """Quilt-LLaVA (§2.5): LLaVA-1.5 stage 1 on captions (plain template, projector only), then instruction
    tuning of projector + LLM (the released model was fully fine-tuned, issue #11)."""
    p = preset
    # tiny: full fine-tuning of ``tiny-pretrained`` (Quilt-LLaVA fine-tunes a pretrained Vicuna). On the random-init
    # ``tiny`` LLM yes/no only left chance after ~30 of 40 epochs, so the held-out score was a coin flip of seed and
    # float rounding (tissue yes/no 0.77-0.95 measured); from a pretrained LLM it is learned in a few epochs.
    config = _by_preset(p, {"connector.type": "mlp2x_gelu", "llm.lora_r": 0, "llm.name": "tiny-pretrained"},
                        {"connector.type": "mlp2x_gelu", "llm.lora_r": 0},
                        {"connector.type": "mlp2x_gelu", "llm.lora_r": 0,
                         "encoder.name": "wisdomik/QuiltNet-B-32", "encoder.image_size": 224,
                         "llm.name": "lmsys/vicuna-7b-v1.5", "llm.chat_template": "vicuna_v1",
                         "llm.max_length": 2048})
    align = Stage(
        name="alignment", data=DataSpec(source="tiles", format="captions", template="plain"),
        trainable=PROJECTOR,
        lr=_by_preset(p, 3e-3, 1e-3, 1e-3), epochs=_by_preset(p, 2, 1, 1),
        batch_size=_by_preset(p, 16, 32, 32), grad_accum=1,
        notes="scripts/v1_5/pretrain.sh: batch 32/GPU, --gradient_accumulation_steps 1, global 256 (8 GPUs), "
              "lr 1e-3, cosine, warmup 0.03, wd 0, 1 epoch")
    instruct = Stage(
        name="instruct", data=DataSpec(source="tiles", format="instruct", extra_closed=_by_preset(p, 4, 0, 0)),
        trainable=PROJECTOR_LLM,
        lr=_by_preset(p, 2e-3, 2e-5, 2e-5), epochs=_by_preset(p, 12, 3, 1),
        batch_size=_by_preset(p, 16, 16, 16), grad_accum=1, val_fraction=_by_preset(p, 0.1, 0.0, 0.0),
        notes="scripts/v1_5/finetune.sh: batch 16/GPU, --gradient_accumulation_steps 1, lr 2e-5, cosine, "
              "warmup 0.03, wd 0, 1 epoch; the released weights suggest 3 epochs (issue #13)")
    return Recipe(name="quilt_llava", vision="image", stages=(align, instruct), config=config,
                  notes="Quilt-LLaVA: LLaVA-1.5 recipe on Quilt captions then Quilt-Instruct")


def pa_llava(preset: str) -> Recipe:
    """PA-LLaVA (§3.2-3.3): pathology CLIP, then domain alignment and VQA tuning of the scale-invariant
    connector + LLM LoRA (r128/alpha256, projector LR x0.5 in the second stage)."""
    p = preset
    config = _by_preset(p, {"connector.type": "scale_invariant", **TINY_LORA},
                        {"connector.type": "scale_invariant", "llm.lora_r": 16, "llm.lora_alpha": 32},
                        {"connector.type": "scale_invariant", "connector.num_tokens": 196,
                         "connector.qformer_layers": 6, "connector.tile_size": 224,
                         "encoder.name": "openai/clip-vit-base-patch16", "encoder.image_size": 224,
                         "llm.name": "meta-llama/Meta-Llama-3-8B-Instruct", "llm.chat_template": "llama3",
                         "llm.lora_r": 128, "llm.lora_alpha": 256, "llm.lora_dropout": 0.05,
                         "llm.max_length": 2048 - 196})
    clip = Stage(
        name="clip", kind="contrastive", data=DataSpec(source="tiles", format="pairs"),
        trainable={"vision": True, "text": True},
        lr=_by_preset(p, 1e-3, 1e-4, 1e-5), epochs=_by_preset(p, 20, 10, 10), weight_decay=0.1,
        betas=CLIP_BETAS, warmup_ratio=0.1, batch_size=_by_preset(p, 32, 256, 256),
        notes="PA-LLaVA's own PLIP (CLIP ViT-B/16 at 224) on PCaption-0.5M; its training settings are not in "
              "the code [unverified]: CLIP fine-tuning defaults")
    align = Stage(
        name="domain_alignment", data=DataSpec(source="tiles", format="describe"),
        trainable=PROJECTOR_LORA, init_from={"vision": "clip"},
        lr=_by_preset(p, 3e-3, 1e-4, 1e-4), min_lr=0.0, epochs=_by_preset(p, 8, 3, 9),
        batch_size=_by_preset(p, 16, 16, 6), grad_accum=_by_preset(p, 1, 2, 6),
        notes="pallava_domain_alignment.py: 6/GPU x 6 accumulation x 16 GPUs = 576, 9 epochs, lr 1e-4, "
              "AdamW (0.9, 0.999), wd 0, clip 1, linear warm-up 3% then cosine to 0")
    vqa = Stage(
        name="vqa_tuning", data=DataSpec(source="tiles", format="instruct", extra_closed=_by_preset(p, 4, 0, 0)),
        trainable=PROJECTOR_LORA,
        lr=_by_preset(p, 2e-3, 2e-4, 2e-4), projector_lr=_by_preset(p, 1e-3, 1e-4, 1e-4),
        min_lr=_by_preset(p, 1e-5, 1e-6, 1e-6), epochs=_by_preset(p, 6, 3, 12),
        batch_size=_by_preset(p, 16, 16, 6), grad_accum=_by_preset(p, 1, 2, 4),
        val_fraction=_by_preset(p, 0.1, 0.0, 0.0),
        notes="pallava_instruction_tuning.py: 6/GPU x 4 accumulation x 16 GPUs = 384, 12 epochs, lr 2e-4 "
              "(projector x0.5 = 1e-4), cosine to 1e-6")
    return Recipe(name="pa_llava", vision="image", stages=(clip, align, vqa), config=config,
                  notes="PA-LLaVA: pathology CLIP -> domain alignment -> VQA tuning, scale-invariant connector, LoRA")


def wsi_llava(preset: str) -> Recipe:
    """WSI-LLaVA (§4.3): WSI-text contrastive alignment of the slide encoder, projector alignment, then
    instruction tuning (LoRA r128/alpha256, lr 2e-4, projector lr 2e-5, 3 epochs)."""
    p = preset
    # WSI-LLaVA pools the LongNet tokens to 576 (adaptive average) before the mlp2x_gelu projector: "pool".
    # tiny: a 2-layer LongNet over the tiny encoder's 64-d tile features, and 64 smaller slides (2048 px) so
    # the held-out split has 16 slides (4 per diagnosis) and 5 of the 48 training slides validate the last stage
    # (with 48 slides, one seed in five scored 7/12 on the 4-way diagnosis).
    config = _by_preset(p, {"connector.type": "pool", "connector.num_tokens": 8, **TINY_LORA,
                            "synthetic.slide_count": 64, "synthetic.slide_size": 2048,
                            "longnet.in_dim": 64, "longnet.dim": 64, "longnet.depth": 2, "longnet.heads": 4,
                            "longnet.segment_lengths": [16, 64], "longnet.dilation_rates": [1, 2]},
                        {"connector.type": "pool", "connector.num_tokens": 64, "llm.lora_r": 16,
                         "llm.lora_alpha": 32, "wsi.encoder": "tiny-vit-b16"},
                        {"connector.type": "pool", "connector.num_tokens": 576, "wsi.encoder": "gigapath",
                         "llm.name": "lmsys/vicuna-7b-v1.5", "llm.chat_template": "vicuna_v1",
                         "llm.lora_r": 128, "llm.lora_alpha": 256, "llm.lora_dropout": 0.05,
                         "llm.max_length": 2048})
    contrastive = Stage(
        name="wsi_text", kind="contrastive", data=DataSpec(source="slides", format="pairs"),
        trainable={"slide_encoder": True, "text": True},
        lr=_by_preset(p, 1e-3, 1e-4, 1e-4), epochs=_by_preset(p, 20, 20, 10), weight_decay=0.05,
        betas=CLIP_BETAS, warmup_ratio=0.1, batch_size=_by_preset(p, 8, 32, 32),
        notes="WSI-text alignment of the LongNet slide encoder against reports; details not in the code "
              "[unverified]")
    align = Stage(
        name="feature_alignment", data=DataSpec(source="slides", format="captions", template="plain"),
        trainable=PROJECTOR, init_from={"slide_encoder": "wsi_text"},
        lr=_by_preset(p, 3e-3, 1e-3, 1e-3), epochs=_by_preset(p, 6, 3, 1),
        batch_size=_by_preset(p, 8, 32, 32), grad_accum=_by_preset(p, 1, 1, 4),
        notes="projector only on slide-report pairs, LLaVA-1.5 stage-1 settings [unverified]")
    instruct = Stage(
        name="instruction_tuning", data=DataSpec(source="slides", format="instruct"),
        trainable=PROJECTOR_LORA,
        lr=_by_preset(p, 3e-3, 2e-4, 2e-4), projector_lr=_by_preset(p, 1.5e-3, 2e-5, 2e-5),
        epochs=_by_preset(p, 10, 3, 3), batch_size=_by_preset(p, 8, 32, 32), grad_accum=_by_preset(p, 1, 1, 4),
        val_fraction=_by_preset(p, 0.1, 0.0, 0.0),
        notes="finetune_lora.sh: LoRA r128 alpha256, lr 2e-4, projector lr 2e-5, 3 epochs, 32/device x 4 "
              "accumulation = 128, ZeRO-3, bf16, cosine warm-up 0.03, group_by_modality_length")
    return Recipe(name="wsi_llava", vision="slide", stages=(contrastive, align, instruct), config=config,
                  notes="WSI-LLaVA: WSI-text contrastive -> projector alignment -> instruction tuning on slides")


def huatuo_vision(preset: str) -> Recipe:
    """HuatuoGPT-Vision (§5): alignment VQA then instruction VQA (PubMedVision's two halves). No training code
    was released (issue #17): LLaVA-1.5's stage settings with the huatuo template [unverified]."""
    p = preset
    config = _by_preset(p, {"connector.type": "mlp2x_gelu", "llm.lora_r": 0, "llm.chat_template": "huatuo"},
                        {"connector.type": "mlp2x_gelu", "llm.lora_r": 0, "llm.chat_template": "huatuo"},
                        {"connector.type": "mlp2x_gelu", "llm.lora_r": 0, "llm.chat_template": "huatuo",
                         "encoder.name": "openai/clip-vit-large-patch14-336", "encoder.image_size": 336,
                         "llm.name": "Qwen/Qwen2-7B", "llm.max_length": 2048})
    align = Stage(
        name="alignment_vqa", data=DataSpec(source="tiles", format="describe"),
        trainable=PROJECTOR, lr=_by_preset(p, 3e-3, 1e-3, 1e-3), epochs=_by_preset(p, 2, 1, 1),
        batch_size=_by_preset(p, 16, 32, 32),
        notes="PubMedVision_Alignment_VQA, projector only, LLaVA-1.5 stage 1 settings [unverified]")
    instruct = Stage(
        name="instruction_vqa", data=DataSpec(source="tiles", format="instruct"),
        trainable=PROJECTOR_LLM, lr=_by_preset(p, 2e-3, 2e-5, 2e-5), epochs=_by_preset(p, 5, 3, 1),
        batch_size=_by_preset(p, 16, 16, 16),
        notes="PubMedVision_InstructionTuning_VQA (+ LLaVA data, issue #17), full fine-tune [unverified]")
    return Recipe(name="huatuo_vision", vision="image", stages=(align, instruct), config=config,
                  notes="HuatuoGPT-Vision: alignment VQA -> instruction VQA")


RECIPES = {"quilt_llava": quilt_llava, "pa_llava": pa_llava, "wsi_llava": wsi_llava,
           "huatuo_vision": huatuo_vision}


def get_recipe(name: str, preset: str = "tiny") -> Recipe:
    """A seed's recipe at a preset (``tiny``, ``gpu`` or ``paper``), or a recipe YAML file."""
    if name not in RECIPES:
        if Path(name).is_file():
            return Recipe.from_yaml(Path(name))
        raise ConfigError(f"recipe {name!r}: must be one of {sorted(RECIPES)} or a recipe YAML file")
    if preset not in PRESETS:
        raise ConfigError(f"recipe preset {preset!r}: must be one of {PRESETS}")
    return RECIPES[name](preset)
