"""The gradient scale of every parallel mode, by a NumPy emulation of MindSpore's reduction.

`sharding.gradients_mean(mode)` derives the `gradients_mean` flag from how the loss is reduced
(docs/parallel.md, "Gradient scale"). This file reproduces what the framework does with the flag and
compares the gradient each rank applies with the single-device gradient of the same global batch:

- data_parallel: each rank's loss is the mean over its own samples; `DistributedGradReducer` sums the
  dp gradients and, with mean, multiplies by 1/dp (`mindspore/nn/wrap/grad_reducer.py`,
  `_tensors_allreduce`).
- semi_auto_parallel: the loss is the mean over the global batch (the ReduceSum is sharded, the
  framework all-reduces the partial sums). The scalar loss's sensitivity is divided by the stage's
  device count (`OperatorInfo::InferAsLossDivisor`, `loss_repeated_mean` on by default:
  `mindspore/context.py` "loss_repeated_mean"), the backward of the forward AllReduce is an AllReduce
  sum of the sensitivities (`ops/_grad_experimental/grad_comm_ops.py`, `get_bprop_all_reduce`), so a
  rank's gradient is its share of the global gradient; a gradient of a tensor computed redundantly on
  several ranks is held as partial sums (backprop is linear in the cotangent). The mirror backward then
  all-reduces over the ranks holding the same slice and, with mean_flag, multiplies by 1/dev_num
  (`_MirrorOperator`; `_MirrorMicroStepOperator` accumulating micro steps first; under ZeRO the
  AllGather's backward is a ReduceScatter times 1/rank_size with mean_flag).

The toy model has what matters for the scale: a weight split by model parallel (W, column parallel)
and a replicated one (g, like a norm weight) used redundantly on the model-parallel ranks.
"""
from __future__ import annotations

import numpy as np
import pytest
import mindspore as ms

from pangu_pro.config import ParallelConfig, config_from_dict
from pangu_pro.model.sharding import gradients_mean, parallel_context_kwargs

D_IN, D_OUT, TOKENS = 4, 6, 96  # every split below is even: micro means average to the global mean
RNG = np.random.default_rng(0)
X = RNG.normal(size=(TOKENS, D_IN))
Y = RNG.normal(size=(TOKENS, D_OUT))
W = RNG.normal(size=(D_IN, D_OUT))
G = RNG.normal(size=D_IN)


def summed_loss_grads(tokens, cols, scale):
    """Gradients of scale * sum_{t in tokens, c in cols} (z_tc - y_tc)^2 / 2, z = (x * g) @ W.
    Returns (dW zero outside `cols`, dg): a rank's partial gradients."""
    h = X[tokens] * G
    dz = np.zeros((len(tokens), D_OUT))
    dz[:, cols] = scale * (h @ W[:, cols] - Y[tokens][:, cols])
    return h.T @ dz, (X[tokens] * (dz @ W.T)).sum(axis=0)


def single_device():
    """The reference: the mean loss over the whole global batch on one device."""
    return summed_loss_grads(np.arange(TOKENS), np.arange(D_OUT), 1.0 / TOKENS)


def mirror(grads, group_size, mean_flag):
    """The mirror (or ZeRO reduce-scatter + all-gather) backward: sum over the group, 1/size with mean_flag."""
    total = np.sum(grads, axis=0)
    return total / group_size if mean_flag else total


def data_parallel(dp, mean_flag, accum=1):
    """DATA_PARALLEL: rank i's loss = mean over its own tokens; accumulation sums k micro gradients,
    divides by k (the step's grad_scale); DistributedGradReducer sums the ranks (x 1/dp with mean)."""
    per_rank = np.array_split(np.arange(TOKENS), dp)
    w_grads, g_grads = [], []
    for tokens in per_rank:
        micro = [summed_loss_grads(t, np.arange(D_OUT), 1.0 / len(t)) for t in np.array_split(tokens, accum)]
        w_grads.append(sum(m[0] for m in micro) / accum)
        g_grads.append(sum(m[1] for m in micro) / accum)
    return mirror(w_grads, dp, mean_flag), mirror(g_grads, dp, mean_flag)


def semi_auto(dp, mp, mean_flag, accum=1, zero=False):
    """SEMI_AUTO_PARALLEL, full batch: rank (i, j) holds data-parallel token block i and column slice j
    of W. Each of the `accum` micro batches is a global-mean loss; GradAccumulation / PipelineCell sums
    them and the step divides by accum (micro_batches); the mirror accumulates, then reduces once."""
    devices = dp * mp
    micro_batches = np.array_split(np.arange(TOKENS), accum)
    cols = np.array_split(np.arange(D_OUT), mp)
    local = {(i, j): [np.zeros_like(W), np.zeros_like(G)] for i in range(dp) for j in range(mp)}
    for tokens in micro_batches:
        sens = np.full(devices, 1.0 / devices)  # the loss divisor: the scalar loss is repeated on every device
        d_total = sens.sum()  # backward of the forward AllReduce over the ReduceSum's partial sums
        blocks = np.array_split(tokens, dp)
        for (i, j), acc in local.items():
            dw, dg = summed_loss_grads(blocks[i], cols[j], d_total / len(tokens))
            acc[0] += dw
            acc[1] += dg
    # W slice j lives on the dp ranks (i, j): mirror group dp (under ZeRO: reduce-scatter over the same
    # group, then each rank's 1/dp piece is all-gathered back; the scale is the same);
    # g is replicated on all devices (norm weights opt out of ZeRO): mirror group dp * mp
    w = sum(mirror([local[i, j][0] for i in range(dp)], dp, mean_flag) for j in range(mp))
    if zero:
        pieces = np.array_split(w.reshape(-1), dp)  # what each rank's reduce-scatter output holds
        w = np.concatenate(pieces).reshape(W.shape)
    g = mirror([acc[1] for acc in local.values()], devices, mean_flag)
    return w / accum, g / accum


def assert_single_device_scale(grads):
    ref_w, ref_g = single_device()
    np.testing.assert_allclose(grads[0], ref_w, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grads[1], ref_g, rtol=1e-12, atol=1e-12)


def test_the_emulation_reproduces_single_device_semantics_with_flags_derived_from_the_loss():
    assert gradients_mean("data_parallel") is True
    assert gradients_mean("semi_auto_parallel") is False and gradients_mean("auto_parallel") is False
    with pytest.raises(ValueError, match="stand_alone"):
        gradients_mean("stand_alone")
    assert_single_device_scale(data_parallel(4, mean_flag=True))
    assert_single_device_scale(data_parallel(4, mean_flag=True, accum=3))
    assert_single_device_scale(semi_auto(4, 2, mean_flag=False))
    assert_single_device_scale(semi_auto(8, 1, mean_flag=False, zero=True))


def test_the_wrong_flag_is_off_by_the_group_size():
    """What the emulation says a wrong flag costs: semi-auto with mean divides a model-parallel-split
    weight by dp and a replicated one by dp*mp; data parallel without mean multiplies by dp."""
    ref_w, ref_g = single_device()
    w, g = semi_auto(4, 2, mean_flag=True)
    np.testing.assert_allclose(w, ref_w / 4, rtol=1e-12)
    np.testing.assert_allclose(g, ref_g / 8, rtol=1e-12)
    w, g = data_parallel(4, mean_flag=False)
    np.testing.assert_allclose(w, ref_w * 4, rtol=1e-12)


PRESET_LAYOUTS = {  # (ParallelConfig, emulation) of the layouts the presets and the check use
    "dp8 (DATA_PARALLEL, CPU and data-parallel runs)": (ParallelConfig(data_parallel=8), lambda f: data_parallel(8, f)),
    "dp8 x accumulation 4 (DATA_PARALLEL)": (ParallelConfig(data_parallel=8),
                                             lambda f: data_parallel(8, f, accum=4)),
    "dp4 x mp2 semi-auto": (ParallelConfig(data_parallel=4, model_parallel=2), lambda f: semi_auto(4, 2, f)),
    "dp2 x mp2 x pp2, 4 micro batches": (ParallelConfig(data_parallel=2, model_parallel=2, pipeline_stage=2,
                                                        micro_batch_num=4), lambda f: semi_auto(2, 2, f, accum=4)),
    "dp2 x mp4, ZeRO, accumulation 2": (ParallelConfig(data_parallel=2, model_parallel=4, optimizer_shard=True),
                                        lambda f: semi_auto(2, 4, f, accum=2, zero=True)),
}


@pytest.mark.parametrize("name", list(PRESET_LAYOUTS))
def test_parallel_context_kwargs_give_the_single_device_gradient(name):
    parallel_cfg, emulate = PRESET_LAYOUTS[name]
    flag = parallel_context_kwargs(parallel_cfg)["gradients_mean"]
    assert_single_device_scale(emulate(flag))


def _context_after_trainer_setup(monkeypatch, tmp_path, parallel: dict, train: dict) -> dict:
    """The auto-parallel context `trainer.setup_parallel` leaves on 8 (patched) Ascend devices."""
    import mindspore.communication as comm
    from pangu_pro.train.trainer import setup_parallel

    config = config_from_dict({"model": {"vocab_size": 256, "hidden_size": 64, "num_layers": 2, "num_heads": 4,
                                         "intermediate_size": 128, "seq_length": 32},
                               "parallel": parallel, "train": {"output_dir": str(tmp_path / "run"), **train}})
    real = ms.get_context
    monkeypatch.setattr(ms, "get_context", lambda key: "Ascend" if key == "device_target" else real(key))
    monkeypatch.setattr(comm, "init", lambda *a, **k: None)
    monkeypatch.setattr(comm, "get_rank", lambda *a, **k: 0)
    monkeypatch.setattr(comm, "get_group_size", lambda *a, **k: 8)
    monkeypatch.setenv("MS_WORKER_NUM", "8")
    try:
        setup_parallel(config)
        return {key: ms.get_auto_parallel_context(key) for key in ("parallel_mode", "full_batch", "gradients_mean")}
    finally:
        ms.reset_auto_parallel_context()


@pytest.mark.parametrize("parallel,train,emulate", [
    # the 1B Pro preset's 8-device layout: ZeRO over data parallel alone, 4 accumulation steps
    ({"data_parallel": 8, "optimizer_shard": True}, {"grad_accum_steps": 4},
     lambda f: semi_auto(8, 1, f, accum=4, zero=True)),
    ({"data_parallel": 4, "model_parallel": 2}, {}, lambda f: semi_auto(4, 2, f)),
    ({"data_parallel": 8}, {"grad_accum_steps": 2}, lambda f: data_parallel(8, f, accum=2)),
])
def test_the_trainer_context_gives_the_single_device_gradient(monkeypatch, tmp_path, parallel, train, emulate):
    context = _context_after_trainer_setup(monkeypatch, tmp_path, parallel, train)
    assert_single_device_scale(emulate(context["gradients_mean"]))


def test_the_mindformers_preset_follows_the_rule():
    """configs/mindformers/pangu_1b_pro.yaml runs MindFormers' trainer; its CrossEntropyLoss is a global
    mean under semi-auto as ours is, so its gradients_mean must be the rule's for its parallel_mode."""
    from pathlib import Path

    import yaml

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "mindformers" / "pangu_1b_pro.yaml")
                         .read_text())
    mode = {0: "data_parallel", 1: "semi_auto_parallel", 2: "auto_parallel"}[raw["parallel"]["parallel_mode"]]
    assert raw["parallel"]["gradients_mean"] is gradients_mean(mode)
