"""Coverage and embedding+head parameter share as functions of the vocabulary size.

The table holds, at each size: the corpus coverage of the selection `compress` would make (with
BPE merge closure), the coverage of a plain top-n frequency cut for reference, and, given a model
config, the embedding + LM-head parameters and their share of the model (paper rule: coverage
above 90 % and share under about 20 %). A PNG curve is drawn with the trainer's small plotter (`pangu_pro.train.plot`, no plotting
library): blue = coverage, red = parameter share, x = vocab size.
"""
from __future__ import annotations

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


@dataclass(frozen=True)
class VocabCost:
    """The model's parameters as a function of the vocabulary size n: `params_per_piece * n` in the
    embedding and LM head, `other_params` elsewhere. The caller computes both from a model config (the
    tokenizer layer knows no model: `pangu-pro tokenizer coverage --config` does it with model/params)."""

    params_per_piece: int  # hidden size, twice with an untied LM head
    other_params: int

    def at(self, vocab_size: int) -> tuple[int, float]:
        """(embedding + head parameters, their share of all parameters) at `vocab_size`."""
        vocab_params = self.params_per_piece * vocab_size
        return vocab_params, vocab_params / (vocab_params + self.other_params)


def coverage_table(vocab: Vocab, counts: np.ndarray, sizes: Sequence[int],
                   cost: Optional[VocabCost] = None) -> list[CoverageRow]:
    """One row per size; `cost` adds the parameter columns."""
    sizes = sorted(set(int(n) for n in sizes))
    closed = coverage_at_sizes(vocab, counts, sizes, closure=True)
    naive = coverage_at_sizes(vocab, counts, sizes, closure=False)
    rows = []
    for n, cov, top in zip(sizes, closed, naive):
        params, share = cost.at(n) if cost is not None else (None, None)
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


def write_png(rows: Sequence[CoverageRow], path: str | Path, width: int = 640, height: int = 360) -> None:
    """Coverage (blue) and, with a model config, parameter share (red) against vocabulary size."""
    from pangu_pro.train.plot import BLUE, RED, draw_panel, encode_png

    sizes = [r.vocab_size for r in rows]
    series = [(sizes, [r.coverage for r in rows], BLUE)]
    if all(r.vocab_share is not None for r in rows):
        series.append((sizes, [r.vocab_share for r in rows], RED))
    image = np.full((height, width, 3), 255, np.uint8)
    draw_panel(image, (0, 0, width, height), series)
    with atomic_path(path) as tmp:
        tmp.write_bytes(encode_png(image))
