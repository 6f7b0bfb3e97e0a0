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
    register_modules(subparsers, "bench", BENCHMARKS, help="benchmarks (results under benchmarks/results/)",
                     description="Run a benchmark; its options follow its name.", metavar="BENCHMARK")


def register_modules(subparsers, command: str, table: dict[str, str], *, help: str, description: str,
                     metavar: str) -> None:
    """`pangu-pro COMMAND NAME [options]` for every NAME of `table`: module `pangu_pro.COMMAND.NAME`
    with `add_arguments(parser)` and `run(args)`, imported only when it runs (`args.argv` holds its
    options as given, `args.run_cli` the command line's `main`). The chosen NAME is `args.<metavar in
    lower case>`."""
    outer = subparsers.add_parser(command, help=help, description=description)
    inner = outer.add_subparsers(dest=metavar.lower(), metavar=metavar, required=True)
    for name, summary in table.items():
        # no option prefix of its own: everything after the name, options included, is passed on as is
        p = inner.add_parser(name, help=summary, add_help=False, prefix_chars="\x01")
        p.add_argument(f"{command}_args", nargs="*")
        p.set_defaults(func=_runner(command, name, summary))


def _runner(command: str, name: str, summary: str):
    def run(args) -> int:
        try:
            module = importlib.import_module(f"pangu_pro.{command}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"pangu_pro.{command}.{name}":
                raise
            raise ValueError(f"{command} '{name}' is not available yet (no module pangu_pro.{command}.{name})") from None
        from pangu_pro.overrides import parse_command_line

        argv = getattr(args, f"{command}_args")
        parser = argparse.ArgumentParser(prog=f"pangu-pro {command} {name}", description=summary)
        module.add_arguments(parser)
        parsed = parse_command_line(parser, argv)
        parsed.argv, parsed.run_cli = list(argv), args.run_cli
        return module.run(parsed) or 0

    return run
