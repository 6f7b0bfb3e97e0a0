"""Coverage and embedding+head parameter share as functions of the vocabulary size.

The table holds, at each size: the corpus coverage of the selection `compress` would make (with
BPE merge closure), the coverage of a plain top-n frequency cut for reference, and, given a model
config, the embedding + LM-head parameters and their share of the model (paper rule: coverage
above 90 % and share under about 20 %). A PNG curve is drawn with a small built-in writer (no
plotting library): blue = coverage, red = parameter share, both on a 0..1 axis, x = vocab size.
"""
from __future__ import annotations

import dataclasses
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from pangu_pro.io import atomic_path, atomic_write_text
from pangu_pro.tokenizer.select import coverage_at_sizes, required_ids
from pangu_pro.tokenizer.vocab import Vocab


@dataclass(frozen=True)
class CoverageRow:
    vocab_size: int
    coverage: float  # with merge closure (what `compress` keeps)
    coverage_top_n: float  # naive frequency cut
    vocab_params: Optional[int] = None  # embedding + LM head
    vocab_share: Optional[float] = None  # of all parameters


def default_sizes(vocab: Vocab, steps: int = 16) -> list[int]:
    """About `steps` sizes from the required minimum to the full vocabulary, rounded to 64."""
    low, high = len(required_ids(vocab)), len(vocab)
    sizes = {low, high}
    for value in np.linspace(low, high, steps + 1)[1:-1]:
        sizes.add(int(min(high, max(low, round(value / 64) * 64))))
    return sorted(sizes)


def coverage_table(vocab: Vocab, counts: np.ndarray, sizes: Sequence[int], model=None) -> list[CoverageRow]:
    """One row per size; `model` (a ModelConfig) adds the parameter columns."""
    from pangu_pro.model.params import count_parameters

    sizes = sorted(set(int(n) for n in sizes))
    closed = coverage_at_sizes(vocab, counts, sizes, closure=True)
    naive = coverage_at_sizes(vocab, counts, sizes, closure=False)
    rows = []
    for n, cov, top in zip(sizes, closed, naive):
        params = share = None
        if model is not None:
            count = count_parameters(dataclasses.replace(model, vocab_size=n))
            params, share = count.embedding + count.lm_head, count.vocab_share
        rows.append(CoverageRow(n, cov, top, params, share))
    return rows


def format_table(rows: Sequence[CoverageRow]) -> str:
    lines = [f"{'vocab':>8}{'coverage':>10}{'top-n':>9}{'emb+head':>14}{'share':>8}"]
    for r in rows:
        params = f"{r.vocab_params:>14,}" if r.vocab_params is not None else f"{'-':>14}"
        share = f"{100 * r.vocab_share:>7.2f}%" if r.vocab_share is not None else f"{'-':>8}"
        lines.append(f"{r.vocab_size:>8}{100 * r.coverage:>9.2f}%{100 * r.coverage_top_n:>8.2f}%{params}{share}")
    return "\n".join(lines)


def write_csv(rows: Sequence[CoverageRow], path: str | Path) -> None:
    lines = ["vocab_size,coverage,coverage_top_n,vocab_params,vocab_share"]
    for r in rows:
        extra = "," if r.vocab_params is None else f"{r.vocab_params},{r.vocab_share:.6f}"
        lines.append(f"{r.vocab_size},{r.coverage:.6f},{r.coverage_top_n:.6f},{extra}")
    atomic_write_text(path, "\n".join(lines) + "\n")


def png_bytes(pixels: np.ndarray) -> bytes:
    """Encode an RGB uint8 image [H, W, 3] as PNG (8-bit truecolour, no filtering)."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError("expected an [H, W, 3] uint8 image")
    height, width = pixels.shape[:2]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + pixels[y].tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def plot_rows(rows: Sequence[CoverageRow], width: int = 480, height: int = 320) -> np.ndarray:
    """Coverage (blue) and parameter share (red) against vocab size; grey grid lines every 10 %."""
    image = np.full((height, width, 3), 255, dtype=np.uint8)
    margin = 20
    x0, x1, y0, y1 = margin, width - margin, height - margin, margin
    for tenth in range(11):
        y = round(y0 + (y1 - y0) * tenth / 10)
        image[y, x0:x1 + 1] = (225, 225, 225) if tenth not in (0, 10) else (0, 0, 0)
    image[y1:y0 + 1, x0] = image[y1:y0 + 1, x1] = (0, 0, 0)
    sizes = np.array([r.vocab_size for r in rows], dtype=np.float64)
    span = max(sizes.max() - sizes.min(), 1.0)
    xs = x0 + (sizes - sizes.min()) / span * (x1 - x0)
    series = [([r.coverage for r in rows], (31, 90, 200))]
    if all(r.vocab_share is not None for r in rows):
        series.append(([r.vocab_share for r in rows], (210, 40, 40)))
    for values, colour in series:
        ys = y0 + np.asarray(values, dtype=np.float64) * (y1 - y0)
        for (xa, ya), (xb, yb) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
            steps = int(max(abs(xb - xa), abs(yb - ya))) + 1
            for t in np.linspace(0.0, 1.0, steps + 1):
                x, y = round(xa + (xb - xa) * t), round(ya + (yb - ya) * t)
                image[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2] = colour
    return image


def write_png(rows: Sequence[CoverageRow], path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(png_bytes(plot_rows(rows)))
