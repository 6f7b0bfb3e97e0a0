"""The statistics of the studies, as pure numpy functions: seed spread, paired differences against seed
noise, Spearman's rank correlation with a bootstrap interval, and bits per byte."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

NOISE_LEVEL = 0.05  # a paired difference "exceeds seed noise" when a two-sided paired t-test gives p below this


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    array = np.asarray(values, np.float64)
    if array.size == 0:
        raise ValueError("no values")
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else 0.0


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict:
    """a − b, paired by position (same seed): mean, sd, n, the t-test's p, whether it exceeds seed noise,
    and how many pairs have a below b."""
    from scipy import stats

    diffs = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if diffs.ndim != 1 or diffs.size == 0:
        raise ValueError(f"expected two equal-length non-empty sequences, got {np.shape(a)} and {np.shape(b)}")
    mean, sd = mean_sd(diffs)
    p = float(stats.ttest_1samp(diffs, 0.0).pvalue) if diffs.size > 1 and sd > 0 else float("nan")
    return {"mean": mean, "sd": sd, "n": int(diffs.size), "p": p,
            "exceeds_noise": bool(diffs.size > 1 and p < NOISE_LEVEL), "a_lower": int(np.sum(diffs < 0))}


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks from 1, ties sharing the mean of their ranks."""
    array = np.asarray(values, np.float64)
    order = np.argsort(array, kind="stable")
    ranks = np.empty(array.size, np.float64)
    ranks[order] = np.arange(1, array.size + 1)
    for value in np.unique(array):
        tied = array == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson's correlation of the average ranks; nan when either side is constant."""
    rx, ry = average_ranks(x), average_ranks(y)
    if rx.size != ry.size or rx.size < 2:
        raise ValueError(f"need two equal-length sequences of at least 2 values, got {rx.size} and {ry.size}")
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / denominator) if denominator > 0 else float("nan")


def bootstrap_spearman(x: Sequence[float], y: Sequence[float], samples: int = 2000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float, float]:
    """(rho, low, high): rho on the data and the percentile interval of rho over `samples` resamples of
    the pairs with replacement (resamples where a side is constant are skipped)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    rho = spearman(x, y)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(samples):
        pick = rng.integers(0, x.size, x.size)
        value = spearman(x[pick], y[pick])
        if not math.isnan(value):
            draws.append(value)
    if not draws:
        return rho, float("nan"), float("nan")
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return rho, float(low), float(high)


def bits_per_byte(nats_per_token: float, tokens: int, text_bytes: int) -> float:
    """A held-out loss in nats per token as bits per byte of the text it covers: comparable across
    tokenizers, which cut the same text into different numbers of tokens."""
    if tokens < 1 or text_bytes < 1:
        raise ValueError(f"need positive token and byte counts, got {tokens} and {text_bytes}")
    return nats_per_token * tokens / (text_bytes * math.log(2.0))
