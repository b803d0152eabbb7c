"""``last.ckpt`` for every training stage (VLM and contrastive): the callback that makes a stage resumable."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import lightning as L


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
