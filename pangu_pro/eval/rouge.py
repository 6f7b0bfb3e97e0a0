"""ROUGE-1, ROUGE-2 and ROUGE-L F1 (pure functions, no dependencies).

Tokens: lower-cased runs of ASCII letters and digits, and every CJK character on its own (so Chinese
text is scored by characters). ROUGE-N: clipped n-gram overlap; precision over the candidate's
n-grams, recall over the reference's, F1 = 2PR / (P + R). ROUGE-L: the same with the length of the
longest common subsequence (sentence level, beta = 1). An empty side scores 0. Corpus scores are the
mean of the per-pair F1 values, times 100.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

_TOKEN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def _f1(overlap: float, n_candidate: int, n_reference: int) -> float:
    if overlap == 0 or n_candidate == 0 or n_reference == 0:
        return 0.0
    precision, recall = overlap / n_candidate, overlap / n_reference
    return 2 * precision * recall / (precision + recall)


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def rouge_n(candidate: Sequence[str], reference: Sequence[str], n: int) -> float:
    """ROUGE-N F1 of token lists."""
    cand, ref = _ngrams(candidate, n), _ngrams(reference, n)
    overlap = sum((cand & ref).values())
    return _f1(overlap, sum(cand.values()), sum(ref.values()))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (O(len a * len b) time, O(len b) memory)."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(candidate: Sequence[str], reference: Sequence[str]) -> float:
    """ROUGE-L F1 of token lists."""
    return _f1(lcs_length(candidate, reference), len(candidate), len(reference))


def rouge_scores(candidate: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L F1 of two texts (0..1)."""
    c, r = rouge_tokens(candidate), rouge_tokens(reference)
    return {"rouge1": rouge_n(c, r, 1), "rouge2": rouge_n(c, r, 2), "rougeL": rouge_l(c, r)}


def corpus_rouge(candidates: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 over pairs, times 100."""
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates for {len(references)} references")
    if not candidates:
        raise ValueError("no summaries to score")
    pairs = [rouge_scores(c, r) for c, r in zip(candidates, references)]
    return {key: 100.0 * sum(p[key] for p in pairs) / len(pairs) for key in ("rouge1", "rouge2", "rougeL")}
