"""CLI commands of the bench stage: `pangu-pro bench {train,model,decode,tokenizer,speed,rounds,inherit} [options]`.

Each benchmark is a module `pangu_pro.bench.<name>` exposing `add_arguments(parser)` and `run(args)`.
Modules are imported only when their sub-command runs, so one missing or broken benchmark never
breaks the rest of the command line; the sub-command's own options are parsed at that point
(`pangu-pro bench train --help` lists them).
"""
from __future__ import annotations

import argparse
import importlib

BENCHMARKS = {
    "train": "training-step throughput vs MindFormers and PyTorch peers, data-loading headroom",
    "model": "forward / train-step time, PanGu-pi module overhead, cached vs uncached decoding",
    "tokenizer": "token counting throughput and compressed-tokenizer quality",
    "decode": "greedy decoding vs transformers generate on the same weights, memory-traffic bound",
    "speed": "decode speed: depth x width at equal size, SIAF / AugShortcut latency",
    "rounds": "multi-round training: hard vs uniform second-round samples",
    "inherit": "parameter inheritance: criteria compared on the built-in corpus",
}


def register(subparsers) -> None:
    bench = subparsers.add_parser("bench", help="benchmarks (results under benchmarks/results/)",
                                  description="Run a benchmark; its options follow its name.")
    inner = bench.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, summary in BENCHMARKS.items():
        # no option prefix of its own: everything after the name, options included, is passed on as is
        p = inner.add_parser(name, help=summary, add_help=False, prefix_chars="\x01")
        p.add_argument("bench_args", nargs="*")
        p.set_defaults(func=_runner(name, summary))


def _runner(name: str, summary: str):
    def run(args) -> int:
        try:
            module = importlib.import_module(f"pangu_pro.bench.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"pangu_pro.bench.{name}":
                raise
            raise ValueError(f"benchmark '{name}' is not available yet (no module pangu_pro.bench.{name})") from None
        from pangu_pro.cli import parse_command_line

        parser = argparse.ArgumentParser(prog=f"pangu-pro bench {name}", description=summary)
        module.add_arguments(parser)
        return module.run(parse_command_line(parser, args.bench_args)) or 0

    return run
