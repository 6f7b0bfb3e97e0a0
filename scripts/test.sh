#!/usr/bin/env bash
# Set up .venv (same environment as the quickstart, plus pytest, torch, transformers and lm-eval) and run
# the whole test suite on the CPU, slow end-to-end tests included. Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh" "test,hf,lmeval"
cd "$REPO"
# Two pytest workers, the machine's two cores (PANGU_PRO_TEST_WORKERS=N to change, 0 for one process); each
# starts on its half of the tests and takes over the rest of the other's when it runs out (worksteal).
exec python -m pytest -n "${PANGU_PRO_TEST_WORKERS:-2}" --dist worksteal "$@"
