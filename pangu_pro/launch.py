"""What `scripts/run_distribute.sh` runs around msrun: the pre-flight check and the failure summary.

    python -m pangu_pro.launch check --workers N --device cpu|ascend [--why TEXT] CONFIG [-- ARGS...]
    python -m pangu_pro.launch record-worker LOG_DIR        (each worker, at start: rank -> pid)
    python -m pangu_pro.launch signal-workers LOG_DIR SIG   (the launcher got a stop signal: pass it on)
    python -m pangu_pro.launch failure LOG_DIR              (after msrun failed)

`check` refuses, in about a second and before any worker starts, what cannot run: no training data,
shards that do not fit the model or the tokenizer (`provenance.data_problems`), a layout whose
data_parallel x model_parallel x pipeline_stage is not the worker count, a memory plan that does not
fit the device (the device's memory from `device_memory`, whose source every message names;
`--tool inherit`: the config read with its `inherit:` section, the mask-learning plan of
`inherit/plan.py`), a multi-node resume onto another layout without shared storage
(`resume_storage_problems`). Every problem is listed in one message with the fix. It imports no
MindSpore (the memory plan is pure arithmetic), so it stays fast.

`failure` names the rank that failed first. msrun polls its workers and, at the first one that exited
with an error, logs "Worker process <pid> exit with exception. Error code: <code>" and SIGKILLs the
others; its later scheduler analysis blames whichever rank timed out first, often a rank it killed.
So the first such line is the evidence; each worker records its pid at start (`record_worker`,
called by tools/*.py), which maps it to a rank, and the summary shows that rank's exit code or
signal and the last lines of its log. Exit code 75 (`PREEMPTED_EXIT`) is a worker that stopped on a
signal after saving its checkpoint, not a failure.

`signal-workers` passes a stop signal the launcher received to this node's workers (msrun starts each
in a session of its own, so a signal to the launcher's process group never reaches them, and msrun
itself answers SIGINT with SIGKILL to all). Run again while the stop is pending, it signals only the
workers recorded since (a worker still starting up).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional

GIB = 1024 ** 3
DEVICE_MEMORY_ENV = "PANGU_PRO_DEVICE_MEMORY_GIB"  # HBM per device; 910B: 64, 910A: 32
DEFAULT_DEVICE_MEMORY_GIB = 64.0
BUS_ID = re.compile(r"\b[0-9A-Fa-f]{4}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-9A-Fa-f]\b")  # npu-smi chip rows
USAGE_PAIR = re.compile(r"(\d+)\s*/\s*(\d+)")  # npu-smi "used / total"
NPU_SMI_TIMEOUT_S = 15
WORKERS_DIR = ".workers"  # inside the log dir: rank_<r>.json = {"rank", "pid", "host"}
MSRUN_LOG = "msrun.log"
FAILED_WORKER = re.compile(r"Worker process (\d+) exit with exception\. Error code: (-?\d+)")
TAIL_LINES = 25
PREEMPTED_EXIT = 75  # = pangu_pro.train.preemption.PREEMPTED_EXIT (not imported: no MindSpore here)
SIGNALLED = "signalled.json"  # inside WORKERS_DIR: pids a stop signal was passed to


# ---------------------------------------------------------------- pre-flight check

def trainer_overrides(args: list[str]) -> list[str]:
    """The `section.key=value` overrides among the arguments meant for the tool (drops --resume [DIR]
    and other flags)."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
            if "=" not in arg and not arg.startswith("-"):
                continue
        if arg == "--resume":
            skip = True
        elif not arg.startswith("-"):
            out.append(arg)
    return out


def data_problems(config) -> list[str]:
    files = config.data.train_files
    if not files:
        return ["data.train_files is empty: set it in the config to the output folder (or .mindrecord files) of "
                "`pangu-pro preprocess` (docs/data.md), or pass `-- data.train_files=[DIR]`"]
    missing = [f for f in files if not Path(f).exists()]
    if missing:
        return [f"data.train_files: {missing[:3]} not found (paths are relative to the directory the "
                f"launcher runs in, {os.getcwd()}; every node needs them)"]
    from pangu_pro.provenance import data_problems as shard_problems  # the trainer's own check of the shards

    return shard_problems(files, "data.train_files", seq_length=config.model.seq_length,
                          vocab_size=config.model.vocab_size, tokenizer=config.data.tokenizer,
                          allow_shorter_samples=config.data.allow_shorter_samples)


def layout_problems(config, workers: int) -> list[str]:
    from pangu_pro.config import ConfigError, check_layout

    p = config.parallel
    if p.device_num == 1 and workers > 1:  # no layout: the trainer runs plain data parallel over the workers
        return []
    if p.device_num != workers:
        others = p.model_parallel * p.pipeline_stage
        fix = (f"set parallel.data_parallel: {workers // others}" if workers % others == 0 else
               f"choose model_parallel x pipeline_stage dividing {workers}")
        return [f"parallel: data_parallel {p.data_parallel} x model_parallel {p.model_parallel} x pipeline_stage "
                f"{p.pipeline_stage} = {p.device_num}, but {workers} workers are started: {fix}, or pass "
                f"--workers {p.device_num}"]
    try:
        check_layout(config, workers)
    except ConfigError as err:
        return [str(err)]
    return []


def npu_smi_hbm_gib(text: str) -> Optional[float]:
    """The smallest HBM total of the chips in `npu-smi info` output, in GiB, or None when the table has no
    HBM-Usage(MB) column. Each chip row carries a PCIe bus id (0000:C1:00.0) and ends with the
    `used / total` HBM pair in MB (910B: 65536, 910A: 32768); the chip's other pairs come before it."""
    if "HBM-Usage" not in text:
        return None
    totals = [int(USAGE_PAIR.findall(line)[-1][1]) for line in text.splitlines()
              if BUS_ID.search(line) and USAGE_PAIR.search(line)]
    return min(totals) / 1024 if totals else None


def read_npu_smi() -> Optional[str]:
    """`npu-smi info` output, or None when the tool is missing or fails."""
    if shutil.which("npu-smi") is None:
        return None
    try:
        done = subprocess.run(["npu-smi", "info"], capture_output=True, text=True, timeout=NPU_SMI_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def device_memory(config) -> tuple[float, str]:
    """(GiB per device, where that figure comes from) for the Ascend pre-flight check, first found of:
    DEVICE_MEMORY_ENV; the smaller of the config's `device.max_device_memory_gb` (the memory pool the run
    will get) and what `npu-smi info` reports; DEFAULT_DEVICE_MEMORY_GIB, assumed. The pre-flight check
    imports no MindSpore, so `mindspore.hal.get_device_properties` (which needs the device) is not asked."""
    if os.environ.get(DEVICE_MEMORY_ENV):
        return float(os.environ[DEVICE_MEMORY_ENV]), DEVICE_MEMORY_ENV
    found = []
    cap = getattr(getattr(config, "device", None), "max_device_memory_gb", None)
    if cap is not None:
        found.append((float(cap), "device.max_device_memory_gb"))
    text = read_npu_smi()
    hbm = npu_smi_hbm_gib(text) if text is not None else None
    if hbm is not None:
        found.append((hbm, "npu-smi info"))
    if found:
        return min(found)
    return DEFAULT_DEVICE_MEMORY_GIB, (f"assumed (910B); set {DEVICE_MEMORY_ENV} or device.max_device_memory_gb "
                                       "when npu-smi cannot tell")


def over_budget(need_gib: float, budget: tuple[float, str]) -> Optional[str]:
    """'needs N GiB per device, more than 85% of M GiB (source)' when a plan leaves less than 15% of the
    device's memory (`device_memory`) to the runtime and fragmentation; None when it fits."""
    gib, source = budget
    if need_gib <= 0.85 * gib:
        return None
    return f"needs {need_gib:.1f} GiB per device, more than 85% of {gib:g} GiB ({source})"


def memory_problems(config, device: str, budget: tuple[float, str]) -> list[str]:
    """The memory plan (`model/plan.py`) against the device's memory; only on Ascend (on the CPU the
    model trains in host memory and the plan's bf16/flash-attention terms do not apply)."""
    if device != "ascend":
        return []
    from pangu_pro.model.plan import memory_plan

    p = config.parallel
    worst = max(memory_plan(config), key=lambda s: s.total(p.recompute))
    over = over_budget(worst.total(p.recompute) / GIB, budget)
    return [f"memory plan: pipeline stage {worst.stage} {over}: set parallel.recompute: selective or full, "
            f"parallel.optimizer_shard: true, a smaller train.batch_size with more train.grad_accum_steps, or "
            f"more pipeline stages (see `pangu-pro plan CONFIG`)"] if over else []


def mask_memory_problems(config, device: str, budget: tuple[float, str]) -> list[str]:
    """`inherit --tool`: the mask-learning plan (`inherit/plan.py`) against the device's memory, on Ascend;
    a tensor/pipeline layout, which mask learning refuses, as a problem."""
    from pangu_pro.config import ConfigError
    from pangu_pro.inherit.plan import mask_plan

    try:
        need = mask_plan(config).total / GIB
    except ConfigError as err:
        return [str(err)]
    over = over_budget(need, budget) if device == "ascend" else None
    return [f"mask-learning plan {over}: lower inherit.batch_size (raise inherit.grad_accum_steps), set "
            f"parallel.recompute, or freeze the teacher (see `pangu-pro plan CONFIG`)"] if over else []


def resume_target(tool_args: list[str]) -> Optional[str]:
    """What `--resume [DIR]` among the tool's arguments names: DIR, "auto", or None (no --resume)."""
    for i, arg in enumerate(tool_args):
        if arg == "--resume":
            following = tool_args[i + 1] if i + 1 < len(tool_args) else None
            return following if following and "=" not in following and not following.startswith("-") else "auto"
    return None


def resume_storage_problems(config, tool_args: list[str], workers: int, local_workers: Optional[int],
                            shared_storage: bool) -> list[str]:
    """A multi-node resume from rank slices of another layout: rank 0 merges them into the old run's
    directory and every other rank waits to read the merged checkpoint there. Without storage that
    every node sees, the other nodes would wait out the cluster time-out; so it needs --shared-storage
    (the user's word that the old run's directory is the same on every node)."""
    target = resume_target(tool_args)
    if target is None or shared_storage or local_workers is None or local_workers >= workers:
        return []
    from pangu_pro.train.checkpoint import CHECKPOINTS, STATE_NAME, resolve_rank_resume
    from pangu_pro.train.layout import checkpoint_layout

    where = Path(config.train.output_dir if target == "auto" else target)
    try:
        state = json.loads((resolve_rank_resume(where, 0) / STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []  # nothing readable to resume from here: the trainer says so
    old = state.get("layout")
    new = checkpoint_layout(config.parallel, workers)
    if old is None or old == new:
        return []
    return [f"--resume {where}: its checkpoint was written under the layout {old}, this run's is {new}. Rank 0 "
            f"merges it into {where / CHECKPOINTS / 'merged'} and the ranks of the other nodes read it there, so "
            f"that folder must be on storage every node sees: pass --shared-storage to the launcher if it is, "
            f"or merge first (`pangu-pro convert merge`), copy the merged checkpoint to every node and resume "
            f"from it"]


def check(config_path: str, workers: int, device: str, why: str, tool: str, tool_args: list[str],
          local_workers: Optional[int] = None, shared_storage: bool = False) -> int:
    from pangu_pro.config import ConfigError, load_config
    from pangu_pro.inherit.config import load_inherit_config

    where = f"device: {device} ({why})" if why else f"device: {device}"
    load = load_inherit_config if tool == "inherit" else load_config  # an inherit config has its own section
    try:
        config = load(config_path, trainer_overrides(tool_args))
    except (ConfigError, OSError, ValueError) as err:
        print(f"error: {err}\n  [{where}]", file=sys.stderr)
        return 2
    problems = (data_problems(config) if tool == "train" else []) + layout_problems(config, workers)
    budget = device_memory(config) if device == "ascend" else None
    if budget is not None:
        where += f"; {budget[0]:g} GiB per device: {budget[1]}"
    problems += memory_problems(config, device, budget) if tool == "train" else mask_memory_problems(config, device,
                                                                                                     budget)
    if tool == "train":
        problems += resume_storage_problems(config, tool_args, workers, local_workers, shared_storage)
    if problems:
        print(f"error: {config_path} cannot start on {workers} workers [{where}]:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 2
    p = config.parallel
    layout = (f"data_parallel {p.data_parallel} x model_parallel {p.model_parallel} x pipeline_stage "
              f"{p.pipeline_stage}" if p.device_num > 1 else "no parallel section: plain data parallel")
    print(f"pre-flight ok: {config_path}, {layout} on {workers} workers [{where}]", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- worker records and the failure summary

def record_worker(log_dir: str | Path) -> None:
    """Called by each worker at start (msrun exports RANK_ID): remember which pid is which rank."""
    rank = os.environ.get("RANK_ID")
    if os.environ.get("MS_ROLE") == "MS_SCHED" or rank is None or not rank.isdigit():
        return  # msrun's scheduler runs the same script (and may inherit a RANK_ID)
    folder = Path(log_dir) / WORKERS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    record = {"rank": int(rank), "pid": os.getpid(), "host": os.uname().nodename}
    tmp = folder / f".rank_{rank}.{os.getpid()}"
    tmp.write_text(json.dumps(record), encoding="utf-8")
    os.replace(tmp, folder / f"rank_{rank}.json")


def signal_workers(log_dir: str | Path, name: str) -> list[int]:
    """Send signal `name` (TERM, SIGTERM, ...) to the workers recorded in LOG_DIR not signalled yet;
    returns the ranks signalled."""
    folder = Path(log_dir) / WORKERS_DIR
    sig = signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]
    done_path = folder / SIGNALLED
    try:
        done = set(json.loads(done_path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        done = set()
    ranks = []
    for path in sorted(folder.glob("rank_*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        pid = record.get("pid")
        if not isinstance(pid, int) or pid in done:
            continue
        try:
            os.kill(pid, sig)
            ranks.append(record.get("rank"))
        except ProcessLookupError:
            pass
        done.add(pid)
    if ranks:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{SIGNALLED}.{os.getpid()}"
        tmp.write_text(json.dumps(sorted(done)), encoding="utf-8")
        os.replace(tmp, done_path)
    return ranks


def describe_exit(code: int) -> str:
    """msrun's error code: Popen's return code, negative for a signal."""
    if code == PREEMPTED_EXIT:
        return f"exit code {code}: stopped on a signal after saving its checkpoint (continue with --resume)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name} ({-code})" + (" - out of memory?" if -code == signal.SIGKILL else "")
    if code > 128:
        return f"exit code {code} (signal {code - 128}?)"
    return f"exit code {code}"


def first_failure(log_dir: Path) -> Optional[dict]:
    """{'rank', 'pid', 'code', 'log'} of the first worker msrun saw fail, or None."""
    msrun_log = log_dir / MSRUN_LOG
    if not msrun_log.is_file():
        return None
    match = FAILED_WORKER.search(msrun_log.read_text(encoding="utf-8", errors="replace"))
    if match is None:
        return None
    pid, code = int(match.group(1)), int(match.group(2))
    ranks = {}
    for path in (log_dir / WORKERS_DIR).glob("rank_*.json"):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        ranks[record.get("pid")] = record.get("rank")
    rank = ranks.get(pid)
    log = log_dir / f"worker_{rank}.log" if rank is not None else None
    return {"rank": rank, "pid": pid, "code": code, "log": log}


def tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return text.rstrip("\n").splitlines()[-lines:]


def failure_summary(log_dir: str | Path) -> str:
    log_dir = Path(log_dir)
    failed = first_failure(log_dir)
    if failed is None:
        lines = [f"the distributed job failed, but no worker exited with an error first (the scheduler or msrun "
                 f"itself failed: time-out, port in use, a node missing?). Last lines of {log_dir / MSRUN_LOG}:"]
        return "\n".join(lines + [f"  | {line}" for line in tail(log_dir / MSRUN_LOG)] +
                         [f"scheduler log: {log_dir / 'scheduler.log'}"])
    who = f"rank {failed['rank']}" if failed["rank"] is not None else f"the worker with pid {failed['pid']} (rank unknown)"
    lines = [f"{who} failed first: {describe_exit(failed['code'])}; msrun then stopped the other workers "
             f"(their logs end where they were killed)."]
    if failed["log"] is not None:
        lines.append(f"last lines of {failed['log']}:")
        lines += [f"  | {line}" for line in tail(failed["log"])] or ["  (empty)"]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pangu_pro.launch", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("check", help="refuse a config that cannot start, before any worker does")
    p.add_argument("config")
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--device", choices=["cpu", "ascend"], required=True)
    p.add_argument("--why", default="", help="how the device was chosen (for the message)")
    p.add_argument("--tool", default="train", choices=["train", "inherit"])
    p.add_argument("tool_args", nargs=argparse.REMAINDER, help="the tool's arguments (after --)")
    p.add_argument("--local-workers", type=int, default=None, help="workers on this node (default: all)")
    p.add_argument("--shared-storage", action="store_true",
                   help="the run directories are on storage every node sees")
    p = commands.add_parser("record-worker", help="(workers) record this worker's rank and pid")
    p.add_argument("log_dir")
    p = commands.add_parser("signal-workers", help="pass a stop signal to this node's workers")
    p.add_argument("log_dir")
    p.add_argument("signal", help="TERM, INT, USR1, ...")
    p = commands.add_parser("failure", help="name the first failed rank and show its last log lines")
    p.add_argument("log_dir")
    args = parser.parse_args(argv)
    if args.command == "check":
        rest = args.tool_args[1:] if args.tool_args[:1] == ["--"] else args.tool_args
        return check(args.config, args.workers, args.device, args.why, args.tool, rest, args.local_workers,
                     args.shared_storage)
    if args.command == "record-worker":
        record_worker(args.log_dir)
        return 0
    if args.command == "signal-workers":
        ranks = signal_workers(args.log_dir, args.signal)
        if ranks:
            print(f"launcher: passed SIG{args.signal.removeprefix('SIG')} to rank(s) {', '.join(map(str, ranks))}",
                  file=sys.stderr)
        return 0
    print(failure_summary(args.log_dir), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
