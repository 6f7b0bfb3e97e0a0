"""`bench model`'s module overhead: paired per-round ratios, so that drift between rounds cancels."""
from __future__ import annotations

import pytest

from pangu_pro.bench.model import paired_overhead


def test_paired_overhead_cancels_drift_between_rounds():
    base = [1.0, 2.0, 4.0, 1.5, 3.0]  # the machine slows and speeds up from round to round
    variant = [1.1 * b for b in base]  # always 10% slower than the base of its own round
    mid, (low, high) = paired_overhead(variant, base)
    assert mid == pytest.approx(10.0) and low == pytest.approx(10.0) and high == pytest.approx(10.0)
    # each round compares only with itself: ratios 0.25, 4 and 1, median 1
    mid, _ = paired_overhead([1.0, 4.0, 2.0], [4.0, 1.0, 2.0])
    assert mid == pytest.approx(0.0)


def test_paired_overhead_quartiles():
    mid, (low, high) = paired_overhead([1.0, 1.2, 1.4, 1.6, 1.8], [1.0] * 5)
    assert (low, mid, high) == pytest.approx((20.0, 40.0, 60.0))


def test_the_recorded_results_render_to_the_recorded_table():
    from pathlib import Path

    from pangu_pro.bench.model import render_markdown
    from pangu_pro.io import read_json

    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    assert render_markdown(read_json(results / "model.json")) == (results / "model.md").read_text(encoding="utf-8")


def test_pro_only_adds_the_1b_pro_rows_and_keeps_the_others(tmp_path, monkeypatch):
    import argparse
    import shutil
    from pathlib import Path

    from pangu_pro.bench import model as bench
    from pangu_pro.io import read_json

    recorded = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "model.json"
    shutil.copy(recorded, tmp_path / "model.json")
    fake = {"llama": {"forward_s": 2.0, "runs_s": [2.0, 2.0], "forward_overhead_pct": 0.0},
            "both": {"forward_s": 2.1, "runs_s": [2.0, 2.2], "forward_overhead_pct": 5.0}}
    monkeypatch.setattr(bench, "pro_forward_overhead", lambda cfg, seq, repeats: fake)
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    assert bench.run(parser.parse_args(["--pro-only", "--seq", "64", "--out", str(tmp_path / "model")])) == 0
    before, after = read_json(recorded), read_json(tmp_path / "model.json")
    assert after["pro_overhead"] == fake and after["pro_seq"] == 64 and after["pro_separate_run"]
    assert {k: v for k, v in after.items() if not k.startswith("pro_")} == \
        {k: v for k, v in before.items() if not k.startswith("pro_")}
    text = (tmp_path / "model.md").read_text(encoding="utf-8")
    assert "batch 1 × 64 tokens" in text and "run of its own" in text and "| both | 2.10 s | +5.0% |" in text
    with pytest.raises(SystemExit, match="run `pangu-pro bench model` first"):
        bench.run(parser.parse_args(["--pro-only", "--out", str(tmp_path / "missing")]))
