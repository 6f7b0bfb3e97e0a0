"""`pangu-pro bench tokenizer`: counting throughput and compression quality (not a timed test).

Measures, on the generated mixed corpus (`pangu_pro.tokenizer.sample_corpus`):
- counting tokens/s over MindRecord shards: ours (bincount, worker threads) against a plain
  per-token Python dict, end to end (shard reading included) and for the counting step alone;
- on held-out text, for the merge-closure compression and the naive frequency cut at the same
  size: the rate of lines (whose original tokens all survived) segmented identically, the rate of
  lines segmented identically at all, and tokens per byte against the original tokenizer.

`run_benchmark(...)` is the CLI-free entry; `add_arguments(parser)` and `run(args)` are for the
bench stage's command line.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

RESULTS = Path("benchmarks/results/tokenizer.json")


def _dict_count(chunks: list[np.ndarray]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for chunk in chunks:
        for token in chunk.tolist():
            counts[token] = counts.get(token, 0) + 1
    return counts


def _segmentation(big, small, new2old: np.ndarray, lines: list[str]) -> dict:
    old2new = {int(o): n for n, o in enumerate(new2old)}
    eligible = same_eligible = same_all = old_tokens = new_tokens = 0
    for line in lines:
        old, new = big.encode(line), small.encode(line)
        old_tokens, new_tokens = old_tokens + len(old), new_tokens + len(new)
        mapped = [old2new.get(i, -1) for i in old]
        same_all += mapped == new
        if -1 not in mapped:
            eligible += 1
            same_eligible += mapped == new
    n_bytes = sum(len(line.encode("utf-8")) for line in lines)
    return {"lines": len(lines), "eligible_lines": eligible,
            "preserved_rate_eligible": same_eligible / max(eligible, 1), "preserved_rate_all": same_all / len(lines),
            "tokens_per_byte": new_tokens / n_bytes, "original_tokens_per_byte": old_tokens / n_bytes}


def run_benchmark(work_dir: Optional[str | Path] = None, train_lines: int = 60000, held_lines: int = 5000,
                  big_vocab: int = 8000, small_vocab: int = 3000, shards: int = 4, repeat: int = 8,
                  workers: Optional[int] = None, out: Optional[str | Path] = RESULTS) -> dict:
    """Run the benchmark in `work_dir` (a temporary folder by default) and write the results JSON to `out`."""
    import os

    import sentencepiece as spm
    from mindspore.mindrecord import FileWriter

    from pangu_pro.io import atomic_write_json
    from pangu_pro.tokenizer.compress import compress_tokenizer
    from pangu_pro.tokenizer.counting import count_mindrecord, iter_mindrecord_chunks, save_counts
    from pangu_pro.tokenizer.sample_corpus import mixed_lines, write_corpus
    from pangu_pro.tokenizer.train import train_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(work_dir or tmp)
        corpus = write_corpus(root / "train.txt", train_lines, seed=0)
        big_path = train_tokenizer([corpus], root / "big.model", big_vocab)
        big = spm.SentencePieceProcessor(model_file=str(big_path))
        ids = big.encode(corpus.read_text(encoding="utf-8").splitlines())
        flat = np.fromiter((i for row in ids for i in row), dtype=np.int32)
        flat = np.tile(flat, repeat)  # more tokens for a steadier rate
        rows = np.array_split(flat, max(1, flat.size // 2049))
        paths = []
        for shard, part in enumerate(np.array_split(np.arange(len(rows)), shards)):
            path = root / f"packed_{shard}.mindrecord"
            writer = FileWriter(str(path), shard_num=1, overwrite=True)
            writer.add_schema({"input_ids": {"type": "int32", "shape": [-1]}}, "packed")
            writer.write_raw_data([{"input_ids": rows[i]} for i in part])
            writer.commit()
            paths.append(path)

        start = time.perf_counter()
        counts = count_mindrecord(paths, big_vocab, workers=workers or os.cpu_count(), show_progress=False)
        ours_e2e = time.perf_counter() - start
        start = time.perf_counter()
        count_mindrecord(paths, big_vocab, workers=1, show_progress=False)
        ours_one = time.perf_counter() - start
        start = time.perf_counter()
        chunks = [c for p in paths for c in iter_mindrecord_chunks(p)]
        read_time = time.perf_counter() - start
        start = time.perf_counter()
        baseline = _dict_count(chunks)
        dict_time = time.perf_counter() - start
        start = time.perf_counter()
        counted = np.zeros(big_vocab, dtype=np.int64)
        for chunk in chunks:
            counted += np.bincount(chunk, minlength=big_vocab)
        bincount_time = time.perf_counter() - start
        assert baseline == {i: int(c) for i, c in enumerate(counts) if c} and np.array_equal(counted, counts)
        total = int(counts.sum())
        counting = {
            "tokens": total, "shards": shards, "workers": workers or os.cpu_count(),
            "ours_end_to_end_tok_per_s": total / ours_e2e,
            "dict_end_to_end_tok_per_s": total / (read_time + dict_time),
            "end_to_end_speedup": (read_time + dict_time) / ours_e2e,
            "ours_end_to_end_one_process_tok_per_s": total / ours_one,
            "end_to_end_one_process_speedup": (read_time + dict_time) / ours_one,
            "bincount_only_tok_per_s": total / bincount_time, "dict_only_tok_per_s": total / dict_time,
            "counting_only_speedup": dict_time / bincount_time,
            "shard_read_tok_per_s": total / read_time,
        }

        save_counts(root / "counts.npy", counts // repeat, big_path, [str(p) for p in paths], "mindrecord")
        held = mixed_lines(held_lines, seed=1)
        quality = {}
        for name, closure in (("ours", True), ("naive", False)):
            result = compress_tokenizer(big_path, root / "counts.npy", root / name, vocab_size=small_vocab,
                                        closure=closure)
            small = spm.SentencePieceProcessor(model_file=str(result.model_path))
            quality[name] = {"coverage": result.selection.coverage,
                             **_segmentation(big, small, result.selection.new2old, held)}
    results = {"corpus_lines": train_lines, "held_out_lines": held_lines, "big_vocab": big_vocab,
               "small_vocab": small_vocab, "counting": counting, "compression": quality}
    if out is not None:
        atomic_write_json(out, results)
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `pangu-pro bench tokenizer`."""
    parser.add_argument("--train-lines", type=int, default=60000)
    parser.add_argument("--held-lines", type=int, default=5000)
    parser.add_argument("--big-vocab", type=int, default=8000)
    parser.add_argument("--small-vocab", type=int, default=3000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=8, help="tile the tokenized corpus this many times")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--work-dir", default=None, help="keep the models and shards here (default: temporary)")
    parser.add_argument("--out", default=str(RESULTS))


def run(args: argparse.Namespace) -> int:
    import json

    results = run_benchmark(args.work_dir, args.train_lines, args.held_lines, args.big_vocab, args.small_vocab,
                            args.shards, args.repeat, args.workers, args.out)
    print(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0
