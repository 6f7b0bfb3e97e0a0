"""How many graphs a process compiles, and where a multi-command run spends its compiles.

PANGU_PRO_COMPILE_LOG=FILE: every process that sets MindSpore up (`runtime.init_mindspore`) appends one
JSON line to FILE at exit with the graphs it compiled and the seconds compiling took. In graph mode a
compile costs seconds and a recompile (a new shape, a new cell) is the usual hidden cost of a stage.

    python -m pangu_pro.compile_log STAGES.tsv FILE

prints the table the quickstart ends with: per stage (lines "<unix start>\t<name>" of STAGES.tsv, each
stage ending where the next starts) its wall time, processes, graphs and compile seconds.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

COMPILE_LOG_ENV = "PANGU_PRO_COMPILE_LOG"


class CompileCounter:
    """Graphs compiled in this process and the seconds it took: counts the calls of MindSpore's cell graph
    executor that compile (a cached phase returns `(phase, False)` without compiling)."""

    def __init__(self):
        self.graphs, self.seconds, self._installed = 0, 0.0, False

    def install(self) -> "CompileCounter":
        if self._installed:
            return self
        from mindspore.graph.api import _CellGraphExecutor

        compile_graph = _CellGraphExecutor.compile
        counter = self

        def counted(executor, obj, *args, **kwargs):
            start = time.perf_counter()
            phase, compiled = compile_graph(executor, obj, *args, **kwargs)
            if compiled:
                counter.graphs += 1
                counter.seconds += time.perf_counter() - start
            return phase, compiled

        _CellGraphExecutor.compile = counted
        self._installed = True
        return self


COMPILES = CompileCounter()


def log_compiles_at_exit(path: str) -> None:
    """Count this process's compiles and append `{"argv", "pid", "graphs", "compile_seconds", "ended"}` (Unix
    time) to PATH at exit."""
    import atexit

    if COMPILES._installed:
        return
    COMPILES.install()

    def write():
        record = {"argv": sys.argv[1:], "pid": os.getpid(), "graphs": COMPILES.graphs,
                  "compile_seconds": round(COMPILES.seconds, 2), "ended": round(time.time(), 2)}
        with open(path, "a", encoding="utf-8") as log:  # one short line per process: appends do not interleave
            log.write(json.dumps(record) + "\n")

    atexit.register(write)


def read_stages(path: str | Path) -> list[tuple[str, float, float]]:
    """(name, start, end) per stage of a "<unix start>\t<name>" file; the last line marks the end."""
    rows = [line.split("\t", 1) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    marks = [(name, float(start)) for start, name in rows]
    return [(name, start, marks[i + 1][1]) for i, (name, start) in enumerate(marks[:-1])]


def stage_table(stages: list[tuple[str, float, float]], records: list[dict]) -> str:
    """A Markdown table: each process record counts for the stage during which it ended."""
    lines = ["| stage | wall s | processes | graphs compiled | compile s |", "|---|---:|---:|---:|---:|"]
    totals = [0.0, 0, 0, 0.0]
    for name, start, end in stages:
        mine = [r for r in records if start <= r["ended"] < end]
        row = [end - start, len(mine), sum(r["graphs"] for r in mine), sum(r["compile_seconds"] for r in mine)]
        totals = [t + v for t, v in zip(totals, row)]
        lines.append(f"| {name} | {row[0]:.0f} | {row[1]} | {row[2]} | {row[3]:.0f} |")
    lines.append(f"| **total** | **{totals[0]:.0f}** | **{totals[1]}** | **{totals[2]}** | **{totals[3]:.0f}** |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m pangu_pro.compile_log STAGES.tsv COMPILE_LOG.jsonl", file=sys.stderr)
        return 2
    log = Path(argv[1])
    records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()] if log.is_file() else []
    print(stage_table(read_stages(argv[0]), records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
