"""Contrastive pre-training of :class:`pathkit.models.clip.PathologyCLIP` with Lightning.

PA-LLaVA stage 1 (its pathology CLIP) trains on image-caption pairs; WSI-LLaVA stage 1 aligns a slide encoder with
reports. Both are :func:`train_clip`:

    from pathkit.train.contrastive import train_clip
    summary = train_clip(cfg, out_dir, pairs)                   # image tower cfg.encoder, pairs: LLaVA records
    summary = train_clip(cfg, out_dir, pairs, source="slides")  # LongNet over slide feature files
    pairs, heldout = pathkit.workdir.clip_pairs(cfg, workdir)    # the tutorial's synthetic pairs

``train_clip`` writes ``out_dir/model/`` (:meth:`PathologyCLIP.save_pretrained`: ``image_encoder/`` loadable by
``load_encoder``, or ``slide_encoder/`` + ``slide_encoder.pt`` for slides; ``text_encoder/``; heads),
``out_dir/losses.jsonl`` (one row per optimiser step), ``out_dir/logs/`` (Lightning CSV logs),
``out_dir/checkpoints/last.ckpt`` (every ``checkpoint_every`` optimiser steps and at the end, renamed into place:
``train_clip(..., resume=True)`` continues mid-epoch from it with the uninterrupted run's next loss) and, last,
``out_dir/metrics.json`` (held-out retrieval R@1/R@5 and zero-shot accuracy before and after training,
samples/s). A folder with ``metrics.json`` is complete.

Pieces, usable on their own: :class:`TileCaptionDataset` (A's synthetic tiles: ``metadata.jsonl`` rows with
``image``, ``caption``, ``label``), :class:`SlideReportDataset` (C's HDF5 features + the slide's report),
:class:`PairBatchSampler` (seeded per epoch, resumable), :class:`PairDataModule`, :class:`ContrastiveModule`
(loss, AdamW, cosine schedule with warm-up, logging of loss parts, temperature, ITM accuracy and samples/s,
RNG and loss history in checkpoints), :class:`LastCheckpoint` and :func:`evaluate_clip`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from pathkit.io import PathkitError, read_json, read_jsonl, write_json, write_jsonl
from pathkit.models.clip import PathologyCLIP, build_clip, retrieval_metrics
from pathkit.train.checkpointing import LastCheckpoint
from pathkit.train.data import ConsumedBatches, LengthGroupedBatchSampler, ResumableDataLoader, coords_or_grid
from pathkit.train.schedule import cosine_with_warmup, optimizer_steps, warmup_steps_for
from pathkit.train.vlm_module import _get_rng_state, _set_rng_state
from pathkit.wsi.features import read_features

# ------------------------------------------------------------------------------------------------------- data


def tile_class_prompts(classes: Sequence[str]) -> dict[str, list[str]]:
    """Zero-shot prompts per tissue class (prompt ensembling, as CLIP does)."""
    templates = ("an H&E image of {}.", "a histopathology image showing {}.", "a tissue tile of {}.")
    return {c: [t.format(c) for t in templates] for c in classes}


def slide_class_prompts(diagnoses: Sequence[str]) -> dict[str, list[str]]:
    """Zero-shot prompts per slide diagnosis."""
    templates = ("a whole-slide image of {}.", "the diagnosis is {}.", "histopathology consistent with {}.")
    return {d: [t.format(d) for t in templates] for d in diagnoses}


class TileCaptionDataset(Dataset):
    """Image-caption pairs from a synthetic tile folder: items ``{"pixel_values", "text", "label"}``.

    Preprocessed tiles are kept in memory after the first read (small datasets; ``num_workers=0``).
    """

    def __init__(self, rows: list[dict[str, Any]], root: str | Path, preprocess, cache: bool = True):
        self.rows, self.root, self.preprocess, self.cache = rows, Path(root), preprocess, cache
        self._cache: dict[int, torch.Tensor] = {}
        for i, row in enumerate(rows):
            for key in ("image", "caption", "label"):
                if key not in row:
                    raise PathkitError(f"{self.root}/metadata.jsonl:{i + 1}: missing field {key!r}")

    @classmethod
    def from_folder(cls, root: str | Path, preprocess, split: str | None = "train") -> TileCaptionDataset:
        """The pairs of a tile folder's ``metadata.jsonl`` (one split, or all)."""
        rows = [r for r in read_jsonl(Path(root) / "metadata.jsonl") if split is None or r.get("split") == split]
        return cls(rows, root, preprocess)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        pixels = self._cache.get(index)
        if pixels is None:
            path = self.root / row["image"]
            try:
                with Image.open(path) as im:
                    arr = self.preprocess.to_array(im.convert("RGB"))  # (S, S, 3) float32
            except (FileNotFoundError, OSError) as err:
                raise PathkitError(f"{path}: cannot read image ({type(err).__name__})") from err
            pixels = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
            if self.cache:
                self._cache[index] = pixels
        return {"pixel_values": pixels, "text": row["caption"], "label": row["label"]}


def collate_tiles(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"images": torch.stack([it["pixel_values"] for it in items]),
            "texts": [it["text"] for it in items], "labels": [it["label"] for it in items]}


class SlideReportDataset(Dataset):
    """Slide-report pairs: items ``{"features" (N, D), "coords" (N, 2), "text", "label"}``.

    ``records``: dicts with ``features`` (an HDF5 feature file, DESIGN.md contract), ``report`` and
    ``diagnosis`` (as :func:`pathkit.workdir.ensure_wsi_features` or :func:`slide_report_records` return them).
    """

    def __init__(self, records: list[dict[str, Any]]):
        for i, rec in enumerate(records):
            for key in ("features", "report", "diagnosis"):
                if key not in rec:
                    raise PathkitError(f"slide record {i}: missing field {key!r}")
        self.records = records
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        if index not in self._cache:
            coords, feats, attrs = read_features(rec["features"])
            if feats is None:
                raise PathkitError(f"{rec['features']}: no 'features' dataset (a coords-only file)")
            coords = coords_or_grid(coords, len(feats), attrs)
            self._cache[index] = (torch.as_tensor(np.asarray(feats), dtype=torch.float32),
                                  torch.from_numpy(coords).float())
        feats, coords = self._cache[index]
        return {"features": feats, "coords": coords, "text": rec["report"], "label": rec["diagnosis"]}


def slide_report_records(feature_dir: str | Path, slide_dir: str | Path) -> list[dict[str, Any]]:
    """Pair every ``feature_dir/<stem>.h5`` with ``slide_dir/<stem>.truth.json`` (its ``report`` and
    ``diagnosis``) -> records for :class:`SlideReportDataset`. A missing or incomplete truth file is a one-line
    PathkitError naming it."""
    feature_dir, slide_dir = Path(feature_dir), Path(slide_dir)
    records = []
    for h5 in sorted(feature_dir.glob("*.h5")):
        truth = slide_dir / f"{h5.stem}.truth.json"
        if not truth.is_file():
            raise PathkitError(f"{truth}: no truth file for {h5.name} (needed for its report)")
        data = read_json(truth)
        for key in ("report", "diagnosis"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise PathkitError(f"{truth}: missing field {key!r}")
        records.append({"features": str(h5), "report": data["report"], "diagnosis": data["diagnosis"],
                        "truth": str(truth)})
    if not records:
        raise PathkitError(f"{feature_dir}: no .h5 feature files")
    return records


def collate_slides(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"images": {"features": [it["features"] for it in items], "coords": [it["coords"] for it in items]},
            "texts": [it["text"] for it in items], "labels": [it["label"] for it in items]}


class PairBatchSampler(LengthGroupedBatchSampler):
    """Shuffled batches of pairs, seeded per epoch and resumable mid-epoch (the VLM sampler without length grouping).

    Each epoch: a permutation from ``numpy.random.default_rng(seed + epoch)`` cut into batches of ``batch_size``;
    the last incomplete batch is dropped when the set holds a full batch (a contrastive batch of one teaches
    nothing); with several ranks batch ``k * world_size + rank`` goes to ``rank`` and every rank gets as many.
    ``state_dict()`` / ``load_state_dict()`` (``{"epoch", "consumed"}``, kept by
    :class:`pathkit.train.data.ConsumedBatches`) let a resumed run continue with the very next batch.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1):
        super().__init__([0] * int(n), batch_size, seed=seed, shuffle=shuffle, rank=rank, world_size=world_size,
                         group=1)

    def _global_batches(self) -> list[list[int]]:
        n, size = len(self.lengths), self.batch_size
        order = np.random.default_rng(self.seed + self.epoch).permutation(n) if self.shuffle else np.arange(n)
        batches = [order[i:i + size].tolist() for i in range(0, n, size)]
        if n >= size:
            batches = [b for b in batches if len(b) == size]
        if self.world_size > 1:
            batches = batches[: len(batches) // self.world_size * self.world_size]
        return batches

    def __len__(self) -> int:
        return len(self._global_batches()) // self.world_size


class PairDataModule(L.LightningDataModule):
    """Shuffled batches of pairs (:class:`PairBatchSampler`: seeded, sharded over ranks, resumable mid-epoch);
    the last incomplete batch is dropped when the set holds a full batch."""

    def __init__(self, dataset: Dataset, batch_size: int, collate, seed: int = 0, num_workers: int = 0):
        super().__init__()
        self.dataset, self.batch_size, self.collate = dataset, int(batch_size), collate
        self.seed, self.num_workers = seed, num_workers

    def batches_per_epoch(self, world_size: int = 1) -> int:
        return len(PairBatchSampler(len(self.dataset), self.batch_size, world_size=world_size))

    def train_dataloader(self) -> DataLoader:
        rank, world = 0, 1
        if self.trainer is not None:
            rank, world = self.trainer.global_rank, self.trainer.world_size
        sampler = PairBatchSampler(len(self.dataset), self.batch_size, seed=self.seed, rank=rank, world_size=world)
        generator = torch.Generator().manual_seed(self.seed)  # keeps the global RNG untouched (resume)
        return ResumableDataLoader(self.dataset, batch_sampler=sampler, collate_fn=self.collate,
                                   num_workers=self.num_workers, generator=generator,
                                   persistent_workers=self.num_workers > 0)


def positives_from_texts(texts: Sequence[str], device=None) -> torch.Tensor:
    """(B, B) bool: pairs whose texts are identical also match (so a duplicate caption is not a negative)."""
    ids = {t: i for i, t in enumerate(dict.fromkeys(texts))}
    idx = torch.tensor([ids[t] for t in texts], device=device)
    return idx[:, None] == idx[None, :]


# ------------------------------------------------------------------------------------------------------- module


class ContrastiveModule(L.LightningModule):
    """Lightning wrapper of a PathologyCLIP: contrastive + ITM loss, AdamW, linear warm-up then cosine.

    Args:
        model: the PathologyCLIP (kept as a plain nn.Module; not saved into hparams).
        total_steps: optimiser steps of the whole run (schedule length).
        lr, weight_decay, betas, warmup_ratio, min_lr_ratio: optimiser and schedule (decay is not applied to
            biases, norms and the temperature).
        itm_weight: weight of the matching loss (0 = contrastive only).
        freeze: parts to freeze: ``image`` and/or ``text`` towers.
    """

    def __init__(self, model: PathologyCLIP, total_steps: int, lr: float = 1e-3, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.98), warmup_ratio: float = 0.1, min_lr_ratio: float = 0.0,
                 itm_weight: float = 1.0, freeze: Sequence[str] = ()):
        super().__init__()
        self.model = model
        self.save_hyperparameters(ignore=["model"])
        for part in freeze:
            tower = {"image": model.image_tower, "text": model.text_tower}.get(part)
            if tower is None:
                raise PathkitError(f"ContrastiveModule.freeze={list(freeze)!r}: parts are 'image' and 'text'")
            tower.requires_grad_(False)
        self.history: list[dict[str, float]] = []  # one row per optimiser step (kept in checkpoints)
        self.run_key: str | None = None  # settings fingerprint; a checkpoint from other settings is refused
        self._rng_to_restore: dict[str, Any] | None = None
        self._t_last: float | None = None
        self._acc_n = 0
        self.resumed_rows = 0  # history rows that came from a checkpoint (not trained in this run)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._rng_to_restore is not None:  # first batch after a resume: continue the saved random stream

            _set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
        if self._t_last is None:
            self._t_last = time.perf_counter()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        texts = batch["texts"]
        out = self.model(batch["images"], texts, positives_from_texts(texts, self.device),
                         itm_weight=self.hparams.itm_weight)
        n = len(texts)
        logs = {"train/loss": out["loss"], "train/loss_contrastive": out["loss_contrastive"],
                "train/loss_itm": out["loss_itm"], "train/temperature": torch.tensor(self.model.temperature)}
        if "itm_accuracy" in out:
            logs["train/itm_accuracy"] = out["itm_accuracy"]
        self.log_dict(logs, prog_bar=False, batch_size=n)
        self._last = {k.split("/")[1]: float(v.detach()) for k, v in logs.items()}
        self._acc_n += n
        return out["loss"]

    def on_before_optimizer_step(self, optimizer) -> None:
        """Once per optimiser step (before callbacks' ``on_train_batch_end``, so checkpoints hold the row)."""
        now = time.perf_counter()
        sps = self._acc_n / max(now - (self._t_last or now), 1e-9)
        self.log("train/samples_per_s", sps, batch_size=max(1, self._acc_n))
        lr = optimizer.param_groups[0]["lr"]
        self.history.append({"step": int(self.global_step), **getattr(self, "_last", {}),
                             "n": self._acc_n, "samples_per_s": sps, "lr": lr})
        self._acc_n, self._t_last = 0, now

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["pathkit_rng"] = _get_rng_state()
        checkpoint["pathkit_history"] = list(self.history)
        checkpoint["pathkit_run_key"] = self.run_key

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("pathkit_run_key")
        if self.run_key is not None and saved != self.run_key:
            raise PathkitError("contrastive checkpoint: made with other settings (run key "
                               f"{saved!r} != {self.run_key!r}); use a new out_dir or resume=False")
        self._rng_to_restore = checkpoint.get("pathkit_rng")
        self.history = list(checkpoint.get("pathkit_history", []))
        self.resumed_rows = len(self.history)

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            (decay if p.dim() >= 2 and "logit_scale" not in name else no_decay).append(p)
        hp = self.hparams
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": hp.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=hp.lr, betas=tuple(hp.betas))
        total = max(1, int(hp.total_steps))
        warm = warmup_steps_for(total, hp.warmup_ratio)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: cosine_with_warmup(step, total, warm, hp.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


# ------------------------------------------------------------------------------------------------------- eval


@torch.no_grad()
def evaluate_clip(model: PathologyCLIP, dataset: Dataset, collate, class_prompts: dict[str, list[str]],
                  batch_size: int = 64) -> dict[str, Any]:
    """Held-out retrieval (R@1, R@5 both ways; identical captions count as matches) and zero-shot accuracy."""
    was_training = model.training
    model.eval()
    imgs, txts, labels, texts = [], [], [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate):
        imgs.append(model.encode_image(_to_device(batch["images"], _device(model))))
        txts.append(model.encode_text(batch["texts"]))
        labels += batch["labels"]
        texts += batch["texts"]
    img, txt = torch.cat(imgs), torch.cat(txts)
    metrics = retrieval_metrics(img, txt, (1, 5), positives_from_texts(texts, img.device))
    metrics["retrieval_chance_r1"] = 1.0 / len(texts)
    metrics["n"] = len(texts)
    if not class_prompts:  # unlabelled pairs: no zero-shot classes
        model.train(was_training)
        return metrics
    names, cls = model.class_embeddings(class_prompts)
    pred = (img @ cls.t()).argmax(dim=-1).tolist()
    metrics["zero_shot_accuracy"] = float(np.mean([names[p] == y for p, y in zip(pred, labels)]))
    metrics["zero_shot_chance"] = 1.0 / len(names)
    metrics["retrieval_chance_r1"] = 1.0 / len(texts)
    metrics["n"] = len(texts)
    model.train(was_training)
    return metrics


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _to_device(images, device):
    if isinstance(images, dict):
        return {k: [t.to(device) for t in v] for k, v in images.items()}
    return images.to(device)


# ------------------------------------------------------------------------------------------------------- runs


def pairs_data(source: str, pairs: list[dict[str, Any]], preprocess=None,
               heldout_pairs: list[dict[str, Any]] | None = None
               ) -> tuple[Dataset, Dataset, Any, dict[str, list[str]]]:
    """(train set, evaluation set, collate, class prompts) from LLaVA records in their ``pairs`` view (``image``
    an absolute image or slide feature path, the first ``gpt`` turn the text, ``label`` the class when known).
    Without ``heldout_pairs`` retrieval and zero-shot are measured on the training pairs."""
    def dataset(records: list[dict[str, Any]]) -> Dataset:
        texts = [r["conversations"][1]["value"] for r in records]
        if source == "tiles":
            return TileCaptionDataset([{"image": r["image"], "caption": t, "label": str(r.get("label", ""))}
                                       for r, t in zip(records, texts)], Path("/"), preprocess)
        return SlideReportDataset([{"features": r["image"], "report": t, "diagnosis": str(r.get("label", ""))}
                                   for r, t in zip(records, texts)])

    if source not in ("tiles", "slides"):
        raise PathkitError(f"train_clip: source={source!r}: must be tiles or slides")
    everything = pairs + (heldout_pairs or [])
    labels = sorted({str(r["label"]) for r in everything if r.get("label") is not None})
    train = dataset(pairs)
    held = dataset(heldout_pairs) if heldout_pairs else train
    if source == "tiles":
        return train, held, collate_tiles, tile_class_prompts(labels)
    return train, held, collate_slides, slide_class_prompts(labels)


def _run_key(cfg, **settings: Any) -> str:
    """Fingerprint of what a contrastive run trains (config + arguments): a checkpoint resumes only the same run."""
    text = cfg.to_yaml() + json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def clip_trainer(cfg, out_dir: str | Path, *, epochs: int, max_steps: int = -1, grad_accum: int = 1,
                 grad_clip: float = 1.0, checkpoint_every: int = 20, stop_after_steps: int | None = None,
                 progress: bool = False) -> L.Trainer:
    """The Lightning Trainer of :func:`train_clip`: one device, ``grad_accum`` batches per optimiser step,
    gradient norm clipped at ``grad_clip`` (0 = off), ``last.ckpt`` under ``out_dir/checkpoints``."""
    t = cfg.train
    ckpt = Path(out_dir) / "checkpoints" / "last.ckpt"
    return L.Trainer(max_epochs=epochs, max_steps=max_steps, accelerator=t.accelerator, devices=1,
                     precision=t.precision if torch.cuda.is_available() else "32-true",
                     accumulate_grad_batches=grad_accum, gradient_clip_val=grad_clip or None,
                     logger=CSVLogger(out_dir, name="logs"),
                     callbacks=[ConsumedBatches(), LastCheckpoint(ckpt, checkpoint_every, stop_after_steps)],
                     enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False,
                     log_every_n_steps=1, num_sanity_val_steps=0, use_distributed_sampler=False)


def train_clip(cfg, out_dir: str | Path, pairs: list[dict[str, Any]], *, source: str = "tiles",
               heldout_pairs: list[dict[str, Any]] | None = None, vision: str | None = None, epochs: int = 1, batch_size: int = 16, lr: float = 1e-3,
               weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.98), warmup_ratio: float = 0.1,
               min_lr: float = 0.0, grad_accum: int = 1, grad_clip: float = 1.0, max_steps: int = -1,
               itm_weight: float | None = None, freeze: Sequence[str] = (), seed: int | None = None,
               progress: bool = False, evaluate: bool = True, num_threads: int | None = None,
               resume: bool = False, checkpoint_every: int = 20, stop_after_steps: int | None = None
               ) -> dict[str, Any]:
    """Train a PathologyCLIP and save it to ``out_dir/model``; returns the summary written to ``metrics.json``.

    Args:
        cfg: a :class:`pathkit.config.Config` (towers: ``cfg.encoder`` / ``cfg.longnet``, ``cfg.text_encoder``;
            heads: ``cfg.clip``; trainer: ``cfg.train`` accelerator/precision).
        out_dir: output folder (``model/``, ``losses.jsonl``, ``logs/``, ``checkpoints/last.ckpt``,
            ``metrics.json``).
        pairs: LLaVA records in their ``pairs`` view (``image`` an absolute image or slide feature path, the first
            ``gpt`` turn the text, ``label`` the class for zero-shot scores); :func:`pathkit.workdir.clip_pairs`
            gives the tutorial's.
        source: ``tiles`` (image-caption pairs) or ``slides`` (slide features + reports).
        heldout_pairs: where retrieval and zero-shot are measured (default: ``pairs``).
        vision: image tower: ``image`` (default for tiles), ``longnet`` (default for slides) or ``mean``.
        epochs, batch_size, lr, weight_decay, betas, warmup_ratio, min_lr, grad_accum, grad_clip: the optimiser
            settings, as a recipe's contrastive :class:`~pathkit.train.recipes.Stage` carries them
            (:func:`pathkit.train.contrastive_stage.clip_settings` reads them off a stage).
        max_steps: > 0 caps optimiser steps. itm_weight: default ``cfg.clip.itm_weight``.
        freeze: towers to keep frozen (``image``, ``text``).
        seed: default ``cfg.seed``. progress: show Lightning's progress bar.
        evaluate: compute held-out retrieval / zero-shot before and after (the ``metrics.json`` numbers).
        num_threads: torch intra-op threads during this call (restored after). Tiny models run thousands of
            tiny ops; on a busy 2-core machine 1 thread was measured ~15x faster than 2.
        resume: continue from ``out_dir/checkpoints/last.ckpt`` when it exists (model, optimiser, scheduler, step,
            data position mid-epoch, RNG, loss history: the next step's loss equals the uninterrupted run's).
            A checkpoint made with other settings is refused (PathkitError). ``False`` removes a stale one.
        checkpoint_every: optimiser steps between ``last.ckpt`` saves (also saved at the end).
        stop_after_steps: stop after this many optimiser steps (simulates a kill): the checkpoint and
            ``losses.jsonl`` so far are written, no model or ``metrics.json``; the summary says ``interrupted``.
    """
    if num_threads:
        before_threads = torch.get_num_threads()
        torch.set_num_threads(num_threads)
        try:
            return train_clip(cfg, out_dir, pairs, source=source, heldout_pairs=heldout_pairs, vision=vision,
                              epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, betas=betas,
                              warmup_ratio=warmup_ratio, min_lr=min_lr, grad_accum=grad_accum,
                              grad_clip=grad_clip, max_steps=max_steps, itm_weight=itm_weight, freeze=freeze,
                              seed=seed, progress=progress, evaluate=evaluate, resume=resume,
                              checkpoint_every=checkpoint_every, stop_after_steps=stop_after_steps)
        finally:
            torch.set_num_threads(before_threads)
    out_dir = Path(out_dir)
    seed = cfg.seed if seed is None else seed
    L.seed_everything(seed, workers=True, verbose=False)
    vision = vision or ("image" if source == "tiles" else "longnet")
    model = build_clip(cfg, vision=vision)
    train_set, held_set, collate, prompts = pairs_data(source, pairs, model.preprocess, heldout_pairs)
    itm_weight = cfg.clip.itm_weight if itm_weight is None else itm_weight
    betas = (float(betas[0]), float(betas[1]))
    dm = PairDataModule(train_set, batch_size, collate, seed=seed, num_workers=0)
    total = optimizer_steps(dm.batches_per_epoch(), epochs, grad_accum, max_steps)
    module = ContrastiveModule(model, total_steps=total, lr=lr, weight_decay=weight_decay, betas=betas,
                               warmup_ratio=warmup_ratio, min_lr_ratio=min_lr / lr, itm_weight=itm_weight,
                               freeze=freeze)
    module.run_key = _run_key(cfg, source=source, vision=vision, epochs=epochs, batch_size=batch_size, lr=lr,
                              weight_decay=weight_decay, betas=betas, warmup_ratio=warmup_ratio, min_lr=min_lr,
                              grad_accum=grad_accum, grad_clip=grad_clip, max_steps=max_steps,
                              itm_weight=itm_weight, freeze=sorted(freeze), seed=seed, n=len(train_set))
    ckpt = out_dir / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    if not resume:
        ckpt.unlink(missing_ok=True)  # a stale checkpoint must never be resumed into a fresh run
    resume_from = ckpt if ckpt.exists() else None
    before = evaluate_clip(model, held_set, collate, prompts) if evaluate else {}
    trainer = clip_trainer(cfg, out_dir, epochs=epochs, max_steps=max_steps, grad_accum=grad_accum,
                           grad_clip=grad_clip, checkpoint_every=checkpoint_every,
                           stop_after_steps=stop_after_steps, progress=progress)
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=str(resume_from) if resume_from else None)
    seconds = time.perf_counter() - start
    write_jsonl(out_dir / "losses.jsonl", module.history)  # the checkpoint's rows + this run's
    if stop_after_steps is not None and trainer.global_step < total:
        return {"source": source, "vision": vision, "interrupted": True, "steps": int(trainer.global_step),
                "checkpoint": str(ckpt)}
    model = module.model.cpu().eval()
    after = evaluate_clip(model, held_set, collate, prompts) if evaluate else {}
    model.save_pretrained(out_dir / "model")
    seen = sum(h["n"] for h in module.history[module.resumed_rows:])  # samples trained in this call
    summary = {"source": source, "vision": vision, "steps": len(module.history), "epochs": epochs,
               "batch_size": batch_size, "seconds": seconds, "samples_per_s": seen / max(seconds, 1e-9),
               "final_loss": module.history[-1]["loss"] if module.history else None,
               "temperature": model.temperature, "before": before, "after": after,
               "model": str(out_dir / "model"), "resumed_from": str(resume_from) if resume_from else None}
    write_json(out_dir / "metrics.json", summary)
    return summary
