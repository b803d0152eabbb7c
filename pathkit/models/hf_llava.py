"""transformers' ``LlavaForConditionalGeneration`` built from the same parts as a pathkit model.

Two uses: a peer implementation that checks pathkit's splicing (same weights -> same logits), and the baseline
of the GPU training-speed comparison (pathkit's model against transformers' LLaVA of the same size).
Only the plain LLaVA-1.5 layout converts: a CLIP-style vision tower, an ``mlp2x_gelu`` connector, a causal LM
(LoRA is merged into a copy first).
"""

from __future__ import annotations

import copy

from pathkit.io import PathkitError


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
