"""``VLMModule``: the thin Lightning wrapper that trains a :class:`~pathkit.models.vlm.VisionLanguageModel` stage.

The model knows nothing of Lightning. This module owns what a stage changes: the freeze policy (which parts
learn), the optimiser (AdamW with separate learning rates for the projector and for the LLM/LoRA, weight decay
only on matrices), the schedule (linear warm-up then cosine, per optimiser step), and the logging (train loss,
learning rate, samples/s and tokens/s). It also keeps the RNG state in checkpoints so a run resumed mid-stage
takes the very same next step as the uninterrupted run.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.distributed.fsdp import FullyShardedDataParallel

from pathkit.io import JsonlAppender
from pathkit.train.recipes import Stage
from pathkit.train.schedule import cosine_with_warmup, warmup_steps_for

VLM_PARTS = ("vision", "connector", "llm", "lora", "slide_encoder")


def count_trainable(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


CLOSED_ANSWER_TOKENS = 3


def closed_answer_hits(logits: torch.Tensor, labels: torch.Tensor, max_tokens: int = CLOSED_ANSWER_TOKENS
                       ) -> tuple[int, int]:
    """(exactly predicted, total) short supervised spans: each run of supervised tokens (one assistant answer)
    of at most ``max_tokens`` tokens, every token the argmax of the logits before it."""
    pred = logits[:, :-1].argmax(-1)  # (B, T-1): the prediction for position t + 1
    gold = labels[:, 1:]
    supervised = (gold != -100).cpu().numpy()
    correct = (pred == gold).cpu().numpy()
    hits = count = 0
    for row_sup, row_ok in zip(supervised, correct):
        t, length = 0, len(row_sup)
        while t < length:
            if not row_sup[t]:
                t += 1
                continue
            end = t
            while end < length and row_sup[end]:
                end += 1
            if end - t <= max_tokens:
                count += 1
                hits += int(row_ok[t:end].all())
            t = end
    return hits, count


class VLMModule(L.LightningModule):
    """One VLM training stage: ``VLMModule(model, stage, total_steps)``.

    Args:
        model: a ``VisionLanguageModel`` (or any module with its ``forward``/``apply_freeze``/``param_groups``).
        stage: the recipe stage (its freeze policy, learning rates, warm-up, clipping).
        total_steps: optimiser steps of the whole stage (sets the cosine length; the runner computes it).
        loss_log: optional JSON Lines file that receives one row per optimiser step (step, loss, lr).
    """

    def __init__(self, model: torch.nn.Module, stage: Stage | dict[str, Any], total_steps: int,
                 loss_log: str | Path | None = None, gradient_checkpointing: bool = False):
        super().__init__()
        self.model = model
        self.stage = stage if isinstance(stage, Stage) else Stage(**stage)
        self.total_steps = max(1, int(total_steps))
        self.loss_log = Path(loss_log) if loss_log else None
        self.save_hyperparameters({"stage": self.stage.to_dict(), "total_steps": self.total_steps,
                                   "gradient_checkpointing": gradient_checkpointing})
        # VisionLanguageModel.apply_freeze takes True = frozen; a stage names what trains.
        self.model.apply_freeze({part: not trains for part, trains in self.stage.freeze_policy().items()
                                 if part in VLM_PARTS})
        if gradient_checkpointing:
            self.model.enable_gradient_checkpointing()
        self._rng_to_restore: dict[str, Any] | None = None
        self._t_last: float | None = None
        self._acc_samples = 0
        self._acc_tokens = 0
        self._acc_loss: list[float] = []
        self.step_losses: list[dict[str, float]] = []  # one row per optimiser step
        self.clip_norms: list[float] = []  # global gradient norms before clipping, under FSDP
        self.throughput: list[dict[str, float]] = []

    # --------------------------------------------------------------------------------------------- training

    def forward(self, batch: dict[str, Any]):
        return self.model(**batch)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self.model(**batch)
        loss = out.loss
        batch_size = int(batch["input_ids"].shape[0])
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=batch_size)
        self._acc_samples += batch_size
        self._acc_tokens += self._tokens_seen(batch)
        self._acc_loss.append(float(loss.detach()))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Loss and closed-answer accuracy on the stage's held-out training images (checkpoint selection).

        The loss is dominated by long answers (captions, descriptions); whether the model tells yes from no is
        seen in ``val/closed_accuracy``: each short assistant answer (a yes/no, a letter: at most
        ``CLOSED_ANSWER_TOKENS`` tokens with the end token) predicted exactly, teacher-forced."""
        out, labels = self.model.forward_with_labels(**batch)
        n = int(batch["input_ids"].shape[0])
        self.log("val/loss", out.loss, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        hits, count = closed_answer_hits(out.logits, labels)
        if count:
            self.log("val/closed_accuracy", hits / count, on_step=False, on_epoch=True, batch_size=count,
                     sync_dist=True)
        return out.loss

    def on_validation_end(self) -> None:
        self._t_last = None  # validation time is not training throughput

    def _tokens_seen(self, batch: dict[str, Any]) -> int:
        """Tokens the LLM saw in this batch, visual tokens included: the spliced sequence's attention mask, which
        the model's forward records (``last_tokens_seen``); the text mask when a model does not record it."""
        seen = getattr(self.model, "last_tokens_seen", None)
        return int(seen) if seen is not None else int(batch["attention_mask"].sum())

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._rng_to_restore is not None:  # first batch after a resume: continue the saved random stream
            _set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
        if self._t_last is None:
            self._t_last = time.perf_counter()

    def on_before_optimizer_step(self, optimizer) -> None:
        """Runs once per optimiser step, after accumulation: log loss, lr, throughput."""
        now = time.perf_counter()
        dt = max(1e-9, now - (self._t_last or now))
        world = max(1, self.trainer.world_size) if self._trainer is not None else 1
        samples_s = self._acc_samples * world / dt
        tokens_s = self._acc_tokens * world / dt
        loss = float(np.mean(self._acc_loss)) if self._acc_loss else float("nan")
        lrs = [g["lr"] for g in optimizer.param_groups]
        row = {"step": int(self.global_step), "loss": loss, "lr": float(max(lrs)), "samples_per_s": samples_s,
               "tokens_per_s": tokens_s}
        self.step_losses.append(row)
        self.log_dict({"train/samples_per_s": samples_s, "train/tokens_per_s": tokens_s, "train/lr": max(lrs)},
                      on_step=True, on_epoch=False, batch_size=1, rank_zero_only=True)
        if self.loss_log is not None and self.global_rank == 0:
            with JsonlAppender(self.loss_log, fsync=False) as journal:
                journal.append(row)
        self._acc_samples = self._acc_tokens = 0
        self._acc_loss = []
        self._t_last = now

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip by the global gradient norm under every strategy. Under FSDP each rank holds a shard of every
        gradient, so the norm comes from ``FullyShardedDataParallel.clip_grad_norm_`` (Lightning's FSDP precision
        refuses norm clipping); otherwise Lightning's own clipping. FSDP norms are kept in ``clip_norms``."""
        if not gradient_clip_val:
            return
        wrapped = self.trainer.strategy.model

        if isinstance(wrapped, FullyShardedDataParallel):
            self.clip_norms.append(float(wrapped.clip_grad_norm_(gradient_clip_val)))
            return
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val,
                            gradient_clip_algorithm=gradient_clip_algorithm)

    # --------------------------------------------------------------------------------------------- optimiser

    def configure_optimizers(self):
        stage = self.stage
        lrs = {"connector": stage.projector_lr or stage.lr}
        for part in ("vision", "llm", "lora", "slide_encoder"):
            lrs[part] = stage.lr
        groups = self.model.param_groups(lrs)
        param_groups = []
        for group in groups:  # weight decay on matrices only (LLaVA/HF: no decay on biases and norms)
            params = [p for p in group["params"] if p.requires_grad]
            decay = [p for p in params if p.ndim >= 2]
            no_decay = [p for p in params if p.ndim < 2]
            extra = {k: v for k, v in group.items() if k not in ("params", "weight_decay")}
            if decay:
                param_groups.append({**extra, "params": decay, "weight_decay": stage.weight_decay})
            if no_decay:
                param_groups.append({**extra, "params": no_decay, "weight_decay": 0.0})
        if not param_groups:
            raise ValueError(f"stage {stage.name}: freeze policy {stage.trainable} leaves nothing to train")
        optimizer = torch.optim.AdamW(param_groups, lr=stage.lr, betas=tuple(stage.betas),
                                      weight_decay=stage.weight_decay)
        warmup = warmup_steps_for(self.total_steps, stage.warmup_ratio)
        min_ratio = stage.min_lr / stage.lr

        def multiplier(step: int) -> float:
            return cosine_with_warmup(step, self.total_steps, warmup, min_ratio)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --------------------------------------------------------------------------------------------- resume

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["pathkit_rng"] = _get_rng_state()
        checkpoint["pathkit_step_losses"] = list(self.step_losses)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._rng_to_restore = checkpoint.get("pathkit_rng")
        self.step_losses = list(checkpoint.get("pathkit_step_losses", []))


def _get_rng_state() -> dict[str, Any]:
    """RNG states as tensors and plain tuples, so checkpoints load with ``torch.load(weights_only=True)``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
