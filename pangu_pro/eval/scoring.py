"""Log-likelihood scoring on static shapes, and the choice rule.

A *request* is one token sequence ``[BOS] + tokens(context + continuation)`` (the prompt of
`pangu_pro.tokens`, as every document starts in training) and the number of its
last tokens that belong to the continuation. A *backend* (``token_logprobs``) gives, for a batch of
ids ``[B, T]`` and the next tokens ``[B, T]``, ``log p(next | prefix)`` per position. Here:

- `bucket_length`: each batch is right-padded to a bucket (a power of two from `MIN_BUCKET`, capped at
  the backend's `max_length`) and to exactly `batch_size` rows, so graph mode compiles at most one
  graph per bucket (`len(cell.compile_cache)`; tests check it). Right padding is exact for a causal
  model: no real position attends to a later one.
- requests are sorted by length (longest first) before batching, so padding stays small; results
  come back in the original order.
- `choice_scores` turns per-request sums into per-choice scores under a scoring rule:
  ``sum``  raw log-likelihood of the continuation;
  ``mean`` length-normalised: that sum over the continuation's token count;
  ``prompt`` minus the mean NLL over every token of context + continuation (OpenCompass's PPL
  inferencer compares exactly this perplexity; the paper-style table uses it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Sequence

import numpy as np

from pangu_pro.tokens import prompt_ids

MIN_BUCKET = 16
SCORING_RULES = ("prompt", "mean", "sum")
PAPER_SCORING = "prompt"


class Backend(Protocol):
    batch_size: int
    max_length: int  # longest token sequence (BOS included) a request may have

    def token_logprobs(self, ids: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """log p(targets[b, t] | ids[b, :t+1]) as float [B, T]."""


@dataclass(frozen=True)
class Request:
    tokens: tuple[int, ...]  # BOS first
    n_continuation: int


@dataclass(frozen=True)
class Score:
    continuation: float  # summed log-likelihood of the continuation tokens
    n_continuation: int
    total: float  # summed log-likelihood of every predicted token (all but BOS)
    n_total: int


def bucket_length(length: int, max_length: int, minimum: int = MIN_BUCKET) -> int:
    """The padded length for a batch whose longest row has `length` positions."""
    if length > max_length:
        raise ValueError(f"{length} positions exceed the maximum length {max_length}")
    return min(max(minimum, 1 << max(length - 1, 0).bit_length()), max_length)


def split_continuation(context_ids: Sequence[int], whole_ids: Sequence[int]) -> int:
    """Number of trailing tokens of `whole_ids` (= tokens of context + continuation) that are the continuation.

    The continuation starts where the tokens of the context stop matching (tokenizers may merge
    across the boundary); it keeps at least one token.
    """
    common = 0
    for a, b in zip(context_ids, whole_ids):
        if a != b:
            break
        common += 1
    return max(len(whole_ids) - common, 1) if whole_ids else 0


def make_request(tokenizer, context: str, continuation: str, bos_id: int, max_length: int) -> Request:
    """The request for `continuation` after `context`, the context cut from the left to fit `max_length`."""
    whole = list(tokenizer.encode(context + continuation))
    n_cont = split_continuation(list(tokenizer.encode(context)), whole)
    if n_cont == 0:
        raise ValueError(f"empty continuation after context {context[-40:]!r}")
    if n_cont + 1 > max_length:
        raise ValueError(f"a continuation of {n_cont} tokens does not fit the maximum length {max_length}")
    return Request(tuple(prompt_ids(whole[-(max_length - 1):], bos_id)), n_cont)


def plan_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Request indices in batches of `batch_size`, longest first (stable among equal lengths)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def pad_batch(rows: Sequence[Sequence[int]], batch_size: int, width: int, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """ids [batch_size, width] and targets (ids shifted by one) for the token rows (each at most width + 1 long)."""
    ids = np.full((batch_size, width), pad_id, np.int32)
    targets = np.full((batch_size, width), pad_id, np.int32)
    for r, tokens in enumerate(rows):
        n = len(tokens) - 1
        ids[r, :n] = tokens[:-1]
        targets[r, :n] = tokens[1:]
    return ids, targets


def score_requests(backend: Backend, requests: Sequence[Request], progress: bool = False, desc: str = "score",
                   pad_id: int = 0) -> list[Score]:
    """Score every request with `backend`, in batches padded to length buckets."""
    from pangu_pro.progress import progress_bar

    lengths = [len(r.tokens) - 1 for r in requests]  # predicted positions
    results: list[Optional[Score]] = [None] * len(requests)
    batches = plan_batches(lengths, backend.batch_size)
    for batch in progress_bar(batches, desc=desc, unit="batch", disable=not progress):
        width = bucket_length(max(lengths[i] for i in batch), backend.max_length - 1)
        ids, targets = pad_batch([requests[i].tokens for i in batch], backend.batch_size, width, pad_id)
        logprobs = np.asarray(backend.token_logprobs(ids, targets), dtype=np.float64)
        for row, i in enumerate(batch):
            n, k = lengths[i], requests[i].n_continuation
            results[i] = Score(float(logprobs[row, n - k:n].sum()), k, float(logprobs[row, :n].sum()), n)
    return results  # type: ignore[return-value]


def choice_value(score: Score, rule: str) -> float:
    """The number compared across choices (higher is better) under `rule`."""
    if rule == "sum":
        return score.continuation
    if rule == "mean":
        return score.continuation / score.n_continuation
    if rule == "prompt":
        return score.total / score.n_total
    raise ValueError(f"scoring rule {rule!r}: expected one of {', '.join(SCORING_RULES)}")


def pick(scores: Sequence[Score], rule: str) -> int:
    """Index of the best choice (the first one on a tie)."""
    values = [choice_value(s, rule) for s in scores]
    return int(np.argmax(values))


def accuracy(predictions: Sequence[int], golds: Sequence[int]) -> float:
    if not golds:
        raise ValueError("no items to score")
    return float(np.mean(np.asarray(predictions) == np.asarray(golds)))


class FunctionBackend:
    """A backend from a plain function `logits_fn(ids [B, T]) -> logits [B, T, V]` (tests, references)."""

    def __init__(self, logits_fn: Callable[[np.ndarray], np.ndarray], batch_size: int, max_length: int):
        self.logits_fn = logits_fn
        self.batch_size = batch_size
        self.max_length = max_length
        self.shapes: list[tuple[int, ...]] = []

    def token_logprobs(self, ids: np.ndarray, targets: np.ndarray) -> np.ndarray:
        self.shapes.append(tuple(ids.shape))
        logits = np.asarray(self.logits_fn(ids), dtype=np.float64)
        logits = logits - logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        return np.take_along_axis(logp, targets[..., None].astype(np.int64), -1)[..., 0]
