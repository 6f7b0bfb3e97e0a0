"""The sampling math of multi-round training, as pure numpy functions (no MindSpore).

Round k+1 re-trains on `k = num_selected(n, rate)` of the `n` units (batches or samples), drawn
**without replacement** with probability

    p_i = exp(l_i / T) / sum_j exp(l_j / T)            (paper-notes §6 has T = 1)

for the first draw, and the same softmax renormalised over the units not yet drawn for every later
draw (sequential sampling). `gumbel_top_k` does this in one pass: with g_i i.i.d. Gumbel(0, 1), the
indices of the k largest keys ``l_i / T + g_i``, sorted by key, are distributed exactly like k
sequential draws in their draw order (the Gumbel-max trick, applied k times). No exponential is
taken, so large losses or tiny temperatures cannot overflow.

Everything is a function of its arguments and `seed` (numpy's PCG64 via ``default_rng``), never of
global state: every process (every data-parallel rank) that computes a selection gets the same one.
"""
from __future__ import annotations

import math
from typing import Literal, Optional, Sequence

import numpy as np

UNITS = ("batch", "sample")
ORDERS = ("shuffle", "draw", "corpus")


def check_scores(scores: Sequence[float] | np.ndarray, what: str = "scores") -> np.ndarray:
    """`scores` as float64 [n], n >= 1, all finite; ValueError naming the first bad entry otherwise."""
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{what}: expected a non-empty 1-D array, got shape {array.shape}")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(f"{what}: {bad.size} non-finite value(s) (NaN/inf), the first at index {bad[0]}: "
                         f"{array[bad[0]]}; a diverged model cannot rank the data")
    return array


def check_rate(rate: float) -> float:
    if not (isinstance(rate, (int, float)) and math.isfinite(rate) and 0.0 < rate <= 1.0):
        raise ValueError(f"sampling rate must lie in (0, 1], got {rate}")
    return float(rate)


def check_temperature(temperature: float) -> float:
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0.0):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    return float(temperature)


def num_selected(n: int, rate: float) -> int:
    """How many of `n` units a rate draws: rate·n rounded half up, at least 1, at most n."""
    rate = check_rate(rate)
    if n < 1:
        raise ValueError(f"nothing to select from ({n} units)")
    return min(n, max(1, math.floor(rate * n + 0.5)))


def softmax_probabilities(scores, temperature: float = 1.0) -> np.ndarray:
    """p_i = exp(l_i / T) / sum_j exp(l_j / T), computed stably (max subtracted first)."""
    z = check_scores(scores) / check_temperature(temperature)
    z = np.exp(z - z.max())
    return z / z.sum()


def gumbel_top_k(scores, k: int, temperature: float = 1.0, seed: int = 0) -> np.ndarray:
    """k distinct unit indices drawn without replacement, p ∝ exp(score / T), in draw order (int64 [k]).

    `seed` fixes the draw: the same arguments give the same indices on every machine and process.
    """
    z = check_scores(scores) / check_temperature(temperature)
    n = z.size
    if not 1 <= k <= n:
        raise ValueError(f"cannot draw {k} of {n} units without replacement")
    keys = z + np.random.default_rng(_seed(seed, 0)).gumbel(size=n)
    if k < n:
        top = np.argpartition(-keys, k - 1)[:k]
    else:
        top = np.arange(n)
    return top[np.argsort(-keys[top], kind="stable")].astype(np.int64)


def order_units(drawn: np.ndarray, order: Literal["shuffle", "draw", "corpus"], seed: int = 0) -> np.ndarray:
    """The drawn units in the order the next round reads them.

    ``shuffle`` (default): a permutation seeded by `seed` (independent of the draw's random stream), so
    the next round neither reads the hardest units first nor the corpus parts in their original
    sequence; ``draw``: draw order (likeliest first); ``corpus``: ascending unit index.
    """
    drawn = np.asarray(drawn, dtype=np.int64)
    if order == "shuffle":
        return drawn[np.random.default_rng(_seed(seed, 1)).permutation(drawn.size)]
    if order == "draw":
        return drawn.copy()
    if order == "corpus":
        return np.sort(drawn)
    raise ValueError(f"order must be one of {ORDERS}, got {order!r}")


def unit_samples(units: np.ndarray, unit: Literal["batch", "sample"], unit_size: int,
                 num_samples: int, order: Optional[np.ndarray] = None) -> np.ndarray:
    """Sample indices of `units`, in the units' order. Batch unit b is the samples at positions
    ``[b * unit_size, min((b + 1) * unit_size, num_samples))`` of `order` — round 1's first-pass sample
    order (`data.dataset.epoch_order`; ascending ids when None), so a unit is k consecutive global
    batches of round 1 — in that order. Sample unit s is sample s."""
    units = np.asarray(units, dtype=np.int64)
    if unit == "sample":
        limit = num_samples
    elif unit == "batch":
        if unit_size < 1:
            raise ValueError(f"unit size must be at least 1, got {unit_size}")
        limit = num_units(num_samples, unit_size)
    else:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
    bad = np.flatnonzero((units < 0) | (units >= limit))
    if bad.size:
        raise ValueError(f"{unit} index {units[bad[0]]} is outside the data's {limit} {unit} units")
    if unit == "sample" or units.size == 0:
        return units.copy()
    if order is not None and len(order) != num_samples:
        raise ValueError(f"the unit order holds {len(order)} samples, the data {num_samples}")
    starts = units * unit_size
    stops = np.minimum(starts + unit_size, num_samples)
    positions = np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in zip(starts, stops)])
    return positions if order is None else np.asarray(order, dtype=np.int64)[positions]


def unit_size(unit_tokens: int, global_batch: int, seq_length: int) -> int:
    """Samples per scoring unit: k whole global training batches of `global_batch` samples of
    `seq_length` tokens, k = round(unit_tokens / batch tokens), at least 1. Round 1's optimizer step t
    reads the samples at positions ``[t*G, (t+1)*G)`` of its first-pass order, so unit u (those
    positions of the same order, `unit_samples`) is exactly round 1's steps ``u*k .. u*k + k-1``."""
    if unit_tokens < 1 or global_batch < 1 or seq_length < 1:
        raise ValueError(f"unit tokens, global batch and sequence length must be positive, got "
                         f"{unit_tokens}, {global_batch}, {seq_length}")
    k = max(1, math.floor(unit_tokens / (global_batch * seq_length) + 0.5))
    return k * global_batch


def num_units(num_samples: int, unit_size: int) -> int:
    """Scoring units of `num_samples`: ceil(num_samples / unit_size) (the last one may be short)."""
    return -(-num_samples // unit_size)


def select(scores, rate: float, *, seed: int = 0, temperature: float = 1.0,
           order: Literal["shuffle", "draw", "corpus"] = "shuffle") -> np.ndarray:
    """The units of the next round: `num_selected` units by `gumbel_top_k`, arranged by `order_units`."""
    scores = check_scores(scores)
    drawn = gumbel_top_k(scores, num_selected(scores.size, rate), temperature, seed)
    return order_units(drawn, order, seed)


def _seed(seed: int, stream: int) -> list[int]:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return [int(seed), stream]
