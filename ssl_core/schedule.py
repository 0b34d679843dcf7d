"""Per-iteration learning-rate schedule: linear warm-up, then cosine decay to zero (computed once)."""

from __future__ import annotations

import math

import torch


def warmup_cosine(step: int, *, warmup: int, total: int) -> float:
    """LR multiplier for `step` (0-based): (step+1)/warmup during warm-up, then a half cosine to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, warmup: int, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup=warmup, total=total)
    )
