"""Distributed checkpoints: synthetic rank slices merged with a strategy give back the full tensors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import mindspore as ms

from pangu_pro.model.distributed_ckpt import (ParamLayout, layout_from_strategy, read_strategy, slice_for_rank,
                                              write_strategy_file)

RNG = np.random.default_rng(7)
COLUMN = ParamLayout((2, 4), (0, -1))  # [out, in] weight under ((dp=2, 1), (mp=4, 1)): rows over mp
ROW = ParamLayout((2, 4), (-1, 0))  # under ((dp, mp), (1, mp)): columns over mp
TWO_D = ParamLayout((2, 2, 2), (2, 0))  # dim 0 over the slowest device dim, dim 1 over the fastest


def hand_slices(full, layout):
    """Rank r's piece, by hand: r = (a, b, c) row-major over the device matrix."""
    pieces = []
    for r in range(8):
        if layout == COLUMN:
            pieces.append(np.split(full, 4, axis=0)[r % 4])
        elif layout == ROW:
            pieces.append(np.split(full, 4, axis=1)[r % 4])
        else:
            a, c = r // 4, r % 2
            pieces.append(np.split(np.split(full, 2, axis=0)[a], 2, axis=1)[c])
    return pieces


@pytest.mark.parametrize("layout,shape", [(COLUMN, (8, 6)), (ROW, (6, 8)), (TWO_D, (4, 6))])
def test_slices_by_hand(layout, shape):
    full = RNG.standard_normal(shape).astype(np.float32)
    pieces = hand_slices(full, layout)
    for r in range(8):
        np.testing.assert_array_equal(slice_for_rank(full, layout, r), pieces[r])


def test_optimizer_shard_splits_each_model_parallel_piece_over_the_repeated_devices():
    """ZeRO (MindSpore's `_construct_tensor_layout_for_opt_shard`): rank (d, m) of [dp 2, mp 4] holds
    rows block m of 4, and within it half d; a replicated tensor is split over all 8 ranks, innermost
    device dimension fastest; an opt shard size of 2 uses only the innermost repeated dimension."""
    full = np.arange(64 * 3, dtype=np.float32).reshape(64, 3)
    column = ParamLayout((2, 4), (0, -1), 0, 2, 4)
    for r in range(8):
        d, m = divmod(r, 4)
        np.testing.assert_array_equal(slice_for_rank(full, column, r), np.split(np.split(full, 4)[m], 2)[d])
    replicated = ParamLayout((2, 4), (-1, -1), 0, -1, 1)
    for r in range(8):
        np.testing.assert_array_equal(slice_for_rank(full, replicated, r), np.split(full, 8)[r])
    inner = ParamLayout((2, 4), (-1, -1), 0, 2, 1)
    assert [slice_for_rank(full, inner, r)[0, 0] for r in range(8)] == [0, 96, 0, 96, 0, 96, 0, 96]
    with pytest.raises(ValueError, match="exceeds the repeated devices"):
        slice_for_rank(full, ParamLayout((2, 4), (0, -1), 0, 4, 4), 0)


def test_layouts_from_strategies():
    assert layout_from_strategy((4, 1), (2, 4)) == COLUMN
    assert layout_from_strategy((1, 4), (2, 4)) == ROW
    assert layout_from_strategy((1, 1), (2, 4)) == ParamLayout((2, 4), (-1, -1))
    with pytest.raises(ValueError, match="matches no free dimension"):
        layout_from_strategy((3, 1), (2, 4))


def test_strategy_file_round_trip_through_mindspore(tmp_path):
    layouts = {"model.layers.0.attention.wq.weight": COLUMN, "model.layers.0.attention.wo.weight": ROW,
               "model.layers.0.feed_forward.w1.weight": ParamLayout((2, 4), (0, -1), 0, 2, 4)}
    write_strategy_file(layouts, tmp_path / "strategy_rank_0.ckpt", stage=1)
    assert set(ms.build_searched_strategy(str(tmp_path / "strategy_rank_0.ckpt"))) == set(layouts)
    assert read_strategy(tmp_path / "strategy_rank_0.ckpt") == layouts
    with pytest.raises(FileNotFoundError):
        read_strategy(tmp_path / "missing.ckpt")


# ---------------------------------------------------------------- a pp 2 x mp 2 x ZeRO run, saved and merged

def expected_layout(name: str, shape, dp: int, mp: int, zero: bool) -> ParamLayout:
    """The layout MindSpore gives a parameter of our cells over a stage's [dp, mp] devices (sharding.py's
    table): column/row parallel linears, SIAF rows split with the FFN, the rest replicated; ZeRO splits
    dimension 0 further over the repeated devices (norms opt out)."""
    leaf = name.rsplit(".", 2)[-2]
    if leaf in ("wq", "wk", "wv", "w1", "w3"):
        tensor_map = (0, -1)
    elif leaf in ("wo", "w2") or ".siaf." in name:
        tensor_map = (-1, 0)
    else:
        tensor_map = (-1,) * len(shape)
    sharded = zero and not name.endswith("norm.weight")
    return ParamLayout((dp, mp), tensor_map, 0, -1 if sharded else 0, mp if sharded else 0)


def write_sliced_run(run, cfg, dp: int = 2, mp: int = 2, pp: int = 2, step: int = 5) -> dict[str, np.ndarray]:
    """A run of dp x mp x pp ranks with ZeRO as the trainer leaves it: each rank's model and optimizer
    are set to the slices it would hold (our NumPy emulation of MindSpore's layout) and saved through
    the trainer's save path with the names it owns, beside strategy files as MindSpore writes them.
    Must run under the `semi_auto` fixture. Returns the full tensors (weights and optimizer state)."""
    from mindspore import Tensor

    from pangu_pro.config import ParallelConfig, TrainConfig
    from pangu_pro.model.distributed_ckpt import owned_parameters, rank_checkpoint_dir, write_strategy_file
    from pangu_pro.model.pangu_pi import PanGuPiWithLoss
    from pangu_pro.model.sharding import configure_model, strategy_file_path
    from pangu_pro.model.weights import build_model
    from pangu_pro.train.checkpoint import checkpoint_name, save_checkpoint
    from pangu_pro.train.optim import build_optimizer

    world, group = dp * mp * pp, dp * mp
    par = ParallelConfig(data_parallel=dp, model_parallel=mp, pipeline_stage=pp, micro_batch_num=pp,
                         optimizer_shard=True, optimizer_shard_threshold_kb=0)
    model = build_model(cfg, seed=0)
    configure_model(PanGuPiWithLoss(model), par)
    optimizer = build_optimizer(model.trainable_params(), TrainConfig())
    params = {p.name: p for p in [*model.trainable_params(), *optimizer.state_parameters()]}
    full = {name: RNG.standard_normal(p.shape).astype(np.float32) for name, p in params.items()}
    full["adam_step"] = np.array([step], np.int32)
    layouts = {name: expected_layout(name.split(".", 1)[1] if name.startswith(("adam_m.", "adam_v.")) else name,
                                     value.shape, dp, mp, zero=True)
               for name, value in full.items() if name != "adam_step"}  # the update count: no layout
    for rank in range(world):
        owned = owned_parameters(model, pp, world, rank)
        moments = {n for n in full if n.startswith(("adam_m.", "adam_v.")) and n.split(".", 1)[1] in owned}
        write_strategy_file({n: l for n, l in layouts.items() if n in owned | moments},
                            strategy_file_path(str(run), rank), rank // group)
        for name, param in params.items():
            local = slice_for_rank(full[name], layouts[name], rank % group) if name in layouts else full[name]
            param.set_data(Tensor(np.ascontiguousarray(local)), True)
        save_checkpoint(rank_checkpoint_dir(run, rank) / checkpoint_name(step), model, optimizer,
                        {"step": step, "rank": rank, "layout": {"pipeline_stage": pp}}, names=owned)
    return full


def test_pp2_mp2_zero_rank_checkpoints_merge_to_the_full_tensors(tmp_path, semi_auto):
    """8 ranks (2 stages of dp 2 x mp 2, ZeRO); `convert merge` (MindSpore's transform_checkpoints)
    gives back every full tensor, and a stage's rank folder holds only that stage's parameters."""
    from pangu_pro.config import ModelConfig
    from pangu_pro.train.merge import merge_run
    from pangu_pro.tensors import load_tensors
    from pangu_pro.model.distributed_ckpt import rank_checkpoint_dir

    cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      intermediate_size=64, seq_length=16, siaf=True, siaf_terms=2, aug_shortcut=False)
    run = tmp_path / "run"
    full = write_sliced_run(run, cfg)
    for rank in (0, 5):
        held, _ = load_tensors(rank_checkpoint_dir(run, rank) / "step_00000005" / "model.safetensors")
        stage = rank // 4
        assert any(f"layers.{stage}." in n for n in held) and not any(f"layers.{1 - stage}." in n for n in held)
        assert ("model.embed_tokens.weight" in held) == (stage == 0) and ("lm_head.weight" in held) == (stage == 1)
        assert held["model.layers.%d.attention.wq.weight" % stage].shape == (32 // 4, 32)  # mp 2 x ZeRO 2
    summary = merge_run(run, tmp_path / "merged")
    assert summary["ranks"] == 8 and summary["step"] == 5
    weights, _ = load_tensors(tmp_path / "merged" / "model.safetensors")
    moments, _ = load_tensors(tmp_path / "merged" / "optimizer.safetensors")
    assert set(weights) | set(moments) == set(full)
    for name, value in {**weights, **moments}.items():
        np.testing.assert_array_equal(value, full[name], err_msg=name)
    state = json.loads((tmp_path / "merged" / "state.json").read_text())
    assert state["step"] == 5 and "rank" not in state and state["merged_from"]["ranks"] == 8
    with pytest.raises(FileExistsError, match="--overwrite"):
        merge_run(run, tmp_path / "merged")


def test_resume_on_another_layout_merges_once(tmp_path, semi_auto):
    """The trainer's resume on a new layout: rank 0 merges the old run into checkpoints/merged/step_N,
    the other ranks wait for that folder (and give up after the time-out, naming it)."""
    from pangu_pro.config import ModelConfig
    from pangu_pro.tensors import load_tensors
    from pangu_pro.model.distributed_ckpt import rank_checkpoint_dir
    from pangu_pro.train.trainer import merged_for_new_layout

    cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      intermediate_size=64, seq_length=16, siaf=False, aug_shortcut=True, aug_shortcut_ratio=8)
    run = tmp_path / "run"
    full = write_sliced_run(run, cfg, dp=2, mp=1, pp=2)
    rank3 = rank_checkpoint_dir(run, 3) / "step_00000005"
    with pytest.raises(TimeoutError, match="rank 0 did not finish merging"):
        merged_for_new_layout(rank3, rank=3, wait_s=0.1)
    merged = merged_for_new_layout(rank_checkpoint_dir(run, 0) / "step_00000005", rank=0)
    assert merged == run / "checkpoints" / "merged" / "step_00000005"
    assert merged_for_new_layout(rank3, rank=3, wait_s=0.1) == merged
    weights, _ = load_tensors(merged / "model.safetensors")
    assert all(np.array_equal(weights[n], full[n]) for n in weights) and len(weights) == len(
        [n for n in full if not n.startswith("adam_")])
