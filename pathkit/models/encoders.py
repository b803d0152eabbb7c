"""Tile / image encoder registry: ``load_encoder(name_or_path) -> (model, preprocess, dim)``.

One interface over transformers' vision backbones (CLIP vision, ViT, DINOv2, SigLIP), a random-init ``tiny``
encoder that is built from a config, saved under ``cache_dir()/encoders/tiny`` and loaded back through the very
same ``from_pretrained`` path a hub id or local directory takes, and names for the seed systems' encoders:

    tiny              CLIP-style ViT, 64 px, patch 8, width 64, 2 layers (random init, fixed seed)
    vit-b16-random    ViT-B/16 at 224 px built from config (random init; GPU throughput benchmarks)
    plip              ``vinid/plip`` (PA-LLaVA's pathology CLIP)
    quiltnet          ``wisdomik/QuiltNet-B-32`` (Quilt-1M CLIP)
    gigapath          Prov-GigaPath tile encoder (timm ``hf_hub:prov-gigapath/prov-gigapath``; needs timm)
    uni               UNI (timm ``hf-hub:MahmoodLab/UNI``; needs timm)

Every model is an ``nn.Module`` with ``forward(pixel_values) -> (B, D)`` (pooled embedding),
``forward_tokens(pixel_values, select_layer=-2, select_feature="patch") -> (B, T, D_tokens)`` (LLaVA's
penultimate-layer patch tokens), and attributes ``token_dim``, ``num_tokens`` (patch tokens), ``image_size``.
``preprocess(images)`` turns a list of PIL images or HxWx3 uint8 arrays into a (B, 3, S, S) float tensor:
resize the short side to S (bicubic), centre crop, scale to [0, 1], normalise with the model's mean/std.
PIL and numpy only: timm and torchvision are never imported unless a timm-only encoder is asked for.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from pathkit.io import PathkitError
from pathkit.models.llava_folder import check_load, image_processor_config, llava_config, read_llava_weights
from pathkit.paths import cache_dir

# Lazy imports: transformers, huggingface_hub (the model stack, seconds to import); timm (an optional extra).
# They load inside the functions that need them, not when this module is imported.

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)

# Names for the seed systems' encoders; "timm:" entries need the optional timm extra.
NAMED_ENCODERS: dict[str, str] = {
    "plip": "vinid/plip",
    "quiltnet": "wisdomik/QuiltNet-B-32",
    "gigapath": "timm:hf_hub:prov-gigapath/prov-gigapath",
    "uni": "timm:hf-hub:MahmoodLab/UNI",
}
# Random-init encoders built from a config on first use and cached: name -> build_tiny_encoder kwargs.
BUILT_ENCODERS: dict[str, dict[str, int]] = {
    "tiny": dict(image_size=64, patch_size=8, hidden=64, layers=2, heads=4),
    "tiny-vit-b16": dict(image_size=224, patch_size=16, hidden=768, layers=12, heads=12),
    "vit-b16-random": dict(image_size=224, patch_size=16, hidden=768, layers=12, heads=12),
}
_DEFAULT_NORM = {
    "clip": (CLIP_MEAN, CLIP_STD), "clip_vision_model": (CLIP_MEAN, CLIP_STD),
    "vit": (HALF, HALF), "dinov2": (IMAGENET_MEAN, IMAGENET_STD),
    "siglip": (HALF, HALF), "siglip_vision_model": (HALF, HALF),
}


# --------------------------------------------------------------------------------------------- preprocessing


class ImagePreprocess:
    """PIL/numpy images -> normalised (B, 3, S, S) float tensor: short side to ``resize``, centre crop ``size``."""

    def __init__(self, size: int, mean=CLIP_MEAN, std=CLIP_STD, resize: int | None = None):
        self.size = int(size)
        self.resize = int(resize or size)
        self.mean = np.asarray(mean, np.float32).reshape(1, 1, 3)
        self.std = np.asarray(std, np.float32).reshape(1, 1, 3)

    def to_array(self, image: Any) -> np.ndarray:
        """One image -> (S, S, 3) float32 in model units (no torch: usable inside DataLoader workers)."""
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
                raise PathkitError(f"preprocess: expected an HxWx3 uint8 array, got {image.dtype} {image.shape}")
            image = Image.fromarray(np.ascontiguousarray(image[..., :3]))
        elif not isinstance(image, Image.Image):
            raise PathkitError(f"preprocess: expected a PIL image or numpy array, got {type(image).__name__}")
        image = image.convert("RGB")
        w, h = image.size
        if (w, h) != (self.size, self.size) or self.resize != self.size:
            # the short side becomes ``resize``, the long side is truncated as transformers' CLIP image
            # processor does (int(resize * long / short)), so exported processors give the same pixels
            if w <= h:
                nw, nh = self.resize, int(self.resize * h / w)
            else:
                nw, nh = int(self.resize * w / h), self.resize
            nw, nh = max(nw, self.size), max(nh, self.size)
            if (nw, nh) != (w, h):
                image = image.resize((nw, nh), Image.BICUBIC)
            left, top = (nw - self.size) // 2, (nh - self.size) // 2
            image = image.crop((left, top, left + self.size, top + self.size))
        arr = np.asarray(image, dtype=np.float32) / 255.0
        return (arr - self.mean) / self.std

    def __call__(self, images: list[Any]) -> torch.Tensor:
        if not isinstance(images, (list, tuple)):
            images = [images]
        batch = np.stack([self.to_array(im) for im in images])  # (B, S, S, 3)
        return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()  # (B, 3, S, S)

    def __repr__(self) -> str:
        return f"ImagePreprocess(size={self.size}, resize={self.resize})"


# --------------------------------------------------------------------------------------------- models


class HFVisionEncoder(nn.Module):
    """A transformers vision backbone behind pathkit's encoder interface.

    Pooled embedding per family: CLIP -> projected image embedding when the checkpoint has a projection
    (a full CLIPModel), else the post-LayerNorm CLS; ViT/DINOv2 -> LayerNorm'd CLS; SigLIP -> its attention
    pooling head (mean of tokens when the head is absent).
    """

    def __init__(self, backbone: nn.Module, family: str, image_size: int, patch_size: int,
                 token_dim: int, dim: int, prefix_tokens: int):
        super().__init__()
        self.backbone = backbone
        self.family = family
        self.image_size = int(image_size)
        self.patch_size = int(patch_size)
        self.token_dim = int(token_dim)
        self.dim = int(dim)
        self.prefix_tokens = int(prefix_tokens)  # CLS (+ registers) in front of the patch tokens
        self.num_tokens = (self.image_size // self.patch_size) ** 2

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) -> (B, D)
        out = self.backbone(pixel_values=pixel_values)
        if self.family == "clip_projection":
            return out.image_embeds
        if self.family in ("vit", "dinov2"):
            return out.last_hidden_state[:, 0]
        pooled = getattr(out, "pooler_output", None)
        return pooled if pooled is not None else out.last_hidden_state.mean(dim=1)

    def forward_tokens(self, pixel_values: torch.Tensor, select_layer: int = -2,
                       select_feature: str = "patch") -> torch.Tensor:  # -> (B, T, D_tokens)
        out = self.backbone(pixel_values=pixel_values, output_hidden_states=True)
        tokens = out.hidden_states[select_layer]  # (B, prefix + T, D_tokens)
        if select_feature == "patch":
            return tokens[:, self.prefix_tokens:]
        if select_feature == "cls_patch":
            return tokens
        raise PathkitError(f"forward_tokens: select_feature={select_feature!r}: must be patch or cls_patch")


class TimmEncoder(nn.Module):
    """A timm model (Prov-GigaPath, UNI) behind the same interface; only built when timm is installed."""

    def __init__(self, model: nn.Module, image_size: int = 224):
        super().__init__()
        self.model = model
        self.image_size = image_size
        self.dim = self.token_dim = int(model.num_features)
        self.prefix_tokens = int(getattr(model, "num_prefix_tokens", 1))
        patch = model.patch_embed.patch_size
        patch = patch[0] if isinstance(patch, (tuple, list)) else patch
        self.num_tokens = (image_size // patch) ** 2

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # (B, D)
        return self.model(pixel_values)

    def forward_tokens(self, pixel_values, select_layer=-2, select_feature="patch"):
        n = len(self.model.blocks)
        index = select_layer % n
        tokens = self.model.get_intermediate_layers(pixel_values, n=[index], return_prefix_tokens=False)[0]
        return tokens  # (B, T, D) patch tokens; timm drops prefix tokens here


# --------------------------------------------------------------------------------------------- building


def build_tiny_encoder(out_dir: str | Path, image_size: int = 64, patch_size: int = 8, hidden: int = 64,
                       layers: int = 2, heads: int = 4, seed: int = 0) -> Path:
    """Write a random-init CLIP-style vision tower (config, weights, preprocessor config) to ``out_dir``."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    out_dir = Path(out_dir)
    config = CLIPVisionConfig(image_size=image_size, patch_size=patch_size, hidden_size=hidden,
                              intermediate_size=4 * hidden, num_hidden_layers=layers, num_attention_heads=heads)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPVisionModel(config)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    (tmp / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD),
        "size": {"shortest_edge": image_size}, "crop_size": {"height": image_size, "width": image_size},
    }, indent=2))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if out_dir.exists():  # another process built it meanwhile: keep theirs

        shutil.rmtree(tmp)
        return out_dir
    tmp.rename(out_dir)
    return out_dir


def built_encoder_dir(name: str) -> Path:
    """The cached directory of a random-init encoder (built on first call)."""
    out = cache_dir() / "encoders" / name
    if not (out / "config.json").is_file():
        build_tiny_encoder(out, **BUILT_ENCODERS[name])
    return out


def _read_norm(directory: Path | None, model_type: str, config) -> tuple[tuple, tuple, int | None]:
    mean, std = _DEFAULT_NORM.get(model_type, (IMAGENET_MEAN, IMAGENET_STD))
    resize = None
    if directory is not None and (directory / "preprocessor_config.json").is_file():
        pp = json.loads((directory / "preprocessor_config.json").read_text())
        mean = tuple(pp.get("image_mean", mean))
        std = tuple(pp.get("image_std", std))
        size = pp.get("size") or {}
        if isinstance(size, dict) and "shortest_edge" in size:
            resize = int(size["shortest_edge"])
    return mean, std, resize


def _resolve_dir(name_or_path: str) -> Path | None:
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    try:  # a hub id already in the local Hugging Face cache (no network)
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name_or_path, local_files_only=True))
    except Exception:
        return None


def _quiet_from_pretrained(cls, directory: Path, **kwargs) -> nn.Module:
    """``cls.from_pretrained`` without progress bars or the unused-weights report (text towers etc.)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        return cls.from_pretrained(directory, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def _load_transformers(name_or_path: str) -> tuple[nn.Module, ImagePreprocess, int]:
    from transformers import AutoConfig

    directory = _resolve_dir(name_or_path)
    if directory is None:
        raise PathkitError(f"encoder {name_or_path!r}: not a local directory, not a known name "
                           f"({', '.join(sorted({*NAMED_ENCODERS, *BUILT_ENCODERS}))}) and not in the "
                           "Hugging Face cache (pathkit never downloads at run time)")
    if not (directory / "config.json").is_file():
        raise PathkitError(f"{directory}: no config.json (not a transformers model directory)")
    try:
        config = AutoConfig.from_pretrained(directory)
    except Exception as err:
        raise PathkitError(f"{directory}/config.json: cannot read config ({type(err).__name__})") from err
    model_type = config.model_type
    if model_type == "llava":  # an HF LLaVA folder: its vision tower

        return load_llava_vision_tower(directory)
    if model_type == "clip":
        from transformers import CLIPVisionModelWithProjection as cls

        family, vision = "clip_projection", config.vision_config
    elif model_type == "clip_vision_model":
        from transformers import CLIPVisionModel as cls

        family, vision = "clip", config
    elif model_type == "vit":
        from transformers import ViTModel as cls

        family, vision = "vit", config
    elif model_type == "dinov2":
        from transformers import Dinov2Model as cls

        family, vision = "dinov2", config
    elif model_type in ("siglip", "siglip_vision_model"):
        from transformers import SiglipVisionModel as cls

        family = "siglip"
        vision = config.vision_config if model_type == "siglip" else config
    else:
        raise PathkitError(f"{directory}/config.json: model_type={model_type!r} is not a supported vision "
                           "encoder (clip, clip_vision_model, vit, dinov2, siglip, siglip_vision_model)")
    kwargs: dict[str, Any] = {"add_pooling_layer": False} if family == "vit" else {}
    if family == "clip_projection":  # vision half of a full CLIPModel, with its projection
        vision.projection_dim = config.projection_dim
        kwargs["config"] = vision
    backbone = _quiet_from_pretrained(cls, directory, **kwargs)
    prefix = 0 if family == "siglip" else 1 + int(getattr(vision, "num_register_tokens", 0) or 0)
    dim = config.projection_dim if family == "clip_projection" else vision.hidden_size
    model = HFVisionEncoder(backbone, family, vision.image_size, vision.patch_size, vision.hidden_size, dim,
                            prefix).eval()
    mean, std, resize = _read_norm(directory, model_type, config)
    return model, ImagePreprocess(vision.image_size, mean, std, resize), int(dim)


def _load_timm(name: str, hub_id: str) -> tuple[nn.Module, ImagePreprocess, int]:
    try:
        import timm
    except Exception as err:  # ImportError, or a broken torchvision underneath
        raise PathkitError(f'encoder {name!r} needs timm, an optional extra: pip install "pathkit[timm]" '
                           f"({type(err).__name__})") from err
    try:
        model = timm.create_model(hub_id, pretrained=True)
    except Exception as err:
        raise PathkitError(f"encoder {name!r}: timm could not load {hub_id} ({type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''})") from err
    # Prov-GigaPath / UNI tile transform: resize 256 bicubic, centre crop 224, ImageNet mean/std.
    encoder = TimmEncoder(model.eval(), 224)
    return encoder, ImagePreprocess(224, IMAGENET_MEAN, IMAGENET_STD, resize=256), encoder.dim


def load_encoder(name_or_path: str | Path, device: str | torch.device = "cpu"
                 ) -> tuple[nn.Module, ImagePreprocess, int]:
    """Load a tile/image encoder by registry name, hub id or local directory -> (model, preprocess, dim).

    The model is in eval mode on ``device``. Errors are one line naming the encoder and what is missing.
    """
    name = str(name_or_path)
    if name in BUILT_ENCODERS:
        model, preprocess, dim = _load_transformers(str(built_encoder_dir(name)))
    elif name in NAMED_ENCODERS:
        target = NAMED_ENCODERS[name]
        if target.startswith("timm:"):
            model, preprocess, dim = _load_timm(name, target[len("timm:"):])
        else:
            model, preprocess, dim = _load_transformers(target)
    else:
        model, preprocess, dim = _load_transformers(name)
    model.name = name
    return model.to(device), preprocess, dim


def load_llava_vision_tower(directory: str | Path):
    """The vision tower of an HF LLaVA folder behind pathkit's encoder interface -> (model, preprocess, dim)."""
    from transformers import CLIPVisionModel

    directory = Path(directory)
    config = llava_config(directory)
    vision = config.vision_config
    if vision.model_type != "clip_vision_model":
        raise PathkitError(f"{directory}/config.json: vision_config.model_type={vision.model_type!r}; pathkit "
                           "imports LLaVA folders with a CLIP vision tower")
    with torch.device("cpu"):
        backbone = CLIPVisionModel(vision)
    state = read_llava_weights(directory, "vision_tower")
    # checkpoints name the tower's weights with or without "vision_model." (transformers 4.x vs 5.x modules)
    nested = any(k.startswith("vision_model.") for k in backbone.state_dict())
    state = {k.removeprefix("vision_model."): v for k, v in state.items()}
    state = {f"vision_model.{k}" if nested else k: v for k, v in state.items()}
    check_load(backbone.load_state_dict(state, strict=False), f"{directory}: vision tower")
    model = HFVisionEncoder(backbone.eval(), "clip", vision.image_size, vision.patch_size, vision.hidden_size,
                            vision.hidden_size, 1).eval()
    mean, std, resize = CLIP_MEAN, CLIP_STD, None
    pp = image_processor_config(directory)
    if pp:
        mean, std = tuple(pp.get("image_mean", mean)), tuple(pp.get("image_std", std))
        size = pp.get("size") or {}
        resize = int(size["shortest_edge"]) if isinstance(size, dict) and "shortest_edge" in size else None
    return model, ImagePreprocess(vision.image_size, mean, std, resize), int(vision.hidden_size)
