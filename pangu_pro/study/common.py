"""What every study shares: its command-line options, the verdict rule, and writing its results."""
from __future__ import annotations

import argparse
import platform
import subprocess
from pathlib import Path
from typing import Optional

from pangu_pro.io import atomic_write_json, atomic_write_text

AGREES, NO_EFFECT, DISAGREES = "agrees", "no effect at this scale", "disagrees"


def add_common_arguments(parser: argparse.ArgumentParser, *, steps: int, smoke_steps: int) -> None:
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="seeds (>= 3 for a verdict)")
    parser.add_argument("--steps", type=int, default=steps, help=f"training steps of an arm (default {steps})")
    parser.add_argument("--smoke", action="store_true",
                        help=f"a minute's end-to-end check: {smoke_steps} steps, the smallest shapes, one seed; "
                             "its results are written under WORK only")
    parser.add_argument("--work", default=None, help="working folder (default runs/study_NAME); finished arms are kept")
    parser.add_argument("--out", default="benchmarks/results", help="results folder (JSON, Markdown, PNG)")
    parser.add_argument("--corpus-mb", type=float, default=1.0, help="built-in corpus size (MB of prose)")
    parser.add_argument("--seq", type=int, default=64, help="sequence length")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per step")
    parser.add_argument("--eval-rows", type=int, default=256, help="held-out sequences scored per arm")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def smoke_adjusted(args: argparse.Namespace, smoke_steps: int) -> argparse.Namespace:
    """--smoke: few steps, one seed, the smallest shapes, a small corpus and held-out set, results kept
    under WORK (a check that the study runs end to end, not a measurement)."""
    if args.smoke:
        args.steps, args.seeds = smoke_steps, args.seeds[:1]
        args.corpus_mb, args.eval_rows, args.batch_size = min(args.corpus_mb, 0.2), min(args.eval_rows, 16), 4
        for name, small in (("hidden", 32), ("layers", 2)):
            if hasattr(args, name):
                setattr(args, name, min(getattr(args, name), small))
    return args


def work_dir(args: argparse.Namespace, name: str) -> Path:
    return Path(args.work or f"runs/study_{name}{'_smoke' if args.smoke else ''}")


def verdict(difference: Optional[dict], paper_says_lower: bool = True) -> str:
    """The verdict on a paired difference (arm − baseline of a loss): agrees when it goes the paper's way
    beyond seed noise, disagrees when it goes the other way beyond it, else no effect at this scale."""
    if difference is None or not difference["exceeds_noise"]:
        return NO_EFFECT
    return AGREES if (difference["mean"] < 0) == paper_says_lower else DISAGREES


def provenance(command: str) -> dict:
    """What made a result: the command, the commit, the machine and its load when it finished."""
    import os

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {"command": command, "commit": commit, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "load_1_5_15": [round(x, 2) for x in load]}


def provenance_line(result: dict) -> str:
    p = result["provenance"]
    return f"Made by `{p['command']}` at commit {p['commit']} on {p['machine']} (load {p['load_1_5_15']})."


def findings_table(result: dict) -> list[str]:
    """The Markdown rows of the study's findings and verdicts."""
    return ["| the paper's finding | verdict here |", "|---|---|",
            *(f"| {f['finding']} | {f['verdict']} |" for f in result["analysis"]["findings"])]


def run_study(args: argparse.Namespace, name: str, study) -> int:
    """Run the study module `study` (its `arms(args, data)`, optional `measure(args, data)`,
    `analyse(results, args)`, `render(result)`, `figure(result)` and `SETUP` keys of args) on the
    built-in byte data: train or read back every arm, analyse, print and write the results."""
    from pangu_pro.study import runner

    work = work_dir(args, name)
    data = runner.byte_data(work, args.corpus_mb, args.seq, args.eval_rows)
    measure = study.measure(args, data) if hasattr(study, "measure") else heldout_measure(data)
    results = runner.run_arms(study.arms(args, data), work, measure, progress=not args.no_progress,
                              desc=f"study {name}")
    result = {"study": name, "setup": {**{k: getattr(args, k) for k in study.SETUP},
                                       "heldout_bytes": data["heldout_bytes"]},
              "provenance": provenance(f"pangu-pro study {name} " + " ".join(args.argv)), "arms": results}
    result["analysis"] = study.analyse(results, args)
    text = study.render(result)
    print(text)
    out = write_study(args, name, result, text, study.figure(result))
    print(f"wrote {out}/study_{name}.json, .md, .png")
    return 0


def heldout_measure(data: dict):
    """The usual measurement of an arm: held-out loss and bits per byte of its final checkpoint."""
    from pangu_pro.study import runner

    def measure(config, checkpoint) -> dict:
        loss = runner.heldout_loss(config, checkpoint)
        return {"heldout_loss": loss, "bits_per_byte": runner.nats_to_bits_per_byte(loss, data)}

    return measure


def write_study(args: argparse.Namespace, name: str, result: dict, markdown: str, figure=None) -> Path:
    """`name`.json, `name`.md (and `name`.png) in --out, or under WORK for a smoke run."""
    from pangu_pro.plotting import save_figure

    out = work_dir(args, name) / "results" if args.smoke else Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"study_{name}.json", result)
    atomic_write_text(out / f"study_{name}.md", markdown)
    if figure is not None:
        save_figure(figure, out / f"study_{name}.png")
    return out
