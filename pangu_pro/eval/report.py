"""The paper's results (paper-notes §7) and the Markdown table that puts ours beside them."""
from __future__ import annotations

from typing import Optional

COLUMNS = ("C-Eval", "CMMLU", "MMLU", "AGI-Eval", "BoolQ", "AX-b", "PIQA", "EPRSTMT", "XSum", "C3")

PAPER_ROWS: dict[str, dict[str, float]] = {
    name: dict(zip(COLUMNS + ("avg",), values)) for name, values in {
        "PanGu-π-1B": (36.85, 35.90, 35.96, 30.77, 58.44, 43.48, 61.92, 55.62, 15.92, 49.21, 42.41),
        "PanGu-π-1B Pro": (46.50, 46.56, 50.38, 41.58, 63.43, 53.99, 64.96, 74.38, 18.40, 52.66, 51.28),
        "PanGu-π-1.5B Pro": (52.91, 49.51, 53.76, 44.42, 63.73, 55.93, 73.94, 89.38, 22.23, 59.56, 56.49),
        "Qwen-1.8B": (53.60, 52.12, 46.43, 35.83, 64.31, 57.79, 73.83, 88.12, 20.03, 58.30, 55.04),
    }.items()
}

# (layers, hidden, vocab) of the presets in configs/ -> the paper's row
PRESET_SHAPES = {(12, 2048, 100883): "PanGu-π-1B", (21, 1792, 48000): "PanGu-π-1B Pro",
                 (22, 2048, 48000): "PanGu-π-1.5B Pro"}


def paper_row_for(model_cfg) -> Optional[str]:
    """The paper row whose preset has this model's shape, if any."""
    return PRESET_SHAPES.get((model_cfg.num_layers, model_cfg.hidden_size, model_cfg.vocab_size))


def our_row(results: dict) -> dict[str, float]:
    """Column -> score of the tasks that ran."""
    return {r["column"]: r["score"] for r in results.values()}


def markdown_table(results: dict, paper_row: Optional[str], label: str = "ours") -> str:
    """Our scores and (if given) the paper's row, in the paper's column order.

    Columns that did not run show '–'. `avg` is the mean over the columns that ran; the paper row's
    `avg*` is its mean over those same columns, so the two compare like for like (the paper's
    published all-column average is in its own `avg` cell).
    """
    ours = our_row(results)
    ran = [c for c in COLUMNS if c in ours]
    header = "| model | " + " | ".join(COLUMNS) + " | avg | avg* |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 3)]

    def cells(row: dict) -> str:
        return " | ".join(f"{row[c]:.2f}" if c in row else "–" for c in COLUMNS)

    our_avg = sum(ours[c] for c in ran) / len(ran) if ran else float("nan")
    lines.append(f"| {label} | {cells(ours)} | – | {our_avg:.2f} |")
    if paper_row is not None:
        row = PAPER_ROWS[paper_row]
        same = sum(row[c] for c in ran) / len(ran) if ran else float("nan")
        lines.append(f"| {paper_row} (paper) | {cells(row)} | {row['avg']:.2f} | {same:.2f} |")
    return "\n".join(lines)
