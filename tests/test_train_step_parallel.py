"""The semi-auto training step's math, checked on the CPU (issue 12 items 1-4).

Semi-auto parallel does not compile on the CPU, so the step's parallel code path is run here in
stand-alone mode with its one cross-rank op (the overflow AllReduce) replaced, and the slicing that
the framework's norm reduction undoes is emulated in NumPy from the strategies our cells declare.
"""
from __future__ import annotations

import numpy as np
import pytest
import mindspore as ms
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

from pangu_pro.config import ModelConfig, ParallelConfig
from pangu_pro.model.pangu_pi import PanGuPiForCausalLM, PanGuPiWithLoss
from pangu_pro.model.sharding import InterleavedMean, shard_model, wrap_for_pipeline
from pangu_pro.model.weights import build_model
from pangu_pro.train.optim import AdamW
from pangu_pro.train.step import GradientUpdate, ParallelGradientUpdate, TrainStep

TINY = ModelConfig(vocab_size=256, hidden_size=64, num_layers=1, num_heads=4, intermediate_size=128,
                   seq_length=16, aug_shortcut_ratio=8)


class PlusOneRank(nn.Cell):
    """Stands in for the overflow AllReduce: another rank contributes `other` to the flag sum."""

    def __init__(self, other: float):
        super().__init__()
        self.other = other

    def construct(self, x):
        return x + self.other


def batches(k: int, rows: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [Tensor(rng.integers(3, 256, (rows, TINY.seq_length + 1)).astype(np.int32)) for _ in range(k)]


# --- item 2: one-graph accumulation ------------------------------------------------------------

def test_one_graph_accumulation_equals_one_big_batch_and_compiles_once():
    """The semi-auto step (GradAccumulation wrapper + ParallelGradientUpdate) on 2 micro batches gives
    the loss, norm and weights of one step on the concatenated batch, in one graph per update."""
    micro = batches(2)
    big_model = build_model(TINY, seed=3)
    big = TrainStep(PanGuPiWithLoss(big_model), AdamW(big_model.trainable_params()), grad_clip=0.5)
    model = build_model(TINY, seed=3)
    wrapped = wrap_for_pipeline(PanGuPiWithLoss(model), ParallelConfig(), 2)
    step = TrainStep(wrapped, AdamW(model.trainable_params()), grad_clip=0.5, grad_accum_steps=2,
                     micro_batches=2, semi_auto=True)
    step.update.allreduce = PlusOneRank(0.0)  # stand-alone: no other rank
    for update in range(2):
        expected = big([ops.concat(micro, 0)], 1e-3, 4.0)
        got = step(micro, 1e-3, 4.0)
        assert got.finite and got.loss == pytest.approx(expected.loss, rel=1e-6)
        assert got.grad_norm == pytest.approx(expected.grad_norm, rel=1e-5)
    for a, b in zip(model.trainable_params(), big_model.trainable_params()):
        np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), rtol=1e-5, atol=1e-6, err_msg=a.name)
    assert len(step.fused.compile_cache) == 1 and not hasattr(step, "micro")


# --- item 1: the parallel update's norm, clipping and overflow flag --------------------------------

def _update_pair(grad_clip):
    values = [np.random.default_rng(i).normal(size=shape).astype(np.float32) for i, shape in
              enumerate([(4, 3), (5,), (2, 2, 2)])]
    grads = tuple(Tensor(v * 8.0) for v in values)  # raw gradients at loss scale 4 x 2 micro losses
    updates, params = [], []
    for cls in (GradientUpdate, ParallelGradientUpdate):
        weights = ParameterTuple([Parameter(Tensor(np.ones(v.shape, np.float32)), name=f"w{i}")
                                  for i, v in enumerate(values)])
        update = cls(AdamW(weights), grad_clip)
        if cls is ParallelGradientUpdate:
            update.allreduce = PlusOneRank(0.0)
        updates.append(update)
        params.append(weights)
    return grads, updates, params, float(np.sqrt(sum((v ** 2).sum() for v in values)))


@pytest.mark.parametrize("grad_clip", [0.0, 0.5])
def test_parallel_update_equals_the_local_update(grad_clip):
    grads, (local, parallel), (w_local, w_parallel), norm = _update_pair(grad_clip)
    args = (Tensor(1e-2, ms.float32), Tensor(8.0, ms.float32), Tensor(1.5, ms.float32))
    for update in (local, parallel):
        finite, got = update(grads, *args)
        assert bool(finite.asnumpy()) and float(got.asnumpy()) == pytest.approx(norm, rel=1e-6)
    for a, b in zip(w_local, w_parallel):
        np.testing.assert_allclose(b.asnumpy(), a.asnumpy(), rtol=1e-5, atol=1e-7)
    assert not np.allclose(w_parallel[0].asnumpy(), 1.0)  # the update was applied


def test_parallel_update_skips_when_any_rank_overflows():
    """The decision is the all-reduced flag: a NaN on another rank skips the update here too."""
    grads, (_, parallel), (_, weights), _ = _update_pair(1.0)
    args = (Tensor(1e-2, ms.float32), Tensor(8.0, ms.float32), Tensor(1.5, ms.float32))
    parallel.allreduce = PlusOneRank(1.0)  # one other rank saw inf/NaN
    finite, _ = parallel(grads, *args)
    assert not bool(finite.asnumpy())
    assert all(np.array_equal(w.asnumpy(), np.ones(w.shape, np.float32)) for w in weights)
    parallel.allreduce = PlusOneRank(0.0)
    bad = (grads[0], Tensor(np.array([1.0, np.inf, 0.0, 0.0, 0.0], np.float32)), grads[2])
    assert not bool(parallel(bad, *args)[0].asnumpy())  # a local inf counts too
    assert not bool(parallel(grads, args[0], args[1], Tensor(np.nan, ms.float32))[0].asnumpy())  # and the loss


def test_parallel_update_uses_the_norm_form_the_parallel_pass_recognises():
    """MindFormers' ClipGradNorm: per-tensor square sums through an ExpandDims marked grad_scale,
    then Sqrt(AddN); MindSpore inserts the cross-slice reduction only for that pattern."""
    from mindformers.core import clip_grad

    weights = ParameterTuple([Parameter(Tensor(np.ones(3, np.float32)), name="w")])
    clipped = ParallelGradientUpdate(AdamW(weights), 1.0)
    assert isinstance(clipped.clip, clip_grad.ClipGradNorm)
    assert clip_grad.expand_dims.attrs.get("grad_scale") is True
    unclipped = ParallelGradientUpdate(AdamW(weights), 0.0)
    assert unclipped.clip is None and unclipped.square_sum is clip_grad.get_square_sum
    assert isinstance(unclipped.allreduce, ops.AllReduce) and unclipped.allreduce.group == "hccl_world_group"


# NumPy emulation: every rank's gradient slices (from the strategies our cells declare, the pipeline
# stages and ZeRO), the per-rank square sums, and the reduction the parallel pass builds for the
# recognised norm (each slice's square sum divided by its replica count, summed over all ranks).

def _parameter_strategy(applied: dict, name: str) -> tuple:
    """The strategy of the weight input of the primitive that consumes parameter `name`."""
    owner, leaf = name.rsplit(".", 1)
    if leaf in ("scale", "bias"):  # SIAF tables, read through a strided slice
        return applied[f"{owner}.row"][0][0]
    if owner.endswith("embed_tokens"):
        return applied[f"{owner}.gather"][0][0]
    if owner.endswith("norm"):
        return applied[f"{owner}.mul_weight"][0][1]
    return applied[f"{owner}.matmul"][0][1]  # Linear: x W^T, W is the second input


def _slices(full: np.ndarray, split: tuple, index: int) -> np.ndarray:
    """Block `index` of `full` cut into split[0] x split[1] x ... blocks (row-major)."""
    out = full
    for axis, parts in enumerate(split):
        size = full.shape[axis] // parts
        assert full.shape[axis] % parts == 0, f"dimension {axis} of {full.shape} not divisible by {parts}"
        block, index = divmod(index, int(np.prod(split[axis + 1:], dtype=int)))
        out = np.take(out, range(block * size, (block + 1) * size), axis=axis)
    return out


def emulate_rank_square_sums(grads: dict, applied: dict, stages: dict, par: ParallelConfig, zero: dict):
    """{rank: [(square sum, replica count) per held slice]} for dp x mp per stage, stage-major ranks."""
    per_stage = par.data_parallel * par.model_parallel
    ranks = {}
    for rank in range(per_stage * par.pipeline_stage):
        stage, local = divmod(rank, per_stage)
        d, m = divmod(local, par.model_parallel)
        held = []
        for name, g in grads.items():
            if stages[name] != stage:
                continue
            split = _parameter_strategy(applied, name)
            parts = int(np.prod(split))
            piece = _slices(g, split, m % parts)
            replicas = per_stage // parts  # devices of this stage holding the same slice
            if zero[name] and piece.shape[0] % replicas == 0:  # ZeRO: the replicas split it along dim 0
                piece = _slices(piece, (replicas,), (d * (par.model_parallel // parts) + m // parts) % replicas)
                replicas = 1
            held.append((float((piece.astype(np.float64) ** 2).sum()), replicas))
        ranks[rank] = held
    return ranks


@pytest.mark.parametrize("layout", [
    dict(data_parallel=8),
    dict(data_parallel=2, model_parallel=4),
    dict(data_parallel=2, model_parallel=4, vocab_parallel=True, sequence_parallel=True),
    dict(data_parallel=2, model_parallel=2, pipeline_stage=2, micro_batch_num=2),
    dict(data_parallel=4, model_parallel=2, optimizer_shard=True),
    dict(data_parallel=2, model_parallel=2, pipeline_stage=2, micro_batch_num=4, optimizer_shard=True),
])
def test_norm_over_every_slice_is_the_full_model_norm(semi_auto, layout):
    cfg = ModelConfig(vocab_size=256, hidden_size=64, num_layers=4, num_heads=4, intermediate_size=128,
                      seq_length=16, aug_shortcut_ratio=8)
    par = ParallelConfig(**layout)
    network = PanGuPiWithLoss(PanGuPiForCausalLM(cfg))
    applied = shard_model(network, par)
    layer_stage = par.layer_stages(cfg.num_layers)
    last = par.pipeline_stage - 1
    stages, zero, grads = {}, {}, {}
    rng = np.random.default_rng(0)
    for p in network.trainable_params():
        name = p.name
        if ".layers." in name:
            stages[name] = layer_stage[int(name.split(".layers.")[1].split(".")[0])]
        else:
            stages[name] = 0 if "embed_tokens" in name else last
        zero[name] = par.optimizer_shard and not name.endswith("norm.weight")
        grads[name] = rng.normal(size=p.shape)
    full = np.sqrt(sum((g ** 2).sum() for g in grads.values()))
    ranks = emulate_rank_square_sums(grads, applied, stages, par, zero)
    reduced = np.sqrt(sum(s / r for held in ranks.values() for s, r in held))
    assert reduced == pytest.approx(full, rel=1e-12)
    local = [np.sqrt(sum(s for s, _ in held)) for held in ranks.values()]  # the old per-rank norm
    if par.device_num != par.data_parallel or par.optimizer_shard:
        assert max(abs(n - full) / full for n in local) > 0.05
    else:
        assert local == pytest.approx([full] * len(local), rel=1e-12)  # pure data parallel: whole gradients


# --- item 3: micro_batch_interleave_num -----------------------------------------------------------

def test_interleave_two_gives_the_loss_and_gradients_of_one():
    ids = batches(1, rows=4)[0]
    model = build_model(TINY, seed=5)
    plain = PanGuPiWithLoss(model)
    grad = ops.GradOperation(get_by_list=True)
    weights = ParameterTuple(model.trainable_params())
    results = {}
    for name, net in (("1", plain), ("2", InterleavedMean(plain, 2)), ("sum", nn.MicroBatchInterleaved(plain, 2))):
        results[name] = (float(net(ids).asnumpy()), [g.asnumpy() for g in grad(net, weights)(ids)])
    (loss1, grads1), (loss2, grads2), (loss_sum, grads_sum) = results["1"], results["2"], results["sum"]
    assert loss2 == pytest.approx(loss1, rel=1e-6)
    for a, b in zip(grads1, grads2):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-7)
    assert loss_sum == pytest.approx(2 * loss1, rel=1e-6)  # the framework cell alone sums (the old defect)
    np.testing.assert_allclose(grads_sum[0], 2 * grads1[0], rtol=1e-4, atol=1e-7)
