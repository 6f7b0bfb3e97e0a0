"""Distributed checkpoints: synthetic rank slices merged with a strategy give back the full tensors."""
from __future__ import annotations

import numpy as np
import pytest
import mindspore as ms

from pangu_pro.model.distributed_ckpt import (ParamLayout, layout_from_strategy, merge_rank_checkpoints,
                                              merge_rank_slices, merge_strategies, read_strategy, reshard_state,
                                              save_state, slice_for_rank, write_strategy_json)

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
def test_merge_synthetic_slices(layout, shape):
    full = RNG.standard_normal(shape).astype(np.float32)
    pieces = hand_slices(full, layout)
    np.testing.assert_array_equal(merge_rank_slices("w", pieces, layout), full)
    for r in range(8):
        np.testing.assert_array_equal(slice_for_rank(full, layout, r), pieces[r])


def test_merge_rejects_a_wrong_slice_count():
    with pytest.raises(ValueError, match="3 slices for a layout over 8 devices"):
        merge_rank_slices("w", [np.zeros((2, 6), np.float32)] * 3, COLUMN)


def test_layouts_from_strategies():
    assert layout_from_strategy((4, 1), (2, 4)) == COLUMN
    assert layout_from_strategy((1, 4), (2, 4)) == ROW
    assert layout_from_strategy((1, 1), (2, 4)) == ParamLayout((2, 4), (-1, -1))
    with pytest.raises(ValueError, match="matches no free dimension"):
        layout_from_strategy((3, 1), (2, 4))


def test_strategy_file_round_trip_through_mindspore(tmp_path):
    layouts = {"model.layers.0.attention.wq.weight": COLUMN, "model.layers.0.attention.wo.weight": ROW}
    write_strategy_json(layouts, tmp_path / "strategy.json")
    assert set(ms.build_searched_strategy(str(tmp_path / "strategy.json"))) == set(layouts)
    assert read_strategy(tmp_path / "strategy.json") == layouts
    with pytest.raises(FileNotFoundError):
        read_strategy(tmp_path / "missing.ckpt")


def test_merge_rank_checkpoints_with_pipeline_stages_and_reshard(tmp_path):
    """8 ranks: stage 0 = ranks 0-3 (dp 2 x mp 2) holds the embedding (replicated) and wq (column);
    stage 1 = ranks 4-7 holds wo (row) and the head (replicated). Merge, then reshard to dp 1 x mp 4."""
    full = {"model.embed_tokens.weight": RNG.standard_normal((16, 4)).astype(np.float32),
            "model.layers.0.attention.wq.weight": RNG.standard_normal((8, 4)).astype(np.float32),
            "model.layers.1.attention.wo.weight": RNG.standard_normal((4, 8)).astype(np.float32),
            "lm_head.weight": RNG.standard_normal((16, 4)).astype(np.float32)}
    stage0 = {"model.layers.0.attention.wq.weight": ParamLayout((2, 2), (0, -1))}
    stage1 = {"model.layers.1.attention.wo.weight": ParamLayout((2, 2), (-1, 0))}
    write_strategy_json(stage0, tmp_path / "strategy" / "stage0.json")
    write_strategy_json(stage1, tmp_path / "strategy" / "stage1.json")
    strategy = merge_strategies([tmp_path / "strategy" / "stage0.json", tmp_path / "strategy" / "stage1.json"])
    files = []
    for rank in range(8):
        local = rank % 4
        if rank < 4:
            state = {"model.embed_tokens.weight": full["model.embed_tokens.weight"],
                     "model.layers.0.attention.wq.weight":
                         np.split(full["model.layers.0.attention.wq.weight"], 2, axis=0)[local % 2]}
        else:
            state = {"model.layers.1.attention.wo.weight":
                         np.split(full["model.layers.1.attention.wo.weight"], 2, axis=1)[local % 2],
                     "lm_head.weight": full["lm_head.weight"]}
        files.append(tmp_path / f"rank_{rank}" / "step_10.safetensors")
        save_state(state, files[-1])
    merged = merge_rank_checkpoints(files, strategy, out_file=tmp_path / "merged.safetensors")
    assert set(merged) == set(full)
    for name, value in full.items():
        np.testing.assert_array_equal(merged[name], value)
    reloaded = {k: v.asnumpy() for k, v in ms.load_checkpoint(str(tmp_path / "merged.safetensors"),
                                                             format="safetensors").items()}
    np.testing.assert_array_equal(reloaded["lm_head.weight"], full["lm_head.weight"])

    # resume on another layout: mp 4 for wq, and merging the new slices gives the same tensor
    new = {"model.layers.0.attention.wq.weight": ParamLayout((1, 4), (0, -1))}
    ranks = [reshard_state(merged, new, r, names=["model.layers.0.attention.wq.weight"]) for r in range(4)]
    assert ranks[1]["model.layers.0.attention.wq.weight"].shape == (2, 4)
    np.testing.assert_array_equal(ranks[1]["model.layers.0.attention.wq.weight"],
                                  full["model.layers.0.attention.wq.weight"][2:4])
    again = merge_rank_slices("model.layers.0.attention.wq.weight",
                              [r["model.layers.0.attention.wq.weight"] for r in ranks], new["model.layers.0.attention.wq.weight"])
    np.testing.assert_array_equal(again, full["model.layers.0.attention.wq.weight"])
