"""scripts/env.sh, which both README commands source: it installs only when setup.py changed or an
extra asked for is missing, so the quickstart and the tests do not undo each other's install."""
from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_env_installs_only_what_is_missing(tmp_path):
    venv, calls = tmp_path / "venv", tmp_path / "calls"
    (venv / "bin").mkdir(parents=True)
    fake = venv / "bin" / "python"  # records what env.sh asks of it instead of installing
    fake.write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\n')
    fake.chmod(0o755)
    digest = hashlib.sha256((ROOT / "setup.py").read_bytes()).hexdigest()[:16]
    stamp = venv / ".pangu-pro-installed"

    def installs(before: str, extras: str) -> bool:
        stamp.write_text(before + "\n")
        calls.unlink(missing_ok=True)
        subprocess.run(["bash", "-c", f'source scripts/env.sh "{extras}"'], cwd=ROOT, check=True, capture_output=True,
                       env={**os.environ, "PANGU_PRO_VENV": str(venv), "PANGU_PRO_SKIP_INSTALL": "0"})
        return calls.is_file() and f"-e {ROOT}[{extras}]" in calls.read_text()

    assert not installs(f"{digest}-test,hf,lmeval", "test,hf")  # the quickstart after the tests
    assert installs(f"{digest}-test,hf", "test,hf,lmeval")  # the tests after the quickstart: add lmeval
    assert stamp.read_text().strip() == f"{digest}-test,hf,lmeval"
    assert not installs(f"{digest}-test,hf,lmeval", "test,hf,lmeval")
    assert installs(f"{'0' * 16}-test,hf,lmeval", "test,hf")  # setup.py changed
