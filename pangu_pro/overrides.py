"""The command line's config overrides: one rule for every command that reads a config.

``section.key=value`` (value parsed as YAML) anywhere after the command, or ``--set section.key=value``,
repeatable, in any order with the options. They are taken out of the command line before argparse sees
it, so no option ever takes an override as its value (``--resume`` and ``--ppl-text`` included). A
command declares that it reads a config with `add_config_overrides(parser)` (or, as older commands did,
a positional argument named ``overrides``); the parsed overrides are then in ``args.overrides``.

A base module: every stage's `commands` module declares its options with it, and `pangu_pro.cli` (the
top of the package) parses with it.
"""
from __future__ import annotations

import argparse
import re
from typing import Optional

from pangu_pro.configtools import ConfigError

OVERRIDES_DEST = "overrides"
OVERRIDE_HELP = ("Config overrides: section.key=value (the value is read as YAML, e.g. train.steps=100 "
                 "data.train_files=[data/train]) anywhere after the command, before or after the options, "
                 "or --set section.key=value; repeatable, applied in order. A value that itself looks like "
                 "section.key=value must be attached to its option: --prompt='a.b=c'.")
# a dotted key of identifiers, then '=': `train.steps=100`, `multi_round.rate=0.5` (never a path or a flag)
_OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+=")
_SECTIONLESS = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")  # `steps=5`: an override without its section


def add_config_overrides(parser: argparse.ArgumentParser) -> None:
    """Declare that the command reads a config: it then takes overrides as `args.overrides` (a list)."""
    if "--set" not in parser._option_string_actions:
        parser.add_argument("--set", dest=OVERRIDES_DEST, action="append", default=[],
                            metavar="SECTION.KEY=VALUE", help="override a config value (repeatable); the "
                            "same as a bare section.key=value anywhere after the command")
    parser.epilog = f"{parser.epilog}\n\n{OVERRIDE_HELP}" if parser.epilog else OVERRIDE_HELP


def reads_config(parser: argparse.ArgumentParser) -> bool:
    return any(action.dest == OVERRIDES_DEST for action in parser._actions)


def is_override(token: str) -> bool:
    return bool(_OVERRIDE.match(token))


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """(overrides, the rest): bare ``section.key=value`` tokens and ``--set X`` / ``--set=X``, in order."""
    overrides, rest = [], []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--set":
            if i + 1 >= len(argv):
                raise ConfigError("--set", "expects section.key=value")
            overrides.append(argv[i + 1])
            i += 2
            continue
        if token.startswith("--set="):
            overrides.append(token[len("--set="):])
        elif is_override(token):
            overrides.append(token)
        else:
            rest.append(token)
        i += 1
    return overrides, rest


def subparsers_of(parser: argparse.ArgumentParser):
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def command_parser(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.ArgumentParser, int]:
    """The (sub-)parser that the leading command words of `argv` select, and how many words they are."""
    depth = 0
    while (sub := subparsers_of(parser)) is not None and depth < len(argv) and argv[depth] in sub.choices:
        parser = sub.choices[argv[depth]]
        depth += 1
    return parser, depth


def parse_command_line(parser: argparse.ArgumentParser, argv: list[str],
                       sections: Optional[dict] = None) -> argparse.Namespace:
    """parse_args with the override rule (module docstring) applied to the selected command. `sections`:
    config sections beyond `Config`'s own (name -> dataclass) that `steps=5` may have meant."""
    command, depth = command_parser(parser, argv)
    if not reads_config(command) or subparsers_of(command) is not None:
        return parser.parse_args(argv)
    try:
        overrides, rest = split_overrides(argv[depth:])
    except ConfigError as err:
        command.error(str(err))
    args, unknown = parser.parse_known_args(argv[:depth] + rest)
    stray = getattr(args, OVERRIDES_DEST, None) or []  # a positional `overrides` caught a non-override word
    for word in unknown + stray:
        if _SECTIONLESS.match(word):
            command.error(sectionless_override(word, sections))
    if unknown:
        command.error(f"unrecognized arguments: {' '.join(unknown)}")
    if stray:
        command.error(f"not an override (section.key=value): {' '.join(stray)}")
    setattr(args, OVERRIDES_DEST, overrides)
    return args


def sectionless_override(word: str, extra: Optional[dict] = None) -> str:
    """The error for `steps=5`: an override needs its section; name the sections that have the key
    (`Config`'s, an optional section's dataclass unwrapped, and `extra`)."""
    import dataclasses
    import typing

    from pangu_pro.config import Config

    key, value = word.split("=", 1)
    hints = typing.get_type_hints(Config)
    sections = {}
    for f in dataclasses.fields(Config):
        if f.name != "source":
            kind = hints[f.name]
            sections[f.name] = next((a for a in typing.get_args(kind) if dataclasses.is_dataclass(a)), kind)
    sections.update(extra or {})
    found = [name for name, cls in sections.items()
             if dataclasses.is_dataclass(cls) and key in {f.name for f in dataclasses.fields(cls)}]
    hint = (f"write {' or '.join(f'{name}.{key}={value}' for name in found)}" if found else
            f"no config section has a key {key!r} (sections: {', '.join(sections)})")
    return f"override {word!r} names no section: overrides are section.key=value; {hint}"


def document_overrides(parser: argparse.ArgumentParser) -> None:
    """Give every config-reading command `--set` and the override paragraph in its --help."""
    sub = subparsers_of(parser)
    if sub is None:
        if reads_config(parser) and OVERRIDE_HELP not in (parser.epilog or ""):
            add_config_overrides(parser)
        return
    for child in dict.fromkeys(sub.choices.values()):  # aliases map to the same parser
        document_overrides(child)
