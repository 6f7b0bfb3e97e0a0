"""Importance criteria behind one interface: ``unit_scores(criterion, ...) -> UnitArrays``.

Scores are in the teacher's unit shapes (groups [L, KV], neurons [L, F], hidden [d], layers [L],
AugShortcut bottleneck units [L, B]); higher means more important. `materialize.select_units` keeps the top-k per layer.

- random: uniform noise (seeded): the "random init" of the paper's table keeps arbitrary units;
- l1 / l2: weight magnitude of everything a unit owns (a group: its rows of wq, wk, wv and columns of
  wo; a neuron: its rows of w1, w3 and column of w2; a bottleneck unit: its row of the AugShortcut's
  down and column of its up projection; a hidden channel: its column of the embedding, the head and
  every layer's input projections, and its row of every output projection);
- taylor: first-order Taylor, |dL/dm| at masks of ones summed over calibration batches, where dL/dm
  of a unit is the sum over its weights of w * dL/dw (computed as the gradient of the mask inputs);
- learned: hard-concrete masks trained on data (`pangu_pro.inherit.learn`), scored by log_alpha (the
  bottleneck units too: a mask per unit like the FFN neurons').

Layer scores (`layer_scores`): cosine = mean 1 - cos(block input, block output) on calibration data
(small: the block hardly changes the residual stream); uniform = evenly spaced layers.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Optional

import numpy as np

from pangu_pro.config import ModelConfig
from pangu_pro.inherit.hardconcrete import UnitArrays

INPUT_PROJECTIONS = ("attention.wq", "attention.wk", "attention.wv", "feed_forward.w1", "feed_forward.w3",
                     "aug_shortcut.down")
OUTPUT_PROJECTIONS = ("attention.wo", "feed_forward.w2", "aug_shortcut.up")


def magnitude_scores(tensors: Mapping[str, np.ndarray], cfg: ModelConfig, order: int) -> UnitArrays:
    """L1 (`order` 1) or L2 (`order` 2) norm of all weights a unit owns."""
    def power(w):
        w = np.abs(np.asarray(w, dtype=np.float64))
        return w if order == 1 else w * w

    hd, groups = cfg.head_dim, cfg.num_heads // cfg.kv_heads
    scores = UnitArrays.full(cfg, 0.0)
    hidden = power(tensors["model.embed_tokens.weight"]).sum(0)
    if "lm_head.weight" in tensors:
        hidden += power(tensors["lm_head.weight"]).sum(0)
    for i in range(cfg.num_layers):
        def w(name):
            return tensors.get(f"model.layers.{i}.{name}.weight")

        q = power(w("attention.wq")).sum(1).reshape(cfg.kv_heads, groups * hd).sum(1)
        k = power(w("attention.wk")).sum(1).reshape(cfg.kv_heads, hd).sum(1)
        v = power(w("attention.wv")).sum(1).reshape(cfg.kv_heads, hd).sum(1)
        o = power(w("attention.wo")).sum(0).reshape(cfg.kv_heads, groups * hd).sum(1)
        scores.heads[i] = q + k + v + o
        scores.neurons[i] = (power(w("feed_forward.w1")).sum(1) + power(w("feed_forward.w3")).sum(1)
                             + power(w("feed_forward.w2")).sum(0))
        if cfg.aug_shortcut:
            scores.bottleneck[i] = power(w("aug_shortcut.down")).sum(1) + power(w("aug_shortcut.up")).sum(0)
        for name in INPUT_PROJECTIONS:
            if w(name) is not None:
                hidden += power(w(name)).sum(0)
        for name in OUTPUT_PROJECTIONS:
            if w(name) is not None:
                hidden += power(w(name)).sum(1)
        scores.layers[i] = scores.heads[i].sum() + scores.neurons[i].sum()
    scores.hidden = hidden
    return scores if order == 1 else scores.map(np.sqrt)


def random_scores(cfg: ModelConfig, seed: int) -> UnitArrays:
    rng = np.random.default_rng(seed)
    return UnitArrays.full(cfg, 0.0).map(lambda a: rng.random(a.shape))


def taylor_scores(network, cfg: ModelConfig, batches: Iterable[np.ndarray],
                  layer_gates: Optional[np.ndarray] = None, form: str = "abs_sum") -> UnitArrays:
    """First-order Taylor importance summed over `batches`, at masks of ones.

    `abs_sum`: |dL/dm| = |sum over the unit's weights of w * dL/dw| (a group's heads summed before the
    |.|: what removing the whole unit changes to first order); `sum_abs`: sum over the unit's weights
    of |w * dL/dw| (the per-weight form, aggregated like `magnitude_scores`).
    `layer_gates` [L] (0/1): a fixed layer selection, so scores are taken in the model that remains."""
    import mindspore as ms
    from mindspore import Tensor, ops

    from pangu_pro.inherit.cells import MaskGradient, WeightGradient
    from pangu_pro.model.pangu_pi import PanGuPiWithLoss

    if form == "sum_abs":
        params = network.trainable_params()
        cell = WeightGradient(PanGuPiWithLoss(network), params)
    else:
        grad = MaskGradient(PanGuPiWithLoss(network))
    ones = UnitArrays.full(cfg, 1.0)
    head = Tensor(np.ones((cfg.num_layers, cfg.num_heads), np.float32))
    neuron = Tensor(ones.neurons.astype(np.float32))
    hidden = Tensor(ones.hidden.astype(np.float32))
    gates = Tensor((np.ones(cfg.num_layers) if layer_gates is None else layer_gates).astype(np.float32))
    # without AugShortcut the layers ignore the bottleneck mask: a [L, 1] placeholder keeps one graph
    bottleneck = Tensor(np.ones((cfg.num_layers, max(ones.bottleneck.shape[1], 1)), np.float32))
    groups = cfg.num_heads // cfg.kv_heads
    scores = UnitArrays.full(cfg, 0.0)
    count = 0
    for ids in batches:
        if form == "sum_abs":
            grads = cell(Tensor(np.asarray(ids, np.int32)), head, neuron, hidden, gates, bottleneck)
            products = {p.name: ops.cast(p, ms.float32).asnumpy().astype(np.float64) * ops.cast(g, ms.float32).asnumpy()
                        for p, g in zip(params, grads)}
            part = magnitude_scores(products, cfg, 1)
            scores.heads += part.heads
            scores.neurons += part.neurons
            scores.hidden += part.hidden
            scores.bottleneck += part.bottleneck
            count += 1
            continue
        _, g_head, g_neuron, g_hidden, g_bottleneck = grad(Tensor(np.asarray(ids, np.int32)), head, neuron, hidden,
                                                           gates, bottleneck)
        g_head = g_head.asnumpy().astype(np.float64).reshape(cfg.num_layers, cfg.kv_heads, groups).sum(-1)
        scores.heads += np.abs(g_head)
        scores.neurons += np.abs(g_neuron.asnumpy())
        scores.hidden += np.abs(g_hidden.asnumpy())
        if cfg.aug_shortcut:
            scores.bottleneck += np.abs(g_bottleneck.asnumpy())
        count += 1
    if count == 0:
        raise ValueError("taylor: no calibration batches")
    scores.layers = scores.heads.sum(1) + scores.neurons.sum(1)
    return scores


def cosine_layer_scores(network, batches: Iterable[np.ndarray]) -> np.ndarray:
    """Mean 1 - cos(block input, block output) per layer over `batches` (higher: keep)."""
    from mindspore import Tensor

    from pangu_pro.inherit.cells import BlockSimilarity

    cell = BlockSimilarity(network)
    total, count = None, 0
    for ids in batches:
        ids = np.asarray(ids, np.int32)[:, :-1]  # the tokens a training step would see
        value = cell(Tensor(ids)).asnumpy().astype(np.float64)
        total = value if total is None else total + value
        count += 1
    if count == 0:
        raise ValueError("cosine layer selection: no calibration batches")
    return total / count


def uniform_layers(teacher_layers: int, keep: int) -> np.ndarray:
    """Evenly spaced layers, first and last included."""
    if keep == 1:
        return np.array([0])
    return np.unique(np.round(np.linspace(0, teacher_layers - 1, keep)).astype(np.int64))
