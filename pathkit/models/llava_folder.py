"""Reading an HF LLaVA folder (``LlavaForConditionalGeneration`` layout): its config, its safetensors one part at
a time (both key layouts: transformers >= 4.52 ``model.language_model.*`` and llava-hf's older
``language_model.model.*``) and its image processor's settings. The vision tower and the language model are built
from these by :mod:`pathkit.models.encoders` and :mod:`pathkit.models.llm`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pathkit.io import PathkitError

# Lazy imports: transformers, safetensors (the model stack, seconds to import). They load inside the functions
# that need them, not when this module is imported.

# part -> key prefixes in LLaVA checkpoints, transformers >= 4.52 layout first, then llava-hf's older one
LLAVA_PREFIXES: dict[str, tuple[str, ...]] = {
    "vision_tower": ("model.vision_tower.", "vision_tower."),
    "projector": ("model.multi_modal_projector.", "multi_modal_projector."),
    "language_model": ("model.language_model.", "language_model.model."),
    "lm_head": ("lm_head.", "language_model.lm_head."),
}


def is_hf_llava_dir(path: str | Path) -> bool:
    """True when ``path`` is a folder whose ``config.json`` says ``model_type: llava``."""
    config = Path(str(path)).expanduser() / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == "llava"
    except (OSError, ValueError, AttributeError):
        return False


def llava_config(directory: str | Path):
    """The folder's ``LlavaConfig``; a one-line error naming the file when it cannot be read."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(directory))
    except Exception as err:
        raise PathkitError(f"{Path(directory) / 'config.json'}: not a readable LLaVA config "
                           f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from err


def _weight_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [directory / n for n in names]
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    raise PathkitError(f"{directory}: no model.safetensors (pathkit reads LLaVA weights only as safetensors)")


def read_llava_weights(directory: str | Path, part: str) -> dict[str, Any]:
    """The tensors of one part (``vision_tower``, ``projector``, ``language_model``, ``lm_head``), prefix
    stripped, from a LLaVA folder's safetensors (only that part is read)."""
    from safetensors import safe_open

    directory = Path(directory)
    prefixes = LLAVA_PREFIXES[part]
    out: dict[str, Any] = {}
    for file in _weight_files(directory):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                prefix = next((p for p in prefixes if key.startswith(p)), None)
                if prefix is not None:
                    out[key[len(prefix):]] = f.get_tensor(key)
    return out


def check_load(result, where: str, allowed_missing: tuple[str, ...] = ()) -> None:
    missing = [k for k in result.missing_keys if not k.startswith(allowed_missing)]
    if missing or result.unexpected_keys:
        raise PathkitError(f"{where}: weights do not match the config (missing {missing[:3]}, "
                           f"unexpected {list(result.unexpected_keys)[:3]})")


def image_processor_config(directory: Path) -> dict:
    """The image processor's settings: ``preprocessor_config.json``, else transformers 5's
    ``processor_config.json`` (which nests them under ``image_processor``)."""
    for name, key in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
        path = directory / name
        if path.is_file():
            data = json.loads(path.read_text())
            data = data.get(key) if key else data
            if isinstance(data, dict):
                return data
    return {}
