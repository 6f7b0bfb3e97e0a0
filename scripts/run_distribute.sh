#!/usr/bin/env bash
# Distributed training (or parameter inheritance) with msrun, one process per worker (docs/ascend.md).
#   scripts/run_distribute.sh CONFIG [options] [-- section.key=value ... [--resume [DIR]]]
# Before any worker starts, the config is checked (data present, data_parallel x model_parallel x
# pipeline_stage = workers, memory plan fits the device); when a worker fails, the rank that failed
# first is named with its exit code or signal and the last lines of its log. SIGTERM, SIGINT or
# SIGUSR1 to this script is passed on to the workers, which finish their step, save it and exit; the
# script then exits 75 (docs/training.md, "Preemption and restarts").
set -euo pipefail

usage() {
  cat >&2 <<USAGE
usage: $(basename "$0") CONFIG [options] [-- section.key=value ... [--resume [DIR]]]

options:
  --workers N          total workers over all nodes (default 8)
  --local-workers N    workers started on this node (default: --workers)
  --master-addr ADDR   address of the scheduler node (default 127.0.0.1)
  --master-port PORT   its port (default 8118)
  --node-rank R        this node's rank (multi-node; default: assigned by msrun)
  --log-dir DIR        per-worker logs (default output/msrun_log; an earlier run's logs move to DIR/previous;
                       with several nodes each writes its own DIR/node_<node rank or host name>)
  --rank-table FILE    HCCL rank table (Ascend clusters that use one)
  --timeout SECONDS    cluster set-up time-out (default 7200, as MindFormers)
  --bind-core          bind each worker to its own CPU cores (msrun --bind_core=True)
  --tool NAME          what each worker runs: train (default) or inherit (tools/NAME.py)
  --skip-check         start without the pre-flight check of the config
  --shared-storage     the run directories are on storage every node sees (a multi-node resume onto
                       another layout needs it: rank 0 merges the old run's slices there)

Everything after "--" goes to the tool: overrides and --resume.
environment: PANGU_PRO_DEVICE=cpu|ascend (default: ascend when an Ascend install or npu-smi is
found, else cpu); PANGU_PRO_DEVICE_MEMORY_GIB (device memory for the check, default 64)
USAGE
  exit 2
}

[[ $# -ge 1 ]] || usage
case "$1" in -h|--help) usage ;; esac
CONFIG="$1"; shift
[[ -f "$CONFIG" ]] || { echo "error: config file not found: $CONFIG" >&2; usage; }

WORKERS=8; LOCAL_WORKERS=""; MASTER_ADDR=127.0.0.1; MASTER_PORT=8118; NODE_RANK=""
LOG_DIR=output/msrun_log; RANK_TABLE=""; TIMEOUT=7200; TOOL=train; BIND_CORE=0; CHECK=1; SHARED=()
need() { [[ $# -ge 2 && -n "$2" ]] || { echo "error: $1 needs a value" >&2; usage; }; }
is_int() { [[ "$2" =~ ^[0-9]+$ ]] || { echo "error: $1 expects a number, got '$2'" >&2; usage; }; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --workers) need "$@"; is_int "$1" "$2"; WORKERS="$2"; shift 2 ;;
    --local-workers) need "$@"; is_int "$1" "$2"; LOCAL_WORKERS="$2"; shift 2 ;;
    --master-addr) need "$@"; MASTER_ADDR="$2"; shift 2 ;;
    --master-port) need "$@"; is_int "$1" "$2"; MASTER_PORT="$2"; shift 2 ;;
    --node-rank) need "$@"; is_int "$1" "$2"; NODE_RANK="$2"; shift 2 ;;
    --log-dir) need "$@"; LOG_DIR="$2"; shift 2 ;;
    --rank-table) need "$@"; RANK_TABLE="$2"; shift 2 ;;
    --timeout) need "$@"; is_int "$1" "$2"; TIMEOUT="$2"; shift 2 ;;
    --bind-core) BIND_CORE=1; shift ;;
    --skip-check) CHECK=0; shift ;;
    --shared-storage) SHARED=(--shared-storage); shift ;;
    --tool) need "$@"; case "$2" in train|inherit) TOOL="$2" ;; *) echo "error: --tool is train or inherit, got '$2'" >&2; usage ;; esac; shift 2 ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) echo "error: unknown option '$1' (trainer arguments go after --)" >&2; usage ;;
  esac
done
LOCAL_WORKERS="${LOCAL_WORKERS:-$WORKERS}"
[[ "$WORKERS" -ge 1 && "$LOCAL_WORKERS" -ge 1 && "$LOCAL_WORKERS" -le "$WORKERS" ]] || {
  echo "error: need 1 <= --local-workers ($LOCAL_WORKERS) <= --workers ($WORKERS)" >&2; usage; }
[[ -z "$RANK_TABLE" || -f "$RANK_TABLE" ]] || { echo "error: rank table not found: $RANK_TABLE" >&2; exit 2; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# An msrun already on PATH (an activated environment) wins; otherwise the project's own venv.
VENV="${PANGU_PRO_VENV:-$ROOT/.venv}"
if ! command -v msrun >/dev/null && [[ -x "$VENV/bin/msrun" ]]; then
  export PATH="$VENV/bin:$PATH"
fi
PYTHON="$(command -v python3 || command -v python)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

source "$ROOT/scripts/device.sh"
detect_device || exit 2

# Pre-flight: refuse what cannot run before any worker starts (no MindSpore import: a second or two).
if [[ "$CHECK" == 1 && -z "${PANGU_PRO_DRY_RUN:-}" ]]; then  # a dry run checks only the arguments
  "$PYTHON" -m pangu_pro.launch check --workers "$WORKERS" --local-workers "$LOCAL_WORKERS" ${SHARED[@]+"${SHARED[@]}"} \
    --device "$PANGU_PRO_DEVICE" --why "$DEVICE_WHY" --tool "$TOOL" "$CONFIG" -- "$@" || exit 2
fi
command -v msrun >/dev/null || { echo "error: msrun not found (install mindspore)" >&2; exit 2; }

# Several nodes may share one --log-dir (a shared filesystem): each owns a sub-directory, so no node
# moves another's live logs or worker records (the failure summary maps pids to ranks from them).
if [[ "$LOCAL_WORKERS" != "$WORKERS" ]]; then
  LOG_DIR="$LOG_DIR/node_${NODE_RANK:-$(hostname)}"
fi
# Fresh logs: an earlier run's worker logs would end in lines that are not this run's.
mkdir -p "$LOG_DIR"
LOG_DIR="$(cd "$LOG_DIR" && pwd)"
if compgen -G "$LOG_DIR/*.log" >/dev/null || [[ -d "$LOG_DIR/.workers" ]]; then
  rm -rf "$LOG_DIR/previous"; mkdir -p "$LOG_DIR/previous"
  mv "$LOG_DIR"/*.log "$LOG_DIR/previous/" 2>/dev/null || true
  rm -rf "$LOG_DIR/.workers"
fi
export PANGU_PRO_LOG_DIR="$LOG_DIR"

# As MindFormers' launcher: many threads per worker on a big node.
ulimit -u unlimited 2>/dev/null || echo "note: could not lift the process limit (ulimit -u is $(ulimit -u))" >&2

ARGS=(--worker_num="$WORKERS" --local_worker_num="$LOCAL_WORKERS" --master_addr="$MASTER_ADDR"
      --master_port="$MASTER_PORT" --log_dir="$LOG_DIR" --join=True --cluster_time_out="$TIMEOUT")
[[ -n "$NODE_RANK" ]] && ARGS+=(--node_rank="$NODE_RANK")
[[ -n "$RANK_TABLE" ]] && ARGS+=(--rank_table_file="$RANK_TABLE")
[[ "$BIND_CORE" == 1 ]] && ARGS+=(--bind_core=True)

echo "msrun: $WORKERS workers ($LOCAL_WORKERS here) on $PANGU_PRO_DEVICE, master $MASTER_ADDR:$MASTER_PORT" >&2
if [[ -n "$NODE_RANK" ]]; then FIRST=$((NODE_RANK * LOCAL_WORKERS)); else FIRST=0; fi
if [[ "$LOCAL_WORKERS" == "$WORKERS" || -n "$NODE_RANK" ]]; then
  for ((r = FIRST; r < FIRST + LOCAL_WORKERS; r++)); do echo "  rank $r log: $LOG_DIR/worker_$r.log" >&2; done
else
  echo "  worker logs: $LOG_DIR/worker_<rank>.log (ranks assigned by msrun)" >&2
fi
echo "  scheduler log: $LOG_DIR/scheduler.log; msrun's own output: $LOG_DIR/msrun.log" >&2

if [[ -n "${PANGU_PRO_DRY_RUN:-}" ]]; then  # tests/docs_examples.py: print the command, one argument a line
  printf '%s\n' msrun "${ARGS[@]}" "$ROOT/tools/$TOOL.py" "$CONFIG" "$@" --no-progress
  exit 0
fi
# msrun runs in a session of its own: a Ctrl-C or a signal to this script's process group must not
# reach it (it answers SIGINT by SIGKILLing every worker). A stop signal is passed to the workers
# instead (pangu_pro.launch signal-workers), again each second for workers that record themselves late.
STOP=""
for sig in TERM INT USR1; do trap "STOP=$sig" "$sig"; done
set +e
setsid -w msrun "${ARGS[@]}" "$ROOT/tools/$TOOL.py" "$CONFIG" "$@" --no-progress >"$LOG_DIR/msrun.log" 2>&1 &
MSRUN_PID=$!
(trap '' TERM INT USR1; exec tail -n +1 -f --pid="$MSRUN_PID" "$LOG_DIR/msrun.log") &
running() { local state; state="$(ps -o stat= -p "$MSRUN_PID" 2>/dev/null)"; [[ -n "$state" && "$state" != Z* ]]; }
while running; do
  [[ -n "$STOP" ]] && "$PYTHON" -m pangu_pro.launch signal-workers "$LOG_DIR" "$STOP"
  sleep 1 & wait $!
done
wait "$MSRUN_PID"
STATUS=$?
wait  # the log tail
set -e
if [[ "$STATUS" != 0 ]]; then
  SUMMARY="$("$PYTHON" -m pangu_pro.launch failure "$LOG_DIR" 2>&1)"
  if [[ "$SUMMARY" == *"exit code 75: stopped on a signal"* ]]; then
    echo "stopped${STOP:+ by SIG$STOP}: the workers saved a checkpoint (see $LOG_DIR/worker_*.log); continue with" \
      "--resume" >&2
    exit 75
  fi
  echo "error: the distributed job failed (msrun exit status $STATUS)" >&2
  echo "$SUMMARY" >&2
  exit "$STATUS"
fi
