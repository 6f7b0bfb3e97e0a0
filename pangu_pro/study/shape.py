"""`pangu-pro study shape`: depth, width and FFN ratio at equal parameters.

The paper trains ~30 random 1B shapes on ~5B tokens each and finds depth the factor that correlates
best with accuracy (Spearman +0.528), the FFN ratio without a clear trend; deep-and-thin wins at 1B.
Here: `--shapes` shapes drawn over depth and FFN ratio at `--parameters` total parameters (each within
3%, `shapes.shape_at`; the width follows), equal steps and tokens, every shape under every seed; then
Spearman's rho of each factor with the held-out bits per byte (mean over seeds), with a bootstrap
interval over shapes. Lower loss is better, so the paper's finding reads as a negative rho for depth.
"""
from __future__ import annotations

import argparse
import sys

from pangu_pro.config import config_from_dict
from pangu_pro.study import common, runner, shapes, stats
from pangu_pro.study.modules import training_sections
from pangu_pro.study.runner import Arm

FACTORS = ("depth", "width", "ffn_ratio")

SETUP = ("parameters", "seq", "batch_size", "steps", "lr", "seeds", "depths", "ffn_ratios")  # the options the results record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_common_arguments(parser, steps=400, smoke_steps=5)
    parser.add_argument("--shapes", type=int, default=12, help="shapes drawn (the paper: ~30)")
    parser.add_argument("--parameters", type=int, default=600_000, help="total parameters of every shape")
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 3, 4, 6, 8, 12], help="depths to draw from")
    parser.add_argument("--ffn-ratios", type=float, nargs=2, default=[2.0, 4.0], help="FFN ratio range")
    parser.add_argument("--head-dim", type=int, default=16, help="head dimension (widths are its multiples)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of the shapes")


def base_model(args, vocab: int):
    return config_from_dict({"model": {"vocab_size": vocab, "hidden_size": 4 * args.head_dim, "num_layers": 2,
                                       "num_heads": 4, "intermediate_size": 8 * args.head_dim,
                                       "seq_length": args.seq, "aug_shortcut_ratio": 4,
                                       "compute_dtype": "float32"}}, "study shape").model


def arms(args, data: dict) -> list[Arm]:
    import dataclasses

    drawn = shapes.draw_shapes(args.shapes, args.parameters, base_model(args, data["vocab"]), args.depths,
                               args.ffn_ratios, seed=0)
    shapes.check_equal({f"{c.num_layers}x{c.hidden_size}": shapes.total_parameters(c) for c in drawn},
                       "the parameter count", 2 * shapes.PARAMETER_TOLERANCE)
    plan = []
    for cfg in drawn:
        name = f"d{cfg.num_layers}_w{cfg.hidden_size}_f{cfg.intermediate_size}"
        model = {k: v for k, v in dataclasses.asdict(cfg).items() if v is not None}
        factors = {"depth": cfg.num_layers, "width": cfg.hidden_size, "ffn_ratio": cfg.intermediate_size / cfg.hidden_size}
        plan += [Arm(name, seed, {"model": model, **training_sections(args, data, seed)}, factors) for seed in args.seeds]
    return plan


def analyse(results: list[dict], args) -> dict:
    losses = runner.seed_spread(results, "bits_per_byte")
    names = sorted(losses)
    factors = {n: next(r["factors"] for r in results if r["name"] == n) for n in names}
    mean_loss = [losses[n][0] for n in names]
    correlations = {}
    for factor in FACTORS:
        rho, low, high = stats.bootstrap_spearman([factors[n][factor] for n in names], mean_loss, args.bootstrap)
        correlations[factor] = {"rho": rho, "low": low, "high": high}
    depth = correlations["depth"]
    strongest = max(FACTORS, key=lambda f: abs(correlations[f]["rho"]) if correlations[f]["rho"] == correlations[f]["rho"] else -1)
    if depth["high"] < 0:
        verdict = common.AGREES if strongest == "depth" else common.NO_EFFECT
    elif depth["low"] > 0:
        verdict = common.DISAGREES
    else:
        verdict = common.NO_EFFECT
    rows = [{"name": n, **factors[n], "bits_per_byte": losses[n][:2], "seeds": losses[n][2],
             "parameters": next(r["parameters"] for r in results if r["name"] == n)} for n in names]
    return {"shapes": rows, "spearman_with_loss": correlations, "strongest_factor": strongest,
            "findings": [{"finding": "depth is the factor that matters most, deeper is better at equal size "
                                     "(paper: Spearman +0.528 with accuracy)", "verdict": verdict}]}


def render(result: dict) -> str:
    s, a = result["setup"], result["analysis"]
    lines = ["# Study: depth, width and FFN ratio at equal parameters (`pangu-pro study shape`)", "",
             f"{len(a['shapes'])} shapes at {s['parameters']:,} parameters (each within 3%), byte-level built-in "
             f"corpus, seq {s['seq']}, batch {s['batch_size']}, {s['steps']} steps at lr {s['lr']}, seeds {s['seeds']}. "
             "Shapes differ, so their initial weights cannot be shared; the data order is the same per seed.",
             common.provenance_line(result), "",
             "| depth | width | FFN ratio | parameters | bits/byte |", "|---|---|---|---|---|"]
    for r in a["shapes"]:
        lines.append(f"| {r['depth']} | {r['width']} | {r['ffn_ratio']:.2f} | {r['parameters']:,} | "
                     f"{r['bits_per_byte'][0]:.4f} ± {r['bits_per_byte'][1]:.4f} |")
    lines += ["", "Spearman's rho with the held-out bits per byte (negative: larger is better), 95% bootstrap "
              "interval over shapes:", ""]
    lines += [f"- {f}: {c['rho']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]" for f, c in a["spearman_with_loss"].items()]
    lines += ["", *common.findings_table(result)]
    return "\n".join(lines) + "\n"


def figure(result: dict):
    from pangu_pro.plotting import new_figure

    rows = result["analysis"]["shapes"]
    fig, axes = new_figure(1, 3, "Held-out bits per byte against each shape factor")
    for ax, factor in zip(axes, FACTORS):
        ax.errorbar([r[factor] for r in rows], [r["bits_per_byte"][0] for r in rows],
                    yerr=[r["bits_per_byte"][1] for r in rows], fmt="o")
        rho = result["analysis"]["spearman_with_loss"][factor]["rho"]
        ax.set_xlabel(f"{factor} (rho {rho:+.2f})")
    axes[0].set_ylabel("bits per byte")
    return fig


def run(args: argparse.Namespace) -> int:
    common.smoke_adjusted(args, 5)
    if args.smoke:
        args.shapes, args.parameters, args.depths, args.bootstrap = 3, 60_000, [1, 2, 3], 50
    return common.run_study(args, "shape", sys.modules[__name__])
