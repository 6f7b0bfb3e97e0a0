"""Parallel training on real NPUs (skipped elsewhere), and the cluster check's plumbing on the CPU.

Run on one 8-NPU Ascend node, from the repository root:

    PANGU_PRO_DEVICE=ascend python -m pytest -m ascend tests/test_parallel_ascend.py

`test_ascend_check_passes` runs scripts/ascend_check.sh (every layout against one device, then save,
merge, export, logits). `test_dp2_mp2_pp2_trains_and_checkpoints_merge` launches
tests/parallel_ascend_worker.py with msrun on 8 workers (logs in the test's tmp dir, `worker_*.log`)
and merges its per-rank checkpoints with the strategy files on the host (`train.merge`).
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("parallel_ascend_worker.py")


def compared_cases(device: str) -> list[str]:
    """The cases the check prints a verdict for, in its order (the table of pangu_pro/selfcheck/cases.py)."""
    from pangu_pro.selfcheck.cases import cases_for

    return [c.name for c in cases_for(device, ROOT) if c.kind == "kernels" or c.reference or c.skipped]


def run_check(out: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts" / "ascend_check.sh"), "--out", str(out), *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=3600)


@pytest.mark.ascend
@pytest.mark.distributed
def test_ascend_check_passes(tmp_path):
    done = run_check(tmp_path / "check")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    for name in (*compared_cases("ascend"), "scores_dp2_mp4", "inherit_single", "inherit_dp8", "bf16_teacher"):
        assert re.search(rf"^PASS {name} ", done.stdout, re.M), f"{name}: {done.stdout[-4000:]}"
    assert "PASS hf logits" in done.stdout


def test_ascend_check_refuses_without_an_npu(tmp_path):
    if Path("/usr/local/Ascend/ascend-toolkit").exists() or os.environ.get("PANGU_PRO_DEVICE", "cpu") != "cpu":
        pytest.skip("an Ascend install is present")
    done = run_check(tmp_path / "check")
    assert done.returncode == 2 and "error: no NPU" in done.stderr and "--cpu" in done.stderr


@pytest.mark.slow
@pytest.mark.distributed
def test_ascend_check_plumbing_on_the_cpu(tmp_path):
    """--cpu: one device, dp 2, dp 2 with accumulation, a dp 2 resume and the overflow step skipped by both
    ranks, through the real launcher, at sequence 128 (said on stderr); the single run's
    checkpoint scored on one device and by 2 data-parallel scorers; then merge, export and logits;
    inheritance on one device and over 2 workers (4 mask steps), and a 1-step run with the teacher
    stored in bf16. All PASS: data parallel on the CPU is exact up to reduction order (and, for the
    masks, each rank's own noise)."""
    done = run_check(tmp_path / "check", "--cpu")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert [line.split()[:2] for line in lines] == [["PASS", name] for name in compared_cases("cpu")] + [
        ["PASS", "scores_dp2"], ["PASS", "hf"],
        ["PASS", "inherit_single"], ["PASS", "inherit_dp2"], ["PASS", "bf16_teacher"]], done.stdout
    assert "--cpu trains at sequence 128, not 2048" in done.stderr
    assert done.stdout.startswith("grad_norm tolerance 5e-02") and "so it fails" in done.stdout.splitlines()[0]
    assert re.search(r"^PASS inherit_dp2 +folded \S+, loss \S+$", done.stdout, re.M), done.stdout
    assert done.stdout.rstrip().endswith("ascend_check: all PASS")


@pytest.mark.ascend
@pytest.mark.distributed
def test_dp2_mp2_pp2_trains_and_checkpoints_merge(tmp_path):
    from pangu_pro.train.merge import merge_run
    from pangu_pro.tensors import load_tensors

    cmd = ["msrun", "--worker_num=8", "--local_worker_num=8", "--master_port=8129", f"--log_dir={tmp_path}",
           "--join=True", str(WORKER), str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(WORKER.parents[1])}
    result = subprocess.run(cmd, env=env, timeout=1800)
    assert result.returncode == 0, f"msrun failed; see {tmp_path}/worker_*.log"
    merge_run(tmp_path, tmp_path / "merged")
    merged, _ = load_tensors(tmp_path / "merged" / "model.safetensors")
    assert merged["model.layers.0.attention.wq.weight"].shape == (128, 128)
    assert merged["lm_head.weight"].shape == (512, 128)
    assert all(np.isfinite(v).all() for v in merged.values())
