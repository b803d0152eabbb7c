"""pathkit models in and out of transformers' LLaVA layout (``LlavaForConditionalGeneration`` folders).

Out: :func:`to_hf_llava` builds transformers' LLaVA from a pathkit model's weights (the peer implementation
that checks pathkit's splicing, and the GPU speed baseline); :func:`export_hf_llava` writes it as a folder that
``AutoProcessor.from_pretrained`` + ``LlavaForConditionalGeneration.from_pretrained`` (and vLLM) load unchanged:
weights with LoRA merged, the tokenizer (adding BOS as Llama's does), pathkit's chat template as Jinja, and a
CLIP image processor whose pixels equal pathkit's preprocessing. Only the LLaVA-1.5 layout fits: a CLIP-style
vision tower, an ``mlp2x_gelu`` connector on the penultimate layer's patch tokens, a causal LM;
:func:`hf_llava_unsupported` names what else a model has (PA-LLaVA's connector, slide models).

In: an HF LLaVA folder (llava-hf checkpoints, or pathkit's own export) works where a pathkit model folder
does: :func:`pathkit.models.encoders.load_llava_vision_tower` and
:func:`pathkit.models.llm.load_llava_language_model` read only their part of the safetensors
(:mod:`pathkit.models.llava_folder`), :func:`llava_projector_state` the connector, and
:func:`pathkit_config_for_llava` the pathkit config that names the folder as encoder and LLM.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

from pathkit.config import Config
from pathkit.io import PathkitError
from pathkit.models.conversation import chat_template_jinja
from pathkit.models.llava_folder import llava_config, read_llava_weights
from pathkit.models.llm import _quiet_progress

# Lazy imports: torch, transformers, tokenizers (the model stack, seconds to import). They load inside the
# functions that need them, not when this module is imported.

EXPORT_FILE = "pathkit_export.json"  # written beside an export: pathkit's template name and source


def to_hf_llava(vlm):
    """A ``LlavaForConditionalGeneration`` holding copies of ``vlm``'s vision tower, projector and LLM weights.

    Its ``image_token_index`` is pathkit's ``<image>`` id; unlike pathkit, transformers expects each ``<image>``
    to be repeated once per visual token in ``input_ids`` (see :func:`expand_image_tokens`).
    """
    from torch import nn
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    backbone = getattr(vlm.vision_tower, "backbone", None)
    if vlm.vision != "image" or backbone is None or backbone.config.model_type not in ("clip_vision_model",):
        raise PathkitError("to_hf_llava: needs an image model with a CLIP vision tower")
    connector = vlm.connector
    linears = [m for m in connector if isinstance(m, nn.Linear)] if isinstance(connector, nn.Sequential) else []
    if len(linears) != 2 or vlm.cfg.connector.type != "mlp2x_gelu":
        raise PathkitError(f"to_hf_llava: connector.type={vlm.cfg.connector.type!r}; only mlp2x_gelu converts")
    if vlm.cfg.encoder.select_feature != "patch":
        raise PathkitError("to_hf_llava: encoder.select_feature must be 'patch' (LLaVA's 'default' strategy)")
    llm = vlm.llm
    if vlm.has_lora:
        llm = copy.deepcopy(llm).merge_and_unload()
    config = LlavaConfig(vision_config=backbone.config.to_dict(), text_config=llm.config.to_dict(),
                         image_token_index=vlm.image_token_id, image_seq_length=vlm.vision_tower.num_tokens,
                         vision_feature_layer=vlm.cfg.encoder.select_layer,
                         vision_feature_select_strategy="default", projector_hidden_act="gelu")
    model = LlavaForConditionalGeneration(config).to(next(llm.parameters()).dtype)
    inner = model.model
    inner.vision_tower.load_state_dict(backbone.state_dict())
    inner.multi_modal_projector.linear_1.load_state_dict(linears[0].state_dict())
    inner.multi_modal_projector.linear_2.load_state_dict(linears[1].state_dict())
    inner.language_model.load_state_dict(llm.model.state_dict())
    model.lm_head.load_state_dict(llm.lm_head.state_dict())
    return model.to(next(vlm.parameters()).device).eval()


def expand_image_tokens(input_ids, attention_mask, labels, image_token_id: int, num_tokens: int):
    """Repeat every ``<image>`` id ``num_tokens`` times (transformers' LLaVA input convention); labels -100."""
    import torch

    rows, labs = [], []
    for b in range(input_ids.shape[0]):
        keep = attention_mask[b].bool()
        ids = input_ids[b][keep]
        repeat = torch.where(ids == image_token_id, num_tokens, 1)
        rows.append(ids.repeat_interleave(repeat))
        if labels is not None:
            lab = labels[b][keep].repeat_interleave(repeat)
            lab[rows[-1] == image_token_id] = -100
            labs.append(lab)
    longest = max(len(r) for r in rows)
    out_ids = input_ids.new_zeros(len(rows), longest)
    out_mask = attention_mask.new_zeros(len(rows), longest)
    out_labels = input_ids.new_full((len(rows), longest), -100) if labels is not None else None
    for b, r in enumerate(rows):
        out_ids[b, :len(r)], out_mask[b, :len(r)] = r, 1
        if out_labels is not None:
            out_labels[b, :len(r)] = labs[b]
    return out_ids, out_mask, out_labels


# ------------------------------------------------------------------------------------------------ export


def hf_llava_unsupported(vlm) -> str | None:
    """Why ``vlm`` cannot be written in LLaVA's layout (one line), or None when it can."""
    from torch import nn

    if vlm.vision != "image":
        return "a slide model (LongNet / tile features in) has no place in LlavaForConditionalGeneration"
    backbone = getattr(vlm.vision_tower, "backbone", None)
    if backbone is None or backbone.config.model_type != "clip_vision_model":
        return "LLaVA's layout here needs a CLIP vision tower"
    connector = vlm.connector
    linears = [m for m in connector if isinstance(m, nn.Linear)] if isinstance(connector, nn.Sequential) else []
    if vlm.cfg.connector.type != "mlp2x_gelu" or len(linears) != 2:
        return (f"connector {vlm.cfg.connector.type!r} is not LLaVA's mlp2x_gelu projector"
                + (" (PA-LLaVA's scale-invariant connector tiles the image)"
                   if vlm.cfg.connector.type == "scale_invariant" else ""))
    if vlm.cfg.encoder.select_feature != "patch":
        return "encoder.select_feature must be 'patch' (LLaVA's 'default' strategy)"
    return None


def _tokenizer_adding_bos(tokenizer):
    """A copy of ``tokenizer`` that starts every encoding with BOS (as Llama's tokenizers do), so a processor
    or vLLM fed a raw prompt gets pathkit's ids; a tokenizer that already adds BOS, or has none, is kept."""
    tok = copy.deepcopy(tokenizer)
    bos = tok.bos_token
    if bos is None or tok("a")["input_ids"][:1] == [tok.bos_token_id] or not hasattr(tok, "backend_tokenizer"):
        return tok
    from tokenizers.processors import TemplateProcessing

    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.bos_token_id)])
    return tok


def _image_processor(preprocess):
    """transformers' CLIP image processor (its PIL backend: no torchvision) with pathkit's resize, crop and
    normalisation; saved as ``CLIPImageProcessor``."""
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        do_resize=True, size={"shortest_edge": preprocess.resize}, resample=3,  # 3 = PIL bicubic
        do_center_crop=True, crop_size={"height": preprocess.size, "width": preprocess.size},
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=[float(x) for x in preprocess.mean.ravel()], image_std=[float(x) for x in preprocess.std.ravel()],
        do_convert_rgb=True)


def export_hf_llava(vlm, out_dir: str | Path, source: str | None = None) -> Path:
    """Write ``vlm`` as an HF LLaVA folder (weights with LoRA merged, processor, tokenizer, chat template).

    Raises :class:`PathkitError` with :func:`hf_llava_unsupported`'s reason when the layout cannot hold it.
    The folder appears whole or not at all (written under a temporary name, then renamed)."""
    from transformers import GenerationConfig, LlavaProcessor

    reason = hf_llava_unsupported(vlm)
    if reason:
        raise PathkitError(f"hf-llava export: {reason}")
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    hf = to_hf_llava(vlm)
    tokenizer = _tokenizer_adding_bos(vlm.tokenizer)
    template = chat_template_jinja(vlm.template)
    tokenizer.chat_template = template
    stops = vlm.stop_token_ids()
    hf.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=stops,
                                            pad_token_id=tokenizer.pad_token_id, do_sample=False)
    hf.config.pad_token_id = tokenizer.pad_token_id
    with _quiet_progress():
        hf.save_pretrained(str(tmp))
    processor = LlavaProcessor(
        image_processor=_image_processor(vlm.preprocess), tokenizer=tokenizer,
        patch_size=hf.config.vision_config.patch_size, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, image_token="<image>", chat_template=template)  # 1 = CLIP's CLS
    processor.save_pretrained(str(tmp))
    processor.image_processor.save_pretrained(str(tmp))  # preprocessor_config.json: what transformers 4.x reads
    tokenizer.save_pretrained(str(tmp))  # the tokenizer's own copy of the chat template, for tokenizer-only users
    (tmp / EXPORT_FILE).write_text(json.dumps({
        "format": "hf-llava", "template": vlm.template, "source": source, "image_token": "<image>",
        "visual_tokens": vlm.vision_tower.num_tokens}, indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


# ------------------------------------------------------------------------------------------------ import


def llava_projector_state(directory: str | Path) -> dict[str, Any]:
    """The multi-modal projector as the state dict of pathkit's ``mlp2x_gelu`` connector (``0.*``, ``2.*``)."""
    state = read_llava_weights(directory, "projector")
    names = {"linear_1.": "0.", "linear_2.": "2."}
    out = {}
    for key, value in state.items():
        prefix = next((p for p in names if key.startswith(p)), None)
        if prefix is None:
            raise PathkitError(f"{directory}: projector weight {key!r} is not LLaVA's two-layer MLP")
        out[names[prefix] + key[len(prefix):]] = value
    return out


def _template_of(directory: Path, chat_template: str | None) -> str:
    """pathkit's template name for a LLaVA folder: from pathkit's export record, else guessed from the chat
    template's markers (LLaVA-1.5's Vicuna format when there is none)."""
    record = directory / EXPORT_FILE
    if record.is_file():
        return json.loads(record.read_text()).get("template", "vicuna_v1")
    text = chat_template or ""
    if "<|start_header_id|>" in text:
        return "llama3"
    if "<|im_start|>" in text:
        return "qwen2"
    if "<|assistant|>" in text:
        return "huatuo"
    return "vicuna_v1"


def _chat_template_text(directory: Path) -> str | None:
    for name in ("chat_template.jinja", "chat_template.json"):
        path = directory / name
        if path.is_file():
            return path.read_text()
    config = directory / "tokenizer_config.json"
    if config.is_file():
        value = json.loads(config.read_text()).get("chat_template")
        return value if isinstance(value, str) else None
    return None


def pathkit_config_for_llava(directory: str | Path, base=None):
    """A pathkit :class:`~pathkit.config.Config` whose encoder and LLM are the LLaVA folder ``directory``."""
    directory = Path(directory).expanduser().resolve()
    config = llava_config(directory)
    strategy = getattr(config, "vision_feature_select_strategy", "default")
    layer = config.vision_feature_layer
    if not isinstance(layer, int):
        raise PathkitError(f"{directory}/config.json: vision_feature_layer={layer!r}; pathkit takes one layer")
    text = config.text_config
    max_length = min(int(getattr(text, "max_position_embeddings", 2048) or 2048), 2048)
    cfg = base if base is not None else Config.from_name("tiny")
    return cfg.override({
        "encoder.name": str(directory), "encoder.image_size": int(config.vision_config.image_size),
        "encoder.select_layer": layer, "encoder.select_feature": "patch" if strategy == "default" else "cls_patch",
        "connector.type": "mlp2x_gelu", "llm.name": str(directory), "llm.lora_r": 0,
        "llm.chat_template": _template_of(directory, _chat_template_text(directory)),
        "llm.max_length": max_length,
    })
