"""`pangu-pro <command>`: one command line over the whole pipeline.

Each stage's sub-package has a `commands` module with `register(subparsers)`, which adds that stage's
commands; this file only lists the stages in pipeline order and dispatches.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from pangu_pro.configtools import ConfigError

STAGES = ["model", "data", "tokenizer", "train", "rounds", "inherit", "convert", "eval", "bench"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pangu-pro", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for stage in STAGES:
        importlib.import_module(f"pangu_pro.{stage}.commands").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"pangu-pro {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
