"""Coverage and embedding+head parameter share as functions of the vocabulary size.

The table holds, at each size: the corpus coverage of the selection `compress` would make (with
BPE merge closure), the coverage of a plain top-n frequency cut for reference, and, given a model
config, the embedding + LM-head parameters and their share of the model (paper rule: coverage
above 90 % and share under about 20 %). `coverage_figure` draws both against the vocabulary size
(matplotlib) with the chosen size and its coverage marked. Parameter counts come in as plain values
(`VocabCost`): the tokenizer layer does not import the model.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from pangu_pro.io import atomic_write_text
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


def default_chosen_size(rows: Sequence[CoverageRow], coverage: float = 0.9) -> Optional[int]:
    """The smallest size whose (closed) coverage reaches `coverage` (the paper's 90 % rule), if any."""
    return next((r.vocab_size for r in rows if r.coverage >= coverage), None)


def coverage_figure(rows: Sequence[CoverageRow], chosen: Optional[int] = None, title: str = "Tokenizer coverage"):
    """Coverage (with merge closure, and the naive top-n cut) against vocabulary size, the embedding +
    head share on a second axis when the rows have it, and `chosen` (default: default_chosen_size)
    marked with its coverage."""
    from pangu_pro.plotting import engineering_axis, new_figure

    fig, (ax,) = new_figure(1, 1, title, panel_size=(7.5, 4.5))
    sizes = [r.vocab_size for r in rows]
    ax.plot(sizes, [100 * r.coverage for r in rows], color="C0", marker="o", markersize=3,
            label="coverage (BPE merges closed)")
    ax.plot(sizes, [100 * r.coverage_top_n for r in rows], color="C0", linestyle="--", alpha=0.6,
            label="coverage (naive top-n cut)")
    ax.axhline(90, color="grey", linestyle=":", linewidth=1, label="90 % coverage (paper rule)")
    ax.set_xlabel("vocabulary size (pieces)")
    ax.set_ylabel("corpus tokens covered (%)")
    engineering_axis(ax.xaxis)
    handles = []
    if all(r.vocab_share is not None for r in rows):
        share_ax = ax.twinx()
        handles = share_ax.plot(sizes, [100 * r.vocab_share for r in rows], color="C3", marker="s", markersize=3,
                                label="embedding + LM head share of parameters")
        share_ax.set_ylabel("embedding + LM head (% of parameters)")
    chosen = chosen if chosen is not None else default_chosen_size(rows)
    if chosen is not None:
        row = next((r for r in rows if r.vocab_size == chosen), None)
        if row is None:
            raise ValueError(f"chosen vocabulary size {chosen} is not among the table's sizes {sizes}")
        ax.axvline(chosen, color="C2", linewidth=1.2)
        ax.plot([chosen], [100 * row.coverage], color="C2", marker="D", linestyle="none",
                label=f"chosen: {chosen:,} pieces, {100 * row.coverage:.2f} % coverage")
        ax.annotate(f"{chosen:,}: {100 * row.coverage:.2f} %", (chosen, 100 * row.coverage),
                    textcoords="offset points", xytext=(8, -14), color="C2")
    labelled = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    ax.legend(handles=labelled + handles, loc="lower right", fontsize="small")
    ax.set_title(f"{len(rows)} sizes from {sizes[0]:,} to {sizes[-1]:,}")
    return fig


def write_png(rows: Sequence[CoverageRow], path: str | Path, chosen: Optional[int] = None,
              title: str = "Tokenizer coverage") -> None:
    """coverage_figure as PNG."""
    from pangu_pro.plotting import save_figure

    save_figure(coverage_figure(rows, chosen, title), path)
