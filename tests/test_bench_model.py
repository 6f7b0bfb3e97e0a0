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
