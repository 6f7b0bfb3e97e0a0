"""Running tasks: choice tasks by log-likelihood, generation tasks with ROUGE, held-out text perplexity.

Each runner takes a backend (pangu_pro.eval.backends or any object with `token_logprobs`), a
tokenizer (anything with `encode(str) -> list[int]` and `decode(list[int]) -> str`, such as a
SentencePieceProcessor) and returns a plain dict that goes into the results JSON.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from pangu_pro.eval.scoring import (Request, choice_value, make_request, pick, score_requests)
from pangu_pro.eval.tasks import Group, build_context, check_shots
from pangu_pro.tokens import document_ids, prompt_ids


def evaluate_choice(groups: Sequence[Group], backend, tokenizer, shots: int = 0, rule: str = "prompt",
                    bos_id: int = 1, progress: bool = False, desc: str = "choice", details: bool = False) -> dict:
    """Accuracy of `backend` on the groups' items; `accuracy` is the mean over groups (subjects).

    All requests of the task are scored together (one batching plan); `details` adds per-item records
    (gold, prediction, each choice's continuation log-likelihood and compared value).
    """
    for group in groups:
        check_shots(group, shots)
    requests: list[Request] = []
    spans = []  # (group index, item index, first request, number of choices)
    for g, group in enumerate(groups):
        for i, item in enumerate(group.items):
            context = build_context(group, i, shots)
            spans.append((g, i, len(requests), len(item.continuations)))
            requests.extend(make_request(tokenizer, context, cont, bos_id, backend.max_length)
                            for cont in item.continuations)
    if not requests:
        raise ValueError(f"{desc}: no items to score")
    scores = score_requests(backend, requests, progress=progress, desc=desc)
    correct = [[0, 0] for _ in groups]
    records = []
    for g, i, start, n in spans:
        item_scores = scores[start:start + n]
        prediction = pick(item_scores, rule)
        gold = groups[g].items[i].gold
        correct[g][0] += prediction == gold
        correct[g][1] += 1
        if details:
            records.append({"group": groups[g].name, "index": i, "gold": gold, "prediction": prediction,
                            "loglik": [s.continuation for s in item_scores],
                            "values": [choice_value(s, rule) for s in item_scores]})
    subsets = {groups[g].name: {"accuracy": 100.0 * c / n, "correct": c, "total": n} for g, (c, n) in enumerate(correct)}
    total_correct, total = sum(c for c, _ in correct), sum(n for _, n in correct)
    result = {"accuracy": float(np.mean([s["accuracy"] for s in subsets.values()])),
              "micro_accuracy": 100.0 * total_correct / total, "correct": total_correct, "total": total,
              "shots": shots, "scoring": rule, "subsets": subsets}
    if details:
        result["items"] = records
    return result


def evaluate_generation(pairs: Sequence[tuple[str, str]], generate: Callable[[list[list[int]], int], list[list[int]]],
                        tokenizer, max_new_tokens: int, max_prompt_tokens: int, bos_id: int = 1, batch_size: int = 8,
                        progress: bool = False, details: bool = False) -> dict:
    """ROUGE of greedy summaries: `generate(prompt_ids, max_new_tokens)` -> new ids per prompt.

    Prompts are cut from the left to `max_prompt_tokens` (BOS included); the summary is the text up to
    the first newline. Batches are padded to `batch_size` by repeating the last prompt.
    """
    from pangu_pro.progress import progress_bar

    from pangu_pro.eval.rouge import corpus_rouge

    if not pairs:
        raise ValueError("no generation items")
    prompts = [prompt_ids(list(tokenizer.encode(p))[-(max_prompt_tokens - 1):], bos_id) for p, _ in pairs]
    outputs: list[str] = []
    for start in progress_bar(range(0, len(prompts), batch_size), desc="generate", unit="batch", disable=not progress):
        batch = prompts[start:start + batch_size]
        padded = batch + [batch[-1]] * (batch_size - len(batch))
        for ids in generate(padded, max_new_tokens)[:len(batch)]:
            outputs.append(summary_text(tokenizer.decode(ids)))
    references = [r for _, r in pairs]
    result = {**corpus_rouge(outputs, references), "total": len(pairs)}
    result["score"] = result["rouge1"]
    if details:
        result["items"] = [{"prediction": o, "reference": r} for o, r in zip(outputs, references)]
    return result


def summary_text(text: str) -> str:
    """The generated summary: stripped, up to the first newline."""
    text = text.strip()
    return text.split("\n", 1)[0].strip()


def text_windows(token_stream: Sequence[int], max_length: int) -> list[Request]:
    """Windows of at most `max_length` tokens, each starting with the previous one's last token, so
    every token after the first is predicted exactly once."""
    if max_length < 2:
        raise ValueError("windows need at least 2 tokens")
    requests = []
    start = 0
    while start < len(token_stream) - 1:
        window = tuple(token_stream[start:start + max_length])
        requests.append(Request(window, len(window) - 1))
        start += max_length - 1
    return requests


def text_perplexity(paths: Sequence[str | Path], backend, tokenizer, bos_id: int, eos_id: int,
                    progress: bool = False) -> dict:
    """Per-token perplexity of held-out text files: each non-empty line is a document,
    ``<s> line </s>``, all concatenated and cut into windows of the backend's length."""
    stream: list[int] = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: held-out text file not found (expected UTF-8 text, one document a line)")
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                stream.extend(document_ids(tokenizer.encode(line), bos_id, eos_id))
    if len(stream) < 2:
        raise ValueError(f"{', '.join(map(str, paths))}: no text to evaluate")
    requests = text_windows(stream, backend.max_length)
    scores = score_requests(backend, requests, progress=progress, desc="perplexity")
    total = sum(s.total for s in scores)
    count = sum(s.n_total for s in scores)
    loss = -total / count
    return {"loss": loss, "perplexity": math.exp(loss) if loss < 700 else float("inf"), "tokens": count,
            "windows": len(requests)}


def run_tasks(tasks, data_dir: str | Path, backend, tokenizer, shots: int = 0, rule: str = "prompt",
              bos_id: int = 1, generate=None, max_new_tokens: int = 64, limit: Optional[int] = None,
              progress: bool = True, details: bool = False) -> dict:
    """Every task's result by name (loaders read from `data_dir`; nothing is downloaded)."""
    from pangu_pro.eval.tasks import limit_items

    results = {}
    for task in tasks:
        loaded = task.load(Path(data_dir))
        if task.kind == "choice":
            result = evaluate_choice(limit_items(loaded, limit), backend, tokenizer, shots, rule, bos_id, progress,
                                     task.name, details)
            result["score"] = result["accuracy"]
        else:
            if generate is None:
                raise ValueError(f"{task.name}: a generation task needs a generator")
            pairs = loaded[:limit] if limit is not None else loaded
            result = evaluate_generation(pairs, generate, tokenizer, max_new_tokens,
                                         backend.max_length - 1 - max_new_tokens, bos_id, backend.batch_size, progress,
                                         details)
            result["shots"] = 0
        result["column"] = task.column
        results[task.name] = result
    return results
