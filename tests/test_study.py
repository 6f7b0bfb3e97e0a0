"""The studies (`pangu-pro study`): their statistics against hand-computed values and scipy, the
equal-parameter shape search, the fairness checks, the verdict rule, and each study end to end (smoke)."""
from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest

from pangu_pro.config import ModelConfig
from pangu_pro.study import common, shapes, stats


def test_spearman_by_hand_and_with_ties():
    assert stats.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # 1 - 6*2/(4*15)
    np.testing.assert_array_equal(stats.average_ranks([10, 20, 20, 5]), [2, 3.5, 3.5, 1])
    assert stats.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(stats.spearman([1, 1, 1], [1, 2, 3]))
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, 30), rng.normal(size=30)  # ties in x
    assert stats.spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)


def test_bootstrap_interval_is_seeded_and_brackets_a_clear_correlation():
    x = np.arange(20.0)
    y = x + np.random.default_rng(1).normal(0, 2, 20)
    rho, low, high = stats.bootstrap_spearman(x, y, samples=500, seed=3)
    assert (rho, low, high) == stats.bootstrap_spearman(x, y, samples=500, seed=3)
    assert low <= rho <= high and low > 0.6


def test_paired_difference_and_bits_per_byte_by_hand():
    d = stats.paired_difference([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    # t = mean / (sd / sqrt(n)) = 2 / (1 / sqrt 3) = 3.464 with 2 degrees of freedom: p = 0.0742
    assert (d["mean"], d["sd"], d["n"], d["a_lower"]) == (2.0, 1.0, 3, 0)
    assert d["p"] == pytest.approx(0.0742, abs=1e-4) and not d["exceeds_noise"]
    assert stats.paired_difference([1.0, 2.1, 3.0], [2.0, 3.0, 4.05])["exceeds_noise"]
    assert stats.bits_per_byte(2.0, 100, 200) == pytest.approx(2.0 * 100 / (200 * math.log(2)))


def test_verdicts():
    beyond = {"mean": -0.1, "exceeds_noise": True}
    assert common.verdict(beyond) == common.AGREES
    assert common.verdict({**beyond, "mean": 0.1}) == common.DISAGREES
    assert common.verdict({**beyond, "exceeds_noise": False}) == common.NO_EFFECT
    assert common.verdict(None) == common.NO_EFFECT
    assert common.verdict(beyond, paper_says_lower=False) == common.DISAGREES


BASE = ModelConfig(vocab_size=259, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, seq_length=64,
                   aug_shortcut_ratio=4)


@pytest.mark.parametrize("depth,ratio", [(2, 2.67), (4, 3.0), (8, 2.0), (12, 4.0)])
def test_shapes_at_equal_parameters(depth, ratio):
    cfg = shapes.shape_at(depth, ratio, 400_000, BASE)
    assert cfg.num_layers == depth and cfg.hidden_size % BASE.head_dim == 0
    assert abs(shapes.total_parameters(cfg) - 400_000) <= 0.03 * 400_000
    assert cfg.intermediate_size % shapes.FFN_MULTIPLE == 0
    with pytest.raises(shapes.StudyError, match="no shape of 40 layers reaches 1,000 parameters"):
        shapes.shape_at(40, 2.0, 1_000, BASE)


def test_drawn_shapes_are_distinct_seeded_and_fair():
    drawn = shapes.draw_shapes(6, 400_000, BASE, [2, 4, 6, 8, 12], [2.0, 4.0], seed=0)
    assert drawn == shapes.draw_shapes(6, 400_000, BASE, [2, 4, 6, 8, 12], [2.0, 4.0], seed=0)
    keys = {(c.num_layers, c.hidden_size, c.intermediate_size) for c in drawn}
    assert len(keys) == 6 and {c.num_layers for c in drawn} <= {2, 4, 6, 8, 12}
    counts = {f"{c.num_layers}x{c.hidden_size}": shapes.total_parameters(c) for c in drawn}
    shapes.check_equal(counts, "parameters", 0.06)
    with pytest.raises(shapes.StudyError, match=r"unfair comparison: tokens differs between arms beyond 0%: a 10 vs b 12"):
        shapes.check_equal({"a": 10, "b": 12, "c": 11}, "tokens")


def test_layer_removal_renumbers_the_later_layers():
    from pangu_pro.study.layers import without_layer

    tensors = {"model.embed_tokens.weight": 0, **{f"model.layers.{i}.attention.wq.weight": i for i in range(4)},
               "lm_head.weight": 9}
    out = without_layer(tensors, 1)
    assert out == {"model.embed_tokens.weight": 0, "model.layers.0.attention.wq.weight": 0,
                   "model.layers.1.attention.wq.weight": 2, "model.layers.2.attention.wq.weight": 3,
                   "lm_head.weight": 9}


def test_batch_arms_see_equal_tokens_and_scale_lr_by_sqrt_b():
    from pangu_pro.study import batch

    args = argparse.Namespace(hidden=32, layers=2, seq=16, steps=40, lr=1e-3, seeds=[1, 2], batches=[4, 8, 16],
                              batch_size=4)
    data = {"train": "t", "heldout": "h", "vocab": 259}
    plan = batch.arms(args, data)
    assert sorted({a.name for a in plan}) == ["b16_constant", "b16_sqrt", "b4", "b8_constant", "b8_sqrt"]
    for arm in plan:
        train = arm.config["train"]
        assert train["steps"] * train["batch_size"] == 160
        want = 1e-3 * math.sqrt(train["batch_size"] / 4) if arm.factors["rule"] == "sqrt" else 1e-3
        assert train["lr"] == pytest.approx(want)
    args.batches = [4, 6]
    with pytest.raises(shapes.StudyError, match="batch 6 cannot see exactly 2,560 tokens"):
        batch.arms(args, data)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["modules", "shape", "batch", "layers"])
def test_every_study_runs_end_to_end(name, tmp_path_factory):
    """--smoke through the CLI; a second run keeps every finished arm (resumable) and writes the same
    analysis."""
    from pangu_pro.cli import main

    work = tmp_path_factory.mktemp(name)
    argv = ["study", name, "--smoke", "--no-progress", "--work", str(work)]
    assert main(argv) == 0
    result = json.loads((work / "results" / f"study_{name}.json").read_text())
    assert result["study"] == name and result["arms"]
    assert all(math.isfinite(a.get("heldout_loss", float("nan"))) for a in result["arms"])
    assert result["analysis"]["findings"][0]["verdict"] in (common.AGREES, common.NO_EFFECT, common.DISAGREES)
    assert (work / "results" / f"study_{name}.png").read_bytes()[:4] == b"\x89PNG"
    stamps = {p.name: p.stat().st_mtime_ns for p in (work / "arms").iterdir()}
    assert main(argv) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (work / "arms").iterdir()} == stamps
    assert json.loads((work / "results" / f"study_{name}.json").read_text())["analysis"] == result["analysis"]
