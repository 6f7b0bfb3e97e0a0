"""Figures read back through matplotlib's objects (titles, axis labels, line labels and data), never pixels:
`pangu-pro plot` on a training run, a multi-round run and an inheritance run, the tokenizer coverage figure."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pangu_pro.plotting import ema, smoothing_span


def write_metrics(path: Path, records: list[dict]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def training_records(steps: int, tokens_per_step: int, eval_every: int, seed: int, none_at=()) -> list[dict]:
    """What the trainer writes with log_every 1: train lines each step, eval lines every `eval_every`."""
    rng = np.random.default_rng(seed)
    records = []
    for step in range(1, steps + 1):
        loss = None if step in none_at else 6.0 * math.exp(-step / 30) + 2 + float(rng.normal(0, 0.3))
        records.append({"type": "train", "step": step, "loss": loss, "lr": 1e-3 * min(1, step / 5),
                        "grad_norm": 1.0 + float(rng.random()), "tokens_per_s": 1000.0 + step, "mfu": 0.01,
                        "tokens": step * tokens_per_step, "loss_scale": 1.0, "skipped": False})
        if step % eval_every == 0:
            records.append({"type": "eval", "step": step, "eval_loss": 3.0 - step / 100, "eval_perplexity": 1.0})
    return records


def labels(ax) -> list[str]:
    """The labelled lines (matplotlib names unlabelled ones, such as the round boundaries, "_child<n>")."""
    return [line.get_label() for line in ax.lines if not line.get_label().startswith("_")]


def test_ema_is_bias_corrected_and_skips_gaps():
    assert list(ema([2.0, 2.0, 2.0], 9)) == [2.0, 2.0, 2.0]  # no pull towards 0 at the start
    out = ema([1.0, None, 3.0], 3)  # alpha 0.5: means 0.5 / 0.5 = 1, then (0.25 + 1.5) / 0.75
    assert out[0] == 1.0 and math.isnan(out[1]) and out[2] == pytest.approx(1.75 / 0.75)
    assert smoothing_span(10) == 1 and smoothing_span(400) == 20


def test_plot_single_run(tmp_path):
    from pangu_pro.cli import main
    from pangu_pro.train.plot import run_figure

    run = tmp_path / "run"
    records = training_records(60, 512, 20, 0, none_at={7})
    write_metrics(run, records)
    (run / "config.yaml").write_text("model: {num_layers: 2, hidden_size: 64, vocab_size: 256}\n")
    assert main(["plot", str(run)]) == 0
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    fig, kind = run_figure(run)
    assert kind == "train" and fig.get_suptitle() == f"Training run {run} (2 layers x 64, vocab 256)"
    by_step, by_tokens, lr, grad, speed, mfu = fig.axes
    assert [(a.get_title(), a.get_xlabel(), a.get_ylabel()) for a in fig.axes] == [
        ("Loss by step", "step", "loss (nats/token)"), ("Loss by tokens seen", "tokens seen", "loss (nats/token)"),
        ("Learning rate", "step", "learning rate"), ("Gradient norm", "step", "global gradient norm (L2)"),
        ("Throughput", "step", "tokens/s (all devices)"), ("Model FLOPs utilisation", "step", "MFU (%)")]
    for ax in (by_step, by_tokens):
        assert labels(ax) == ["train loss", "train loss (smoothed)", "held-out loss"]
        assert [t.get_text() for t in ax.get_legend().get_texts()] == labels(ax)
    train = [r for r in records if r["type"] == "train"]
    raw, smoothed, held_out = by_step.lines
    assert raw.get_alpha() < 0.5 < smoothed.get_linewidth() / raw.get_linewidth()  # raw faint under the trend
    assert np.isnan(raw.get_ydata()[6])  # a non-finite loss is a gap, not a zero
    assert np.allclose(smoothed.get_ydata(), ema([r["loss"] for r in train], 3), equal_nan=True)
    assert list(held_out.get_xdata()) == [20, 40, 60] and list(held_out.get_ydata()) == [2.8, 2.6, 2.4]
    assert list(by_tokens.lines[0].get_xdata()) == [512 * s for s in range(1, 61)]
    assert list(by_tokens.lines[2].get_xdata()) == [512 * 20, 512 * 40, 512 * 60]  # evals at their tokens
    assert list(lr.lines[0].get_ydata()) == [r["lr"] for r in train]
    assert list(grad.lines[0].get_ydata()) == [r["grad_norm"] for r in train]
    assert list(speed.lines[0].get_ydata()) == [r["tokens_per_s"] for r in train]
    assert list(mfu.lines[0].get_ydata()) == [1.0] * 60  # percent


def test_plot_multi_round_run_puts_the_rounds_on_one_figure(tmp_path):
    from pangu_pro.cli import main
    from pangu_pro.train.plot import run_figure

    root = tmp_path / "rounds"
    write_metrics(root / "round_1" / "train", training_records(40, 100, 20, 1))
    write_metrics(root / "round_2" / "train", training_records(10, 100, 5, 2))  # fresh step and token counters
    (root / "round_1" / "train" / "config.yaml").write_text("model: {num_layers: 3, hidden_size: 32, vocab_size: 99}\n")
    assert main(["plot", str(root), "--out", str(tmp_path / "r.png")]) == 0
    assert (tmp_path / "r.png").is_file() and not (root / "curves.png").exists()

    fig, kind = run_figure(root)
    assert kind == "rounds"
    assert fig.get_suptitle() == f"Multi-round run {root}: 2 rounds (3 layers x 32, vocab 99)"
    by_step, by_tokens = fig.axes[:2]
    assert labels(by_step) == ["round 1 train loss", "round 1 train loss (smoothed)", "round 1 held-out loss",
                               "round 2 train loss", "round 2 train loss (smoothed)", "round 2 held-out loss"]
    round2 = by_step.lines[3]
    assert list(round2.get_xdata()) == list(range(41, 51))  # round 2 continues after round 1's 40 steps
    assert list(by_tokens.lines[3].get_xdata()) == [4000 + 100 * s for s in range(1, 11)]
    assert list(by_step.lines[5].get_xdata()) == [45, 50]
    assert by_step.lines[0].get_color() != round2.get_color()
    # a dotted line where round 2 starts, on the step and the token axes
    starts = [line for line in by_step.get_lines() if line.get_linestyle() == ":"]
    assert len(starts) == 1 and list(starts[0].get_xdata()) == [40, 40]
    assert [list(line.get_xdata()) for line in by_tokens.get_lines() if line.get_linestyle() == ":"] == [[4000, 4000]]
    for ax in fig.axes[2:5]:
        assert [line.get_label() for line in ax.lines if line.get_linestyle() != ":"][0].startswith("round 1")
        assert ax.get_legend() is not None


def test_plot_inheritance_run(tmp_path):
    from pangu_pro.cli import main
    from pangu_pro.train.plot import run_figure

    run = tmp_path / "inherit"
    run.mkdir()
    records = [{"type": "masks", "step": s, "loss": 3.0 - s / 100, "total": 3.1 - s / 100,
                "expected_size": 1e6 - 1e4 * s, "sparsity_heads": s / 50, "target_heads": s / 40,
                "sparsity_hidden": s / 80, "target_hidden": s / 60, "lambda1": 0.1 * s, "lambda2": 0.01 * s}
               for s in (10, 20, 30)]
    records[-1]["layer_sparsity"] = {"heads": [0.0, 0.5, 0.25], "ffn": [0.1, 0.2, 0.3]}
    (run / "masks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["plot", str(run)]) == 0 and (run / "curves.png").is_file()

    fig, kind = run_figure(run)
    size, sparsity, lambdas, losses, layers = fig.axes
    assert kind == "inherit" and fig.get_suptitle() == f"Inheritance run {run}: mask learning"
    assert (size.get_title(), size.get_xlabel(), size.get_ylabel()) == ("Expected student size", "mask step",
                                                                          "parameters")
    assert list(size.lines[0].get_ydata()) == [900000, 800000, 700000]
    assert labels(sparsity) == ["heads", "heads target", "hidden", "hidden target"]
    assert labels(lambdas) == ["λ1", "λ2"] and list(lambdas.lines[0].get_ydata()) == pytest.approx([1, 2, 3])
    assert labels(losses) == ["masked LM loss", "total (loss + λ penalty)"]
    assert layers.get_title() == "Fraction pruned per layer (step 30)" and layers.get_xlabel() == "layer"
    assert labels(layers) == ["ffn", "heads"] and list(layers.lines[1].get_ydata()) == [0.0, 0.5, 0.25]

    for r in records:  # today's masks.jsonl: no λ, no per-layer fractions -> the panels say so
        r.pop("lambda1"), r.pop("lambda2"), r.pop("layer_sparsity", None)
    (run / "masks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    fig, _ = run_figure(run)
    assert [t.get_text() for t in fig.axes[2].texts] == ["no λ values in masks.jsonl"]
    assert [t.get_text() for t in fig.axes[4].texts] == ["no layer_sparsity in masks.jsonl"]


def test_plot_refuses_a_folder_without_metrics(tmp_path):
    from pangu_pro.train.plot import run_figure

    with pytest.raises(FileNotFoundError, match="nothing to plot"):
        run_figure(tmp_path)


def test_coverage_figure_marks_the_chosen_size():
    from pangu_pro.tokenizer.coverage import CoverageRow, VocabCost, coverage_figure

    cost = VocabCost(params_per_piece=128, other_params=10_000)
    rows = [CoverageRow(n, cov, cov - 0.1, *cost.at(n)) for n, cov in [(100, 0.5), (200, 0.85), (300, 0.93),
                                                                         (400, 0.99)]]
    assert cost.at(100) == (12_800, 12_800 / 22_800)
    fig = coverage_figure(rows, title="Tokenizer coverage: big.model")
    ax, share = fig.axes
    assert fig.get_suptitle() == "Tokenizer coverage: big.model"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("vocabulary size (pieces)", "corpus tokens covered (%)")
    assert share.get_ylabel() == "embedding + LM head (% of parameters)"
    assert list(share.lines[0].get_ydata()) == pytest.approx([100 * r.vocab_share for r in rows])
    assert labels(ax)[:3] == ["coverage (BPE merges closed)", "coverage (naive top-n cut)",
                              "90 % coverage (paper rule)"]
    assert labels(ax)[-1] == "chosen: 300 pieces, 93.00 % coverage"  # default: the smallest size with 90 %
    assert [t.get_text() for t in ax.get_legend().get_texts()] == labels(ax) + [
        "embedding + LM head share of parameters"]
    fig = coverage_figure(rows, chosen=200)
    assert fig.axes[0].lines[-1].get_label() == "chosen: 200 pieces, 85.00 % coverage"
    assert list(fig.axes[0].lines[-1].get_ydata()) == [85.0]
    with pytest.raises(ValueError, match="250 is not among"):
        coverage_figure(rows, chosen=250)
    assert len(coverage_figure([CoverageRow(100, 0.5, 0.4)]).axes) == 1  # no config: no share axis
