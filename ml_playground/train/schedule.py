"""Learning-rate schedule: linear warmup (non-zero at step 0), then cosine decay to min_lr."""

from __future__ import annotations

import math

from ml_playground.config import ScheduleConfig


def learning_rate(step: int, base_lr: float, schedule: ScheduleConfig) -> float:
    """LR for optimizer step `step` (0-based); constant `base_lr` when decay_lr is false."""
    if not schedule.decay_lr:
        return base_lr
    if step < schedule.warmup_iters:
        # (step + 1) so the very first step already learns.
        return base_lr * (step + 1) / (schedule.warmup_iters + 1)
    if step >= schedule.lr_decay_iters:
        return schedule.min_lr
    progress = (step - schedule.warmup_iters) / (schedule.lr_decay_iters - schedule.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 -> 0
    return schedule.min_lr + coeff * (base_lr - schedule.min_lr)
