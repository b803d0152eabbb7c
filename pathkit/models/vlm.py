"""The vision-language model: vision features -> connector -> ``<image>`` tokens of any transformers causal LM.

One class for the four seed systems (LLaVA recipe, shared/reference/seed-systems.md section 0):

    image path   pixels (B, 3, S, S) -> image encoder, penultimate layer, CLS dropped (B, T, D)
                 -> connector (linear / mlp2x_gelu / scale_invariant over tiles + global view) -> (B, T', H)
    slide path   tile features (N, D) [+ coords] -> LongNet slide encoder (N+1, D') or nothing
                 -> connector (pool to a fixed count + mlp2x_gelu, as WSI-LLaVA) -> (T', H)

Each ``<image>`` placeholder id in ``input_ids`` is replaced by one image's (or slide's) visual tokens, after a
check that the number of placeholders equals the number of images (the error names both counts, like
transformers' LLaVA). Freezing is data: ``apply_freeze({"vision": True, "llm": True, "connector": False})``
(True = frozen) over the parts ``vision``, ``slide_encoder``, ``connector``, ``llm``, ``lora``. LoRA comes from
peft. A model saves to a folder (``pathkit_vlm.json`` + ``config.yaml`` + ``model.safetensors`` of the parts
that are not frozen pretrained weights + ``adapter/`` for LoRA + ``llm/`` when the LLM itself changed) and loads
back with :meth:`VisionLanguageModel.from_pretrained`.
"""

from __future__ import annotations

import copy
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pathkit.config import Config
from pathkit.io import PathkitError
from pathkit.models.connectors import build_connector, tile_image
from pathkit.models.conversation import (
    IGNORE_INDEX,
    IMAGE_TOKEN,
    clean_answer,
    get_template,
    image_token_id,
    tokenize_prompt,
)
from pathkit.models.encoders import load_encoder
from pathkit.models.hf_llava import llava_projector_state, pathkit_config_for_llava
from pathkit.models.llava_folder import is_hf_llava_dir
from pathkit.models.llm import load_llm
from pathkit.models.longnet import LongNetEncoder

# Lazy imports: peft, safetensors (the model stack, seconds to import). They load inside the functions that
# need them, not when this module is imported.

PARTS = ("vision", "slide_encoder", "connector", "llm", "lora")
META_FILE = "pathkit_vlm.json"
WEIGHTS_FILE = "model.safetensors"


def _has_lora(llm: nn.Module) -> bool:
    return any("lora_" in name for name, _ in llm.named_parameters())


class VisionLanguageModel(nn.Module):
    """A LLaVA-style model around any transformers causal LM (see the module docstring)."""

    def __init__(self, cfg, llm: nn.Module, tokenizer, connector: nn.Module, vision: str = "image",
                 vision_tower: nn.Module | None = None, preprocess=None, slide_encoder: nn.Module | None = None,
                 llm_source: str | None = None):
        super().__init__()
        if vision not in ("image", "slide"):
            raise PathkitError(f"vision={vision!r}: must be image or slide")
        self.cfg = cfg
        self.vision = vision
        self.llm = llm
        self.tokenizer = tokenizer
        self.connector = connector
        self.vision_tower = vision_tower
        self.preprocess = preprocess
        self.slide_encoder = slide_encoder
        self.template = get_template(cfg.llm.chat_template).name
        self.image_token_id = image_token_id(tokenizer)
        self.llm_source = llm_source or cfg.llm.name
        self.trained_parts: set[str] = set()  # parts whose weights differ from their pretrained source

    # ------------------------------------------------------------------------------------------- building

    @classmethod
    def from_config(cls, cfg, vision: str = "image", slide_encoder: bool | str | Path = True,
                    llm_name: str | None = None, lora: bool = True) -> VisionLanguageModel:
        """Build from a :class:`pathkit.config.Config`: encoder ``cfg.encoder`` (image) or LongNet ``cfg.longnet``
        (slide; random init, or loaded when ``slide_encoder`` is a checkpoint path; ``slide_encoder=False``
        feeds tile features straight to the connector), connector ``cfg.connector``, LLM ``cfg.llm`` (LoRA when
        ``cfg.llm.lora_r > 0`` and ``lora``).

        Default freeze state: vision and LLM weights frozen; connector, slide encoder and LoRA trainable."""
        llm_name = llm_name or cfg.llm.name
        llm, tokenizer = load_llm(llm_name)
        hidden = llm.get_input_embeddings().embedding_dim
        tower = preprocess = encoder = None
        if vision == "image":
            tower, preprocess, _ = load_encoder(cfg.encoder.name)
            in_dim = tower.token_dim
        elif vision == "slide":
            if slide_encoder:
                if isinstance(slide_encoder, (str, Path)):  # e.g. WSI-LLaVA stage 1's contrastive slide encoder
                    encoder = LongNetEncoder.from_pretrained(slide_encoder)
                    cfg = cfg.replace(longnet=encoder.cfg)
                else:
                    encoder = LongNetEncoder(cfg.longnet)
                in_dim = cfg.longnet.dim
            else:
                in_dim = cfg.longnet.in_dim
        else:
            raise PathkitError(f"vision={vision!r}: must be image or slide")
        connector = build_connector(cfg.connector, in_dim, hidden)
        if vision == "image" and cfg.connector.type == "mlp2x_gelu":
            if is_hf_llava_dir(cfg.encoder.name):  # an HF LLaVA folder brings its trained projector along
                connector.load_state_dict(llava_projector_state(cfg.encoder.name))
        model = cls(cfg, llm, tokenizer, connector, vision=vision, vision_tower=tower, preprocess=preprocess,
                    slide_encoder=encoder, llm_source=str(llm_name))
        if lora and cfg.llm.lora_r > 0:
            model.add_lora()
        model.apply_freeze({"vision": True, "llm": True, "connector": False, "slide_encoder": False,
                            "lora": False})
        model.trained_parts = {p for p in ("connector", "slide_encoder") if model.part_parameters(p)}
        return model

    def add_lora(self) -> None:
        """Wrap the LLM with peft LoRA adapters (rank, alpha, dropout, target modules from ``cfg.llm``)."""
        from peft import LoraConfig, get_peft_model

        c = self.cfg.llm
        config = LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
                            target_modules=list(c.lora_targets), task_type="CAUSAL_LM")
        with warnings.catch_warnings():  # peft calls a transformers method renamed in 5.x
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            self.llm = get_peft_model(self.llm, config)

    @property
    def has_lora(self) -> bool:
        return _has_lora(self.llm)

    def merge_lora(self) -> None:
        """Fold the LoRA adapters into the LLM weights (logits unchanged); the LLM is then saved whole."""
        if not self.has_lora:
            return
        self.llm = self.llm.merge_and_unload()
        self.trained_parts.add("llm")
        self.trained_parts.discard("lora")

    def enable_gradient_checkpointing(self) -> None:
        """Recompute LLM activations in backward (non-reentrant, so frozen embeddings are fine)."""
        options = {"use_reentrant": False}
        if hasattr(self.llm, "activation_checkpointing_enable"):  # the newer transformers name
            self.llm.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
        else:
            self.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
        if self.slide_encoder is not None and hasattr(self.slide_encoder, "gradient_checkpointing"):
            self.slide_encoder.gradient_checkpointing = True
        self.llm.config.use_cache = False

    # ------------------------------------------------------------------------------------------- freezing

    def _part_of(self, name: str) -> str:
        if name.startswith("vision_tower."):
            return "vision"
        if name.startswith("slide_encoder."):
            return "slide_encoder"
        if name.startswith("connector."):
            return "connector"
        return "lora" if "lora_" in name else "llm"

    def part_parameters(self, part: str) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) pairs of one part: vision, slide_encoder, connector, llm or lora."""
        if part not in PARTS:
            raise PathkitError(f"model part {part!r}: must be one of {PARTS}")
        return [(n, p) for n, p in self.named_parameters() if self._part_of(n) == part]

    def apply_freeze(self, policy: dict[str, bool]) -> None:
        """Freeze (True) or train (False) each named part; parts not named keep their state.

        Example, LLaVA stage 1: ``{"vision": True, "llm": True, "connector": False}``."""
        for part, frozen in policy.items():
            for _, param in self.part_parameters(part):
                param.requires_grad_(not frozen)
            if not frozen and self.part_parameters(part):
                self.trained_parts.add(part)

    def trainable_parts(self) -> list[str]:
        """Parts with at least one trainable parameter."""
        return [p for p in PARTS if any(q.requires_grad for _, q in self.part_parameters(p))]

    def param_groups(self, lrs: dict[str, float], weight_decay: float = 0.0) -> list[dict[str, Any]]:
        """Optimizer groups, one per trainable part, with ``lrs[part]`` (else ``lrs["default"]``, else the
        optimizer's lr). Example: ``{"connector": 2e-5, "lora": 2e-4}`` (LLaVA LoRA's projector lr)."""
        unknown = sorted(set(lrs) - set(PARTS) - {"default"})
        if unknown:
            raise PathkitError(f"param_groups: unknown part(s) {unknown}; parts are {PARTS} and 'default'")
        groups = []
        for part in PARTS:
            params = [p for _, p in self.part_parameters(part) if p.requires_grad]
            if not params:
                continue
            group: dict[str, Any] = {"params": params, "name": part, "weight_decay": weight_decay}
            lr = lrs.get(part, lrs.get("default"))
            if lr is not None:
                group["lr"] = lr
            groups.append(group)
        return groups

    # ------------------------------------------------------------------------------------------- vision

    def prepare_images(self, images: list[Any]) -> torch.Tensor | list[torch.Tensor]:
        """Pixels for :meth:`forward` from PIL images / uint8 arrays: (B, 3, S, S), or for the scale-invariant
        connector a list of (1 + tiles, 3, S, S) per image (global view first)."""
        if self.preprocess is None:
            raise PathkitError("prepare_images: this model has no image encoder (vision='slide')")
        if getattr(self.connector, "needs_tiles", False):
            c = self.cfg.connector
            return [self.preprocess(tile_image(im, c.tile_size, max_tiles=c.max_tiles)[0]) for im in images]
        return self.preprocess(list(images))

    def _tower_grad(self) -> bool:
        return torch.is_grad_enabled() and any(p.requires_grad for p in self.vision_tower.parameters())

    def encode_images(self, images) -> list[torch.Tensor]:
        """Visual tokens per image, each (T', H). ``images``: (B, 3, S, S); a list of (3, S, S) or (K, 3, S, S)
        (K images); for the scale-invariant connector a list of (1 + tiles, 3, S, S) or a (B, V, 3, S, S)."""
        if self.vision_tower is None:
            raise PathkitError("images given, but this model has no image encoder (vision='slide')")
        e = self.cfg.encoder
        device = next(self.connector.parameters(), torch.empty(0)).device
        tiled = getattr(self.connector, "needs_tiles", False)
        if isinstance(images, torch.Tensor):
            if tiled and images.dim() == 5:
                images = list(images)
            elif not tiled and images.dim() == 4:
                images = [images]
            else:
                raise PathkitError(f"images: unexpected shape {tuple(images.shape)} for connector "
                                   f"{self.cfg.connector.type!r}")
        groups = [im.unsqueeze(0) if im.dim() == 3 else im for im in images]
        tower_dtype = next(self.vision_tower.parameters()).dtype
        pixels = torch.cat(groups).to(device=device, dtype=tower_dtype)  # (sum of views, 3, S, S)
        with torch.set_grad_enabled(self._tower_grad()):
            tokens = self.vision_tower.forward_tokens(pixels, select_layer=e.select_layer,
                                                      select_feature=e.select_feature)  # (N, T, D)
        if tiled:
            views = list(torch.split(tokens, [g.shape[0] for g in groups]))
            return list(self.connector.forward_views(views))  # each (Q, H)
        return list(self.connector(tokens))  # each (T', H)

    def encode_slides(self, slide_features: list[torch.Tensor],
                      slide_coords: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Visual tokens per slide, each (T', H), from tile features (N_i, D) and coords (N_i, 2).

        An item of ``slide_features`` may also be a ``(features, coords)`` pair or a dict with those keys."""
        device = next(self.connector.parameters(), torch.empty(0)).device
        out = []
        for i, feats in enumerate(slide_features):
            coords_i = slide_coords[i] if slide_coords is not None else None
            if isinstance(feats, dict):  # {"features", "coords"} as read from a feature file
                feats, coords_i = feats["features"], feats.get("coords", coords_i)
            elif isinstance(feats, (tuple, list)):  # (features, coords)
                feats, coords_i = feats
            dtype = next(self.connector.parameters(), torch.empty(0)).dtype
            if self.slide_encoder is not None:
                dtype = next(self.slide_encoder.parameters()).dtype
            feats = torch.as_tensor(feats, device=device).to(dtype)
            if feats.dim() != 2:
                raise PathkitError(f"slide_features[{i}]: expected (N, D), got {tuple(feats.shape)}")
            x = feats.unsqueeze(0)  # (1, N, D)
            if self.slide_encoder is not None:
                if coords_i is None:
                    raise PathkitError(f"slide_coords[{i}]: required by the LongNet slide encoder (pass "
                                       "slide_coords, or (features, coords) pairs as slide_features)")
                expected = self.cfg.longnet.in_dim
                if feats.shape[1] != expected:
                    raise PathkitError(f"slide_features[{i}]: feature dim {feats.shape[1]} != longnet.in_dim "
                                       f"{expected}")
                coords = torch.as_tensor(coords_i, device=device).unsqueeze(0)  # (1, N, 2) level-0 pixels
                x = self.slide_encoder(x, coords)  # (1, N + 1, D')
            out.append(self.connector(x)[0])  # (T', H)
        return out

    # ------------------------------------------------------------------------------------------- splicing

    def visual_tokens(self, images=None, slide_features=None, slide_coords=None) -> list[torch.Tensor]:
        feats: list[torch.Tensor] = []
        if images is not None:
            feats += self.encode_images(images)
        if slide_features is not None:
            feats += self.encode_slides(slide_features, slide_coords)
        return feats

    def visual_token_count(self, tiles: int | None = None) -> int:
        """Positions one image (``tiles=None``), or one slide of ``tiles`` tile features, takes in the LLM's sequence
        once spliced in: the encoder's tokens (patch tokens, + CLS with ``cls_patch``; a slide's tiles, + LongNet's
        CLS), at most the connector's ``num_tokens`` when it pools (WSI-LLaVA's pool, PA-LLaVA's queries)."""
        if tiles is None:
            if self.vision_tower is None:
                raise PathkitError("visual_token_count: this model has no image encoder (vision='slide')")
            count = self.vision_tower.num_tokens + int(self.cfg.encoder.select_feature == "cls_patch")
        else:
            count = tiles + int(self.slide_encoder is not None)
        pooled = getattr(self.connector, "num_tokens", None)
        return min(pooled, count) if pooled else count

    def _check_image_count(self, input_ids: torch.Tensor, keep: torch.Tensor, features: list[torch.Tensor]):
        n_tokens = int((input_ids[keep] == self.image_token_id).sum())
        if n_tokens != len(features):
            raise PathkitError(f"number of {IMAGE_TOKEN} tokens in input_ids ({n_tokens}) does not match the "
                               f"number of images ({len(features)})")

    def splice(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor | None,
               features: list[torch.Tensor], padding_side: str = "right", max_length: int | None = None):
        """Replace every ``<image>`` id by its visual tokens -> (embeds, attention_mask, labels, position_ids).

        Rows are re-packed (padding removed, images expanded, padding put back on ``padding_side``, rows cut to
        ``max_length``), so inputs may be padded on either side. Images are taken in row-major order of their
        ``<image>`` ids. Vectorised (no loop over rows); :meth:`splice_reference` is the same as a loop."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        keep = attention_mask.bool()
        self._check_image_count(input_ids, keep, features)
        device = input_ids.device
        text_embeds = self.llm.get_input_embeddings()(input_ids)  # (B, L, H)
        batch, hidden = input_ids.shape[0], text_embeds.shape[-1]
        is_image = (input_ids == self.image_token_id) & keep  # (B, L)
        feat_lens = torch.tensor([f.shape[0] for f in features], dtype=torch.long, device=device)  # (I,)
        span = keep.long()  # output positions each input token takes: 1, T_i for an image, 0 for padding
        span[is_image] = feat_lens
        start = span.cumsum(1) - span  # (B, L) first output position of each input token
        lengths = span.sum(1)  # (B,)
        if max_length is not None:
            lengths = lengths.clamp(max=max_length)
        longest = int(lengths.max())
        offset = (longest - lengths) if padding_side == "left" else torch.zeros_like(lengths)  # (B,)
        embeds = text_embeds.new_zeros(batch, longest, hidden)
        out_labels = input_ids.new_full((batch, longest), IGNORE_INDEX) if labels is not None else None
        # text tokens
        tb, tl = (keep & ~is_image).nonzero(as_tuple=True)
        pos = start[tb, tl]
        fits = pos < lengths[tb]
        tb, tl, pos = tb[fits], tl[fits], pos[fits] + offset[tb[fits]]
        embeds[tb, pos] = text_embeds[tb, tl]
        if out_labels is not None:
            out_labels[tb, pos] = labels[tb, tl]
        # visual tokens (labels stay IGNORE_INDEX)
        if features:
            ib, il = is_image.nonzero(as_tuple=True)  # (I,) row-major = the order of ``features``
            visual = torch.cat(features).to(text_embeds.dtype)  # (sum T_i, H)
            rows = ib.repeat_interleave(feat_lens)
            first = (feat_lens.cumsum(0) - feat_lens).repeat_interleave(feat_lens)
            pos = start[ib, il].repeat_interleave(feat_lens) + torch.arange(visual.shape[0], device=device) - first
            fits = pos < lengths[rows]
            embeds[rows[fits], pos[fits] + offset[rows[fits]]] = visual[fits]
        columns = torch.arange(longest, device=device)[None]
        mask = ((columns >= offset[:, None]) & (columns < (offset + lengths)[:, None])).to(attention_mask.dtype)
        position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
        return embeds, mask, out_labels, position_ids

    def splice_reference(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor | None,
               features: list[torch.Tensor], padding_side: str = "right", max_length: int | None = None):
        """:meth:`splice` written as a loop over rows and images (the test oracle of the vectorised one)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        keep = attention_mask.bool()
        self._check_image_count(input_ids, keep, features)
        text_embeds = self.llm.get_input_embeddings()(input_ids)  # (B, L, H)
        rows, row_labels = [], []
        k = 0
        for b in range(input_ids.shape[0]):
            ids, emb = input_ids[b][keep[b]], text_embeds[b][keep[b]]
            lab = labels[b][keep[b]] if labels is not None else None
            parts, lab_parts, start = [], [], 0
            for pos in (ids == self.image_token_id).nonzero().flatten().tolist():
                feat = features[k].to(emb.dtype)
                k += 1
                parts += [emb[start:pos], feat]
                if lab is not None:
                    lab_parts += [lab[start:pos], lab.new_full((feat.shape[0],), IGNORE_INDEX)]
                start = pos + 1
            parts.append(emb[start:])
            rows.append(torch.cat(parts)[:max_length])
            if lab is not None:
                lab_parts.append(lab[start:])
                row_labels.append(torch.cat(lab_parts)[:max_length])
        longest = max(r.shape[0] for r in rows)
        batch, hidden = len(rows), text_embeds.shape[-1]
        embeds = text_embeds.new_zeros(batch, longest, hidden)
        mask = attention_mask.new_zeros(batch, longest)
        out_labels = input_ids.new_full((batch, longest), IGNORE_INDEX) if labels is not None else None
        for b, row in enumerate(rows):
            n = row.shape[0]
            span = slice(longest - n, longest) if padding_side == "left" else slice(0, n)
            embeds[b, span] = row
            mask[b, span] = 1
            if out_labels is not None:
                out_labels[b, span] = row_labels[b]
        position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
        return embeds, mask, out_labels, position_ids

    # ------------------------------------------------------------------------------------------- forward

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, images=None, slide_features=None, slide_coords=None,
                **kwargs):
        """Logits (and the mean loss over supervised tokens when ``labels`` is given) -> CausalLMOutput."""
        return self.forward_with_labels(input_ids, attention_mask, labels, images, slide_features, slide_coords,
                                        **kwargs)[0]

    def forward_with_labels(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                            labels: torch.Tensor | None = None, images=None, slide_features=None,
                            slide_coords=None, **kwargs):
        """``forward``, also returning the labels aligned with the logits (visual tokens spliced in as -100)."""
        features = self.visual_tokens(images, slide_features, slide_coords)
        embeds, mask, labels, position_ids = self.splice(input_ids, attention_mask, labels, features,
                                                         max_length=self.cfg.llm.max_length)
        self.last_tokens_seen = int(mask.sum()) if mask is not None else int(embeds.shape[0] * embeds.shape[1])
        out = self.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, labels=labels,
                       use_cache=False, **kwargs)
        return out, labels

    def stop_token_ids(self) -> list[int]:
        """EOS plus the template's stop strings that are one token (Llama-3's ``<|eot_id|>``, plain's newline)."""
        ids = [self.tokenizer.eos_token_id]
        for stop in get_template(self.template).stop_strings:  # e.g. "<|eot_id|>", plain's "\n"
            encoded = self.tokenizer(stop, add_special_tokens=False)["input_ids"]
            if len(encoded) == 1:
                ids.append(encoded[0])
        return [int(i) for i in dict.fromkeys(ids) if i is not None]

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, images=None,
                 slide_features=None, slide_coords=None, max_new_tokens: int = 32, **kwargs) -> torch.Tensor:
        """Greedy (by default) generation with the KV cache; returns only the new token ids (B, T_new)."""
        features = self.visual_tokens(images, slide_features, slide_coords)
        embeds, mask, _, _ = self.splice(input_ids, attention_mask, None, features, padding_side="left")
        kwargs.setdefault("do_sample", False)
        return self.llm.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 eos_token_id=self.stop_token_ids(), pad_token_id=self.tokenizer.pad_token_id,
                                 **kwargs)

    @torch.no_grad()
    def generate_reference(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                           images=None, slide_features=None, slide_coords=None,
                           max_new_tokens: int = 32) -> torch.Tensor:
        """Greedy decoding without a KV cache (the whole sequence is re-run each step): the test oracle."""
        features = self.visual_tokens(images, slide_features, slide_coords)
        embeds, mask, _, _ = self.splice(input_ids, attention_mask, None, features, padding_side="left")
        stops = torch.tensor(self.stop_token_ids(), device=embeds.device)
        pad = self.tokenizer.pad_token_id
        done = torch.zeros(embeds.shape[0], dtype=torch.bool, device=embeds.device)
        out = []
        for _ in range(max_new_tokens):
            position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
            logits = self.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids,
                              use_cache=False).logits[:, -1]
            token = logits.argmax(-1)
            token = torch.where(done, torch.full_like(token, pad), token)
            out.append(token)
            done |= torch.isin(token, stops)
            embeds = torch.cat([embeds, self.llm.get_input_embeddings()(token)[:, None]], dim=1)
            mask = torch.cat([mask, (~done | torch.isin(token, stops)).long()[:, None]], dim=1)
            if done.all():
                break
        return torch.stack(out, dim=1)

    def _batch_prompts(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        longest = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), longest), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, longest - len(p):] = torch.tensor(p)
            mask[i, longest - len(p):] = 1
        return ids, mask

    @torch.no_grad()
    def answer(self, questions: list[str], images: list[Any] | None = None, slide_features=None,
               slide_coords=None, max_new_tokens: int = 32, batch_size: int = 16) -> list[str]:
        """Greedy answers to ``questions`` (one image or slide each, or none), in batches.

        ``images``: PIL images / uint8 arrays (preprocessed here) or tensors as :meth:`forward` takes them.
        ``<image>\\n`` is put in front of a question that has an image and no placeholder yet."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        has_visual = images is not None or slide_features is not None
        answers: list[str] = []
        for start in range(0, len(questions), batch_size):
            chunk = slice(start, start + batch_size)
            prompts = []
            for q in questions[chunk]:
                if has_visual and IMAGE_TOKEN not in q:
                    q = f"{IMAGE_TOKEN}\n{q}"
                prompts.append(tokenize_prompt(q, self.tokenizer, self.template))
            ids, mask = self._batch_prompts(prompts)
            batch_images = batch_feats = batch_coords = None
            if images is not None:
                batch_images = list(images[chunk])
                if not isinstance(batch_images[0], torch.Tensor):
                    batch_images = self.prepare_images(batch_images)
            if slide_features is not None:
                batch_feats = list(slide_features[chunk])
                batch_coords = list(slide_coords[chunk]) if slide_coords is not None else None
            new = self.generate(ids.to(device), mask.to(device), images=batch_images, slide_features=batch_feats,
                                slide_coords=batch_coords, max_new_tokens=max_new_tokens)
            for row in new.tolist():
                text = self.tokenizer.decode(row, skip_special_tokens=True)
                answers.append(clean_answer(text, self.template))
        self.train(was_training)
        return answers

    # ------------------------------------------------------------------------------------------- save / load

    def save_pretrained(self, directory: str | Path, merge: bool = False) -> Path:
        """Save to a folder: config, the weights that are not frozen pretrained ones, LoRA adapters apart.

        ``merge=True`` folds LoRA into a copy of the LLM and saves that LLM whole (this model is unchanged)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        tmp = directory.with_name(f".{directory.name}.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        lora = self.has_lora
        save_llm = "llm" in self.trained_parts or (merge and lora)
        if save_llm:
            llm = self.llm
            if lora:  # a copy, so this model keeps its adapters
                llm = copy.deepcopy(self.llm)
                llm = llm.merge_and_unload() if merge else llm.unload()
            llm.save_pretrained(str(tmp / "llm"))
            self.tokenizer.save_pretrained(str(tmp / "llm"))
        if lora and not merge:
            self.llm.save_pretrained(str(tmp / "adapter"))
        small = [p for p in ("vision", "slide_encoder", "connector") if p in self.trained_parts]
        state = {n: p.detach().contiguous().cpu() for part in small for n, p in self.part_parameters(part)}
        buffers = {n: b.detach().contiguous().cpu() for n, b in self.named_buffers()
                   if self._part_of(n) in small}
        save_file({**state, **buffers}, str(tmp / WEIGHTS_FILE))
        self.cfg.to_yaml(tmp / "config.yaml")
        meta = {
            "format": "pathkit-vlm", "version": 1, "vision": self.vision,
            "slide_encoder": self.slide_encoder is not None, "template": self.template,
            "llm": "llm" if save_llm else self.llm_source, "lora": lora and not merge,
            "saved_parts": small, "trained_parts": sorted(self.trained_parts - ({"lora"} if merge else set())),
            "trainable_parts": self.trainable_parts(),
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "cpu") -> VisionLanguageModel:
        """Load a folder written by :meth:`save_pretrained`, or an HF LLaVA folder (:meth:`from_hf_llava`)."""
        from safetensors.torch import load_file

        directory = Path(directory)
        meta_path = directory / META_FILE
        if not meta_path.exists():
            if is_hf_llava_dir(directory):
                return cls.from_hf_llava(directory, device=device)
            raise PathkitError(f"{directory}: not a pathkit model folder (no {META_FILE}) nor an HF LLaVA folder "
                               "(config.json with model_type 'llava')")
        meta = json.loads(meta_path.read_text())
        cfg = Config.from_yaml(directory / "config.yaml")
        llm_name = str(directory / "llm") if meta["llm"] == "llm" else meta["llm"]
        model = cls.from_config(cfg, vision=meta["vision"], slide_encoder=meta["slide_encoder"],
                                llm_name=llm_name, lora=False)
        if meta["lora"]:
            from peft import PeftModel

            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                model.llm = PeftModel.from_pretrained(model.llm, str(directory / "adapter"), is_trainable=True)
        if not (directory / WEIGHTS_FILE).exists():
            raise PathkitError(f"{directory / WEIGHTS_FILE}: file not found")
        state = load_file(str(directory / WEIGHTS_FILE))
        result = model.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            raise PathkitError(f"{directory / WEIGHTS_FILE}: unexpected weights {result.unexpected_keys[:3]}")
        model.trained_parts = set(meta["trained_parts"])
        trainable = set(meta.get("trainable_parts", []))
        model.apply_freeze({p: p not in trainable for p in PARTS})
        model.trained_parts = set(meta["trained_parts"])
        model.llm_source = meta["llm"] if meta["llm"] != "llm" else llm_name
        return model.to(device)

    @classmethod
    def from_hf_llava(cls, directory: str | Path, device: str = "cpu", base_cfg=None) -> VisionLanguageModel:
        """Load an HF LLaVA folder (``LlavaForConditionalGeneration`` + processor files), e.g. a llava-hf
        checkpoint or pathkit's own export: its vision tower, projector and LLM, frozen as a fresh model is.

        ``base_cfg``: the pathkit config whose other sections (training, data) it keeps (default: ``tiny``)."""
        cfg = pathkit_config_for_llava(directory, base_cfg)
        return cls.from_config(cfg, vision="image", lora=False).to(device)
