"""scripts/run_distribute.sh as a user types it: device detection, the pre-flight check before any
worker starts, and the failure summary naming the rank that failed first."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pangu_pro.launch import FAILED_WORKER, WORKERS_DIR, failure_summary, trainer_overrides

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "run_distribute.sh"


def launch(*args, env_extra=None, path_prefix=None, timeout=60):
    env = {k: v for k, v in os.environ.items() if k not in ("PANGU_PRO_DEVICE", "ASCEND_HOME_PATH")}
    env.update(env_extra or {})
    if path_prefix:
        env["PATH"] = f"{path_prefix}:{env['PATH']}"
    started = time.monotonic()
    done = subprocess.run(["bash", str(SCRIPT), *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    return done, time.monotonic() - started


def test_the_mission_command_stops_at_once_naming_the_data_key_and_the_device(tmp_path):
    if Path("/usr/local/Ascend/ascend-toolkit").exists():
        pytest.skip("an Ascend install is present: the device would be ascend")
    done, elapsed = launch("configs/pangu_1b_pro.yaml", "--log-dir", tmp_path / "logs")
    assert done.returncode != 0 and elapsed < 10
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert "device: cpu (no Ascend install or npu-smi found" in errors[0]
    assert "data.train_files is empty" in done.stderr and "pangu-pro preprocess" in done.stderr
    assert "msrun" not in done.stdout + done.stderr and not (tmp_path / "logs").exists()  # no worker started


def test_device_detection_npu_smi_and_the_explicit_variable(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "npu-smi").write_text("#!/bin/sh\nexit 0\n")
    (fake / "npu-smi").chmod(0o755)
    done, _ = launch("configs/pangu_1b_pro.yaml", path_prefix=fake)
    assert "device: ascend (npu-smi found)" in done.stderr
    done, _ = launch("configs/pangu_1b_pro.yaml", path_prefix=fake, env_extra={"PANGU_PRO_DEVICE": "cpu"})
    assert "device: cpu (PANGU_PRO_DEVICE=cpu)" in done.stderr


def test_a_layout_that_does_not_match_the_workers_is_refused_before_any_worker(tmp_path):
    data = tmp_path / "data.mindrecord"
    data.write_bytes(b"")
    done, elapsed = launch("configs/tiny_cpu.yaml", "--workers", "2", "--log-dir", tmp_path / "logs", "--",
                           f"data.train_files=[{data}]", "parallel.data_parallel=3")
    assert done.returncode == 2 and elapsed < 10
    assert "data_parallel 3 x model_parallel 1 x pipeline_stage 1 = 3, but 2 workers are started" in done.stderr
    assert "data.train_files" not in done.stderr  # the data is there: only the layout is reported
    assert not (tmp_path / "logs").exists()


def test_the_memory_plan_is_checked_for_ascend(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    done, _ = launch("configs/pangu_1b_pro.yaml", "--", f"data.train_files=[{data}]", "train.batch_size=64",
                     env_extra={"PANGU_PRO_DEVICE": "ascend", "PANGU_PRO_DEVICE_MEMORY_GIB": "64"})
    assert done.returncode == 2
    assert "memory plan: pipeline stage 0 needs" in done.stderr and "parallel.recompute" in done.stderr


def test_inheritance_configs_pass_the_pre_flight_check_and_their_mask_plan_is_checked(capsys):
    """--tool inherit reads the config with its inherit: section (it was refused as an unknown key), and
    checks the mask-learning plan, not the trainer's: the shipped 7B config fits 8 NPUs, a batch of 64
    without recompute does not, a tensor-parallel layout is refused naming the section."""
    from pangu_pro.launch import check

    seven_b = str(ROOT / "configs" / "inherit_7b_to_1b_pro.yaml")
    assert check(str(ROOT / "configs" / "inherit_tiny_cpu.yaml"), 2, "cpu", "", "inherit", []) == 0
    assert check(seven_b, 8, "ascend", "", "inherit", []) == 0
    assert "pre-flight ok" in capsys.readouterr().err
    assert check(seven_b, 8, "ascend", "", "inherit", ["inherit.batch_size=64", "parallel.recompute=none"]) == 2
    assert "mask-learning plan needs" in capsys.readouterr().err
    assert check(seven_b, 8, "ascend", "", "inherit", ["parallel.data_parallel=4", "parallel.model_parallel=2"]) == 2
    assert "parallel: mask learning is data parallel only" in capsys.readouterr().err


def test_trainer_overrides_skip_resume_and_flags():
    assert trainer_overrides(["a.b=1", "--resume", "runs/x", "c.d=2"]) == ["a.b=1", "c.d=2"]
    assert trainer_overrides(["--resume", "a.b=1"]) == ["a.b=1"]
    assert trainer_overrides(["--no-progress", "x.y=[1, 2]"]) == ["x.y=[1, 2]"]


def write_logs(log_dir: Path, failed_pid: int, code: int) -> None:
    (log_dir / WORKERS_DIR).mkdir(parents=True)
    for rank, pid in ((0, 100), (1, 101)):
        (log_dir / WORKERS_DIR / f"rank_{rank}.json").write_text(json.dumps({"rank": rank, "pid": pid}))
        (log_dir / f"worker_{rank}.log").write_text("".join(f"rank {rank} line {i}\n" for i in range(40)))
    (log_dir / "msrun.log").write_text(
        f"[ERROR] ME(1:2,MainProcess):x [_api.py:364] Worker process {failed_pid} exit with exception. "
        f"Error code: {code}.\n"
        "[ERROR] ME(1:2,MainProcess):x [_api.py:364] Worker process 100 exit with exception. Error code: -9.\n"
        "worker 0 is the first one timed out\n")


def test_failure_summary_names_the_first_failed_rank(tmp_path):
    write_logs(tmp_path, 101, -9)
    summary = failure_summary(tmp_path)
    assert summary.startswith("rank 1 failed first: killed by SIGKILL (9)")
    assert "rank 1 line 39" in summary and "rank 1 line 14" not in summary and "rank 0 line" not in summary
    assert FAILED_WORKER.search("Worker process 7 exit with exception. Error code: 1.").groups() == ("7", "1")


def test_failure_summary_without_a_worker_failure(tmp_path):
    tmp_path.joinpath("msrun.log").write_text("cluster time out\n")
    assert "no worker exited with an error first" in failure_summary(tmp_path)
    assert "cluster time out" in failure_summary(tmp_path)


@pytest.mark.slow
@pytest.mark.distributed
def test_a_killed_rank_is_named_as_the_first_failure(tmp_path):
    """2 CPU workers, data parallel; SIGKILL rank 1 mid-run: the launcher exits non-zero naming rank 1 and
    the signal (not rank 0, which msrun killed afterwards); no worker log ends in a 'trained to' line."""
    from tests.support import free_port
    from tests.test_train import make_rows, write_shard
    from tests.test_train_processes import write_config

    shard = str(write_shard(tmp_path / "train.mindrecord", make_rows(960, 0)))
    config = write_config(tmp_path, shard, steps=1000, save_every=0)  # long enough to be killed mid-run
    logs, out = tmp_path / "logs", tmp_path / "run"
    env = {**os.environ, "GLOG_v": "3", "PANGU_PRO_DEVICE": "cpu"}
    proc = subprocess.Popen(["bash", str(SCRIPT), str(config), "--workers", "2", "--master-port", str(free_port()),
                             "--log-dir", str(logs), "--timeout", "60", "--", f"train.output_dir={out}"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 400  # two workers compiling on a loaded 2-core machine
        while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().count("\n") >= 3):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.5)
        victim = json.loads((logs / WORKERS_DIR / "rank_1.json").read_text())["pid"]
        os.kill(victim, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:  # msrun stops its workers on SIGINT (they run in sessions of their own)
            os.killpg(proc.pid, signal.SIGINT)
            proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert f"rank 1 failed first: killed by SIGKILL (9)" in stderr, stderr[-3000:]
    assert f"last lines of {logs / 'worker_1.log'}" in stderr
    for log in logs.glob("worker_*.log"):
        assert "trained to step" not in log.read_text(errors="replace")


NPU_SMI_910A = """\
+------------------------------------------------------------------------------------------------+
| npu-smi 22.0.0                   Version: 22.0.2                                               |
+---------------------------+---------------+----------------------------------------------------+
| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|
| Chip                      | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |
+===========================+===============+====================================================+
| 0     910A                | OK            | 68.6        36                0    / 970           |
| 0                         | 0000:C1:00.0  | 0           611  / 15171      1    / 32768         |
+===========================+===============+====================================================+
| 1     910A                | OK            | 65.5        35                0    / 970           |
| 0                         | 0000:81:00.0  | 0           1180 / 15171      1    / 30720         |
+===========================+===============+====================================================+
| NPU     Chip              | Process id    | Process name             | Process memory(MB)      |
+===========================+===============+====================================================+
| 0       0                 | 4242          | python                   | 3000                    |
+===========================+===============+====================================================+
"""
NPU_SMI_910B = """\
| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|
| Chip                      | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |
+===========================+===============+====================================================+
| 0     910B3               | OK            | 93.5        41                0    / 0             |
| 0                         | 0000:C1:00.0  | 0           0    / 0          3161 / 65536         |
"""


def test_npu_smi_hbm_is_the_smallest_chip_total():
    from pangu_pro.launch import npu_smi_hbm_gib

    assert npu_smi_hbm_gib(NPU_SMI_910A) == 30720 / 1024 == 30.0  # chip 1 has less HBM free to the user
    assert npu_smi_hbm_gib(NPU_SMI_910B) == 64.0
    assert npu_smi_hbm_gib("| 0 310P3 | OK |\n| 0 | 0000:01:00.0 | 0 1 / 21527 |\n") is None  # no HBM column


@pytest.fixture
def fake_npu_smi(tmp_path, monkeypatch):
    """An `npu-smi` on PATH printing the 910A table above; no PANGU_PRO_DEVICE_MEMORY_GIB."""
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "npu-smi").write_text(f"#!/bin/sh\n[ \"$1\" = info ] || exit 1\ncat <<'TABLE'\n{NPU_SMI_910A}TABLE\n")
    (folder / "npu-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    monkeypatch.delenv("PANGU_PRO_DEVICE_MEMORY_GIB", raising=False)
    return folder


def test_a_32gb_910a_is_warned_from_npu_smi(tmp_path, fake_npu_smi, capsys):
    """The 1B Pro preset plans 32.75 GiB per device: it fits a 64 GB 910B but not a 910A, whose memory the
    check now reads from npu-smi (it assumed 64 GiB and let the run start)."""
    from pangu_pro.launch import check

    data = [f"data.train_files=[{tmp_path}]"]
    preset = str(ROOT / "configs" / "pangu_1b_pro.yaml")
    assert check(preset, 8, "ascend", "npu-smi found", "train", data) == 2
    err = capsys.readouterr().err
    assert "30 GiB per device: npu-smi info" in err
    assert "memory plan: pipeline stage 0 needs 32.7 GiB per device, more than 85% of 30 GiB (npu-smi info)" in err
    assert check(preset, 8, "ascend", "", "train", data + ["parallel.recompute=full"]) == 0  # 17.3 GiB fits
    assert "pre-flight ok" in capsys.readouterr().err


def test_the_device_memory_key_and_the_variable_and_the_assumption(tmp_path, fake_npu_smi, monkeypatch, capsys):
    from pangu_pro.config import load_config
    from pangu_pro.launch import check, device_memory

    preset = str(ROOT / "configs" / "pangu_1b_pro.yaml")
    capped = load_config(preset, ["device.max_device_memory_gb=24"])
    assert device_memory(capped) == (24.0, "device.max_device_memory_gb")  # smaller than npu-smi's 30
    assert device_memory(load_config(preset, ["device.max_device_memory_gb=58"])) == (30.0, "npu-smi info")
    monkeypatch.setenv("PANGU_PRO_DEVICE_MEMORY_GIB", "64")
    assert device_memory(capped) == (64.0, "PANGU_PRO_DEVICE_MEMORY_GIB")
    assert check(preset, 8, "ascend", "", "train", [f"data.train_files=[{tmp_path}]"]) == 0
    monkeypatch.delenv("PANGU_PRO_DEVICE_MEMORY_GIB")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no npu-smi
    gib, source = device_memory(load_config(preset))
    assert gib == 64.0 and source.startswith("assumed (910B); set PANGU_PRO_DEVICE_MEMORY_GIB")
    assert check(preset, 8, "ascend", "", "train", [f"data.train_files=[{tmp_path}]",
                                                    "device.max_device_memory_gb=32"]) == 2
    assert "more than 85% of 32 GiB (device.max_device_memory_gb)" in capsys.readouterr().err
FAKE_MSRUN = r'''#!/usr/bin/env python3
"""msrun's part the launcher relies on: workers that record their pid and write worker_<rank>.log in
--log_dir; the first to fail is logged as msrun logs it. A worker waits for the file GO, then exits
as FAKE_EXIT_<rank> says (a number, or "kill" for SIGKILL)."""
import os, signal, subprocess, sys, time
opts = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
log_dir, node, local = opts["log_dir"], int(opts.get("node_rank", 0)), int(opts["local_worker_num"])
WORKER = """
import os, signal, sys, time
from pangu_pro.launch import record_worker
record_worker(sys.argv[1])
with open(os.path.join(sys.argv[1], f"worker_{os.environ['RANK_ID']}.log"), "a") as log:
    for i in range(30):
        log.write(f"rank {os.environ['RANK_ID']} line {i}\\n")
while not os.path.exists(os.environ["GO"]):
    time.sleep(0.05)
how = os.environ.get("FAKE_EXIT_" + os.environ["RANK_ID"], "0")
os.kill(os.getpid(), signal.SIGKILL) if how == "kill" else sys.exit(int(how))
"""
workers = [subprocess.Popen([sys.executable, "-c", WORKER, log_dir],
                            env={**os.environ, "RANK_ID": str(node * local + i)}) for i in range(local)]
while True:
    for p in workers:
        code = p.poll()
        if code not in (None, 0):
            print(f"[ERROR] Worker process {p.pid} exit with exception. Error code: {code}.", flush=True)
            sys.exit(1)
    if all(p.poll() == 0 for p in workers):
        sys.exit(0)
    time.sleep(0.1)
'''


def test_two_nodes_sharing_one_log_dir_keep_their_own_logs_and_records(tmp_path):
    """Two launchers (node ranks 0 and 1) on one --log-dir: the second start does not move the first's live
    log or records, and the failure of rank 1 is named with its own log."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "msrun").write_text(FAKE_MSRUN)
    (fake / "msrun").chmod(0o755)
    shared, go = tmp_path / "shared_logs", tmp_path / "go"
    env = {"PANGU_PRO_DEVICE": "cpu", "GO": str(go), "FAKE_EXIT_1": "kill",
           "PYTHONPATH": str(ROOT), "PATH": f"{fake}:{os.environ['PATH']}"}
    base = {k: v for k, v in os.environ.items() if k not in ("PANGU_PRO_DEVICE", "ASCEND_HOME_PATH")}

    def start(node):
        return subprocess.Popen(["bash", str(SCRIPT), "configs/tiny_cpu.yaml", "--workers", "2", "--local-workers",
                                 "1", "--node-rank", str(node), "--log-dir", str(shared), "--skip-check"],
                                cwd=ROOT, env={**base, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    first = start(0)
    node0 = shared / "node_0"
    second = None
    try:
        deadline = time.monotonic() + 30
        while not (node0 / WORKERS_DIR / "rank_0.json").is_file():
            assert first.poll() is None and time.monotonic() < deadline, f"no {node0 / WORKERS_DIR / 'rank_0.json'}"
            time.sleep(0.05)
        second = start(1)
        while not (shared / "node_1" / WORKERS_DIR / "rank_1.json").is_file():
            assert second.poll() is None and time.monotonic() < deadline, "node 1 recorded no worker"
            time.sleep(0.05)
        go.touch()
        _, err0 = first.communicate(timeout=30)
        _, err1 = second.communicate(timeout=30)
    finally:
        go.touch()  # the fake workers end in any case
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert first.returncode == 0, err0
    assert (node0 / "worker_0.log").read_text().count("\n") == 30 and not (node0 / "previous").exists()
    assert second.returncode != 0
    assert "rank 1 failed first: killed by SIGKILL (9)" in err1
    assert f"last lines of {shared / 'node_1' / 'worker_1.log'}:" in err1 and "rank 1 line 29" in err1
    assert sorted(p.name for p in shared.iterdir()) == ["node_0", "node_1"]


def test_a_multi_node_resume_onto_another_layout_needs_shared_storage(tmp_path, capsys):
    """Rank 0 merges the old run's slices into its directory while the other nodes wait to read them there:
    refused before any worker starts unless --shared-storage says every node sees that directory."""
    from pangu_pro.launch import check

    old = tmp_path / "old"
    step = old / "checkpoints" / "rank_0" / "step_00000004"
    step.mkdir(parents=True)
    layout = {"data_parallel": 2, "model_parallel": 2, "pipeline_stage": 1, "vocab_parallel": False,
              "optimizer_shard": False, "world": 4}
    (step / "state.json").write_text(json.dumps({"step": 4, "layout": layout}))
    data = tmp_path / "data"
    data.mkdir()
    args = [f"data.train_files=[{data}]", f"train.output_dir={tmp_path / 'new'}", "--resume", str(old)]
    config = str(ROOT / "configs" / "tiny_cpu.yaml")
    assert check(config, 4, "cpu", "", "train", args, local_workers=2) == 2
    err = capsys.readouterr().err
    assert f"--resume {old}: its checkpoint was written under the layout {layout}" in err
    assert f"merges it into {old / 'checkpoints' / 'merged'}" in err and "--shared-storage" in err
    assert check(config, 4, "cpu", "", "train", args, local_workers=2, shared_storage=True) == 0
    assert check(config, 4, "cpu", "", "train", args, local_workers=4) == 0  # one node: its own disk
    assert check(config, 4, "cpu", "", "train", args[:2], local_workers=2) == 0  # no resume
