"""`pangu-pro rounds CONFIG`: multi-round training, train -> score -> select -> train ..., resumable.

Layout under ROOT = train.output_dir of CONFIG:

    ROOT/rounds_state.json          finished stages of every round (written after each stage)
    ROOT/rounds_summary.json, .md   per round: steps, training samples, final and held-out loss,
                                    mean score, selected fraction
    ROOT/round_K/config.yaml        the config round K trains with
    ROOT/round_K/train/             the trainer's output dir (checkpoints/, metrics.jsonl)
    ROOT/round_K/scores.npz (.json) round K's model scoring the whole training set (not in the last round)
    ROOT/round_K/selection.npy (.json)  the sample indices round K+1 trains on

Stages of round K, in order: ``train``, ``eval`` (held-out loss on data.eval_files, when given),
then, unless K is the last round, ``score`` and ``select``. Re-running the command skips every
finished stage and continues an unfinished one where it stopped: the trainer resumes from its last
checkpoint, scoring from its partial files. A state file started with a different config (anything but
`multi_round.rounds`, which may grow to add rounds) is refused.

Round 1 trains as the config says. Round K > 1 starts from round K-1's final weights with a fresh
optimizer (AdamW moments and step count at zero) and a fresh learning-rate schedule, for
`multi_round.round_steps` steps (default round(rate * train.steps): the same number of passes over
the selected subset as round 1 made over the whole set), reading round K-1's selection.npy as
`data.index_file`, with `train.init_weights` pointing at round K-1's final checkpoint.

With `--workers W > 1`, train and score run under msrun with W data-parallel workers
(`msrun ... python -m pangu_pro.cli ...`); select, eval and the bookkeeping run in this process.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from pangu_pro.config import Config, config_from_dict, save_config
from pangu_pro.configtools import ConfigError, to_mapping
from pangu_pro.io import atomic_write_json, atomic_write_text, read_json
from pangu_pro.rounds.sampling import num_units
from pangu_pro.rounds.scoring import score_unit_samples
from pangu_pro.train.preemption import PREEMPTED_EXIT
from pangu_pro.train.schedule import (OFFICIAL_CONTINUED_LR, OFFICIAL_CONTINUED_MIN_LR_RATIO,
                                      OFFICIAL_CONTINUED_WARMUP_FRACTION)

STATE_NAME = "rounds_state.json"
SUMMARY_NAME = "rounds_summary"
STATE_VERSION = 1


def round_dir(root: Path, k: int) -> Path:
    return root / f"round_{k}"


def round_stages(k: int, rounds: int) -> list[str]:
    return ["train", "eval"] + (["score", "select"] if k < rounds else [])


def round_steps(config: Config, k: int) -> int:
    mr, tc = config.multi_round, config.train
    if k == 1:
        return tc.steps
    return mr.round_steps or max(1, round(mr.rate * tc.steps))


def round_schedule(config: Config, steps: int) -> dict:
    """Peak lr, warm-up and floor of a later round of `steps` steps (docs/multi_round.md, "Schedule"):
    `multi_round.round_schedule` official = the official repository's schedule for training on from a
    pruned checkpoint (lr 1e-4, 3% warm-up, floor 1e-5; applying it to later rounds is our choice),
    round1 = round 1's own; round_lr / round_warmup_* / round_min_lr_ratio override."""
    mr, tc = config.multi_round, config.train
    if mr.round_schedule == "official":
        lr, fraction, floor = OFFICIAL_CONTINUED_LR, OFFICIAL_CONTINUED_WARMUP_FRACTION, OFFICIAL_CONTINUED_MIN_LR_RATIO
        warmup = None
    else:
        lr, warmup, fraction, floor = tc.lr, tc.warmup_steps, tc.warmup_fraction, tc.min_lr_ratio
    if mr.round_warmup_steps is not None:
        warmup, fraction = mr.round_warmup_steps, None
    elif mr.round_warmup_fraction is not None:
        warmup, fraction = None, mr.round_warmup_fraction
    return {"lr": mr.round_lr or lr, "min_lr_ratio": floor if mr.round_min_lr_ratio is None else mr.round_min_lr_ratio,
            "warmup_steps": 0 if warmup is None else min(warmup, steps),
            "warmup_fraction": fraction}


def round_config(config: Config, k: int, root: Path) -> Config:
    """The config round `k` trains with (module doc), validated."""
    tc = config.train
    out = round_dir(root, k) / "train"
    train, data = dataclasses.replace(tc, output_dir=str(out)), config.data
    if k > 1:
        steps = round_steps(config, k)
        previous = Path(round_config(config, k - 1, root).train.output_dir)
        weights = whole_checkpoint_path(previous, round_steps(config, k - 1), semi_auto_layout(config))
        train = dataclasses.replace(train, steps=steps, **round_schedule(config, steps), init_weights=str(weights))
        data = dataclasses.replace(data, index_file=str(round_dir(root, k - 1) / "selection.npy"))
    mapping = to_mapping(dataclasses.replace(config, train=train, data=data, multi_round=None))
    return config_from_dict(mapping, f"{config.source} (round {k})")


def config_fingerprint(config: Config) -> str:
    """sha256 of the config as data, without `multi_round.rounds` (rounds may be added later)."""
    data = to_mapping(config)
    data.pop("source", None)
    if data.get("multi_round"):
        data["multi_round"].pop("rounds", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------------------- state

class RoundsState:
    """ROOT/rounds_state.json: {"version", "fingerprint", "rounds": {"1": {"train": {...}, ...}}}."""

    def __init__(self, path: Path, fingerprint: str):
        self.path = path
        if path.is_file():
            data = read_json(path)
            if data.get("fingerprint") != fingerprint:
                raise ValueError(f"{path}: this multi-round run was started with a different config; use "
                                 f"another train.output_dir, or delete the folder to start over")
            self.data = data
        else:
            self.data = {"version": STATE_VERSION, "fingerprint": fingerprint, "rounds": {}}

    def done(self, k: int, stage: str) -> Optional[dict]:
        return self.data["rounds"].get(str(k), {}).get(stage)

    def record(self, k: int, stage: str, info: dict) -> None:
        self.data["rounds"].setdefault(str(k), {})[stage] = info
        atomic_write_json(self.path, self.data)


# ------------------------------------------------------------------------------ running the stages

class StageStopped(RuntimeError):
    """A stage (training) stopped on a signal after saving its checkpoint (exit code 75)."""


class StageRunner:
    """Runs `pangu-pro` commands: in this process through `run_cli` (the command line's `main`, which
    `pangu-pro rounds` hands over) when workers == 1, else in a process of their own (`python -m
    pangu_pro.cli`, under msrun for workers > 1)."""

    def __init__(self, workers: int = 1, master_port: int = 8129, progress: bool = True, run_cli=None):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers, self.master_port, self.progress, self.run_cli = workers, master_port, progress, run_cli
        self._evaluator = None

    def run(self, argv: list[str], log_dir: Path) -> None:
        argv = [*argv, *([] if self.progress else ["--no-progress"])]
        if self.workers == 1 and self.run_cli is not None:
            code = self.run_cli(argv)
        elif self.workers == 1:
            code = subprocess.run([sys.executable, "-m", "pangu_pro.cli", *argv]).returncode
        else:
            log_dir.mkdir(parents=True, exist_ok=True)
            env = dict(os.environ)
            env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
            cmd = [str(Path(sys.executable).parent / "msrun"), f"--worker_num={self.workers}",
                   f"--local_worker_num={self.workers}", f"--master_port={self.master_port}",
                   f"--log_dir={log_dir}", "--join=True", "python", "-m", "pangu_pro.cli", *argv]
            code = subprocess.run(cmd, env=env).returncode
        if code == PREEMPTED_EXIT:
            raise StageStopped(f"`pangu-pro {' '.join(argv)}` stopped on a signal after saving a checkpoint; run "
                               "the same rounds command again to continue")
        if code:
            where = "" if self.workers == 1 else f" (worker logs in {log_dir})"
            raise RuntimeError(f"`pangu-pro {' '.join(argv)}` failed with exit code {code}{where}")

    def train(self, config_path: Path, resume: bool, log_dir: Path) -> None:
        self.run(["train", str(config_path), *(["--resume"] if resume else [])], log_dir)

    def score(self, config_path: Path, checkpoint: Path, out: Path, unit_samples: int, flush_every: int,
              log_dir: Path) -> None:
        self.run(["score", str(config_path), "--checkpoint", str(checkpoint), "--out", str(out),
                  "--unit-samples", str(unit_samples), "--flush-every", str(flush_every)], log_dir)

    def evaluate(self, config: Config, checkpoint: Path) -> dict:
        """Held-out loss on data.eval_files, in this process; one network for every round (rounds
        share the model), so it compiles once per run."""
        from pangu_pro.train.evaluate import CheckpointEvaluator

        if self._evaluator is None or self._evaluator.model_cfg != config.model:
            self._evaluator = CheckpointEvaluator(config.model)
        return self._evaluator(checkpoint, config.data.eval_files, config.train.batch_size)


def semi_auto_layout(config: Config) -> bool:
    """Whether `config` trains under semi-auto parallel, where each rank saves only its slices."""
    from pangu_pro.model.sharding import needs_semi_auto

    return needs_semi_auto(config.parallel)


def whole_checkpoint_path(train_out: Path, steps: int, semi_auto: bool) -> Path:
    """Where the whole-tensor checkpoint of a round's last step is: checkpoints/step_N (data parallel:
    rank 0 saves whole tensors), or checkpoints/merged/step_N (semi-auto: merged from the ranks' slices
    by `final_checkpoint`, the folder the trainer's own re-layout merge uses)."""
    from pangu_pro.train.checkpoint import CHECKPOINTS, checkpoint_name, merged_checkpoint_dir

    return merged_checkpoint_dir(train_out, steps) if semi_auto else train_out / CHECKPOINTS / checkpoint_name(steps)


def final_checkpoint(train_out: Path, steps: int, semi_auto: bool = False) -> Path:
    """The whole-tensor checkpoint of a finished round at step `steps`, which scoring, held-out
    evaluation and the next round's `train.init_weights` load (whole tensors: a semi-auto compile slices
    them). Under semi-auto parallel each rank saved only its slices (checkpoints/rank_<r>/step_N, with
    the strategy files): they are merged once on the CPU (`train.merge.merge_run`, MindSpore's
    transform_checkpoints) into `whole_checkpoint_path`; a re-run reuses the merged folder."""
    from pangu_pro.train.checkpoint import CHECKPOINTS, STATE_NAME, list_checkpoints

    if semi_auto:
        merged = whole_checkpoint_path(train_out, steps, True)
        if not (merged / STATE_NAME).is_file():  # written last: a complete merge
            from pangu_pro.train.merge import merge_run

            merge_run(train_out, merged, step=steps, overwrite=merged.exists())
        return merged
    found = dict(list_checkpoints(train_out / CHECKPOINTS))
    if steps not in found:
        raise RuntimeError(f"{train_out}: training ended without a checkpoint at step {steps} "
                           f"(found steps {sorted(found)})")
    return found[steps]


# ----------------------------------------------------------------------------------------- driver

def run_rounds(config: Config, *, workers: int = 1, runner: Optional[StageRunner] = None,
               announce=print) -> dict:
    """Run or continue the multi-round schedule of `config` (module doc); returns the summary. Holds
    train.output_dir's run lock throughout (`pangu_pro.runlock`: a second driver on it refuses)."""
    from pangu_pro.provenance import check_output_folder
    from pangu_pro.runlock import hold_run_lock

    check_output_folder(config.train.output_dir, "train.output_dir")
    with hold_run_lock(config.train.output_dir, "multi-round training"):
        return _run_rounds(config, workers, runner, announce)


def _run_rounds(config: Config, workers: int, runner: Optional[StageRunner], announce) -> dict:
    from pangu_pro.provenance import selection_record
    from pangu_pro.rounds.scoring import load_scores
    from pangu_pro.rounds.selection import check_fits, select_from_scores, write_selection

    mr = config.multi_round
    if mr is None:
        raise ConfigError("multi_round", "the config has no multi_round section (docs/multi_round.md)")
    if not config.data.train_files:
        raise ConfigError("data.train_files", "no training data given")
    runner = runner or StageRunner(workers)
    root = Path(config.train.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    state = RoundsState(root / STATE_NAME, config_fingerprint(config))
    save_config(config, root / "config.yaml")
    unit_samples = score_unit_samples(config, workers)
    if mr.rounds > 1 and mr.unit == "batch":
        from pangu_pro.data.dataset import count_samples

        units = num_units(count_samples(config.data.train_files), unit_samples)
        if units < 2:
            raise ConfigError("multi_round.score_unit_tokens", f"{mr.score_unit_tokens} tokens make units of "
                              f"{unit_samples} samples: the training data is {units} unit, nothing to select "
                              "from; lower score_unit_tokens")

    for k in range(1, mr.rounds + 1):
        rdir = round_dir(root, k)
        cfg = round_config(config, k, root)
        cfg_path = rdir / "config.yaml"
        if not cfg_path.is_file():
            save_config(cfg, cfg_path)
        train_out = Path(cfg.train.output_dir)
        for stage in round_stages(k, mr.rounds):
            if state.done(k, stage):
                continue
            announce(f"round {k}/{mr.rounds}: {stage}")
            if stage == "train":
                from pangu_pro.train.checkpoint import CHECKPOINTS, latest_checkpoint

                if k > 1:
                    selection = Path(cfg.data.index_file)
                    check_fits(np.load(selection), state.done(k - 1, "select")["samples_total"], str(selection))
                # data parallel: checkpoints/step_N; semi-auto: each rank's checkpoints/rank_<r>/step_N
                resume = any(latest_checkpoint(d) is not None
                             for d in [train_out / CHECKPOINTS, *(train_out / CHECKPOINTS).glob("rank_*")])
                runner.train(cfg_path, resume, rdir / "logs_train")
                ckpt = final_checkpoint(train_out, cfg.train.steps, semi_auto_layout(cfg))
                ckpt_state = read_json(ckpt / "state.json")
                info = {"checkpoint": str(ckpt), "steps": cfg.train.steps, "final_train_loss": ckpt_state.get("loss"),
                        "index_file": cfg.data.index_file}
            elif stage == "eval":
                if cfg.data.eval_files:
                    result = runner.evaluate(cfg, Path(state.done(k, "train")["checkpoint"]))
                    info = {"heldout_loss": result["loss"], "heldout_perplexity": result["perplexity"],
                            "heldout_samples": result["samples"]}
                else:
                    info = {"heldout_loss": None, "note": "data.eval_files is empty"}
            elif stage == "score":
                out = rdir / "scores.npz"
                runner.score(cfg_path, Path(state.done(k, "train")["checkpoint"]), out, unit_samples,
                             mr.flush_every, rdir / "logs_score")
                scores = load_scores(out)
                info = {"scores": str(out), "mean_unit_loss": float(scores["unit_loss"].mean()),
                        "mean_sample_loss": float(scores["sample_loss"].mean()), "unit_size": scores["unit_size"],
                        "num_samples": scores["num_samples"], "num_units": int(scores["unit_loss"].size)}
            else:  # select
                scores_path = state.done(k, "score")["scores"]
                scores = load_scores(scores_path)
                samples, units, report = select_from_scores(scores, mr.rate, seed=mr.seed + k,
                                                            temperature=mr.temperature, unit=mr.unit,
                                                            order=mr.order)
                out = write_selection(rdir / "selection.npy", samples, units,
                                      {**report, **selection_record(scores_path, scores["meta"])})
                info = {"selection": str(out), **report}
            state.record(k, stage, info)
            write_summary(root, state, mr.rounds)
    summary = write_summary(root, state, mr.rounds)
    announce(f"multi-round training done: {root / (SUMMARY_NAME + '.md')}")
    return summary


def summarise(state: RoundsState, rounds: int) -> list[dict]:
    """One row per round from the state file (None where a stage has not run)."""
    rows = []
    total = None
    for k in range(1, rounds + 1):
        score = state.done(k, "score") or {}
        total = score.get("num_samples", total)
    for k in range(1, rounds + 1):
        train, ev = state.done(k, "train") or {}, state.done(k, "eval") or {}
        score, sel = state.done(k, "score") or {}, state.done(k, "select") or {}
        prev = state.done(k - 1, "select") or {}
        trained_on = prev.get("samples_selected") if k > 1 else total
        rows.append({"round": k, "steps": train.get("steps"), "train_samples": trained_on,
                     "final_train_loss": train.get("final_train_loss"), "heldout_loss": ev.get("heldout_loss"),
                     "mean_score": score.get("mean_unit_loss"), "selected_fraction": sel.get("selected_fraction"),
                     "mean_score_selected": sel.get("mean_score_selected"), "checkpoint": train.get("checkpoint"),
                     "selection": sel.get("selection")})
    return rows


def write_summary(root: Path, state: RoundsState, rounds: int) -> dict:
    rows = summarise(state, rounds)
    summary = {"root": str(root), "rounds": rows}
    atomic_write_json(root / f"{SUMMARY_NAME}.json", summary)

    def fmt(value, spec=".4f"):
        return "–" if value is None else (format(value, spec) if isinstance(value, float) else str(value))

    lines = ["# Multi-round training summary", "",
             "| round | steps | training samples | final train loss | held-out loss | mean score "
             "| selected fraction | mean score of selected |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['round']} | {fmt(r['steps'])} | {fmt(r['train_samples'])} | {fmt(r['final_train_loss'])} "
                     f"| {fmt(r['heldout_loss'])} | {fmt(r['mean_score'])} | {fmt(r['selected_fraction'], '.3f')} "
                     f"| {fmt(r['mean_score_selected'])} |")
    lines += ["", "Mean score: round K's model on the whole training set (mean unit loss); the selection "
              "made from it is what round K+1 trains on.", ""]
    atomic_write_text(root / f"{SUMMARY_NAME}.md", "\n".join(lines))
    return summary


def rounds_command(args) -> int:
    from pangu_pro.config import load_config

    config = load_config(args.config, args.overrides)
    runner = StageRunner(args.workers, args.master_port, progress=not args.no_progress, run_cli=args.run_cli)
    try:
        run_rounds(config, workers=args.workers, runner=runner)
    except StageStopped as stopped:
        print(f"pangu-pro rounds: {stopped}", file=sys.stderr)
        return PREEMPTED_EXIT
    return 0
