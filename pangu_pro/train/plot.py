"""`pangu-pro plot RUN_DIR`: the figures of a training, multi-round or inheritance run (matplotlib).

What RUN_DIR holds decides the figure (default file RUN_DIR/curves.png):

- a training run (metrics.jsonl): six panels. Loss against step and against tokens seen (the raw
  per-step loss faint, an exponential moving average over about a twentieth of the run on top, and
  the held-out loss with markers when the run evaluated), learning rate, gradient norm, throughput
  and MFU, all against step.
- a multi-round run (round_K/train/metrics.jsonl, `pangu-pro rounds`): the same panels with the
  rounds one after the other on one figure (steps and tokens continue across rounds), one colour
  per round, a dotted line where each round starts.
- an inheritance run (masks.jsonl, `pangu-pro inherit`): the expected student size, the sparsity of
  each mask type against its target, the Lagrange multipliers (λ) and the losses over the mask
  steps, and the fraction pruned per layer at the last logged step (`layer_sparsity`), when the
  metrics hold them.

Titles name the run directory and, from its config.yaml, the model shape.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from pangu_pro.plotting import as_floats, ema, engineering_axis, new_figure, save_figure, smoothing_span

FIGURE_NAME = "curves.png"
MASKS_NAME = "masks.jsonl"


@dataclass
class Segment:
    """One training run's curves, placed at `step_offset` / `token_offset` on the shared axes."""

    label: str  # "" for a single run, "round K" for a round
    train: list[dict]
    evals: list[dict]
    step_offset: int = 0
    token_offset: int = 0

    @property
    def steps(self) -> np.ndarray:
        return self.step_offset + np.array([r["step"] for r in self.train], dtype=float)

    @property
    def tokens(self) -> np.ndarray:
        return self.token_offset + np.array([r.get("tokens", np.nan) for r in self.train], dtype=float)

    def series(self, key: str) -> np.ndarray:
        return as_floats([r.get(key) for r in self.train])

    def eval_steps(self) -> np.ndarray:
        return self.step_offset + np.array([r["step"] for r in self.evals], dtype=float)

    def eval_tokens(self) -> np.ndarray:
        """Tokens seen at each evaluation (the trainer logs tokens on train records only; tokens grow
        linearly with steps, so interpolation is exact)."""
        local = np.array([r["step"] for r in self.train], dtype=float)
        tokens = np.array([r.get("tokens", np.nan) for r in self.train], dtype=float)
        return self.token_offset + np.interp([r["step"] for r in self.evals], local, tokens)


def named(segment: Segment, what: str) -> str:
    return f"{segment.label} {what}" if segment.label else what


def read_segment(run_dir: Path, label: str = "") -> Segment:
    from pangu_pro.train.metrics import read_metrics

    records = read_metrics(run_dir)
    train = [r for r in records if r.get("type") == "train"]
    if not train:
        raise ValueError(f"{run_dir / 'metrics.jsonl'}: no training records to plot")
    return Segment(label, train, [r for r in records if r.get("type") == "eval"])


def round_dirs(root: Path) -> list[Path]:
    """root/round_K/train for K = 1, 2, ... while the folder has metrics."""
    found, k = [], 1
    while (root / f"round_{k}" / "train" / "metrics.jsonl").is_file():
        found.append(root / f"round_{k}" / "train")
        k += 1
    return found


def chain(segments: list[Segment]) -> list[Segment]:
    """Each segment starts where the previous one ended, in steps and in tokens."""
    step, tokens = 0, 0
    for segment in segments:
        segment.step_offset, segment.token_offset = step, tokens
        step += int(segment.train[-1]["step"])
        tokens += int(segment.train[-1].get("tokens") or 0)
    return segments


def model_shape(run_dir: Path) -> str:
    """"L layers x H, vocab V" from the run's config.yaml ("" without one)."""
    import yaml

    try:
        model = (yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}).get("model") or {}
        return f"{model['num_layers']} layers x {model['hidden_size']}, vocab {model['vocab_size']}"
    except (OSError, KeyError, TypeError, AttributeError, yaml.YAMLError):
        return ""


def run_title(kind: str, run_dir: Path, shape_from: Path, extra: str = "") -> str:
    shape = model_shape(shape_from)
    return f"{kind} {run_dir}{extra}" + (f" ({shape})" if shape else "")


def training_figure(segments: Sequence[Segment], title: str):
    """The six panels of the module doc; one colour per segment."""
    fig, axes = new_figure(2, 3, title)
    by_step, by_tokens, lr_ax, grad_ax, speed_ax, mfu_ax = axes
    colours = [f"C{i}" for i in range(10)]
    has_mfu = False
    for i, seg in enumerate(segments):
        colour = colours[i % len(colours)]
        loss = seg.series("loss")
        smooth = ema(loss, smoothing_span(len(loss)))
        for ax, x, ex in ((by_step, seg.steps, seg.eval_steps), (by_tokens, seg.tokens, seg.eval_tokens)):
            ax.plot(x, loss, color=colour, alpha=0.25, linewidth=0.8, label=named(seg, "train loss"))
            ax.plot(x, smooth, color=colour, linewidth=1.8, label=named(seg, "train loss (smoothed)"))
            if seg.evals:
                ax.plot(ex(), [r["eval_loss"] for r in seg.evals], color=colour, linestyle="--", marker="o",
                        markersize=4, label=named(seg, "held-out loss"))
        lr_ax.plot(seg.steps, seg.series("lr"), color=colour, label=named(seg, "learning rate"))
        grad_ax.plot(seg.steps, seg.series("grad_norm"), color=colour, alpha=0.8, label=named(seg, "gradient norm"))
        speed_ax.plot(seg.steps, seg.series("tokens_per_s"), color=colour, label=named(seg, "tokens/s"))
        mfu = seg.series("mfu")
        if np.isfinite(mfu).any():
            has_mfu = True
            mfu_ax.plot(seg.steps, 100 * mfu, color=colour, label=named(seg, "MFU"))
        if seg.step_offset:
            for ax in (by_step, lr_ax, grad_ax, speed_ax, mfu_ax):
                ax.axvline(seg.step_offset, color="grey", linestyle=":", linewidth=1)
            by_tokens.axvline(seg.token_offset, color="grey", linestyle=":", linewidth=1)
    panels = [(by_step, "Loss by step", "step", "loss (nats/token)"),
              (by_tokens, "Loss by tokens seen", "tokens seen", "loss (nats/token)"),
              (lr_ax, "Learning rate", "step", "learning rate"),
              (grad_ax, "Gradient norm", "step", "global gradient norm (L2)"),
              (speed_ax, "Throughput", "step", "tokens/s (all devices)"),
              (mfu_ax, "Model FLOPs utilisation", "step", "MFU (%)")]
    for ax, name, xlabel, ylabel in panels:
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    engineering_axis(by_tokens.xaxis)
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    for ax in (by_step, by_tokens) if len(segments) == 1 else axes:
        if ax.lines:
            ax.legend(fontsize="small")
    if not has_mfu:
        mfu_ax.set_axis_off()
    return fig


def inheritance_figure(records: Sequence[dict], title: str):
    """Expected size, sparsity vs target, λ, losses over the mask steps; per-layer sparsity at the end."""
    fig, axes = new_figure(2, 3, title)
    size_ax, sparsity_ax, lambda_ax, loss_ax, layer_ax, spare = axes
    steps = [r["step"] for r in records]
    size_ax.plot(steps, as_floats([r.get("expected_size") for r in records]), color="C0",
                 label="expected parameters")
    engineering_axis(size_ax.yaxis)
    names = sorted({k[len("sparsity_"):] for r in records for k in r if k.startswith("sparsity_")})
    for i, name in enumerate(names):
        sparsity_ax.plot(steps, as_floats([r.get(f"sparsity_{name}") for r in records]), color=f"C{i}",
                         label=f"{name}")
        sparsity_ax.plot(steps, as_floats([r.get(f"target_{name}") for r in records]), color=f"C{i}",
                         linestyle="--", label=f"{name} target")
    lambdas = sorted({k for r in records for k, v in r.items() if k.startswith("lambda") and
                      isinstance(v, (int, float))})
    for i, key in enumerate(lambdas):
        lambda_ax.plot(steps, as_floats([r.get(key) for r in records]), color=f"C{i}",
                       label=key.replace("lambda", "λ"))
    if not lambdas:
        lambda_ax.text(0.5, 0.5, "no λ values in masks.jsonl", ha="center", va="center",
                       transform=lambda_ax.transAxes)
    loss_ax.plot(steps, as_floats([r.get("loss") for r in records]), color="C0", label="masked LM loss")
    if any("total" in r for r in records):
        loss_ax.plot(steps, as_floats([r.get("total") for r in records]), color="C1",
                     label="total (loss + λ penalty)")
    last = next((r for r in reversed(records) if isinstance(r.get("layer_sparsity"), dict)), None)
    if last is not None:
        for i, (name, fractions) in enumerate(sorted(last["layer_sparsity"].items())):
            layer_ax.plot(range(len(fractions)), as_floats(fractions), color=f"C{i}", marker="o", markersize=3,
                          label=name)
        layer_ax.set_title(f"Fraction pruned per layer (step {last['step']})")
        from matplotlib.ticker import MaxNLocator
        layer_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        layer_ax.set_title("Fraction pruned per layer")
        layer_ax.text(0.5, 0.5, "no layer_sparsity in masks.jsonl", ha="center", va="center",
                      transform=layer_ax.transAxes)
    panels = [(size_ax, "Expected student size", "mask step", "parameters"),
              (sparsity_ax, "Sparsity by mask type (dashed: target)", "mask step", "fraction pruned"),
              (lambda_ax, "Lagrange multipliers", "mask step", "λ"),
              (loss_ax, "Losses", "mask step", "loss (nats/token)"),
              (layer_ax, None, "layer", "fraction pruned")]
    for ax, name, xlabel, ylabel in panels:
        if name:
            ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if ax.lines:
            ax.legend(fontsize="small")
    fig.delaxes(spare)
    return fig


def run_figure(run_dir: str | Path):
    """(figure, kind) for what RUN_DIR holds: 'train', 'rounds' or 'inherit' (module doc)."""
    from pangu_pro.train.metrics import METRICS_NAME, read_metrics

    run_dir = Path(run_dir)
    if (run_dir / METRICS_NAME).is_file():
        return training_figure([read_segment(run_dir)], run_title("Training run", run_dir, run_dir)), "train"
    rounds = round_dirs(run_dir)
    if rounds:
        segments = chain([read_segment(d, f"round {k}") for k, d in enumerate(rounds, 1)])
        title = run_title("Multi-round run", run_dir, rounds[0], f": {len(rounds)} rounds")
        return training_figure(segments, title), "rounds"
    if (run_dir / MASKS_NAME).is_file():
        records = [r for r in read_metrics(run_dir / MASKS_NAME) if r.get("type") == "masks"]
        if not records:
            raise ValueError(f"{run_dir / MASKS_NAME}: no mask-learning records to plot")
        return inheritance_figure(records, f"Inheritance run {run_dir}: mask learning"), "inherit"
    raise FileNotFoundError(f"{run_dir}: nothing to plot (expected {METRICS_NAME}, round_1/train/{METRICS_NAME} "
                            f"or {MASKS_NAME})")


def plot_run(run_dir: str | Path, out: Optional[Path] = None) -> Path:
    """Draw RUN_DIR's figure (module doc) to `out` (default RUN_DIR/curves.png)."""
    fig, _ = run_figure(run_dir)
    return save_figure(fig, out or Path(run_dir) / FIGURE_NAME)
