"""`pangu-pro study layers`: which layers of a trained model matter.

The paper (skip-layer studies on LLaMA2-7B/13B, InternLM-7B, PanGu-π-7B) finds the first and last
layers the most important and the intermediate ones redundant, the basis of keeping the first and last
layers when a 7B teacher is cut to 21. Here: one model per seed, trained as an ordinary config; then
each layer is removed in turn (the others keep their trained weights) and the held-out loss measured;
the cosine layer scores that inheritance uses (`inherit.criteria.cosine_layer_scores`, 1 − cos of a
block's input and output) beside it.
"""
from __future__ import annotations

import argparse
import sys
import dataclasses
import re

import numpy as np

from pangu_pro.study import common, stats
from pangu_pro.study.modules import model_section, training_sections
from pangu_pro.study.runner import Arm

LAYER_NAME = re.compile(r"^model\.layers\.(\d+)\.(.*)$")

SETUP = ("layers", "hidden", "seq", "batch_size", "steps", "lr", "seeds")  # the options the results record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_common_arguments(parser, steps=800, smoke_steps=5)
    parser.add_argument("--hidden", type=int, default=128, help="hidden size")
    parser.add_argument("--layers", type=int, default=8, help="decoder layers (each is dropped in turn)")


def without_layer(tensors: dict[str, np.ndarray], layer: int) -> dict[str, np.ndarray]:
    """The weights of the model with decoder layer `layer` removed and the later ones renumbered."""
    out = {}
    for name, value in tensors.items():
        match = LAYER_NAME.match(name)
        if match is None:
            out[name] = value
        elif int(match.group(1)) != layer:
            index = int(match.group(1))
            out[f"model.layers.{index - (index > layer)}.{match.group(2)}"] = value
    return out


def layer_drop_losses(config, checkpoint, batch_size: int) -> dict:
    """Held-out loss of the whole model, of the model without each layer, and the cosine layer scores."""
    from pangu_pro.inherit.criteria import cosine_layer_scores
    from pangu_pro.tensors import load_tensors
    from pangu_pro.model.pangu_pi import PanGuPiWithLoss
    from pangu_pro.model.weights import build_model, load_state, resolve_weights
    from pangu_pro.train.evaluate import eval_dataset, evaluate_loss

    tensors, _ = load_tensors(resolve_weights(checkpoint))
    files = config.data.eval_files
    whole = build_model(config.model)
    load_state(whole, tensors)
    full = evaluate_loss(PanGuPiWithLoss(whole), eval_dataset(files, batch_size))["loss"]
    batches = [b[0] for b in eval_dataset(files, batch_size).create_tuple_iterator(num_epochs=1, output_numpy=True)]
    cosine = cosine_layer_scores(whole, batches).tolist()
    smaller = dataclasses.replace(config.model, num_layers=config.model.num_layers - 1)
    dropped = []
    for layer in range(config.model.num_layers):
        model = build_model(smaller)
        load_state(model, without_layer(tensors, layer))
        dropped.append(evaluate_loss(PanGuPiWithLoss(model), eval_dataset(files, batch_size))["loss"])
    return {"heldout_loss": full, "dropped_loss": dropped, "cosine_scores": cosine}


def arms(args, data: dict) -> list[Arm]:
    return [Arm("base", seed, {"model": model_section(args, data["vocab"], True, True),
                               **training_sections(args, data, seed)}) for seed in args.seeds]


def measure(args, data: dict):
    return lambda config, checkpoint: layer_drop_losses(config, checkpoint, args.batch_size)


def analyse(results: list[dict], args=None) -> dict:
    layers = len(results[0]["dropped_loss"])
    increase = np.array([np.asarray(r["dropped_loss"]) - r["heldout_loss"] for r in results])
    cosine = np.array([r["cosine_scores"] for r in results])
    mean, sd = increase.mean(0), increase.std(0, ddof=1) if len(results) > 1 else np.zeros(layers)
    ranking = [int(i) for i in np.argsort(-mean)]
    ends = {0, layers - 1}
    # first and last layers matter most: their mean increases are the two largest, and each exceeds
    # every intermediate layer's beyond seed noise (paired over seeds)
    beyond = all(stats.paired_difference(increase[:, end], increase[:, mid])["exceeds_noise"]
                 and increase[:, end].mean() > increase[:, mid].mean()
                 for end in ends for mid in range(1, layers - 1)) if len(results) > 1 else False
    if set(ranking[:2]) == ends and beyond:
        verdict = common.AGREES
    elif set(ranking[:2]) & ends or not beyond:
        verdict = common.NO_EFFECT
    else:
        verdict = common.DISAGREES
    return {"increase": [[float(m), float(s)] for m, s in zip(mean, sd)],
            "cosine": [[float(m), float(s)] for m, s in zip(cosine.mean(0), cosine.std(0))],
            "ranking": ranking, "rank_agreement": stats.spearman(mean, cosine.mean(0)),
            "findings": [{"finding": "the first and last layers matter most, intermediate ones are redundant "
                                     "(paper: skip-layer studies of 7B/13B models)", "verdict": verdict}]}


def render(result: dict) -> str:
    s, a = result["setup"], result["analysis"]
    lines = ["# Study: which layers matter (`pangu-pro study layers`)", "",
             f"{s['layers']} layers × {s['hidden']}, byte-level built-in corpus, seq {s['seq']}, batch {s['batch_size']}, "
             f"{s['steps']} steps at lr {s['lr']}, seeds {s['seeds']}; each layer removed in turn from the trained model.",
             common.provenance_line(result), "",
             "| layer | held-out loss increase without it | cosine score (1 − cos in/out) |", "|---|---|---|"]
    for i, ((m, sd), (cm, cs)) in enumerate(zip(a["increase"], a["cosine"])):
        lines.append(f"| {i} | {m:+.4f} ± {sd:.4f} | {cm:.4f} ± {cs:.4f} |")
    lines += ["", f"Layers by loss increase, largest first: {a['ranking']}; Spearman of the increase with the cosine "
              f"score: {a['rank_agreement']:+.2f}. The first and last layers must both exceed every intermediate "
              "layer beyond seed noise (paired t-test, p < 0.05) for the verdict to agree.", "",
              "| the paper's finding | verdict here |", "|---|---|"]
    lines += [f"| {f['finding']} | {f['verdict']} |" for f in a["findings"]]
    return "\n".join(lines) + "\n"


def figure(result: dict):
    from pangu_pro.plotting import new_figure

    a = result["analysis"]
    fig, (loss_ax, cos_ax) = new_figure(1, 2, "Removing one layer of a trained model")
    layers = range(len(a["increase"]))
    loss_ax.bar(layers, [m for m, _ in a["increase"]], yerr=[s for _, s in a["increase"]], color="red")
    loss_ax.set_xlabel("layer removed")
    loss_ax.set_ylabel("held-out loss increase (nats)")
    cos_ax.bar(layers, [m for m, _ in a["cosine"]], yerr=[s for _, s in a["cosine"]], color="blue")
    cos_ax.set_xlabel("layer")
    cos_ax.set_ylabel("cosine score")
    return fig


def run(args: argparse.Namespace) -> int:
    common.smoke_adjusted(args, 5)
    if args.smoke:
        args.layers = 3
    if args.layers < 3:
        raise ValueError(f"--layers must be at least 3 (first, intermediate, last), got {args.layers}")
    return common.run_study(args, "layers", sys.modules[__name__])
