"""End-to-end trainer runs in subprocesses: resume after SIGKILL, and msrun data parallel on the CPU."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.test_train import MODEL, make_rows, write_shard
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def write_config(tmp_path: Path, train_file: str, **train) -> Path:
    settings = {"batch_size": 4, "lr": 3e-3, "warmup_steps": 3, "log_every": 1}
    settings.update(train)
    path = tmp_path / "config.json.yaml"
    path.write_text(json.dumps({"model": MODEL, "data": {"train_files": [train_file]}, "train": settings}))
    return path


def losses(run: Path) -> dict[int, float]:
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("type") == "train":
            out[record["step"]] = record["loss"]
    return out


def cli(*args) -> list[str]:
    return [PYTHON, "-m", "pangu_pro.cli", *args]


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted(tmp_path):
    shard = str(write_shard(tmp_path / "train.mindrecord", make_rows(400, 0)))
    steps = 80
    config = write_config(tmp_path, shard, steps=steps, save_every=10, keep_last=2)
    env = {**os.environ, "GLOG_v": "3"}

    full = tmp_path / "full"
    subprocess.run(cli("train", str(config), f"train.output_dir={full}", "--no-progress"), check=True, env=env,
                   cwd=ROOT, capture_output=True, timeout=300)
    want = losses(full)
    assert sorted(want) == list(range(1, steps + 1))

    run = tmp_path / "killed"
    proc = subprocess.Popen(cli("train", str(config), f"train.output_dir={run}", "--no-progress"), env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:  # kill it mid-way: after its first checkpoint, well before the end
        while time.time() < deadline and proc.poll() is None:
            if (run / "checkpoints" / "step_00000010").is_dir() and max(losses(run), default=0) >= 13:
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    logged = max(losses(run))
    assert 13 <= logged < steps
    done = subprocess.run(cli("train", str(config), f"train.output_dir={run}", "--no-progress", "--resume"),
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = losses(run)
    assert sorted(got) == list(range(1, steps + 1))
    np.testing.assert_allclose([got[s] for s in range(1, steps + 1)], [want[s] for s in range(1, steps + 1)],
                               rtol=0, atol=1e-6)
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["step_00000070", "step_00000080"]  # keep_last 2, no temporary folders left


@pytest.mark.slow
@pytest.mark.distributed
def test_msrun_data_parallel_matches_doubled_batch(tmp_path):
    """2 CPU workers, batch 4 each == 1 process, batch 8: same losses; both ranks end with equal weights."""
    from pangu_pro.tensors import load_tensors

    shard = str(write_shard(tmp_path / "train.mindrecord", make_rows(96, 0)))
    steps = 6
    config = write_config(tmp_path, shard, steps=steps)
    env = {**os.environ, "GLOG_v": "3"}
    dp, logs = tmp_path / "dp", tmp_path / "logs"
    started = time.time()
    done = subprocess.run(["bash", str(ROOT / "scripts" / "run_distribute.sh"), str(config), "--workers", "2",
                           "--master-port", str(free_port()), "--log-dir", str(logs), "--timeout", "60", "--",
                           f"train.output_dir={dp}"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert time.time() - started < 90
    digests = {}
    for log in sorted(logs.glob("worker_*.log")):
        match = re.search(r"rank (\d)/2: step 6 weights sha256 ([0-9a-f]{64})", log.read_text(errors="replace"))
        assert match, f"{log}: no weights fingerprint"
        digests[int(match.group(1))] = match.group(2)
    assert set(digests) == {0, 1} and digests[0] == digests[1]

    single = tmp_path / "single"
    subprocess.run(cli("train", str(config), f"train.output_dir={single}", "train.batch_size=8", "--no-progress"),
                   check=True, env=env, cwd=ROOT, capture_output=True, timeout=120)
    dp_loss, sp_loss = losses(dp), losses(single)
    assert sorted(dp_loss) == sorted(sp_loss) == list(range(1, steps + 1))
    np.testing.assert_allclose([dp_loss[s] for s in range(1, steps + 1)], [sp_loss[s] for s in range(1, steps + 1)],
                               rtol=0, atol=2e-6)
    dp_w, _ = load_tensors(dp / "checkpoints" / "step_00000006" / "model.safetensors")
    sp_w, _ = load_tensors(single / "checkpoints" / "step_00000006" / "model.safetensors")
    assert max(float(np.abs(dp_w[n] - sp_w[n]).max()) for n in sp_w) < 1e-4
