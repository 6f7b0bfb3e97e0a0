#!/usr/bin/env bash
# Multi-round training (docs/multi_round.md): train -> score -> select -> train ..., resumable.
#   scripts/run_multi_round.sh CONFIG [--workers N] [--master-port PORT] [-- section.key=value ...]
# CONFIG needs a multi_round: section. With --workers N > 1 the train and score stages run under msrun
# with N data-parallel workers on this node. Re-run the same command to continue after an interruption.
# PANGU_PRO_DRY_RUN=1 prints the command (one argument a line) instead of running it (tests/test_docs.py).
set -euo pipefail

usage() {
  sed -n '2,5p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

[[ $# -ge 1 ]] || usage
case "$1" in -h|--help) usage ;; esac
CONFIG="$1"; shift
[[ -f "$CONFIG" ]] || { echo "error: config file not found: $CONFIG" >&2; usage; }
WORKERS=1; MASTER_PORT=8129
while [[ $# -gt 0 ]]; do
  case "$1" in
    --workers) [[ "${2:-}" =~ ^[0-9]+$ ]] || { echo "error: --workers expects a number" >&2; usage; }
               WORKERS="$2"; shift 2 ;;
    --master-port) [[ "${2:-}" =~ ^[0-9]+$ ]] || { echo "error: --master-port expects a number" >&2; usage; }
                   MASTER_PORT="$2"; shift 2 ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) echo "error: unknown option '$1' (config overrides go after --)" >&2; usage ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -x "$ROOT/.venv/bin/python" ]]; then
  export PATH="$ROOT/.venv/bin:$PATH"
fi
export GLOG_v="${GLOG_v:-3}"
export LOG_MF_PATH="${LOG_MF_PATH:-$HOME/.cache/pangu-pro/mf_log}"
exec ${PANGU_PRO_DRY_RUN:+printf %s\\n} python -m pangu_pro.cli rounds "$CONFIG" --workers "$WORKERS" --master-port "$MASTER_PORT" "$@"
