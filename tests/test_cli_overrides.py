"""One override rule for every command that reads a config (pangu_pro/cli.py): `section.key=value` or
`--set section.key=value` anywhere after the command, never taken as another option's value; and the
multi-round launcher passes its overrides through."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pangu_pro.cli import build_parser
from pangu_pro.config import load_config
from pangu_pro.overrides import parse_command_line, reads_config, split_overrides
from pangu_pro.reference import leaf_commands

ROOT = Path(__file__).resolve().parents[1]
TINY = "configs/tiny_cpu.yaml"
OVERRIDE = "train.steps=7"


CONFIG_COMMANDS = [(words, p) for words, p, _ in leaf_commands(build_parser()) if reads_config(p)]


def _value(action: argparse.Action) -> list[str]:
    """A value argparse accepts for `action` (types and choices respected); the config is the tiny one."""
    if action.nargs == 0:
        return []
    if action.dest == "config":
        return [TINY]
    if action.choices:
        return [str(next(iter(action.choices)))]
    if action.type is int:
        return ["3"]
    if action.type is float:
        return ["0.5"]
    return ["x"]


def option_groups(parser) -> list[list[str]]:
    """Every option of `parser` once (one per mutually exclusive group), with a value where it takes one."""
    excluded = {id(a) for g in parser._mutually_exclusive_groups for a in g._group_actions[1:]}
    groups = []
    for action in parser._actions:
        if not action.option_strings or id(action) in excluded or action.dest in ("help", "overrides"):
            continue
        if action.nargs == "?":  # e.g. --resume [DIR]: bare, so that a following override could be taken
            groups.append([action.option_strings[0]])
        else:
            groups.append([action.option_strings[0], *_value(action)])
    return groups


def positionals(parser) -> list[str]:
    return [v for a in parser._actions if not a.option_strings and a.dest != "overrides" for v in _value(a)]


def test_every_config_reading_command_is_covered():
    names = {" ".join(words) for words, _ in CONFIG_COMMANDS}
    assert {"train", "perplexity", "params", "generate", "plan", "eval", "score", "rounds", "inherit",
            "convert to-hf", "tokenizer coverage"} <= names
    assert "select" not in names and "corpus builtin" not in names


@pytest.mark.parametrize("words,parser", CONFIG_COMMANDS, ids=[" ".join(w) for w, _ in CONFIG_COMMANDS])
def test_override_before_and_after_each_option_parses_the_same(words, parser):
    top = build_parser()
    units = [[p] for p in positionals(parser)] + option_groups(parser)  # positionals, then each option
    reference = vars(parse_command_line(top, [*words, *[t for u in units for t in u], OVERRIDE]))
    assert reference["overrides"] == [OVERRIDE]
    for where in range(len(units) + 1):  # before unit `where`; at the end, after the last option
        for form in ([OVERRIDE], ["--set", OVERRIDE], [f"--set={OVERRIDE}"]):
            argv = [*words, *[t for u in units[:where] for t in u], *form, *[t for u in units[where:] for t in u]]
            got = vars(parse_command_line(top, argv))
            assert got == reference, f"{' '.join(argv)}: {got} != {reference}"


def test_overrides_reach_the_config_in_order():
    args = parse_command_line(build_parser(), ["train", "train.steps=5", TINY, "--no-progress", "--set",
                                               "train.lr=0.5", "train.steps=90"])
    config = load_config(args.config, args.overrides)
    assert (config.train.steps, config.train.lr) == (90, 0.5)


def test_resume_never_takes_an_override():
    top = build_parser()
    args = parse_command_line(top, ["train", TINY, "--resume", "train.steps=3"])
    assert (args.resume, args.overrides) == ("auto", ["train.steps=3"])
    args = parse_command_line(top, ["train", TINY, "--resume", "runs/x", "train.steps=3"])
    assert (args.resume, args.overrides) == ("runs/x", ["train.steps=3"])
    args = parse_command_line(top, ["inherit", "configs/inherit_tiny_cpu.yaml", "--resume", "inherit.steps=3"])
    assert (args.resume, args.overrides) == ("auto", ["inherit.steps=3"])


def test_ppl_text_never_takes_an_override():
    args = parse_command_line(build_parser(), ["eval", TINY, "--checkpoint", "c", "--ppl-text", "a.txt",
                                               "model.seq_length=64", "b.txt"])
    assert args.ppl_text == ["a.txt", "b.txt"] and args.overrides == ["model.seq_length=64"]


def test_paths_and_option_values_are_not_overrides():
    overrides, rest = split_overrides(["runs/x.y=1", "--prompt=a.b=c", "a.b=c", "--set", "weird=1"])
    assert overrides == ["a.b=c", "weird=1"] and rest == ["runs/x.y=1", "--prompt=a.b=c"]


def test_a_stray_word_is_an_error_not_an_override(capsys):
    with pytest.raises(SystemExit):
        parse_command_line(build_parser(), ["train", TINY, "steps"])
    assert "unrecognized arguments: steps" in capsys.readouterr().err


def test_a_command_without_config_rejects_overrides(capsys):
    with pytest.raises(SystemExit):
        parse_command_line(build_parser(), ["select", "--scores", "s", "--rate", "0.5", "--seed", "1", "a.b=1"])
    assert "a.b=1" in capsys.readouterr().err


def test_legacy_positional_overrides_follow_the_same_rule():
    """A command registered the old way (positional `overrides`) gets the rule and --set without changes."""
    top = argparse.ArgumentParser(prog="t")
    sub = top.add_subparsers(dest="command", required=True)
    p = sub.add_parser("legacy")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--resume", nargs="?", const="auto")
    from pangu_pro.overrides import document_overrides

    document_overrides(top)
    args = parse_command_line(top, ["legacy", "c.yaml", "--resume", "a.b=1", "--set", "c.d=2"])
    assert (args.config, args.resume, args.overrides) == ("c.yaml", "auto", ["a.b=1", "c.d=2"])
    assert "section.key=value" in p.format_help()


@pytest.mark.parametrize("words,parser", CONFIG_COMMANDS, ids=[" ".join(w) for w, _ in CONFIG_COMMANDS])
def test_help_shows_the_rule(words, parser):
    text = parser.format_help()
    assert "--set" in text and "section.key=value anywhere after the command" in " ".join(text.split())


@pytest.mark.slow
def test_run_multi_round_passes_overrides_through(tmp_path):
    """`scripts/run_multi_round.sh CONFIG -- multi_round.rounds=2 ...` runs two rounds of a tiny model."""
    from tests.test_rounds_score import BATCH, SEQ, VOCAB, write_data

    data = write_data(tmp_path / "data.mindrecord", n=16)
    config = tmp_path / "tiny.yaml"
    config.write_text(f"model: {{vocab_size: {VOCAB}, hidden_size: 32, num_layers: 2, num_heads: 2, "
                      f"intermediate_size: 64, seq_length: {SEQ}, aug_shortcut_ratio: 8}}\n"
                      f"train: {{batch_size: {BATCH}, steps: 50, lr: 0.01, warmup_steps: 1}}\n"
                      "multi_round: {rounds: 5}\n")
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts/run_multi_round.sh"), str(config), "--", "multi_round.rounds=2",
         f"data.train_files=[{data}]", f"data.eval_files=[{data}]", "train.steps=2", "--no-progress",
         "multi_round.round_steps=1", "multi_round.score_unit_tokens=1", f"train.output_dir={out}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.glob("round_*")) == ["round_1", "round_2"]
    assert (out / "rounds_summary.md").is_file()


def test_an_override_fills_a_section_left_null(tmp_path):
    """A run's config.yaml writes absent optional sections as `multi_round: null`; overrides still reach them."""
    path = tmp_path / "config.yaml"
    path.write_text((ROOT / TINY).read_text() + "multi_round: null\n")
    assert load_config(path, ["multi_round.rounds=3"]).multi_round.rounds == 3
