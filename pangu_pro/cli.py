"""`pangu-pro <command>`: one command line over the whole pipeline.

Each stage's sub-package has a `commands` module with `register(subparsers)`, which adds that stage's
commands; this file only lists the stages in pipeline order and dispatches.

Config overrides follow one rule for every command that reads a config (`pangu_pro.overrides`).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from pangu_pro.configtools import ConfigError
from pangu_pro.inherit.config import InheritConfig
from pangu_pro.overrides import document_overrides, parse_command_line

STAGES = ["model", "data", "tokenizer", "train", "rounds", "inherit", "convert", "eval", "bench", "study"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pangu-pro", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for stage in STAGES:
        importlib.import_module(f"pangu_pro.{stage}.commands").register(subparsers)
    document_overrides(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_command_line(build_parser(), argv, sections={"inherit": InheritConfig})
    args.run_cli = main  # for commands that run other commands in this process (`pangu-pro rounds`)
    try:
        return args.func(args) or 0
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"pangu-pro {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
