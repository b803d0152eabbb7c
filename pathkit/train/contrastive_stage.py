"""A recipe's contrastive stage (PA-LLaVA's pathology CLIP, WSI-LLaVA's WSI-text alignment) run through
:func:`pathkit.train.contrastive.train_clip`, with the stage's data, optimiser settings, epochs and freeze policy.

Output: ``stage_dir/model`` (``PathologyCLIP.save_pretrained``: ``image_encoder/`` that ``load_encoder`` reads, or
``slide_encoder.pt`` for slides), which later VLM stages load through their ``init_from``; ``stage_dir/metrics.json``
(retrieval R@1 and zero-shot accuracy before/after); ``stage_dir/stage_summary.json``;
``stage_dir/checkpoints/last.ckpt`` every ``checkpoint_every`` optimiser steps, from which a restarted stage
continues mid-epoch (``resume=True``) with the losses the uninterrupted run would have had.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pathkit.io import read_jsonl, write_json
from pathkit.train.contrastive import train_clip
from pathkit.train.recipes import Recipe, Stage


def clip_settings(stage: Stage) -> dict[str, Any]:
    """The stage's optimiser settings as :func:`~pathkit.train.contrastive.train_clip` takes them."""
    return {"epochs": stage.epochs, "batch_size": stage.batch_size, "lr": stage.lr,
            "weight_decay": stage.weight_decay, "betas": tuple(stage.betas), "warmup_ratio": stage.warmup_ratio,
            "min_lr": stage.min_lr, "grad_accum": stage.grad_accum, "grad_clip": stage.grad_clip,
            "max_steps": stage.max_steps}


def run_contrastive_stage(recipe: Recipe, stage: Stage, cfg, records: list[dict[str, Any]], stage_dir: Path,
                          resume: bool = True,
                          progress: bool = False, checkpoint_every: int = 20, stop_after_steps: int | None = None,
                          heldout: list[dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """Train the stage on ``records`` (its ``pairs`` view: image or slide feature file, and the text), continuing
    from ``stage_dir/checkpoints/last.ckpt`` when ``resume``; returns the stage summary, or None when
    ``stop_after_steps`` stopped it early (the runner's contract for an interrupted stage). Retrieval and
    zero-shot scores (``label`` of the records) are measured on ``heldout`` (default: the training pairs)."""
    source = "slides" if recipe.vision == "slide" else "tiles"
    if source == "slides":
        vision = "longnet" if stage.trainable.get("slide_encoder") else "mean"
    else:
        vision = "image"
    freeze = [tower for tower, part in (("image", "vision" if source == "tiles" else "slide_encoder"),
                                         ("text", "text")) if not stage.trainable.get(part, False)]
    if stage.max_length:
        cfg = cfg.override({"text_encoder.max_length": stage.max_length})
    metrics = train_clip(cfg, stage_dir, records, source=source, heldout_pairs=heldout, vision=vision,
                         **clip_settings(stage), freeze=freeze, seed=cfg.seed, progress=progress, resume=resume,
                         checkpoint_every=checkpoint_every, stop_after_steps=stop_after_steps)
    if metrics.get("interrupted"):
        return None
    losses = read_jsonl(stage_dir / "losses.jsonl") if (stage_dir / "losses.jsonl").exists() else []
    before, after = metrics.get("before", {}), metrics.get("after", {})
    summary = {
        "stage": stage.name, "kind": stage.kind, "trainable": stage.trainable_parts, "steps": metrics.get("steps"),
        "first_train_loss": losses[0].get("loss") if losses else None,
        "final_train_loss": metrics.get("final_loss"), "samples_per_s": metrics.get("samples_per_s"),
        "seconds": round(float(metrics.get("seconds", 0.0)), 2), "vision": vision,
        "retrieval_before": before, "retrieval_after": after, "resumed_from": metrics.get("resumed_from"),
    }
    write_json(stage_dir / "stage_summary.json", summary)
    return summary
