"""Model shapes at equal parameter counts, and the fairness checks every study runs before training.

`shape_at(depth, ffn_ratio, target, base)` finds the shape of `depth` layers whose total parameter count
(embedding and head included, `model.params.count_parameters`) is nearest `target`: for every hidden
size that is a multiple of the head dimension, the FFN width (a multiple of 8) that brings the count
nearest the target; of the widths that come within 3% of it, the one whose FFN ratio is nearest
`ffn_ratio`. Depth is then exact, the ratio close, and the count within 3% of the target.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from pangu_pro.config import ModelConfig

FFN_MULTIPLE = 8
PARAMETER_TOLERANCE = 0.03  # "equal parameters": every arm within 3% of the target


class StudyError(ValueError):
    """A study set-up that would not compare like with like (what differs, and between which arms)."""


def total_parameters(cfg: ModelConfig) -> int:
    from pangu_pro.model.params import count_parameters

    return count_parameters(cfg).total


def with_shape(base: ModelConfig, layers: int, hidden: int, ffn: int) -> ModelConfig:
    """`base` with another depth, width and FFN width (heads of `base.head_dim`, the same AugShortcut
    ratio where it divides the width, else a bottleneck of one unit per head)."""
    ratio = base.aug_shortcut_ratio if hidden % base.aug_shortcut_ratio == 0 else hidden // base.head_dim
    return dataclasses.replace(base, num_layers=layers, hidden_size=hidden, num_heads=hidden // base.head_dim,
                               num_kv_heads=None if base.num_kv_heads is None else hidden // base.head_dim,
                               intermediate_size=ffn, aug_shortcut_ratio=ratio)


def shape_at(depth: int, ffn_ratio: float, target: int, base: ModelConfig, tolerance: float = PARAMETER_TOLERANCE,
             max_hidden: int = 4096) -> ModelConfig:
    """The `depth`-layer shape within `tolerance` of `target` total parameters whose FFN ratio is nearest
    `ffn_ratio`."""
    if depth < 1 or ffn_ratio <= 0 or target < 1:
        raise StudyError(f"need depth >= 1, ffn ratio > 0 and a positive target, got {depth}, {ffn_ratio}, {target}")
    best, best_key = None, None
    for hidden in range(base.head_dim, max_hidden + 1, base.head_dim):
        empty = total_parameters(with_shape(base, depth, hidden, FFN_MULTIPLE))
        per_unit = (total_parameters(with_shape(base, depth, hidden, 2 * FFN_MULTIPLE)) - empty) / FFN_MULTIPLE
        units = max(1, round(((target - empty) / per_unit + FFN_MULTIPLE) / FFN_MULTIPLE))
        cfg = with_shape(base, depth, hidden, units * FFN_MULTIPLE)
        gap = abs(total_parameters(cfg) - target) / target
        if gap > tolerance:  # no FFN width reaches the target at this width
            continue
        key = abs(np.log(cfg.intermediate_size / hidden / ffn_ratio))
        if best_key is None or key < best_key:
            best, best_key = cfg, key
    if best is None:
        raise StudyError(f"no shape of {depth} layers reaches {target:,} parameters within {tolerance:.0%} "
                         f"(head dim {base.head_dim}, vocabulary {base.vocab_size})")
    return best


def draw_shapes(count: int, target: int, base: ModelConfig, depths: Sequence[int], ffn_ratios: Sequence[float],
                seed: int = 0) -> list[ModelConfig]:
    """`count` distinct shapes at `target` parameters, depth drawn from `depths` and the FFN ratio
    uniformly from [min, max] of `ffn_ratios`, seeded; the width follows from both (`shape_at`)."""
    rng = np.random.default_rng(seed)
    low, high = min(ffn_ratios), max(ffn_ratios)
    shapes: dict[tuple, ModelConfig] = {}
    for _ in range(200 * count):
        if len(shapes) == count:
            break
        cfg = shape_at(int(rng.choice(depths)), float(rng.uniform(low, high)), target, base)
        shapes.setdefault((cfg.num_layers, cfg.hidden_size, cfg.intermediate_size), cfg)
    if len(shapes) < count:
        raise StudyError(f"only {len(shapes)} distinct shapes at {target:,} parameters from depths {list(depths)}; "
                         f"ask for fewer or widen the ranges")
    return sorted(shapes.values(), key=lambda c: (c.num_layers, c.hidden_size))


def check_equal(values: Mapping[str, float], what: str, tolerance: float = 0.0) -> None:
    """Refuse arms whose `what` differs by more than `tolerance` (relative to the smallest), naming the
    smallest and the largest arm."""
    if not values:
        return
    low = min(values, key=values.get)
    high = max(values, key=values.get)
    smallest, largest = values[low], values[high]
    if largest - smallest > tolerance * abs(smallest):
        raise StudyError(f"unfair comparison: {what} differs between arms beyond {tolerance:.0%}: "
                         f"{low} {smallest:,.6g} vs {high} {largest:,.6g}")
