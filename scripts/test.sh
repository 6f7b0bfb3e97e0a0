#!/usr/bin/env bash
# Set up .venv (same environment as the quickstart, plus pytest, torch, transformers and lm-eval) and run
# the whole test suite on the CPU, slow end-to-end tests included. Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh" "test,hf,lmeval"
cd "$REPO"
exec python -m pytest "$@"
