"""`pangu-pro study batch`: batch size and learning rate at equal tokens.

The paper: keep batches under ~4M tokens, and scale the learning rate with the batch as
lr = lr0 · (B / B0)^0.5. Here: batch sizes `--batches` at an equal number of training tokens (steps =
tokens / (B · seq)), each with lr scaled by √(B / B0) and with lr held at lr0; B0 = the first batch
size, where the two rules coincide (one arm). The 4M-token bound cannot be reached on a CPU and is not
tested.
"""
from __future__ import annotations

import argparse
import sys
import math

from pangu_pro.study import common, runner, shapes
from pangu_pro.study.modules import model_section, training_sections
from pangu_pro.study.runner import Arm

RULES = ("sqrt", "constant")

SETUP = ("layers", "hidden", "seq", "steps", "lr", "seeds", "batches")  # the options the results record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_common_arguments(parser, steps=800, smoke_steps=8)
    parser.add_argument("--hidden", type=int, default=128, help="hidden size")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32, 64],
                        help="batch sizes; the first is B0, trained for --steps steps at --lr")


def arm_name(batch: int, rule: str, base: int) -> str:
    return f"b{batch}" if batch == base else f"b{batch}_{rule}"


def arms(args, data: dict) -> list[Arm]:
    base, tokens = args.batches[0], args.steps * args.batches[0] * args.seq
    plan, budgets = [], {}
    for batch in args.batches:
        steps = tokens // (batch * args.seq)
        if steps * batch * args.seq != tokens:
            raise shapes.StudyError(f"batch {batch} cannot see exactly {tokens:,} tokens ({args.steps} steps of "
                                    f"{base}): use batch sizes that divide {args.steps * base}")
        for rule in RULES if batch != base else RULES[:1]:
            lr = args.lr * math.sqrt(batch / base) if rule == "sqrt" else args.lr
            for seed in args.seeds:
                sections = training_sections(args, data, seed)
                sections["train"].update(batch_size=batch, steps=steps, lr=lr, save_every=steps,
                                         log_every=max(1, steps // 10))
                plan.append(Arm(arm_name(batch, rule, base), seed, {"model": model_section(args, data["vocab"], True, True),
                                                                    **sections},
                                {"batch": batch, "rule": rule, "lr": lr}))
            budgets[arm_name(batch, rule, base)] = steps * batch * args.seq
    shapes.check_equal(budgets, "the number of training tokens")
    return plan


def analyse(results: list[dict], args) -> dict:
    batches = args.batches
    base = batches[0]
    spread = runner.seed_spread(results, "bits_per_byte")
    comparisons = {}
    for batch in batches[1:]:
        comparisons[batch] = runner.paired(results, arm_name(batch, "sqrt", base), arm_name(batch, "constant", base),
                                           "bits_per_byte")
    verdicts = [common.verdict(d) for d in comparisons.values()]
    if verdicts and all(v == common.AGREES for v in verdicts):
        verdict = common.AGREES
    elif common.DISAGREES in verdicts and common.AGREES not in verdicts:
        verdict = common.DISAGREES
    else:
        verdict = common.NO_EFFECT
    return {"arms": {name: {"bits_per_byte": s[:2], "seeds": s[2]} for name, s in spread.items()},
            "sqrt_minus_constant": {str(b): d for b, d in comparisons.items()},
            "findings": [{"finding": "scale the learning rate with the batch as √B (paper: lr = lr0 (B/B0)^0.5)",
                          "verdict": verdict}]}


def render(result: dict) -> str:
    s, a = result["setup"], result["analysis"]
    lines = ["# Study: batch size and learning rate at equal tokens (`pangu-pro study batch`)", "",
             f"{s['layers']} layers × {s['hidden']}, byte-level built-in corpus, seq {s['seq']}, "
             f"{s['steps'] * s['batches'][0] * s['seq']:,} training tokens per arm, lr0 {s['lr']} at B0 = "
             f"{s['batches'][0]}, seeds {s['seeds']}. Each seed reads the same data order.",
             common.provenance_line(result), "",
             "| arm | bits/byte |", "|---|---|"]
    lines += [f"| {name} | {row['bits_per_byte'][0]:.4f} ± {row['bits_per_byte'][1]:.4f} |"
              for name, row in sorted(a["arms"].items(), key=lambda kv: int(kv[0][1:].split("_")[0]))]
    lines += ["", "√B-scaled minus constant lr, paired over seeds (negative: √B is better; **bold** beyond seed noise):", ""]
    for batch, d in a["sqrt_minus_constant"].items():
        text = "" if d is None else f"{d['mean']:+.4f} ± {d['sd']:.4f}"
        lines.append(f"- batch {batch}: " + (f"**{text}**" if d and d["exceeds_noise"] else text))
    lines += ["", *common.findings_table(result)]
    return "\n".join(lines) + "\n"


def figure(result: dict):
    from pangu_pro.plotting import new_figure

    s, rows = result["setup"], result["analysis"]["arms"]
    fig, (ax,) = new_figure(1, 1, "Held-out bits per byte at equal tokens")
    base = s["batches"][0]
    for rule, color in (("sqrt", "red"), ("constant", "blue")):
        points = [(b, rows[arm_name(b, rule, base)]["bits_per_byte"]) for b in s["batches"]
                  if arm_name(b, rule, base) in rows]
        ax.errorbar([b for b, _ in points], [m for _, (m, _) in points], yerr=[e for _, (_, e) in points],
                    fmt="o-", color=color, label=f"lr {rule}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size (sequences)")
    ax.set_ylabel("bits per byte")
    ax.legend()
    return fig


def run(args: argparse.Namespace) -> int:
    common.smoke_adjusted(args, 8)
    if args.smoke:
        args.batches = [2, 4]
    return common.run_study(args, "batch", sys.modules[__name__])
