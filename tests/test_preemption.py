"""What a cluster does to a run (issue 28): a stop signal (finish the step, save, exit 75, resume
exactly), a full disk at a save, a second launch on the same run directory."""
from __future__ import annotations

import errno
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

from tests.test_train import make_rows, write_shard
from tests.test_train_processes import cli, losses, write_config

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "GLOG_v": "3"}


def weights(folder: Path) -> dict[str, np.ndarray]:
    from pangu_pro.tensors import load_tensors

    model, _ = load_tensors(folder / "model.safetensors")
    moments, _ = load_tensors(folder / "optimizer.safetensors")
    return {**model, **moments}


def assert_bit_identical(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].tobytes() == want[name].tobytes(), name


def wait_for_step(proc, run: Path, step: int, timeout: float = 300) -> None:
    """Until `run` has logged `step` (its metrics.jsonl)."""
    deadline = time.monotonic() + timeout
    while not ((run / "metrics.jsonl").is_file() and max(losses(run), default=0) >= step):
        assert proc.poll() is None, "the run ended before it could be stopped"
        assert time.monotonic() < deadline, "the run did not reach the step"
        time.sleep(0.01)


# ---------------------------------------------------------------- stop signals

@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_resume_is_bit_identical(tmp_path):
    """SIGTERM mid-run (no periodic save): exit 75 with a checkpoint at the step it stopped after; --resume
    ends with weights and moments bit-identical to an uninterrupted run."""
    shard = str(write_shard(tmp_path / "train.mindrecord", make_rows(200, 0)))
    steps = 40
    config = write_config(tmp_path, shard, steps=steps, save_every=0)
    full = tmp_path / "full"
    subprocess.run(cli("train", str(config), f"train.output_dir={full}", "--no-progress"), check=True, env=ENV,
                   cwd=ROOT, capture_output=True, timeout=300)

    run = tmp_path / "stopped"
    proc = subprocess.Popen(cli("train", str(config), f"train.output_dir={run}", "--no-progress"), env=ENV,
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_step(proc, run, 5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 75, err[-2000:]
    stopped = re.search(r"stopped by SIGTERM after step (\d+): checkpoint (\S+); continue with --resume", err)
    assert stopped and "Traceback" not in err, err[-2000:]
    step = int(stopped.group(1))
    assert 5 <= step < steps and stopped.group(2) == str(run / "checkpoints" / f"step_{step:08d}")
    assert [p.name for p in (run / "checkpoints").iterdir()] == [f"step_{step:08d}"]

    resume_to_the_end(config, run, full, steps)


def resume_to_the_end(config, run, full, steps: int) -> str:
    """`train --resume` the stopped `run` to `steps`: its weights and losses must be the uninterrupted
    run's (`full`) bit for bit. Returns the last checkpoint's name."""
    done = subprocess.run(cli("train", str(config), f"train.output_dir={run}", "--no-progress", "--resume"),
                          env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    last = f"step_{steps:08d}"
    assert_bit_identical(weights(run / "checkpoints" / last), weights(full / "checkpoints" / last))
    assert losses(run) == losses(full)
    return last


def test_stop_signals_record_the_first_and_restore_the_handlers():
    from pangu_pro.collective import any_rank
    from pangu_pro.train.preemption import StopSignals

    before = signal.getsignal(signal.SIGUSR1)
    with StopSignals(["SIGUSR1", "SIGUSR2"]) as stop:
        assert stop.received is None and not any_rank(stop.received is not None, 1)
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGUSR1)  # a second one changes nothing
        assert stop.received == "SIGUSR2" and any_rank(True, 1)
    assert signal.getsignal(signal.SIGUSR1) is before


def test_stop_signals_are_checked_in_the_config():
    from pangu_pro.config import config_from_dict
    from pangu_pro.configtools import ConfigError
    from tests.test_train import MODEL

    with pytest.raises(ConfigError, match="train.stop_signals.*'SIGKILL' is not one of SIGTERM, SIGINT"):
        config_from_dict({"model": MODEL, "train": {"stop_signals": ["SIGTERM", "SIGKILL"]}})
    assert config_from_dict({"model": MODEL, "train": {"stop_signals": []}}).train.stop_signals == []


# ---------------------------------------------------------------- a second launch

HOLD = ("import sys, time; from pangu_pro.runlock import hold_run_lock\n"
        "with hold_run_lock(sys.argv[1], 'training'):\n    print('held', flush=True); time.sleep(120)\n")


def test_a_second_run_on_a_locked_directory_refuses_naming_the_holder(tmp_path, capsys):
    from pangu_pro.cli import main

    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        shard = str(write_shard(tmp_path / "train.mindrecord", make_rows(16, 0)))
        config = write_config(tmp_path, shard, steps=4)
        assert main(["train", str(config), f"train.output_dir={run}", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"pangu-pro train: error: {run}: another run is using this directory (training pid {holder.pid} " \
               f"on host {os.uname().nodename}, started " in err
        assert "Traceback" not in err and not (run / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("command", ["inherit", "rounds", "score"])
def test_inheritance_rounds_and_scoring_hold_the_lock_too(tmp_path, capsys, command):
    from pangu_pro.cli import main
    from pangu_pro.rounds.scoring import parts_dir

    shard = str(write_shard(tmp_path / "train.mindrecord", make_rows(16, 0)))
    run = tmp_path / "run"
    argv, locked = {
        "inherit": (["inherit", "configs/inherit_tiny_cpu.yaml", f"inherit.output_dir={run}"], run),
        "rounds": (["rounds", "configs/tiny_cpu.yaml", f"train.output_dir={run}", f"data.train_files=[{shard}]"], run),
        "score": (["score", str(write_config(tmp_path, shard, steps=4)), "--checkpoint", shard, "--out",
                   str(run / "scores.npz")], parts_dir(run / "scores.npz")),
    }[command]
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(locked)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"pangu-pro {command}: error: {locked}: another run is using this directory (training pid " \
               f"{holder.pid} on host" in err
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_dead_run_is_taken_over_with_a_note(tmp_path):
    from pangu_pro.runlock import LOCK_NAME, RunLockedError, hold_run_lock

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"what": "training", "host": os.uname().nodename, "pid": dead.pid,
                                                  "started": 0, "command": "pangu-pro train x.yaml"}))
    said = []
    with hold_run_lock(tmp_path, "inheritance", said.append):
        assert said == [f"note: {tmp_path}: taking over the lock of a run that is no longer running (training pid "
                        f"{dead.pid} on host {os.uname().nodename}, started 1970-01-01 00:00:00 UTC: "
                        "pangu-pro train x.yaml)"]
        record = json.loads((tmp_path / LOCK_NAME).read_text())
        assert record["pid"] == os.getpid() and record["what"] == "inheritance"
        with pytest.raises(RunLockedError, match=f"inheritance pid {os.getpid()}"):  # held: refused
            with hold_run_lock(tmp_path, "training"):
                pass
    said.clear()
    with hold_run_lock(tmp_path, "training", said.append):  # released cleanly: no note
        assert said == []


def test_a_lock_that_removes_itself_leaves_no_folder(tmp_path):
    from pangu_pro.runlock import LOCK_NAME, hold_run_lock

    parts = tmp_path / "scores.npz.parts"
    with hold_run_lock(parts, "scoring", remove=True):
        assert (parts / LOCK_NAME).is_file()
    assert not parts.exists()


# ---------------------------------------------------------------- a full disk

@pytest.fixture
def saved(tmp_path):
    from pangu_pro.config import ModelConfig
    from pangu_pro.model.weights import build_model
    from pangu_pro.train.checkpoint import checkpoint_name, save_checkpoint
    from tests.test_reliability import TINY

    model = build_model(ModelConfig(**TINY), seed=3)
    root = tmp_path / "run" / "checkpoints"
    save_checkpoint(root / checkpoint_name(2), model, None, {"step": 2})
    return model, root


def test_enospc_at_a_save_names_the_folder_and_space_and_keeps_the_old_checkpoint(saved, monkeypatch, capsys):
    import pangu_pro.train.checkpoint as ckpt
    from pangu_pro.cli import main

    model, root = saved
    real = ckpt.save_tensors

    def fill_the_disk(path, tensors, metadata=None):
        with open(path, "wb") as handle:  # half a file, then the disk is full
            handle.write(b"\0" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(ckpt, "save_tensors", fill_the_disk)
    target = root / ckpt.checkpoint_name(4)
    with pytest.raises(ckpt.CheckpointWriteError) as err:
        ckpt.save_checkpoint(target, model, None, {"step": 4})
    message = str(err.value)
    assert message.startswith(f"could not save checkpoint {target}: [Errno 28] No space left on device")
    assert re.search(rf"It needs about 0\.\d\d GiB in {re.escape(str(root))} \(\d+\.\d\d GiB free\)", message)
    assert sorted(p.name for p in root.iterdir()) == ["step_00000002"]  # no temporary folder, the old one kept
    monkeypatch.setattr(ckpt, "save_tensors", real)
    capsys.readouterr()
    assert main(["checkpoint", "verify", str(root)]) == 0


def test_a_save_that_cannot_fit_is_refused_before_writing(saved, monkeypatch):
    import shutil

    import pangu_pro.train.checkpoint as ckpt

    model, root = saved
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 ** 9, 10 ** 9 - 4096, 4096))
    with pytest.raises(ckpt.CheckpointWriteError, match=r"not enough free space; nothing was written\. It needs "
                                                        r"about 0\.\d\d GiB .* \(0\.00 GiB free\)"):
        ckpt.save_checkpoint(root / ckpt.checkpoint_name(4), model, None, {"step": 4})
    said = []
    assert not ckpt.warn_if_no_space(root, 2 ** 30, "the next checkpoint", said.append)
    assert said == [f"warning: {root}: 0.00 GiB free, but the next checkpoint needs about 1.00 GiB: it will fail "
                    "unless space is freed"]
    assert sorted(p.name for p in root.iterdir()) == ["step_00000002"]


@pytest.mark.slow
def test_training_stops_on_a_full_disk_keeping_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    """keep_last 1: the step-4 save fails; step 2 (the only good one) stays and verifies; exit 4, no traceback."""
    import pangu_pro.train.checkpoint as ckpt
    from pangu_pro.cli import main

    shard = str(write_shard(tmp_path / "train.mindrecord", make_rows(32, 0)))
    config = write_config(tmp_path, shard, steps=6, save_every=2, keep_last=1)
    run = tmp_path / "run"
    real = ckpt.save_tensors

    def full_after_step_2(path, tensors, metadata=None):
        if (metadata or {}).get("step") == "4":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, tensors, metadata)

    monkeypatch.setattr(ckpt, "save_tensors", full_after_step_2)
    assert main(["train", str(config), f"train.output_dir={run}", "--no-progress"]) == 4
    err = capsys.readouterr().err
    assert f"pangu-pro train: error: could not save checkpoint {run / 'checkpoints' / 'step_00000004'}: " in err
    assert "Traceback" not in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000002"]
    monkeypatch.setattr(ckpt, "save_tensors", real)
    assert main(["checkpoint", "verify", str(run)]) == 0


@pytest.mark.slow
@pytest.mark.distributed
def test_sigterm_to_the_launcher_stops_two_data_parallel_workers_at_one_step(tmp_path):
    """SIGTERM to scripts/run_distribute.sh only (msrun and the workers run in sessions of their own): it
    passes the signal on, both ranks stop after the same step, rank 0 saves it, the launcher exits 75;
    --resume ends bit-identical to an uninterrupted 2-worker run."""
    from tests.support import free_port

    shard = str(write_shard(tmp_path / "train.mindrecord", make_rows(160, 0)))
    steps = 16
    config = write_config(tmp_path, shard, steps=steps, save_every=0)
    env = {**ENV, "PANGU_PRO_DEVICE": "cpu"}

    def launcher(out: Path, *extra) -> list[str]:
        return ["bash", str(ROOT / "scripts" / "run_distribute.sh"), str(config), "--workers", "2", "--master-port",
                str(free_port()), "--log-dir", str(out.parent / f"{out.name}_logs"), "--timeout", "60", "--",
                f"train.output_dir={out}", *extra]

    full = tmp_path / "full"
    done = subprocess.run(launcher(full), env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    run = tmp_path / "stopped"
    proc = subprocess.Popen(launcher(run), env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        wait_for_step(proc, run, 3)
        proc.send_signal(signal.SIGTERM)  # the launcher alone, as a scheduler's kill of the job script
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 75, err[-3000:]
    assert "stopped by SIGTERM: the workers saved a checkpoint" in err and "Traceback" not in err
    saved = [p.name for p in (run / "checkpoints").iterdir()]
    step = int(saved[0].split("_")[1])
    assert len(saved) == 1 and 3 <= step < steps
    for rank in (0, 1):  # both ranks stopped after the step rank 0 saved, with equal weights
        text = (tmp_path / "stopped_logs" / f"worker_{rank}.log").read_text(errors="replace")
        assert re.search(rf"rank {rank}/2: step {step} weights sha256 [0-9a-f]{{64}}", text), text[-2000:]

    done = subprocess.run(launcher(run, "--resume"), env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    last = f"step_{steps:08d}"
    assert_bit_identical(weights(run / "checkpoints" / last), weights(full / "checkpoints" / last))


@pytest.mark.slow
def test_soak_five_random_kills_and_stops_end_bit_identical(tmp_path):
    """Interrupted five times at seeded random steps by a seeded mix of SIGKILL and SIGTERM, resumed each
    time: the weights and moments end bit-identical to an uninterrupted run and every checkpoint left
    verifies."""
    from pangu_pro.cli import main

    rng = np.random.default_rng(28)
    shard = str(write_shard(tmp_path / "train.mindrecord", make_rows(200, 0)))
    steps = 36
    config = write_config(tmp_path, shard, steps=steps, save_every=4, keep_last=2)
    full = tmp_path / "full"
    subprocess.run(cli("train", str(config), f"train.output_dir={full}", "--no-progress"), check=True, env=ENV,
                   cwd=ROOT, capture_output=True, timeout=300)

    run = tmp_path / "soak"
    planned = np.sort(rng.choice(np.arange(3, steps - 2), size=5, replace=False))
    kinds = rng.choice([signal.SIGKILL, signal.SIGTERM], size=5)
    assert set(kinds) == {signal.SIGKILL, signal.SIGTERM}  # the seed gives a mix
    for target, kind in zip(planned, kinds):
        logged = max(losses(run), default=0) if (run / "metrics.jsonl").is_file() else 0
        target = max(int(target), logged + 1)  # lines past the last checkpoint are still there until it resumes
        resume = ["--resume"] if (run / "checkpoints").is_dir() else []
        proc = subprocess.Popen(cli("train", str(config), f"train.output_dir={run}", "--no-progress", *resume),
                                env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_for_step(proc, run, target)
            proc.send_signal(kind)
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == (75 if kind == signal.SIGTERM else -signal.SIGKILL), err[-2000:]
    last = resume_to_the_end(config, run, full, steps)
    left = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert len(left) == 2 and left[-1] == last  # keep_last 2, no temporary folders
    assert main(["checkpoint", "verify", str(run)]) == 0
