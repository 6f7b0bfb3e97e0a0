#!/usr/bin/env bash
# Train on one device: scripts/run_standalone.sh CONFIG [section.key=value ...] [--resume [DIR]]
# The device comes from PANGU_PRO_DEVICE (cpu by default, or ascend; DEVICE_ID picks the NPU).
# PANGU_PRO_DRY_RUN=1 prints the command (one argument a line) instead of running it (tests/test_docs.py).
# The trainer replaces this shell (exec), so SIGTERM/SIGINT/SIGUSR1 sent to it reach the trainer, which
# finishes the step, saves it and exits 75 (docs/training.md, "Preemption and restarts").
set -euo pipefail

usage() {
  cat >&2 <<USAGE
usage: $(basename "$0") CONFIG [section.key=value ...] [--resume [DIR]]

  CONFIG     YAML config (model, data, train, parallel sections)
  overrides  e.g. train.steps=100 train.output_dir=runs/x
  --resume   continue from the newest checkpoint of train.output_dir (or from DIR)

environment: PANGU_PRO_DEVICE=cpu|ascend (default cpu), DEVICE_ID (Ascend, default 0)
USAGE
  exit 2
}

[[ $# -ge 1 ]] || usage
case "$1" in -h|--help) usage ;; esac
[[ -f "$1" ]] || { echo "error: config file not found: $1" >&2; usage; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON="${PYTHON:-python3}"; fi

exec ${PANGU_PRO_DRY_RUN:+printf %s\\n} "$PYTHON" "$ROOT/tools/train.py" "$@"
