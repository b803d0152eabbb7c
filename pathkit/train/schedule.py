"""Learning-rate schedule of every pathkit stage: linear warm-up, then cosine decay to a floor.

LLaVA (``--lr_scheduler_type cosine --warmup_ratio 0.03``) and PA-LLaVA (LinearLR warm-up over 3%, then
cosine to ``min_lr``) both fit this one function. The multiplier is applied to each parameter group's own base
learning rate, so a projector at 2e-5 and LoRA at 2e-4 keep their ratio through the schedule.
"""

from __future__ import annotations

import math


def warmup_steps_for(total_steps: int, warmup_ratio: float) -> int:
    """LLaVA/HF rounding: ``ceil(ratio * total)``."""
    return int(math.ceil(warmup_ratio * total_steps))


def cosine_with_warmup(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based).

    Warm-up rises linearly from ``1/(warmup+1)`` to 1 (never exactly 0, so the first step moves the
    weights); the cosine part falls from 1 at ``warmup_steps`` to ``min_ratio`` at ``total_steps``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def optimizer_steps(batches_per_epoch: int, epochs: int, grad_accum: int = 1, max_steps: int = -1) -> int:
    """Optimiser steps of a stage (the schedule's length): ``max_steps`` when > 0, else ``epochs`` times
    ``ceil(batches / grad_accum)``: Lightning also steps on an epoch's last, partial accumulation."""
    if max_steps > 0:
        return max_steps
    return int(math.ceil(batches_per_epoch / grad_accum)) * epochs
