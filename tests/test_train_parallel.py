"""The trainer's semi-auto parallel branch (tensor/pipeline parallel, ZeRO), checked on the CPU.

A semi-auto context of 8 devices with the group size patched lets the trainer build its network
without running it (mindspore-notes, "Shard strategies without devices"); compiling it needs Ascend,
which the last test (marker `ascend`) does end to end with msrun.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor, nn

from pangu_pro.config import config_from_dict
from pangu_pro.configtools import ConfigError
from pangu_pro.model.sharding import LazyInlineWithLoss
from pangu_pro.train.step import ParallelGradientUpdate
from pangu_pro.train.trainer import Parallel, build_training, setup_parallel, train_dataset
from mindspore.parallel.nn import GradAccumulation

MODEL = {"vocab_size": 256, "hidden_size": 64, "num_layers": 4, "num_heads": 4, "intermediate_size": 128,
         "seq_length": 32, "aug_shortcut_ratio": 8}


def make_config(tmp_path, parallel, **train):
    return config_from_dict({"model": MODEL, "parallel": parallel,
                             "train": {"batch_size": 2, "steps": 3, "output_dir": str(tmp_path / "run"), **train}})


def strategy(cell, path: str):
    """in_strategy of the primitive at `path` (cell attributes joined by dots)."""
    *cells, prim = path.split(".")
    for name in cells:
        cell = cell[int(name)] if name.isdigit() else getattr(cell, name)
    return getattr(cell, prim).in_strategy


def test_pipeline_layout_is_sharded_staged_and_wrapped(semi_auto, tmp_path):
    config = make_config(tmp_path, {"data_parallel": 2, "model_parallel": 2, "pipeline_stage": 2,
                                    "micro_batch_num": 4, "optimizer_shard": True})
    par = Parallel(rank=0, world=8, semi_auto=True, replicas=2, micro_batches=4)
    model, loss_net, optimizer, step_fn = build_training(config, par)
    assert isinstance(step_fn.fused.loss_net, nn.PipelineCell)
    assert step_fn.fused.loss_net.network is loss_net and step_fn.fused.micro_batches == 4.0
    assert isinstance(step_fn.update, ParallelGradientUpdate)  # norm and overflow over every rank
    assert isinstance(step_fn.update.reducer, nn.PipelineGradReducer)  # the framework reduces; no DP reducer
    assert isinstance(loss_net, LazyInlineWithLoss) and loss_net.cell_init_args.startswith("lazy_inline_")
    assert strategy(model, "model.layers.0.attention.wq.matmul") == ((2, 1), (2, 1))
    assert strategy(model, "model.layers.3.feed_forward.w2.matmul") == ((2, 2), (1, 2))
    assert strategy(model, "lm_head.matmul") == ((4, 1), (1, 1))
    assert strategy(loss_net, "log_softmax") == ((2, 2, 1),)
    assert [layer.pipeline_stage for layer in model.model.layers] == [0, 0, 1, 1]
    assert (model.model.embed_tokens.pipeline_stage, model.model.norm.pipeline_stage,
            model.lm_head.pipeline_stage) == (0, 1, 1)
    with pytest.raises(AttributeError):  # unstaged, as in MindFormers: its input_ids[:, :-1] feeds stage 0
        loss_net.pipeline_stage
    whole = sorted(p.name for p in optimizer.params if not p.parallel_optimizer)
    assert whole == sorted(p.name for p in optimizer.params if p.name.endswith("norm.weight"))
    assert len(whole) == 2 * 4 + 1  # two norms per layer + the final norm; everything else is ZeRO-split


def test_tensor_parallel_accumulates_in_one_graph(semi_auto, tmp_path):
    config = make_config(tmp_path, {"data_parallel": 2, "model_parallel": 4, "sequence_parallel": True},
                         grad_accum_steps=2)
    par = Parallel(rank=0, world=8, semi_auto=True, replicas=2)
    model, loss_net, optimizer, step_fn = build_training(config, par)
    wrapper = step_fn.fused.loss_net  # MindSpore's accumulation cell: gradients reduced once per update
    assert isinstance(wrapper, GradAccumulation) and wrapper.network is loss_net and wrapper.micro_size == 2
    assert isinstance(loss_net, LazyInlineWithLoss)  # called twice per update: one reusable sub-graph
    assert not hasattr(step_fn, "micro") and step_fn.fused.micro_batches == 2.0
    assert isinstance(step_fn.update.reducer, nn.PipelineGradReducer)
    assert strategy(model, "model.layers.1.attention.wk.matmul") == ((2, 1), (4, 1))
    assert model.model.layers[1].attention.wo.matmul.out_strategy == ((8, 1),)  # sequence parallel
    assert strategy(model, "model.layers.1.attention_norm.square") == ((2, 4, 1),)
    assert all(p.parallel_optimizer for p in optimizer.params)  # no ZeRO: nothing opted out
    with pytest.raises(AttributeError):
        model.model.layers[0].pipeline_stage


def test_data_parallel_build_is_unsharded(tmp_path):
    _, loss_net, _, step_fn = build_training(make_config(tmp_path, {}), Parallel())
    assert step_fn.fused.loss_net is loss_net and step_fn.update.reducer is None
    assert not hasattr(loss_net.network.model.layers[0].attention.wq.matmul, "in_strategy")


@pytest.mark.parametrize("parallel,key", [
    ({"data_parallel": 4, "model_parallel": 2}, "parallel.model_parallel"),
    ({"pipeline_stage": 2, "micro_batch_num": 2}, "parallel.pipeline_stage"),
    ({"data_parallel": 2, "optimizer_shard": True}, "parallel.optimizer_shard"),
])
def test_semi_auto_layouts_fail_clearly_on_the_cpu(tmp_path, parallel, key):
    with pytest.raises(ConfigError) as err:
        setup_parallel(make_config(tmp_path, parallel))
    assert err.value.key == key
    assert "semi-auto parallel" in str(err.value) and "Ascend only" in str(err.value)
    assert ms.get_auto_parallel_context("parallel_mode") == "stand_alone"


def ascend_setup(monkeypatch, config, rank):
    """setup_parallel as on 8 NPUs: device target, init() and the group patched; returns the Parallel."""
    import mindspore.communication as comm

    real = ms.get_context
    monkeypatch.setattr(ms, "get_context", lambda key: "Ascend" if key == "device_target" else real(key))
    monkeypatch.setattr(comm, "init", lambda *a, **k: None)
    monkeypatch.setattr(comm, "get_rank", lambda *a, **k: rank)
    monkeypatch.setattr(comm, "get_group_size", lambda *a, **k: 8)
    try:
        par = setup_parallel(config)
        context = {k: ms.get_auto_parallel_context(k) for k in ("parallel_mode", "full_batch", "pipeline_stages",
                                                                "strategy_ckpt_config")}
    finally:
        ms.reset_auto_parallel_context()
    return par, context


def test_semi_auto_setup_on_ascend_sets_context_and_data_split(monkeypatch, tmp_path):
    config = make_config(tmp_path, {"data_parallel": 2, "model_parallel": 2, "pipeline_stage": 2,
                                    "micro_batch_num": 4})
    par, context = ascend_setup(monkeypatch, config, rank=5)
    assert par == Parallel(rank=5, world=8, semi_auto=True, replicas=2, num_shards=1, shard_id=0, read_factor=8,
                           micro_batches=4, writer=4)
    assert context["parallel_mode"] == "semi_auto_parallel" and context["full_batch"] is True
    assert context["pipeline_stages"] == 2
    assert context["strategy_ckpt_config"]["save_file"] == f"{tmp_path}/run/strategy/strategy_rank_5.ckpt"
    with pytest.raises(ConfigError, match="^train.grad_accum_steps"):
        ascend_setup(monkeypatch, make_config(tmp_path, {"data_parallel": 4, "pipeline_stage": 2,
                                                         "micro_batch_num": 2}, grad_accum_steps=2), 0)


def test_zero_over_data_parallel_reads_its_own_shard(monkeypatch, tmp_path):
    par, context = ascend_setup(monkeypatch, make_config(tmp_path, {"data_parallel": 8, "optimizer_shard": True}), 3)
    assert par == Parallel(rank=3, world=8, semi_auto=True, replicas=8, num_shards=8, shard_id=3, read_factor=1)
    assert context["parallel_mode"] == "semi_auto_parallel" and context["full_batch"] is False


def test_full_batch_rank_reads_the_global_batch(tmp_path):
    from tests.test_train import make_rows, write_shard

    rows = make_rows(40, 0)
    config = config_from_dict({"model": MODEL, "data": {"train_files": [str(write_shard(tmp_path / "t.mindrecord", rows))],
                                                        "shuffle": False},
                               "train": {"batch_size": 2, "steps": 2, "output_dir": str(tmp_path / "run")}})
    par = Parallel(rank=5, world=8, semi_auto=True, replicas=2, num_shards=1, shard_id=0, read_factor=4)
    first = next(train_dataset(config, par, 0).create_tuple_iterator())[0].asnumpy()
    np.testing.assert_array_equal(first, rows[:8])  # batch_size 2 x dp 2 x 2 micro batches, every rank alike


def test_step_divides_a_summed_micro_batch_loss(tmp_path):
    """A loss net summing m micro losses (what nn.PipelineCell does) gives the same step as the mean."""
    from pangu_pro.config import ModelConfig
    from pangu_pro.model.pangu_pi import PanGuPiWithLoss
    from pangu_pro.model.weights import build_model
    from pangu_pro.train.optim import AdamW
    from pangu_pro.train.step import TrainStep

    class SumOfHalves(nn.Cell):
        def __init__(self, net):
            super().__init__(auto_prefix=False)
            self.network = net

        def construct(self, ids):
            return self.network(ids[:2]) + self.network(ids[2:])

    ids = Tensor(np.random.default_rng(0).integers(3, 256, (4, 17)).astype(np.int32))
    cfg = ModelConfig(**{**MODEL, "num_layers": 1, "seq_length": 16})
    results = []
    for wrap, micro in ((lambda n: n, 1), (SumOfHalves, 2)):
        model = build_model(cfg, seed=3)
        opt = AdamW(model.trainable_params())
        out = TrainStep(wrap(PanGuPiWithLoss(model)), opt, grad_clip=0.5, micro_batches=micro)([ids], 1e-3, 4.0)
        results.append((out, model.model.layers[0].attention.wq.weight.asnumpy()))
    (a, wa), (b, wb) = results
    assert b.loss == pytest.approx(a.loss, rel=1e-6) and b.grad_norm == pytest.approx(a.grad_norm, rel=1e-5)
    np.testing.assert_allclose(wb, wa, rtol=1e-5, atol=1e-7)


def test_rank_checkpoint_paths(tmp_path):
    from pangu_pro.model.distributed_ckpt import rank_checkpoint_dir
    from pangu_pro.train.checkpoint import checkpoint_name, resolve_rank_resume

    out = tmp_path / "run"
    assert rank_checkpoint_dir(out, 3) / checkpoint_name(200) == out / "checkpoints" / "rank_3" / "step_00000200"
    for rank in (0, 1):
        for step in (100, 200):
            folder = rank_checkpoint_dir(out, rank) / checkpoint_name(step)
            folder.mkdir(parents=True)
            (folder / "state.json").write_text(json.dumps({"step": step, "rank": rank}))
    assert resolve_rank_resume(out, 1) == out / "checkpoints" / "rank_1" / "step_00000200"
    assert resolve_rank_resume(out / "checkpoints", 0) == out / "checkpoints" / "rank_0" / "step_00000200"
    given = out / "checkpoints" / "rank_0" / "step_00000100"  # any rank's step folder: this rank's of that step
    assert resolve_rank_resume(given, 1) == out / "checkpoints" / "rank_1" / "step_00000100"
    with pytest.raises(FileNotFoundError, match="rank 2 has no checkpoint of step_00000100"):
        resolve_rank_resume(given, 2)
    merged = tmp_path / "merged" / "step_00000200"  # a whole checkpoint loads on any layout
    merged.mkdir(parents=True)
    (merged / "state.json").write_text("{}")
    assert resolve_rank_resume(merged, 5) == merged


WORKER_CONFIG = """
model: {vocab_size: 512, hidden_size: 128, num_layers: 4, num_heads: 4, intermediate_size: 256,
        seq_length: 128, aug_shortcut_ratio: 8, compute_dtype: bfloat16, use_flash_attention: true}
parallel: {data_parallel: 2, model_parallel: 2, pipeline_stage: 2, micro_batch_num: 2,
           sequence_parallel: true, recompute: selective}
data: {train_files: [%s]}
train: {batch_size: 1, steps: %d, save_every: 2, output_dir: %s}
"""


@pytest.mark.ascend
@pytest.mark.distributed
def test_trainer_dp2_mp2_pp2_on_eight_npus(tmp_path):
    """scripts/run_distribute.sh on 8 NPUs: trains, every rank saves its slice, resume continues."""
    from tests.support import free_port
    from tests.test_train import write_shard

    rows = np.random.default_rng(0).integers(3, 512, (64, 129)).astype(np.int32)
    data = write_shard(tmp_path / "train.mindrecord", rows)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "PANGU_PRO_DEVICE": "ascend"}
    for steps, extra in ((2, []), (4, ["--", "--resume", "auto", "--allow-changes"])):  # train.steps 2 -> 4
        config = tmp_path / f"c{steps}.yaml"
        config.write_text(WORKER_CONFIG % (data, steps, tmp_path / "run"))
        cmd = ["bash", str(root / "scripts/run_distribute.sh"), str(config), "--workers", "8", "--master-port",
               str(free_port()), "--log-dir", str(tmp_path / f"log{steps}"), *extra]
        assert subprocess.run(cmd, env=env, timeout=1800).returncode == 0, f"see {tmp_path}/log{steps}"
    for rank in range(8):
        state = json.loads((tmp_path / f"run/checkpoints/rank_{rank}/step_00000004/state.json").read_text())
        assert state["rank"] == rank and state["layout"]["pipeline_stage"] == 2
        assert (tmp_path / f"run/strategy/strategy_rank_{rank}.ckpt").is_file()
