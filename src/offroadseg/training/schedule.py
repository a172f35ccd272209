"""Learning-rate schedule as a pure function of the optimizer step (easy to test and plot)."""

from __future__ import annotations

import math


def lr_factor(
    step: int,
    *,
    total_steps: int,
    warmup_steps: int = 0,
    schedule: str = "constant",
    min_ratio: float = 0.0,
) -> float:
    """Multiplier of the base LR at optimizer step ``step`` (0-based).

    Linear warmup from ``1 / (warmup_steps + 1)`` up to 1 over ``warmup_steps`` steps, then
    either constant or a cosine from 1 down to ``min_ratio`` at ``total_steps``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"unknown schedule {schedule!r}; valid: constant, cosine")
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / span))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_curve(
    base_lr: float,
    *,
    total_steps: int,
    warmup_steps: int = 0,
    schedule: str = "constant",
    min_lr: float = 0.0,
) -> list[float]:
    """The LR at every optimizer step, for the schedule plot."""
    ratio = min_lr / base_lr if base_lr else 0.0
    return [
        base_lr
        * lr_factor(s, total_steps=total_steps, warmup_steps=warmup_steps, schedule=schedule, min_ratio=ratio)
        for s in range(total_steps)
    ]
