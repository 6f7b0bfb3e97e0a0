"""PANGU_PRO_COMPILE_LOG: a process counts the graphs it compiles (a new shape compiles, a repeated one
does not) and appends them as one JSON line at exit (the quickstart's per-stage table)."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import numpy as np, mindspore as ms
from pangu_pro.runtime import COMPILES, init_mindspore
init_mindspore(0)
dense = ms.nn.Dense(4, 3)
for rows in (2, 2, 5, 2):
    dense(ms.Tensor(np.ones((rows, 4), np.float32)))
print(COMPILES.graphs)
"""


def test_compiles_are_counted_and_logged_at_exit(tmp_path):
    log = tmp_path / "compiles.jsonl"
    log.write_text('{"earlier": "line"}\n')
    env = {**os.environ, "PANGU_PRO_COMPILE_LOG": str(log), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", SCRIPT, "an-argument"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "2"  # shapes (2, 4) and (5, 4); the repeats hit the cache
    lines = log.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0]) == {"earlier": "line"}
    record = json.loads(lines[1])
    assert record["graphs"] == 2 and record["argv"] == ["an-argument"] and record["compile_seconds"] > 0
