"""Vocabulary-parallel cross-entropy (`PanGuPiWithLoss.vocab_nll`, `parallel.vocab_parallel`): its math, as the
per-shard reductions and all-reduces the sharded graph runs, equals the plain cross-entropy, and the CPU cell
computes the same loss and gradients in both forms. Strategies: tests/test_parallel_layout.py."""
from __future__ import annotations

import numpy as np
import pytest
import mindspore as ms
from mindspore import ops

from pangu_pro.config import ModelConfig
from pangu_pro.model.pangu_pi import PanGuPiForCausalLM, PanGuPiWithLoss

TINY = ModelConfig(vocab_size=96, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, seq_length=8,
                   aug_shortcut_ratio=8)


def plain_nll(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[label] in float64, the reference."""
    x = logits.astype(np.float64)
    top = x.max(-1, keepdims=True)
    log_probs = x - top - np.log(np.exp(x - top).sum(-1, keepdims=True))
    return -np.take_along_axis(log_probs, labels[:, None], -1)[:, 0]


def sharded_nll(logits: np.ndarray, labels: np.ndarray, mp: int) -> np.ndarray:
    """What the (dp, mp) strategies compute: device r holds vocabulary slice r; each reduction over V runs on
    the slice and its [N, 1] result is all-reduced (max, then sum); the target logit is the one-hot product
    summed on the device whose slice holds the label (zero elsewhere), then all-reduced."""
    shards = np.split(logits.astype(np.float64), mp, axis=-1)
    width = logits.shape[-1] // mp
    top = np.max([s.max(-1, keepdims=True) for s in shards], axis=0)  # all-reduce max of [N, 1]
    sum_exp = np.sum([np.exp(s - top).sum(-1, keepdims=True) for s in shards], axis=0)  # all-reduce sum
    targets = []
    for r, s in enumerate(shards):
        one_hot = np.zeros_like(s)
        mine = (labels >= r * width) & (labels < (r + 1) * width)
        one_hot[np.nonzero(mine)[0], labels[mine] - r * width] = 1.0
        targets.append(((s - top) * one_hot).sum(-1, keepdims=True))
    target = np.sum(targets, axis=0)  # all-reduce sum
    return (np.log(sum_exp) - target)[:, 0]


@pytest.mark.parametrize("mp", [1, 2, 4, 8])
def test_per_shard_reductions_and_all_reduces_equal_the_cross_entropy(mp):
    rng = np.random.default_rng(mp)
    logits = (rng.standard_normal((64, 96)) * 6).astype(np.float32)
    logits[0, 5] = 80.0  # a confident row: the max shift matters
    labels = rng.integers(0, 96, 64)
    np.testing.assert_allclose(sharded_nll(logits, labels, mp), plain_nll(logits, labels), rtol=0, atol=1e-6)


def test_the_cell_computes_the_same_loss_and_gradients_in_both_forms():
    """On the CPU (stand-alone, no strategies) the vocabulary-parallel form equals LogSoftmax + GatherD:
    the loss to 1e-6 and every parameter gradient to 1e-5 relative; `vocab_nll` itself equals the NumPy
    per-shard emulation above."""
    ms.set_seed(0)
    network = PanGuPiForCausalLM(TINY)
    plain, vocab = PanGuPiWithLoss(network), PanGuPiWithLoss(network)
    vocab.vocab_parallel = True
    ids = ms.Tensor(np.random.default_rng(0).integers(3, 96, (2, TINY.seq_length + 1)), ms.int32)
    params = network.trainable_params()
    grad = ops.value_and_grad
    loss_a, grads_a = grad(plain, None, params)(ids)
    loss_b, grads_b = grad(vocab, None, params)(ids)
    assert abs(float(loss_a.asnumpy()) - float(loss_b.asnumpy())) <= 1e-6
    for p, a, b in zip(params, grads_a, grads_b):
        np.testing.assert_allclose(b.asnumpy(), a.asnumpy(), rtol=1e-5, atol=1e-7, err_msg=p.name)
    logits = np.random.default_rng(1).standard_normal((16, 96)).astype(np.float32) * 4
    labels = np.random.default_rng(2).integers(0, 96, 16)
    ours = vocab.vocab_nll(ms.Tensor(logits), ms.Tensor(labels, ms.int32)).asnumpy()
    np.testing.assert_allclose(ours, sharded_nll(logits, labels, 4), rtol=0, atol=1e-5)
