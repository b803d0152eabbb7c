"""Checkpoint callbacks: ``last.ckpt`` for every training stage (VLM and contrastive), which makes a stage
resumable, and :class:`BestWeights`, which keeps the epoch a user would pick (lowest validation loss)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import lightning as L
import torch


class LastCheckpoint(L.Callback):
    """``path`` (``last.ckpt``) every ``every`` optimiser steps and at the end, written under a temporary name and
    renamed (never half-written); with ``stop_after_steps`` it saves and stops the run there (simulates a kill).
    The full state is saved (model, optimiser, schedulers, loops, the callbacks' data position); under FSDP on CPU
    the checkpoint is a sharded folder (:mod:`pathkit.train.strategies`)."""

    def __init__(self, path: str | Path, every: int, stop_after_steps: int | None = None):
        self.path, self.every, self.stop_after_steps = Path(path), max(1, int(every)), stop_after_steps
        self.saved_step = -1

    def _save(self, trainer) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        trainer.save_checkpoint(tmp, weights_only=False)
        if trainer.is_global_zero:
            if self.path.is_dir():  # a sharded checkpoint is a folder: os.replace needs the old one gone
                shutil.rmtree(self.path)
            os.replace(tmp, self.path)
        trainer.strategy.barrier("last_checkpoint")
        self.saved_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self.saved_step or step == 0:
            return
        stop = self.stop_after_steps is not None and step >= self.stop_after_steps
        if stop or step % self.every == 0:
            self._save(trainer)
        if stop:
            trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_step != self.saved_step:
            self._save(trainer)


class BestWeights(L.Callback):
    """Keep the trainable weights of the best validated epoch and load them back when training ends.

    A tiny model trained for many epochs on a few hundred images memorises them; its last step is not the
    checkpoint to score. Selecting on held-out training images is what a user does (HF Trainer's
    ``load_best_model_at_end``). The best epoch has the highest ``val/closed_accuracy`` (exact short answers),
    ties broken by the lower ``val/loss``; without closed answers in the validation set, the lowest loss. Only
    trainable tensors are copied (the frozen ones cannot differ). The best weights and the per-epoch history travel
    in ``last.ckpt``, so a resumed stage selects as an uninterrupted one.
    """

    def __init__(self, accuracy: str = "val/closed_accuracy", loss: str = "val/loss"):
        self.accuracy, self.loss = accuracy, loss
        self.best: tuple[float, float] | None = None
        self.best_epoch: int | None = None
        self.history: list[dict[str, float]] = []
        self._weights: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, trainer, pl_module) -> None:
        metrics = trainer.callback_metrics
        if trainer.sanity_checking or self.loss not in metrics:
            return
        loss = float(metrics[self.loss])
        accuracy = float(metrics[self.accuracy]) if self.accuracy in metrics else None
        epoch = int(trainer.current_epoch)
        self.history.append({"epoch": epoch, "step": int(trainer.global_step), self.loss: round(loss, 5),
                             self.accuracy: None if accuracy is None else round(accuracy, 4)})
        key = (accuracy if accuracy is not None else 0.0, -loss)
        if self.best is None or key > self.best:
            self.best, self.best_epoch = key, epoch
            self._weights = {n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad}

    def on_train_end(self, trainer, pl_module) -> None:
        if self._weights is None:
            return
        with torch.no_grad():
            params = dict(pl_module.named_parameters())
            for name, value in self._weights.items():
                params[name].copy_(value)

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "history": list(self.history),
                "weights": self._weights}

    def load_state_dict(self, state: dict) -> None:
        self.best = tuple(state["best"]) if state["best"] is not None else None
        self.best_epoch, self.history, self._weights = state["best_epoch"], list(state["history"]), state["weights"]

    def summary(self) -> dict:
        """What the stage summary records: the selected epoch and the validation curve."""
        return {"selected_epoch": self.best_epoch, "val_history": self.history}
