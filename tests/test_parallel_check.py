"""The cluster self-check's comparison (pangu_pro.parallel_check): fake result files, one matching the
single-device reference and some off in exactly one quantity, give PASS and FAIL with the difference."""
from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from pangu_pro.parallel_check import compare_files, main

RNG = np.random.default_rng(0)
INIT = {"w": RNG.standard_normal((4, 4)).astype(np.float32), "b": RNG.standard_normal(4).astype(np.float32)}
UPDATE = {k: 1e-2 * RNG.standard_normal(v.shape).astype(np.float32) for k, v in INIT.items()}


def write_result(folder, name, *, loss_scale=1.0, norm_scale=1.0, weight_scale=1.0, weight_noise=0.0, drop_step=None):
    weights = {k: INIT[k] + weight_scale * UPDATE[k] + weight_noise for k in INIT}
    save_file(weights, str(folder / f"{name}.safetensors"))
    steps = [s for s in (1, 2, 3) if s != drop_step]
    result = {"name": name, "loss": {str(s): (5.0 - 0.5 * s) * loss_scale for s in steps},
              "grad_norm": {str(s): (2.0 / s) * norm_scale for s in steps}, "weights": f"{name}.safetensors",
              "weight_update": max(float(np.abs(UPDATE[k]).max()) for k in UPDATE)}
    (folder / f"{name}.json").write_text(json.dumps(result))
    return folder / f"{name}.json"


@pytest.fixture()
def results(tmp_path):
    return {name: write_result(tmp_path, name, **kw) for name, kw in {
        "single": {}, "dp8": {"loss_scale": 1.001, "weight_noise": 1e-5},
        "zero_slice_norm": {"norm_scale": 8 ** -0.5},  # a per-rank slice's norm
        "double_update": {"weight_scale": 2.0},  # e.g. interleave summing instead of averaging
        "loss_off": {"loss_scale": 1.1}, "short": {"drop_step": 3}}.items()}


def test_matching_layout_passes_and_each_defect_fails(results):
    verdicts = {v.name: v for v in compare_files(results["single"], [p for n, p in results.items() if n != "single"])}
    assert verdicts["dp8"].passed and verdicts["dp8"].line().startswith("PASS dp8")
    assert verdicts["dp8"].differences["loss"] == pytest.approx(1e-3, rel=1e-6)
    assert not verdicts["zero_slice_norm"].passed and "grad_norm off by 6.46e-01" in verdicts["zero_slice_norm"].line()
    assert not verdicts["double_update"].passed and verdicts["double_update"].differences["weights"] >= 0.99
    assert not verdicts["loss_off"].passed and list(verdicts["loss_off"].problems) == ["loss off by 1.00e-01 > 2e-02"]
    assert not verdicts["short"].passed and "steps ['3'] missing" in verdicts["short"].line()


def test_the_command_prints_pass_fail_and_exits_non_zero_on_a_failure(results, capsys):
    assert main(["compare", str(results["single"]), str(results["dp8"])]) == 0
    assert capsys.readouterr().out.startswith("PASS dp8")
    assert main(["compare", str(results["single"]), str(results["dp8"]), str(results["loss_off"])]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["PASS", "FAIL"]
