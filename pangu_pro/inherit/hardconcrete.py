"""The mathematics of parameter inheritance, in plain numpy (paper-notes §5).

Everything here is a pure function of arrays, tested in isolation; the MindSpore cells in
`pangu_pro.inherit.cells` compute the same formulas on tensors and stay thin.

Hard-concrete (L0) masks, one ``log_alpha`` per prunable unit:

    u ~ U(0, 1)
    s = sigmoid((log u - log(1 - u) + log_alpha) / beta)
    z = clip(s * (r - l) + l, 0, 1)                     beta = 2/3, l = -0.1, r = 1.1

    P(z > 0) = sigmoid(log_alpha - beta * log(-l / r))  (the keep probability)

``log_alpha`` is kept within [-4.6, 4.6]. The size constraint of one mask type is
``lambda1 * (s - t) + lambda2 * (s - t)**2`` where s is the expected sparsity (1 - mean counted keep,
`counted_keep`, of each layer for heads and neurons: `layer_constraint`) and t the target sparsity,
ramped linearly from 0 over the first 20% of the steps. The lambdas are maximised (gradient ascent),
everything else minimised.

Where we depart from the reference (Sheared-LLaMA counts the raw keep probability): the clamp leaves a
pruned unit a keep probability of 0.047 and a kept one 0.998, so a layer whose masks are all decided
reads 2.3 points below a 50% target. The shared multiplier then piles that deficit onto the layers
still undecided; with 2 head groups per layer one such layer sat at 0.575 for good (docs/inherit.md).
`counted_keep` rescales the keep probability to the clamp's range, so decided masks meet the target
exactly. The expected size equals the size top-k materialises exactly when, in every layer, the
units' counted keep sums to the number of units top-k keeps there: always once every unit is decided
(at or beyond the clamp), otherwise only as an expectation — a unit whose noise-free mask is already 0
(log_alpha <= beta * ln(1/11) = -1.6) still counts up to 0.476.

The clamp is in the forward pass and the parameter is not clamped after a step (Sheared-LLaMA clamps
the parameter, so a unit at the bound keeps its full gradient): here a unit at exactly ±4.6 gets half
its gradient and one an optimizer step carried beyond gets none, so it stays decided
(`keep_probability_grad`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

BETA = 2.0 / 3.0
LIMIT_L = -0.1
LIMIT_R = 1.1
LOG_ALPHA_LIMIT = 4.6
EPS = 1e-6  # keeps u away from 0 and 1 so that log u and log(1 - u) stay finite

# the offset in the keep probability, beta * log(-l / r) (about -1.599)
KEEP_OFFSET = BETA * np.log(-LIMIT_L / LIMIT_R)


def sigmoid(x):
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free


def clamp_log_alpha(log_alpha):
    return np.clip(np.asarray(log_alpha, dtype=np.float64), -LOG_ALPHA_LIMIT, LOG_ALPHA_LIMIT)


def keep_probability(log_alpha):
    """P(z > 0) for each unit: sigmoid(log_alpha - beta * log(-l / r))."""
    return sigmoid(clamp_log_alpha(log_alpha) - KEEP_OFFSET)


KEEP_FLOOR = float(keep_probability(-LOG_ALPHA_LIMIT))  # about 0.047: a unit at the clamp's floor
KEEP_CEILING = float(keep_probability(LOG_ALPHA_LIMIT))  # about 0.998: a unit at the clamp's ceiling


def counted_keep(log_alpha):
    """How much of a unit the size constraint counts: its keep probability rescaled from the range the
    clamp allows, [KEEP_FLOOR, KEEP_CEILING], to [0, 1] (0: at the floor, pruned; 1: at the ceiling)."""
    return (keep_probability(log_alpha) - KEEP_FLOOR) / (KEEP_CEILING - KEEP_FLOOR)


def stretch(s):
    """Stretch s in (0, 1) to (l, r) and clip to [0, 1]."""
    return np.clip(s * (LIMIT_R - LIMIT_L) + LIMIT_L, 0.0, 1.0)


def sample_mask(log_alpha, u):
    """A hard-concrete sample z for uniform noise `u` (same shape as `log_alpha`)."""
    u = np.clip(np.asarray(u, dtype=np.float64), EPS, 1.0 - EPS)
    s = sigmoid((np.log(u) - np.log1p(-u) + clamp_log_alpha(log_alpha)) / BETA)
    return stretch(s)


def deterministic_mask(log_alpha):
    """The noise-free mask value (the median, u = 1/2): clip(sigmoid(log_alpha / beta) * (r - l) + l, 0, 1)."""
    return stretch(sigmoid(clamp_log_alpha(log_alpha) / BETA))


def fold_value(log_alpha):
    """The value a unit kept by the top-k is multiplied into the weights with: the noise-free mask where
    it is positive, else the unstretched median sigmoid(log_alpha / beta) in (0, 1). The stretched and
    clipped median is exactly 0 for keep probabilities <= 1/2, and top-k may keep such units when the
    masks pruned past the target: folding 0 would leave a dead unit in the student."""
    la = clamp_log_alpha(log_alpha)
    median = deterministic_mask(la)
    return np.where(median > 0, median, sigmoid(la / BETA))


def log_alpha_for_keep_probability(p):
    """The log_alpha whose keep probability is `p` (inverse of `keep_probability`, before clamping)."""
    p = np.asarray(p, dtype=np.float64)
    return np.log(p) - np.log1p(-p) + KEEP_OFFSET


def expected_sparsity(keep_probs) -> float:
    """Expected fraction of pruned units: 1 - mean keep (the constraint passes `counted_keep`)."""
    return float(1.0 - np.mean(keep_probs))


def target_sparsity(step: int, total_steps: int, final: float, warmup_fraction: float = 0.2) -> float:
    """The target at `step` (0-based): linear from 0 to `final` over the first `warmup_fraction` of the steps."""
    ramp = max(1, int(round(warmup_fraction * total_steps)))
    return float(final) * min(1.0, step / ramp)


def constraint(s, t, lambda1, lambda2):
    """lambda1 * (s - t) + lambda2 * (s - t)**2 (elementwise over mask types)."""
    gap = np.asarray(s, dtype=np.float64) - np.asarray(t, dtype=np.float64)
    return lambda1 * gap + lambda2 * gap * gap


def row_sparsity(keep_probs) -> np.ndarray:
    """Expected sparsity of each row (a layer's heads or neurons); a 1-D array is one row."""
    keep = np.asarray(keep_probs, dtype=np.float64)
    return 1.0 - (keep.mean(-1) if keep.ndim == 2 else np.array([keep.mean()]))


def layer_constraint(keep_probs, t, lambda1, lambda2) -> float:
    """The size constraint of one mask type, as the reference does it: every row (layer) pulled to the
    target on its own, the penalties averaged: mean_r lambda1 (s_r - t) + lambda2 (s_r - t)**2."""
    return float(np.mean(constraint(row_sparsity(keep_probs), t, lambda1, lambda2)))


def constraint_grads(s, t, lambda1, lambda2):
    """Partial derivatives of `constraint` with respect to (s, lambda1, lambda2)."""
    gap = np.asarray(s, dtype=np.float64) - np.asarray(t, dtype=np.float64)
    return lambda1 + 2.0 * lambda2 * gap, gap, gap * gap


def keep_probability_grad(log_alpha):
    """d keep_probability / d log_alpha as MindSpore computes it through the masks' clamp
    (`ops.clip_by_value`, a Maximum then a Minimum, on float32 parameters): the full derivative inside
    the clamp, half of it exactly at ±4.6 (each of the two ops splits a tie's gradient between its
    inputs), zero beyond. `tests/test_inherit_cells.py` measures it. Sheared-LLaMA instead clamps the
    parameter after each step and gives the full gradient at the bound."""
    la = np.asarray(log_alpha, dtype=np.float64)
    p = keep_probability(la)
    magnitude, limit = np.abs(la.astype(np.float32)), np.float32(LOG_ALPHA_LIMIT)
    weight = np.where(magnitude < limit, 1.0, np.where(magnitude == limit, 0.5, 0.0))
    return p * (1.0 - p) * weight


def counted_keep_grad(log_alpha):
    """d counted_keep / d log_alpha."""
    return keep_probability_grad(log_alpha) / (KEEP_CEILING - KEEP_FLOOR)


# ----------------------------------------------------------------------------------------------
# Expected size


@dataclass
class UnitArrays:
    """One array per mask type, in the teacher's shapes.

    heads [L, KV]: one entry per key/value group (a GQA group prunes whole: its key/value head and
    its `num_heads / kv_heads` query heads); neurons [L, F]; hidden [d] (shared by every layer, the
    embedding and the head); layers [L]; bottleneck [L, B]: the AugShortcut's bottleneck units (B = 0
    without AugShortcut). Used for keep probabilities, importance scores and mask values.
    """

    heads: np.ndarray
    neurons: np.ndarray
    hidden: np.ndarray
    layers: np.ndarray
    bottleneck: np.ndarray

    @classmethod
    def full(cls, cfg, value: float = 1.0) -> "UnitArrays":
        """Arrays of `value` shaped for the ModelConfig `cfg`."""
        return cls(heads=np.full((cfg.num_layers, cfg.kv_heads), value, np.float64),
                   neurons=np.full((cfg.num_layers, cfg.intermediate_size), value, np.float64),
                   hidden=np.full((cfg.hidden_size,), value, np.float64),
                   layers=np.full((cfg.num_layers,), value, np.float64),
                   bottleneck=np.full((cfg.num_layers, bottleneck_width(cfg)), value, np.float64))

    def map(self, fn) -> "UnitArrays":
        return UnitArrays(*(fn(getattr(self, name)) for name in MASK_TYPES))


MASK_TYPES = ("heads", "neurons", "hidden", "layers", "bottleneck")


def bottleneck_width(cfg) -> int:
    """The AugShortcut's bottleneck units per layer (0 without AugShortcut)."""
    return cfg.aug_shortcut_dim if cfg.aug_shortcut else 0


def expected_size(cfg, keep: UnitArrays, vocab_size: Optional[int] = None) -> float:
    """Expected parameter count of the pruned model given independent keep probabilities `keep`.

    `cfg` is the teacher's ModelConfig; `vocab_size` the student's vocabulary (default the teacher's).
    With 0/1 probabilities this is exactly `count_parameters` of the materialised student.
    """
    vocab = cfg.vocab_size if vocab_size is None else vocab_size
    groups = cfg.num_heads // cfg.kv_heads
    hd = cfg.head_dim
    d = float(np.sum(keep.hidden))
    total = vocab * d * (1 if cfg.tie_word_embeddings else 2) + d  # embedding, head, final norm
    kv = np.sum(keep.heads, axis=1)  # expected kept groups per layer
    f = np.sum(keep.neurons, axis=1)
    per_layer = (2 * hd * groups * kv * d  # wq, wo
                 + 2 * hd * kv * d  # wk, wv
                 + 3 * f * d  # w1, w3, w2
                 + 2 * d)  # two norms
    if cfg.siaf:
        per_layer = per_layer + 2 * cfg.siaf_terms * f
    if cfg.aug_shortcut:
        per_layer = per_layer + 2 * np.sum(keep.bottleneck, axis=1) * d  # down rows, up columns
    return float(total + np.sum(np.asarray(keep.layers) * per_layer))


# ----------------------------------------------------------------------------------------------
# Materialisation


def top_k(scores, k: int) -> np.ndarray:
    """Indices (sorted increasingly) of the `k` highest scores along the last axis.

    Deterministic: ties go to the lower index. Works row-wise on 2-D arrays, so every row keeps exactly k.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if not 0 <= k <= scores.shape[-1]:
        raise ValueError(f"cannot keep {k} of {scores.shape[-1]} units")
    order = np.argsort(-scores, axis=-1, kind="stable")[..., :k]
    return np.sort(order, axis=-1)


def select_layers(scores, keep: int) -> np.ndarray:
    """Teacher layers that survive: always the first and the last, plus the `keep - 2` intermediate
    layers with the highest scores (sorted increasingly)."""
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.shape[0]
    if not 1 <= keep <= n:
        raise ValueError(f"cannot keep {keep} of {n} layers")
    if keep == n:
        return np.arange(n)
    if keep == 1:
        return np.array([0])
    middle = top_k(scores[1:-1], keep - 2) + 1
    return np.concatenate([[0], middle, [n - 1]]).astype(np.int64)
