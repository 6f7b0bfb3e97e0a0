# Sourced by the scripts: create or reuse .venv beside the repo and install pangu-pro into it.
# Idempotent: the install runs again only when setup.py (or the extras asked for) change.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PANGU_PRO_VENV:-$REPO/.venv}"
EXTRAS="${1:-test}"

find_python() {
  for candidate in python3.11 python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "pangu-pro needs Python 3.11 (mindspore 2.9.0 wheels); none found on PATH" >&2
  return 1
}

if [ ! -x "$VENV/bin/python" ]; then
  PYTHON="$(find_python)"
  echo "[env] creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
STAMP="$VENV/.pangu-pro-installed"  # "<setup.py hash>-<extras installed>"
HASH="$(cat "$REPO/setup.py" | sha256sum | cut -c1-16)"
# The install is current when setup.py is unchanged and it has every extra asked for: the quickstart
# (test,hf) after the tests (test,hf,lmeval) installs nothing, and the tests after the quickstart add one.
installed_covers() {
  [ -f "$STAMP" ] || return 1
  local have extra
  have="$(cat "$STAMP")"
  [ "${have%%-*}" = "$HASH" ] || return 1
  for extra in ${EXTRAS//,/ }; do
    case ",${have#*-}," in *",$extra,"*) ;; *) return 1 ;; esac
  done
}
# PANGU_PRO_SKIP_INSTALL=1: use the environment as it is (a prepared cluster image, a shared venv).
if [ "${PANGU_PRO_SKIP_INSTALL:-0}" != 1 ] && ! installed_covers; then
  echo "[env] installing pangu-pro[$EXTRAS] into $VENV (first run: a few minutes)"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e "$REPO[$EXTRAS]"
  echo "$HASH-$EXTRAS" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
export GLOG_v="${GLOG_v:-3}"
export LOG_MF_PATH="${LOG_MF_PATH:-$HOME/.cache/pangu-pro/mf_log}"
