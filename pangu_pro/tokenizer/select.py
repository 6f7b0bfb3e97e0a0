"""Which pieces a compact tokenizer keeps: required pieces, BPE merge closure, coverage.

Pure functions over a `Vocab` and a counts array (token-id frequencies of the corpus tokenized with
the big tokenizer); nothing here reads or writes files.

How SentencePiece BPE segments (bpe_model.cc): the text starts as one symbol per character; while
some adjacent pair of symbols concatenates to a vocabulary piece, the pair whose piece has the
highest score is merged (equal scores: the leftmost pair). There is no merges list, so a piece is
reachable only if that greedy process, run on the piece's own text, ends in the piece itself. The
merges that build a final token never cross its boundaries and happen in score order, so a token
is built inside a sentence by exactly the merge tree it gets when its text is encoded alone.

Hence the closure rule: keep, for every kept piece, every node of that merge tree (intermediates
and characters). Then every merge the original model makes on a sentence whose tokens all survived
is still available to the compact model and is still the best-scoring one (the compact model only
lacks pairs), so such a sentence segments identically. Characters are also kept because Hugging
Face's BPE needs both halves of a merge in its vocabulary. A unigram model has no merges: any
subset of its pieces can still be reached, so it is pruned by frequency alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from pangu_pro.tokenizer.vocab import BYTE, CONTROL, NORMAL, SPACE, UNKNOWN, UNUSED, USER_DEFINED, Vocab

MERGEABLE_TYPES = (NORMAL, USER_DEFINED, UNUSED)  # the pieces SentencePiece's BPE looks pairs up in


def is_bracketed(piece: str) -> bool:
    """A piece shaped like a format marker, `<…>` or `[…]` with something inside (`<br>`, `[CLS]`):
    the official compression script keeps every such piece whatever its count."""
    return len(piece) > 2 and ((piece[0] == "<" and piece[-1] == ">") or (piece[0] == "[" and piece[-1] == "]"))


def required_ids(vocab: Vocab, keep_bracketed: bool = True) -> list[int]:
    """Ids that must stay: unknown, control, user-defined and byte pieces, and `▁`; with
    `keep_bracketed` also every normal piece shaped `<…>` / `[…]` (`is_bracketed`) and, for BPE, the
    merge tree that builds it, so it stays reachable."""
    keep = {i for i, t in enumerate(vocab.types) if t in (UNKNOWN, CONTROL, USER_DEFINED, BYTE)}
    keep.update(i for i, p in enumerate(vocab.pieces) if p == SPACE)
    if keep_bracketed:
        marked = [i for i, (p, t) in enumerate(zip(vocab.pieces, vocab.types)) if t == NORMAL and is_bracketed(p)]
        if vocab.model_type == "bpe" and marked:
            index = {p: i for i, p in enumerate(vocab.pieces)}
            score_of = bpe_score_table(vocab)
            for i in marked:
                keep.update(piece_closure(vocab.pieces[i], index, score_of) or [i])
        else:
            keep.update(marked)
    return sorted(keep)


def bpe_segment(text: str, score_of: dict[str, float]) -> tuple[list[str], list[tuple[str, str, str]]]:
    """Run SentencePiece's BPE merging on `text`: the final symbols and the merges (left, right, merged).

    `score_of` maps every mergeable piece to its score. Highest score first; ties go to the leftmost
    pair, as in SentencePiece's agenda.
    """
    symbols = list(text)
    merges: list[tuple[str, str, str]] = []
    while len(symbols) > 1:
        best: Optional[int] = None
        best_score = 0.0
        for i in range(len(symbols) - 1):
            score = score_of.get(symbols[i] + symbols[i + 1])
            if score is not None and (best is None or score > best_score):
                best, best_score = i, score
        if best is None:
            break
        left, right = symbols[best], symbols[best + 1]
        merges.append((left, right, left + right))
        symbols[best:best + 2] = [left + right]
    return symbols, merges


def bpe_score_table(vocab: Vocab) -> dict[str, float]:
    return {p: s for p, s, t in zip(vocab.pieces, vocab.scores, vocab.types) if t in MERGEABLE_TYPES}


def bpe_closures(vocab: Vocab) -> list[Optional[list[int]]]:
    """For each id, the ids of its merge tree in post-order (children before parents, itself last).

    Single characters give `[id]`; a piece its own text does not encode to gives None (unreachable
    even in the original model). Characters of the piece that are not in the vocabulary are skipped
    (SentencePiece still merges them; they can only come from a vocabulary without them).
    """
    index = {p: i for i, p in enumerate(vocab.pieces)}
    score_of = bpe_score_table(vocab)
    return [[index[piece]] if kind not in (NORMAL, UNUSED) or len(piece) == 1 else piece_closure(piece, index, score_of)
            for piece, kind in zip(vocab.pieces, vocab.types)]


def piece_closure(piece: str, index: dict[str, int], score_of: dict[str, float]) -> Optional[list[int]]:
    """The merge tree of one normal piece (`bpe_closures`), or None when its own text does not encode to it."""
    symbols, merges = bpe_segment(piece, score_of)
    if symbols != [piece]:
        return None
    order: list[int] = []
    seen: set[int] = set()

    def add(text: str) -> None:
        i = index.get(text)
        if i is not None and i not in seen:
            seen.add(i)
            order.append(i)

    for ch in piece:  # characters first, then every merge result in merge order
        add(ch)
    for _, _, merged in merges:
        add(merged)
    return order


def admission_order(vocab: Vocab, counts: np.ndarray, closure: bool = True, keep_bracketed: bool = True) -> list[int]:
    """All non-required ids in the order they are admitted as the vocabulary grows.

    Pieces are taken by decreasing count (ties: lower id). For BPE with `closure`, a piece is
    preceded by the not-yet-admitted nodes of its merge tree, so every prefix of the returned order
    (plus the required ids) is closed. Pieces unreachable in the original model come last.
    """
    counts = _check_counts(vocab, counts)
    required = set(required_ids(vocab, keep_bracketed))
    candidates = [i for i in range(len(vocab)) if i not in required]
    use_closure = closure and vocab.model_type == "bpe"
    closures = bpe_closures(vocab) if use_closure else [None] * len(vocab)
    if use_closure:
        candidates.sort(key=lambda i: (closures[i] is None, -int(counts[i]), i))
    else:
        candidates.sort(key=lambda i: (-int(counts[i]), i))
    admitted = set(required)
    order: list[int] = []
    for i in candidates:
        for j in (closures[i] or [i]) if use_closure else [i]:
            if j not in admitted:
                admitted.add(j)
                order.append(j)
    return order


@dataclass(frozen=True)
class Selection:
    """The kept old ids (increasing) and how much of the counted corpus they cover."""

    new2old: np.ndarray  # int64, increasing
    coverage: float  # fraction of counted tokens whose id is kept
    required: int  # how many of the kept ids were required


def select_ids(vocab: Vocab, counts: np.ndarray, vocab_size: Optional[int] = None,
               coverage: Optional[float] = None, closure: bool = True, keep_bracketed: bool = True) -> Selection:
    """Keep `vocab_size` ids, or the fewest ids that cover at least `coverage` of the counted tokens.

    `closure=False` is the naive frequency cut (kept for comparison; it breaks BPE segmentation);
    `keep_bracketed=False` lets `<…>` / `[…]` pieces compete by count like any other.
    """
    if (vocab_size is None) == (coverage is None):
        raise ValueError("give exactly one of vocab_size and coverage")
    counts = _check_counts(vocab, counts)
    required = required_ids(vocab, keep_bracketed)
    order = admission_order(vocab, counts, closure, keep_bracketed)
    curve = coverage_curve(counts, required, order)  # curve[k]: coverage with the first k admitted
    if vocab_size is not None:
        if vocab_size < len(required):
            raise ValueError(f"vocab size {vocab_size} is smaller than the {len(required)} pieces that must stay "
                             f"({_describe_required(vocab, required)})")
        if vocab_size > len(vocab):
            raise ValueError(f"vocab size {vocab_size} is larger than the original vocabulary ({len(vocab)})")
        extra = vocab_size - len(required)
    else:
        if not (0.0 < coverage <= 1.0):
            raise ValueError(f"coverage must lie in (0, 1], got {coverage}")
        extra = int(np.searchsorted(curve, coverage - 1e-12, side="left"))
        extra = min(extra, len(order))
    new2old = np.array(sorted(required + order[:extra]), dtype=np.int64)
    return Selection(new2old=new2old, coverage=float(curve[extra]), required=len(required))


def coverage_curve(counts: np.ndarray, required: list[int], order: list[int]) -> np.ndarray:
    """curve[k] = fraction of counted tokens covered by the required ids plus the first k of `order`."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        raise ValueError("the counts are all zero: nothing was counted")
    base = int(counts[np.asarray(required, dtype=np.int64)].sum()) if required else 0
    cumulative = np.concatenate([[0], np.cumsum(counts[np.asarray(order, dtype=np.int64)])]) if order else np.zeros(1)
    return (base + cumulative) / total


def coverage_at_sizes(vocab: Vocab, counts: np.ndarray, sizes: list[int], closure: bool = True,
                      keep_bracketed: bool = True) -> list[float]:
    """Coverage of the selection `select_ids` would make at each vocabulary size in `sizes`."""
    required = required_ids(vocab, keep_bracketed)
    curve = coverage_curve(_check_counts(vocab, counts), required,
                           admission_order(vocab, counts, closure, keep_bracketed))
    out = []
    for n in sizes:
        if not len(required) <= n <= len(vocab):
            raise ValueError(f"vocab size {n} is outside [{len(required)}, {len(vocab)}] "
                             f"({len(required)} pieces must stay)")
        out.append(float(curve[n - len(required)]))
    return out


def _check_counts(vocab: Vocab, counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts)
    if counts.ndim != 1 or counts.shape[0] != len(vocab):
        raise ValueError(f"counts have shape {counts.shape}, expected ({len(vocab)},) for this tokenizer")
    if counts.size and counts.min() < 0:
        raise ValueError("counts must be non-negative")
    return counts.astype(np.int64, copy=False)


def _describe_required(vocab: Vocab, required: list[int]) -> str:
    kinds = {UNKNOWN: "unknown", CONTROL: "control", USER_DEFINED: "user-defined", BYTE: "byte"}
    tally: dict[str, int] = {}
    for i in required:
        name = kinds.get(vocab.types[i]) or ("'▁'" if vocab.pieces[i] == SPACE else "<…>/[…] pieces and their merges")
        tally[name] = tally.get(name, 0) + 1
    return ", ".join(f"{n} {name}" for name, n in tally.items())
