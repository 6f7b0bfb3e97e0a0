#!/usr/bin/env bash
# Distributed training (or parameter inheritance) with msrun, one process per worker
# (docs/ascend.md, "Launching").
#   scripts/run_distribute.sh CONFIG [options] [-- section.key=value ... [--resume [DIR]]]
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
  --log-dir DIR        per-worker logs (default output/msrun_log)
  --rank-table FILE    HCCL rank table (Ascend clusters that use one)
  --timeout SECONDS    cluster set-up time-out (default 600)
  --tool NAME          what each worker runs: train (default) or inherit (tools/NAME.py)

Everything after "--" goes to the tool: overrides and --resume.
environment: PANGU_PRO_DEVICE=cpu|ascend (default cpu)
USAGE
  exit 2
}

[[ $# -ge 1 ]] || usage
case "$1" in -h|--help) usage ;; esac
CONFIG="$1"; shift
[[ -f "$CONFIG" ]] || { echo "error: config file not found: $CONFIG" >&2; usage; }

WORKERS=8; LOCAL_WORKERS=""; MASTER_ADDR=127.0.0.1; MASTER_PORT=8118; NODE_RANK=""
LOG_DIR=output/msrun_log; RANK_TABLE=""; TIMEOUT=600; TOOL=train
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
    --timeout) need "$@"; TIMEOUT="$2"; shift 2 ;;
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
if [[ -x "$ROOT/.venv/bin/msrun" ]]; then
  export PATH="$ROOT/.venv/bin:$PATH"
fi
command -v msrun >/dev/null || { echo "error: msrun not found (install mindspore)" >&2; exit 2; }
mkdir -p "$LOG_DIR"

ARGS=(--worker_num="$WORKERS" --local_worker_num="$LOCAL_WORKERS" --master_addr="$MASTER_ADDR"
      --master_port="$MASTER_PORT" --log_dir="$LOG_DIR" --join=True --cluster_time_out="$TIMEOUT")
[[ -n "$NODE_RANK" ]] && ARGS+=(--node_rank="$NODE_RANK")
[[ -n "$RANK_TABLE" ]] && ARGS+=(--rank_table_file="$RANK_TABLE")

echo "msrun: $WORKERS workers ($LOCAL_WORKERS here), master $MASTER_ADDR:$MASTER_PORT, logs in $LOG_DIR" >&2
exec ${PANGU_PRO_DRY_RUN:+printf %s\\n} msrun "${ARGS[@]}" "$ROOT/tools/$TOOL.py" "$CONFIG" "$@" --no-progress
