"""`pangu-pro plot RUN_DIR`: loss and learning-rate curves as a PNG, without matplotlib.

A small raster renderer: numpy RGB canvas, straight line segments, axes with five ticks each, tick
labels in a 3x5 pixel font (digits, '.', '-', '+', 'e'), and a PNG encoder (zlib + struct, 8-bit
RGB, filter type 0 on every row). Two panels, one above the other: the training loss (blue) with the
held-out loss (red) when the run evaluated, and the learning rate (green).
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
GREY = (200, 200, 200)
BLUE = (31, 119, 180)
RED = (214, 39, 40)
GREEN = (44, 160, 44)

# 3x5 glyphs, rows top to bottom, '1' = ink
_FONT = {
    "0": ["111", "101", "101", "101", "111"], "1": ["010", "110", "010", "010", "111"],
    "2": ["111", "001", "111", "100", "111"], "3": ["111", "001", "111", "001", "111"],
    "4": ["101", "101", "111", "001", "001"], "5": ["111", "100", "111", "001", "111"],
    "6": ["111", "100", "111", "101", "111"], "7": ["111", "001", "010", "010", "010"],
    "8": ["111", "101", "111", "101", "111"], "9": ["111", "101", "111", "001", "111"],
    ".": ["000", "000", "000", "000", "010"], "-": ["000", "000", "111", "000", "000"],
    "+": ["000", "010", "111", "010", "000"], "e": ["000", "111", "111", "100", "111"],
    " ": ["000", "000", "000", "000", "000"],
}
_SCALE = 2  # font pixels per glyph pixel


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an RGB uint8 image [H, W, 3]."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected uint8 [H, W, 3], got {image.dtype} {image.shape}")
    height, width = image.shape[:2]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = np.concatenate([np.zeros((height, 1), np.uint8), image.reshape(height, width * 3)], axis=1)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 9))
            + chunk(b"IEND", b""))


def draw_line(image: np.ndarray, x0: float, y0: float, x1: float, y1: float, color, width: int = 1) -> None:
    """A straight segment between pixel centres, `width` pixels thick."""
    n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
    xs = np.rint(np.linspace(x0, x1, n + 1)).astype(int)
    ys = np.rint(np.linspace(y0, y1, n + 1)).astype(int)
    h, w = image.shape[:2]
    for dx in range(-(width // 2), width - width // 2):
        for dy in range(-(width // 2), width - width // 2):
            px, py = xs + dx, ys + dy
            keep = (px >= 0) & (px < w) & (py >= 0) & (py < h)
            image[py[keep], px[keep]] = color


def draw_text(image: np.ndarray, text: str, x: int, y: int, color=BLACK) -> None:
    """`text` with its top-left corner at (x, y); characters without a glyph are drawn as blanks."""
    for i, char in enumerate(text):
        glyph = _FONT.get(char, _FONT[" "])
        for row, bits in enumerate(glyph):
            for col, bit in enumerate(bits):
                if bit == "1":
                    top, left = y + row * _SCALE, x + (i * 4 + col) * _SCALE
                    image[max(top, 0):top + _SCALE, max(left, 0):left + _SCALE] = color


def text_width(text: str) -> int:
    return len(text) * 4 * _SCALE


def tick_label(value: float) -> str:
    text = f"{value:.3g}"
    return text.replace("e-0", "e-").replace("e+0", "e+")


@dataclass
class Axes:
    """Where a panel's data lands: the plot area [left, right] x [top, bottom] in pixels."""

    left: int
    top: int
    right: int
    bottom: int
    x_range: tuple[float, float]
    y_range: tuple[float, float]

    def pixel(self, x: float, y: float) -> tuple[int, int]:
        """(column, row) of the data point (x, y)."""
        (x_lo, x_hi), (y_lo, y_hi) = self.x_range, self.y_range
        col = self.left + (x - x_lo) / (x_hi - x_lo) * (self.right - self.left)
        row = self.bottom - (y - y_lo) / (y_hi - y_lo) * (self.bottom - self.top)
        return int(round(col)), int(round(row))


def _padded_range(values: np.ndarray) -> tuple[float, float]:
    lo, hi = float(values.min()), float(values.max())
    if hi == lo:
        pad = abs(lo) * 0.1 or 1.0
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.05
    return lo - pad, hi + pad


def draw_panel(image: np.ndarray, box: tuple[int, int, int, int],
               series: Sequence[tuple[Sequence[float], Sequence[float], tuple]]) -> Axes:
    """Axes, ticks and the line `series` ((xs, ys, colour), ...) inside `box` = (x, y, width, height).

    Series after the first (the held-out loss) also get a 5x5 marker on each point.
    """
    bx, by, bw, bh = box
    xs_all = np.concatenate([np.asarray(s[0], float) for s in series])
    ys_all = np.concatenate([np.asarray(s[1], float) for s in series])
    finite = np.isfinite(ys_all)
    axes = Axes(bx + 90, by + 10, bx + bw - 15, by + bh - 26,
                (float(xs_all.min()), float(xs_all.max()) if xs_all.max() > xs_all.min() else float(xs_all.min()) + 1),
                _padded_range(ys_all[finite]) if finite.any() else (0.0, 1.0))
    for i in range(5):  # grid lines and tick labels
        fx = axes.x_range[0] + (axes.x_range[1] - axes.x_range[0]) * i / 4
        fy = axes.y_range[0] + (axes.y_range[1] - axes.y_range[0]) * i / 4
        col, _ = axes.pixel(fx, axes.y_range[0])
        _, row = axes.pixel(axes.x_range[0], fy)
        draw_line(image, col, axes.top, col, axes.bottom, GREY)
        draw_line(image, axes.left, row, axes.right, row, GREY)
        label = tick_label(fx if fx != int(fx) else int(fx))
        draw_text(image, label, col - text_width(label) // 2, axes.bottom + 6)
        label = tick_label(fy)
        draw_text(image, label, axes.left - text_width(label) - 6, row - 5)
    draw_line(image, axes.left, axes.bottom, axes.right, axes.bottom, BLACK)
    draw_line(image, axes.left, axes.top, axes.left, axes.bottom, BLACK)
    for index, (xs, ys, color) in enumerate(series):
        points = [axes.pixel(x, y) for x, y in zip(xs, ys) if np.isfinite(y)]
        for (c0, r0), (c1, r1) in zip(points, points[1:]):
            draw_line(image, c0, r0, c1, r1, color, width=2)
        if len(points) == 1 or index > 0:
            for c, r in points:
                image[max(r - 2, 0):r + 3, max(c - 2, 0):c + 3] = color
    return axes


def render_curves(train: Sequence[dict], evals: Sequence[dict] = (), width: int = 720,
                  panel_height: int = 260) -> tuple[np.ndarray, Axes, Axes]:
    """An image of loss (top) and lr (bottom) against step; returns it and both panels' Axes."""
    if not train:
        raise ValueError("no training records to plot")
    image = np.full((2 * panel_height, width, 3), 255, np.uint8)
    steps = [r["step"] for r in train]
    loss_series = [(steps, [np.nan if r["loss"] is None else r["loss"] for r in train], BLUE)]
    if evals:
        loss_series.append(([r["step"] for r in evals], [r["eval_loss"] for r in evals], RED))
    loss_axes = draw_panel(image, (0, 0, width, panel_height), loss_series)
    lr_axes = draw_panel(image, (0, panel_height, width, panel_height), [(steps, [r["lr"] for r in train], GREEN)])
    return image, loss_axes, lr_axes


def plot_run(run_dir: str | Path, out: Optional[Path] = None) -> Path:
    """Read RUN_DIR/metrics.jsonl and write the curves to `out` (default RUN_DIR/curves.png)."""
    from pangu_pro.io import atomic_path
    from pangu_pro.train.metrics import read_metrics

    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    image, _, _ = render_curves([r for r in records if r.get("type") == "train"],
                                [r for r in records if r.get("type") == "eval"])
    out = out or run_dir / "curves.png"
    with atomic_path(out) as tmp:
        tmp.write_bytes(encode_png(image))
    return out
