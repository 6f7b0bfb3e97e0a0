"""`pangu-pro bench rounds`: the pure parts (equal parts, forgetting, selection shares, merging seeds,
the report) on synthetic results."""
from __future__ import annotations

import numpy as np
import pytest

from pangu_pro.bench import rounds


def test_parts_are_cut_to_whole_batches_of_the_smallest_part():
    assert rounds.equal_part_samples([776, 828, 814, 791], 4) == 776
    assert rounds.equal_part_samples([103, 250], 8) == 96
    with pytest.raises(ValueError, match="fewer than one batch of 8"):
        rounds.equal_part_samples([7, 250], 8)


def test_forgetting_is_end_of_round_minus_right_after_the_part():
    curve = [[5.2, 5.9, 6.0], [6.1, 5.5, 6.0], [5.5, 5.2, 4.7]]  # curve[c][p]: after part c, loss of part p
    assert rounds.forgetting(curve) == pytest.approx([0.3, -0.3])


def test_selection_shares_per_part():
    shares = rounds.part_of_samples(np.array([0, 1, 5, 6, 7, 11]), part_samples=4, parts=3)
    assert shares == pytest.approx([2 / 6, 3 / 6, 1 / 6])


def fake_results(seeds, shift=0.0):
    rng = np.random.default_rng(seeds[0])

    def row(seed, steps, **extra):
        parts = (5.0 + shift + rng.random(2)).tolist()
        return {"seed": seed, "steps": steps, "parts": parts, "overall": float(np.mean(parts)), **extra}

    arms = {"one_round": [row(s, 8, curve=[[5.0, 6.0], [5.4, 4.9]], forgetting=[0.4], round1_mean_score=5.1)
                          for s in seeds],
            "long_round": [row(s, 12) for s in seeds],
            "hard_50": [row(s, 12, round2_steps=4, selected_fraction=0.5, mean_score_selected=5.3,
                            selected_per_part=[0.7, 0.3]) for s in seeds],
            "uniform_50": [row(s, 12, round2_steps=4, selected_fraction=0.5, mean_score_selected=5.1,
                               selected_per_part=[0.5, 0.5]) for s in seeds]}
    setup = {"parts": 2, "part_names": ["a", "b"], "part_samples": 16, "part_steps": 4, "round1_steps": 8,
             "seq": 8, "batch_size": 4, "lr": 3e-3, "round1_warmup_fraction": 0.05, "min_lr_ratio": 1.0,
             "vocab": 100, "model": {"num_layers": 2, "hidden_size": 32}, "seeds": list(seeds), "machine": "x"}
    return {"setup": setup, "arms": arms, "seconds": 10.0}


def test_seeds_of_separate_runs_merge_and_render(tmp_path):
    merged = rounds.merge_results([fake_results([0]), fake_results([1, 2])])
    assert merged["setup"]["seeds"] == [0, 1, 2] and merged["seconds"] == 20.0
    assert [r["seed"] for r in merged["arms"]["hard_50"]] == [0, 1, 2]
    text = rounds.render(merged, figure=False)
    assert "| 1: a | 5.000 ± 0.000 | 5.400 ± 0.000 | +0.400 ± 0.000 | 3/3 |" in text
    assert "| hard_50 | 0.700 ± 0.000 | 0.300 ± 0.000 |" in text
    hard = [r["overall"] for r in merged["arms"]["hard_50"]]
    uniform = [r["overall"] for r in merged["arms"]["uniform_50"]]
    assert f"- hard_50 − uniform_50: overall {np.mean(np.subtract(hard, uniform)):+.3f}" in text
    with pytest.raises(ValueError, match="a seed appears twice"):
        rounds.merge_results([fake_results([0]), fake_results([0])])
    other = fake_results([5])
    other["setup"]["lr"] = 1e-3
    with pytest.raises(ValueError, match=r"differ in \['lr'\]"):
        rounds.merge_results([fake_results([0]), other])
    pytest.importorskip("matplotlib")
    assert rounds.render_files(merged, tmp_path) == 0 and (tmp_path / "multi_round.png").is_file()


def test_a_round_one_only_run_reports_the_forgetting_alone():
    results = fake_results([0])
    results["arms"] = {"one_round": results["arms"]["one_round"]}
    text = rounds.render(results, figure=False)
    assert "+0.400" in text and "## Arms" not in text and "Round 1 only" in text
