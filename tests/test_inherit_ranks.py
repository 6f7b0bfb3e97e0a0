"""Rank-consistent errors in `pangu-pro inherit` under msrun: an error raised on one rank only (rank 0
refuses an output folder that already holds mask checkpoints) stops every rank promptly with a
non-zero exit, instead of leaving the other rank waiting in its first all-reduce."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.support import free_port
from tests.test_inherit_run import setup  # noqa: F401 - the module fixture (tiny teacher and data)
from tests.test_inherit_run import write_inherit

HANG_SECONDS = 150  # a rank stuck in a collective never ends on its own: the launcher's timeout fails the test


@pytest.mark.slow
@pytest.mark.distributed
def test_error_on_rank_0_only_stops_every_rank(setup, tmp_path):  # noqa: F811
    path = write_inherit(setup, "ranks", criterion="learned", layer_selection="uniform", steps=4,
                         checkpoint_every=2, log_every=2)
    out = Path(yaml.safe_load(path.read_text())["inherit"]["output_dir"])
    stale = out / "masks" / "step_00000002"  # a previous run's checkpoint: only rank 0 checks for it
    stale.mkdir(parents=True)
    (stale / "state.json").write_text("{}")
    logs = tmp_path / "logs"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    cmd = [str(Path(sys.executable).parent / "msrun"), "--worker_num=2", "--local_worker_num=2",
           f"--master_port={free_port()}", f"--log_dir={logs}", "--join=True",
           "python", "-m", "pangu_pro.cli", "inherit", str(path), "--no-progress"]
    started = time.time()
    # its own session, so a hung run is killed whole (msrun and its workers) and nothing else
    launcher = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    try:
        launcher.communicate(timeout=HANG_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.communicate()
        pytest.fail(f"a rank hung: msrun did not end within {HANG_SECONDS} s")
    texts = {p.name: p.read_text(errors="replace") for p in sorted(logs.glob("worker_*.log"))}
    assert launcher.returncode != 0, texts
    assert len(texts) == 2
    assert "already holds mask checkpoints" in texts["worker_0.log"], texts["worker_0.log"][-2000:]
    assert "another rank failed" in texts["worker_1.log"], texts["worker_1.log"][-2000:]
    assert not (out / "student").exists()
    assert time.time() - started < HANG_SECONDS
