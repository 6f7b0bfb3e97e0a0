"""Learning-rate schedule and batch-size scaling: pure functions of plain numbers.

Steps are counted from 1: ``lr_at(n, ...)`` is the rate used by the n-th optimizer update.

    warmup   (1 <= n <= W):  lr * n / W                     (linear, reaches lr at n = W)
    decay    (W <  n <= T):  floor + (lr - floor) * (1 + cos(pi * (n - W) / (T - W))) / 2
    floor = lr * min_lr_ratio                               (reached at the last step n = T)

A warm-up given as a fraction f of the run is ``W = round(f * T)`` steps (`warmup_steps_of`), so a
short run (a later multi-round round) is never all warm-up.

Batch-size scaling (paper-notes §6): ``lr = lr0 * (B / B0) ** power`` with power 0.5.
"""
from __future__ import annotations

import math

# The official repository's schedule for training on from a pruned (inherited) checkpoint (RethinkTinyLM
# `configs/LLM1B.py`, which its README gives for that step): peak lr 1e-4, 3% warm-up, cosine to 1e-5.
OFFICIAL_CONTINUED_LR, OFFICIAL_CONTINUED_WARMUP_FRACTION, OFFICIAL_CONTINUED_MIN_LR_RATIO = 1e-4, 0.03, 0.1


def lr_at(step: int, *, lr: float, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.1) -> float:
    """The learning rate of update number `step` (1-based) under linear warmup then cosine decay."""
    if not 1 <= step <= total_steps:
        raise ValueError(f"step {step} is outside [1, {total_steps}]")
    if step <= warmup_steps:
        return lr * step / warmup_steps
    floor = lr * min_lr_ratio
    decay_steps = total_steps - warmup_steps
    progress = (step - warmup_steps) / decay_steps
    return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_steps_of(total_steps: int, warmup_steps: int = 0, warmup_fraction: float | None = None) -> int:
    """The warm-up length W in steps: `warmup_steps`, or round(warmup_fraction * total_steps) when given."""
    if warmup_fraction is None:
        return warmup_steps
    if not 0 <= warmup_fraction <= 1:
        raise ValueError(f"warm-up fraction must lie in [0, 1], got {warmup_fraction}")
    return min(total_steps, math.floor(warmup_fraction * total_steps + 0.5))


def scaled_lr(lr: float, batch: int, base_batch: int, power: float = 0.5) -> float:
    """`lr` tuned for a global batch of `base_batch` samples, rescaled for `batch`: lr * (B/B0)^power."""
    if batch <= 0 or base_batch <= 0:
        raise ValueError(f"batch sizes must be positive, got {batch} and {base_batch}")
    return lr * (batch / base_batch) ** power
