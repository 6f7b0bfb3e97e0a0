"""Progress without a terminal: whole log lines at a bounded rate, never a carriage return."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pangu_pro.progress import LineProgress, progress_bar, progress_mode


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_lines_every_n_units_with_postfix_and_eta():
    out, clock = io.StringIO(), FakeClock()
    bar = LineProgress(total=100, desc="train", unit="step", every=10, file=out, clock_fn=clock)
    for step in range(1, 101):
        clock.t += 0.5
        bar.set_postfix({"loss": f"{10 / step:.4f}", "lr": "1.00e-03"})
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in out.getvalue()
    assert lines[0] == ("train 10/100 step (10.0%) | loss 1.0000 | lr 1.00e-03 | 2 step/s | elapsed 0:00:05 | "
                        "ETA 0:00:45")
    assert lines[-1].startswith("train 100/100 step (100.0%) | loss 0.1000") and lines[-1].endswith("ETA 0:00:00")


def test_rate_and_eta_come_from_the_last_interval():
    out, clock = io.StringIO(), FakeClock()
    bar = LineProgress(total=30, desc="train", unit="step", every=10, file=out, clock_fn=clock)
    clock.t = 100.0  # a first step that compiles for 100 s
    bar.update(1)
    for _ in range(19):
        clock.t += 1.0
        bar.update(1)
    first, second = out.getvalue().splitlines()
    assert "0.0917 step/s" in first and "ETA 0:03:38" in first  # 10 steps in 109 s, 20 left: 218 s
    assert second.endswith("1 step/s | elapsed 0:01:59 | ETA 0:00:10")  # then 1 step/s


def test_lines_by_time_without_every_and_a_last_line_on_close():
    out, clock = io.StringIO(), FakeClock()
    with LineProgress(total=None, desc="counting", unit="B", unit_scale=True, seconds=30, file=out,
                      clock_fn=clock) as bar:
        for _ in range(100):  # 1 s and 1 MB per update: a line each 30 s, then the last one
            clock.t += 1.0
            bar.update(1_000_000)
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    assert lines[0] == "counting 30M B | 1M B/s | elapsed 0:00:30"
    assert lines[-1].startswith("counting 100M B")


def test_iterating_a_wrapped_iterable_and_disable():
    out = io.StringIO()
    assert list(LineProgress(range(5), total=5, desc="x", every=2, file=out)) == [0, 1, 2, 3, 4]
    assert len(out.getvalue().splitlines()) == 3  # at 2, 4 and the close at 5
    quiet = io.StringIO()
    bar = LineProgress(total=5, every=1, disable=True, file=quiet)
    bar.update(5)
    bar.write("nothing")
    bar.close()
    assert quiet.getvalue() == ""


def test_mode_follows_the_stream_and_the_override(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("PANGU_PRO_PROGRESS", raising=False)
    assert progress_mode(io.StringIO()) == "lines" and progress_mode(Tty()) == "bar"
    assert type(progress_bar(total=3, file=Tty())).__name__ == "tqdm"
    assert isinstance(progress_bar(total=3, file=io.StringIO()), LineProgress)
    monkeypatch.setenv("PANGU_PRO_PROGRESS", "lines")
    assert progress_mode(Tty()) == "lines"
    monkeypatch.setenv("PANGU_PRO_PROGRESS", "sometimes")
    with pytest.raises(ValueError, match="PANGU_PRO_PROGRESS"):
        progress_mode(io.StringIO())


@pytest.mark.slow
def test_training_log_without_a_terminal_has_no_carriage_returns(tmp_path):
    from tests.test_train import MODEL, make_rows, write_shard

    shard = write_shard(tmp_path / "train.mindrecord", make_rows(64, 0))
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({
        "model": MODEL, "data": {"train_files": [str(shard)]},
        "train": {"batch_size": 2, "steps": 50, "warmup_steps": 2, "log_every": 10, "save_every": 0,
                  "output_dir": str(tmp_path / "run")}}))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "GLOG_v": "3"}
    env.pop("PANGU_PRO_PROGRESS", None)
    with open(tmp_path / "log.txt", "wb") as log:  # a file, as msrun and nohup give the workers
        subprocess.run([sys.executable, "-m", "pangu_pro.cli", "train", str(config)], stdout=log, stderr=log,
                       check=True, timeout=600)
    text = (tmp_path / "log.txt").read_text(encoding="utf-8", errors="replace")
    assert "\r" not in text
    progress = [line for line in text.splitlines() if line.startswith("train ")]
    assert [line.split()[1] for line in progress] == [f"{s}/50" for s in range(10, 51, 10)]
    for field in ("loss ", "lr ", "grad_norm ", "tok/s ", "step/s", "ETA "):
        assert all(field in line for line in progress), field
    assert len(text.splitlines()) <= 5 * 3 + 10  # a few lines per log_every, plus the start and end messages
