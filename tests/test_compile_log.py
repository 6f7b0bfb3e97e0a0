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
from pangu_pro.compile_log import COMPILES
from pangu_pro.runtime import init_mindspore
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


def test_the_stage_table_counts_each_process_in_the_stage_it_ended(tmp_path):
    from pangu_pro.compile_log import read_stages, stage_table

    (tmp_path / "stages.tsv").write_text("100\t1. corpus\n110.5\t2. train\n200\tdone\n")
    stages = read_stages(tmp_path / "stages.tsv")
    assert stages == [("1. corpus", 100.0, 110.5), ("2. train", 110.5, 200.0)]
    records = [{"graphs": 0, "compile_seconds": 0.0, "ended": 105.0},
               {"graphs": 3, "compile_seconds": 12.4, "ended": 150.0},
               {"graphs": 1, "compile_seconds": 2.0, "ended": 199.9},
               {"graphs": 9, "compile_seconds": 9.0, "ended": 250.0}]  # after the last stage: not counted
    assert stage_table(stages, records).splitlines()[2:] == [
        "| 1. corpus | 10 | 1 | 0 | 0 |", "| 2. train | 90 | 2 | 4 | 14 |", "| **total** | **100** | **3** | **4** | **14** |"]
