"""`pangu-pro study modules`: SIAF and the augmented shortcut, each and together, against LLaMA.

The paper (PanGu-π ablation, 1B): C-Eval 35.0 (LLaMA) → 36.9 (+SIAF), 36.3 (+AugShortcut), 37.9 (both),
at +2.6% / +1.3% / +4.0% latency. Here: the four variants of one shape, trained for the same steps on
the same data in the same order (seed k of every variant reads the same batches and starts the
parameters they share from the same draw), compared on held-out bits per byte and step time.
"""
from __future__ import annotations

import argparse
import sys

from pangu_pro.study import common, runner
from pangu_pro.study.runner import Arm

VARIANTS = {"llama": (False, False), "siaf": (True, False), "aug_shortcut": (False, True), "both": (True, True)}
BASELINE = "llama"

SETUP = ("layers", "hidden", "seq", "batch_size", "steps", "lr", "seeds")  # the options the results record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_common_arguments(parser, steps=600, smoke_steps=10)
    parser.add_argument("--hidden", type=int, default=128, help="hidden size")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers")


def model_section(args, vocab: int, siaf: bool, aug: bool) -> dict:
    return {"vocab_size": vocab, "hidden_size": args.hidden, "num_layers": args.layers,
            "num_heads": max(1, args.hidden // 32), "intermediate_size": -(-8 * args.hidden // 3 // 8) * 8,
            "seq_length": args.seq, "siaf": siaf, "aug_shortcut": aug, "aug_shortcut_ratio": 16,
            "compute_dtype": "float32"}


def training_sections(args, data: dict, seed: int) -> dict:
    """The data and train sections every study arm of seed `seed` shares (same batches, same order)."""
    return {"data": {"train_files": [data["train"]], "eval_files": [data["heldout"]], "seed": 1000 + seed},
            "train": {"batch_size": args.batch_size, "steps": args.steps, "lr": args.lr, "warmup_fraction": 0.05,
                      "seed": seed, "save_every": args.steps, "keep_last": 1,
                      "log_every": max(1, args.steps // 10)}}


def arms(args, data: dict) -> list[Arm]:
    return [Arm(name, seed, {"model": model_section(args, data["vocab"], siaf, aug), **training_sections(args, data, seed)},
                {"siaf": siaf, "aug_shortcut": aug})
            for seed in args.seeds for name, (siaf, aug) in VARIANTS.items()]


def analyse(results: list[dict], args=None) -> dict:
    rows = {}
    for name in VARIANTS:
        bpb = runner.seed_spread([r for r in results if r["name"] == name], "bits_per_byte")[name]
        ms = runner.seed_spread([r for r in results if r["name"] == name], "step_ms")[name]
        rows[name] = {"bits_per_byte": bpb[:2], "step_ms": ms[:2], "seeds": bpb[2],
                      "parameters": next(r["parameters"] for r in results if r["name"] == name)}
        if name != BASELINE:
            rows[name]["vs_llama"] = runner.paired(results, name, BASELINE, "bits_per_byte")
            rows[name]["step_ms_vs_llama"] = runner.paired(results, name, BASELINE, "step_ms")
    findings = [{"finding": f"{label} lowers the loss (paper: C-Eval 35.0 → {paper})",
                 "verdict": common.verdict(rows[name]["vs_llama"]), "difference": rows[name]["vs_llama"]}
                for name, label, paper in (("siaf", "SIAF", "36.9"), ("aug_shortcut", "AugShortcut", "36.3"),
                                           ("both", "SIAF + AugShortcut", "37.9"))]
    return {"variants": rows, "findings": findings}


def render(result: dict) -> str:
    s, rows = result["setup"], result["analysis"]["variants"]
    lines = ["# Study: SIAF and AugShortcut against LLaMA (`pangu-pro study modules`)", "",
             f"{s['layers']} layers × {s['hidden']}, byte-level built-in corpus, seq {s['seq']}, batch "
             f"{s['batch_size']}, {s['steps']} steps at lr {s['lr']}, seeds {s['seeds']}; held-out "
             f"{s['heldout_bytes']:,} bytes. Same data order and shared initial draws per seed.",
             common.provenance_line(result), "",
             "| variant | parameters | bits/byte | Δ vs LLaMA (paired) | step ms | Δ step ms |",
             "|---|---|---|---|---|---|"]
    for name, row in rows.items():
        diff, step = row.get("vs_llama"), row.get("step_ms_vs_llama")
        lines.append(f"| {name} | {row['parameters']:,} | {row['bits_per_byte'][0]:.4f} ± {row['bits_per_byte'][1]:.4f} | "
                     f"{_diff(diff)} | {row['step_ms'][0]:.1f} ± {row['step_ms'][1]:.1f} | {_diff(step, '.1f')} |")
    lines += ["", "**Bold**: beyond seed noise (paired t-test, p < 0.05). Step times come from arms that ran "
              "one after another on a shared machine: read them as a rough ratio only.", "",
              *common.findings_table(result)]
    return "\n".join(lines) + "\n"


def _diff(diff, spec: str = "+.4f") -> str:
    if diff is None:
        return ""
    text = f"{diff['mean']:{spec if spec.startswith('+') else '+' + spec}} ± {diff['sd']:.4f}"
    return f"**{text}**" if diff["exceeds_noise"] else text


def figure(result: dict):
    from pangu_pro.plotting import new_figure

    fig, (ax,) = new_figure(1, 1, "Held-out bits per byte by variant")
    rows = result["analysis"]["variants"]
    names = list(rows)
    ax.bar(names, [rows[n]["bits_per_byte"][0] for n in names], yerr=[rows[n]["bits_per_byte"][1] for n in names],
           color=["grey", "green", "blue", "red"][:len(names)])
    ax.set_ylabel("bits per byte (mean ± sd over seeds)")
    low = min(rows[n]["bits_per_byte"][0] - 2 * rows[n]["bits_per_byte"][1] for n in names)
    ax.set_ylim(bottom=max(0.0, low))
    return fig


def run(args: argparse.Namespace) -> int:
    common.smoke_adjusted(args, 10)
    return common.run_study(args, "modules", sys.modules[__name__])
