"""Figures with matplotlib, headless: the pieces every stage's plots share.

Figures are `matplotlib.figure.Figure` objects on the Agg canvas, built without pyplot, so no global
state, no display and no backend switch are involved (plots are drawn on cluster nodes and in CI).
Functions that draw return the Figure; `save_figure` writes it as PNG atomically. Tests read titles,
labels and lines from the Figure objects, never pixels.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

DPI = 110


def new_figure(rows: int, cols: int, title: str, panel_size: tuple[float, float] = (4.6, 3.2)):
    """A Figure with a rows x cols grid of axes (returned as a flat list) and a title."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel_size[0] * cols, panel_size[1] * rows + 0.6), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    fig.suptitle(title)
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return fig, axes


def save_figure(fig, path: str | Path) -> Path:
    """Write `fig` as PNG (atomically) and return the path."""
    from pangu_pro.io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def ema(values: Sequence[float], span: float) -> np.ndarray:
    """Exponential moving average with weight 2 / (span + 1), bias-corrected at the start (like
    TensorBoard's smoothing); NaN entries (non-finite losses) are skipped and stay NaN."""
    alpha = 2.0 / (span + 1.0)
    out = np.full(len(values), np.nan)
    mean, weight = 0.0, 0.0
    for i, value in enumerate(values):
        if value is None or not math.isfinite(value):
            continue
        mean = (1 - alpha) * mean + alpha * value
        weight = (1 - alpha) * weight + alpha
        out[i] = mean / weight
    return out


def smoothing_span(points: int) -> int:
    """About a twentieth of the curve, at least 1 (no smoothing for short curves)."""
    return max(1, points // 20)


def as_floats(values: Sequence) -> np.ndarray:
    """None (a non-finite value in the metrics) -> NaN, which matplotlib leaves as a gap."""
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def engineering_axis(axis) -> None:
    """Tick labels like 1.5M, 20k (tokens, parameters)."""
    from matplotlib.ticker import EngFormatter

    axis.set_major_formatter(EngFormatter(sep=""))
