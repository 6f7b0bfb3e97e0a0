"""The shell examples of README.md and docs/*.md, checked against the code (tests/test_docs.py).

Every ```bash block is an example. A block directly below the line `<!-- example: cluster -->` is only
*parsed*: each command's arguments go through the real argument parsers (launchers through their own
option parsing, with PANGU_PRO_DRY_RUN=1) and the config it names is loaded and validated with its
overrides; nothing is computed. Every other block is *run*, in file order, README.md first, in one
workspace where `configs/`, `scripts/` and `tools/` are the repository's: the README walkthrough chains
its steps, and a docs/ example runs on what the walkthrough wrote.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- example: cluster -->"
LAUNCHERS = {"run_distribute.sh", "run_multi_round.sh", "run_standalone.sh"}
LAUNCHER_INPUTS = {"--rank-table"}  # options naming a file the launcher checks exists
PLAIN_SHELL = {"cat", "ls", "head", "tail", "mkdir", "cp", "rm", "echo", "cd"}
STAND_IN = "configs/tiny_cpu.yaml"
TOOLS = {"train", "inherit", "convert"}  # tools/NAME.py == pangu-pro NAME


@dataclass
class Example:
    path: Path  # the Markdown file
    line: int  # 1-based line of the command's first line
    text: str  # the command, continuation lines joined
    cluster: bool  # under the cluster marker: parsed only

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}: {self.text}"


class ExampleError(AssertionError):
    pass


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def examples(path: Path) -> list[Example]:
    """The commands of every ```bash block of `path`, with their line numbers."""
    found, lines = [], path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() != "```bash":
            i += 1
            continue
        cluster = i > 0 and lines[i - 1].strip() == MARKER
        i += 1
        pending, start = "", 0
        while i < len(lines) and lines[i].strip() != "```":
            line = lines[i]
            if not pending:
                start = i + 1
            if line.rstrip().endswith("\\"):
                pending += line.strip()[:-1].strip() + " "
            else:
                text = (pending + line.strip()).strip()
                pending = ""
                if text and not text.startswith("#"):
                    found.append(Example(path, start, text, cluster))
            i += 1
        i += 1
    return found


def all_examples() -> list[Example]:
    return [e for path in doc_files() for e in examples(path)]


# ------------------------------------------------------------------------------------------ parse


def check(example: Example, workspace: Path) -> None:
    """Parse `example` as the code would (module doc); raise ExampleError naming file, line and command."""
    try:
        tokens = shlex.split(example.text, comments=True)
    except ValueError as err:
        raise ExampleError(f"{example.where()}\n  not valid shell: {err}") from None
    try:
        for command in _split_commands(tokens):
            _check_tokens(command, workspace)
    except ExampleError as err:
        raise ExampleError(f"{example.where()}\n  {err}") from None


def _split_commands(tokens: list[str]) -> list[list[str]]:
    commands, current = [], []
    for token in tokens:
        if token in ("&&", ";", "||"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    return [c for c in commands + [current] if c]


def _check_tokens(tokens: list[str], workspace: Path) -> None:
    while tokens and re.match(r"^[A-Z_][A-Z0-9_]*=", tokens[0]):  # VAR=value prefixes
        tokens = tokens[1:]
    head, rest = tokens[0], tokens[1:]
    if head == "pangu-pro":
        return check_cli(rest, workspace)
    if head in ("python", "python3"):
        return _check_python(rest, workspace)
    if head == "bash":
        return _check_script(rest[0], rest[1:], workspace)
    if head.endswith(".sh"):
        return _check_script(head, rest, workspace)
    if head == "msrun":
        return _check_msrun(rest, workspace)
    if head in PLAIN_SHELL:
        return None
    raise ExampleError(f"no check for `{head}`: use pangu-pro / python / bash / msrun, or fence the block as "
                       "```text if it is not a command")


def _check_python(rest: list[str], workspace: Path) -> None:
    if rest[:2] == ["-m", "pangu_pro.cli"]:
        return check_cli(rest[2:], workspace)
    if rest and rest[0] in ("-", "-c"):
        return None  # inline code: only a run checks it
    script = ROOT / rest[0]
    if not script.is_file():
        raise ExampleError(f"{rest[0]}: no such script")
    if script.parent == ROOT / "tools" and script.stem in TOOLS:
        return check_cli([script.stem, *rest[1:]], workspace)
    return None


def _check_msrun(rest: list[str], workspace: Path) -> None:
    args = [a for a in rest if not a.startswith("--")]
    if not args:
        raise ExampleError("msrun without a script")
    i = rest.index(args[0])
    script, tail = rest[i], rest[i + 1:]
    if script in ("python", "python3"):
        return _check_python(tail, workspace)
    if script == "pangu_pro/cli.py":
        return check_cli(tail, workspace)
    return _check_python([script, *tail], workspace)


def _check_script(script: str, rest: list[str], workspace: Path) -> None:
    path = ROOT / script
    if not path.is_file():
        raise ExampleError(f"{script}: no such script")
    syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    if syntax.returncode:
        raise ExampleError(f"{script}: {syntax.stderr.strip()}")
    if path.name not in LAUNCHERS:
        return None
    config = rest[0] if rest else None
    if config and not (workspace / config).is_file() and not config.startswith("configs/"):
        rest = [STAND_IN, *rest[1:]]  # a config an earlier step writes: check the options on a stand-in
    for option, value in zip(rest, rest[1:]):
        if option in LAUNCHER_INPUTS and not (workspace / value).exists():  # a cluster's file: a stand-in
            (workspace / value).parent.mkdir(parents=True, exist_ok=True)
            (workspace / value).touch()
    env = {**os.environ, "PANGU_PRO_DRY_RUN": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(["bash", str(workspace / script), *rest], cwd=workspace, env=env, capture_output=True,
                          text=True, timeout=60)
    if proc.returncode:
        said = [line for line in proc.stderr.splitlines() if "error" in line] or proc.stderr.splitlines()[-1:]
        raise ExampleError(f"{script} refuses the arguments: {' / '.join(said)}")
    launched = [config if arg == STAND_IN and rest[0] != config else arg for arg in proc.stdout.splitlines()]
    if launched[0] == "msrun":
        return _check_msrun(launched[1:], workspace)
    if launched[1:3] == ["-m", "pangu_pro.cli"]:
        return check_cli(launched[3:], workspace)
    return _check_python([str(Path(launched[1]).relative_to(workspace)), *launched[2:]], workspace)


def check_cli(argv: list[str], workspace: Path) -> None:
    """`pangu-pro ARGV`: the real parser, then the config it reads (if it names one that exists)."""
    from pangu_pro.cli import build_parser
    from pangu_pro.overrides import parse_command_line

    parser = build_parser()
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            args = parse_command_line(parser, argv)
    except SystemExit:
        raise ExampleError(f"pangu-pro {' '.join(argv[:2])}: {errors.getvalue().strip().splitlines()[-1]}") from None
    if args.command == "bench":
        return _check_bench(args, workspace)
    config = getattr(args, "config", None)
    if config is None:
        return None
    path = Path(config) if Path(config).is_absolute() else workspace / config
    if not path.is_file():
        if config.startswith("configs/"):
            raise ExampleError(f"{config}: no such config")
        return None  # written by an earlier step
    _load_config(args.command, path, getattr(args, "overrides", []), workspace)


def _load_config(command: str, path: Path, overrides: list[str], workspace: Path) -> None:
    from pangu_pro.config import load_config
    from pangu_pro.configtools import ConfigError
    from pangu_pro.inherit.config import load_inherit_config

    cwd = os.getcwd()
    os.chdir(workspace)  # configs name other configs relative to the working directory
    try:
        (load_inherit_config if command == "inherit" else load_config)(path, overrides)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        raise ExampleError(f"config: {err}") from None
    finally:
        os.chdir(cwd)


def _check_bench(args, workspace: Path) -> None:
    import argparse
    import importlib

    from pangu_pro.overrides import parse_command_line

    module = importlib.import_module(f"pangu_pro.bench.{args.benchmark}")
    parser = argparse.ArgumentParser(prog=f"pangu-pro bench {args.benchmark}")
    module.add_arguments(parser)
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            parse_command_line(parser, args.bench_args)
    except SystemExit:
        raise ExampleError(errors.getvalue().strip().splitlines()[-1]) from None


# -------------------------------------------------------------------------------------------- run


def make_workspace(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name in ("configs", "scripts", "tools"):
        link = path / name
        if not link.exists():
            link.symlink_to(ROOT / name)
    return path


def run(example: Example, workspace: Path, timeout: int = 900) -> str:
    """Run `example` with bash in `workspace`; its output, or ExampleError naming file, line, command."""
    check(example, workspace)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PANGU_PRO_SKIP_INSTALL": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(["bash", "-c", f"set -euo pipefail\n{example.text}"], cwd=workspace, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise ExampleError(f"{example.where()}\n  exit code {proc.returncode}; last output:\n"
                           f"{(proc.stdout[-1000:] + proc.stderr[-2500:]).strip()}")
    return proc.stdout
