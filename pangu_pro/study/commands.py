"""CLI commands of the studies: `pangu-pro study NAME [options]` (docs/studies.md).

Each study is a module `pangu_pro.study.<name>` with `add_arguments(parser)` and `run(args)`, imported
only when its sub-command runs, like the benchmarks.
"""
from __future__ import annotations

from pangu_pro.bench.commands import register_modules

STUDIES = {
    "modules": "SIAF and AugShortcut against LLaMA: held-out bits per byte and step time",
    "shape": "depth, width and FFN ratio at equal parameters: Spearman of each with held-out loss",
    "batch": "batch sizes at equal tokens, lr scaled by sqrt(B) against lr held constant",
    "layers": "each layer of a trained model dropped in turn: which layers matter",
}


def register(subparsers) -> None:
    register_modules(subparsers, "study", STUDIES, help="the paper's studies re-measured (benchmarks/results/study_*)",
                     description="Run a study of the paper's findings; its options follow its name.", metavar="STUDY")
