"""Token-id frequencies of a corpus: packed MindRecord shards, or raw text tokenized on the fly.

Counting is vectorised: ids come in batches of rows and are counted with ``np.bincount``. MindRecord
shards are read by MindSpore's own C++ dataset pipeline (``MindDataset`` + ``padded_batch``), several
shards at once, so reading and batching run outside the GIL and a shard costs one Python step per
few hundred rows. Python-level readers did not scale: a row-by-row ``FileReader`` loop is
GIL-bound (two threads were slower than one), and spawned processes pay a MindSpore import each
(benchmarks/results/tokenizer.json records the comparison).
Raw text is encoded by SentencePiece's own thread pool. The result is an int64 array of length vocab, saved as
``.npy`` with a JSON sidecar naming the tokenizer (path and SHA-256) and the totals.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from pangu_pro.io import atomic_path, atomic_write_json, file_sha256, read_json

BATCH_ROWS = 256  # rows per pipeline batch
PAD_ID = np.iinfo(np.int32).min  # pads ragged batches; never a token id
MINDRECORD_COLUMN = "input_ids"


def bincount_chunks(chunks: Iterable[np.ndarray], vocab_size: int, source: str = "") -> np.ndarray:
    """Sum of ``np.bincount`` over integer id arrays; ids outside [0, vocab_size) raise ValueError."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for chunk in chunks:
        if chunk.size == 0:
            continue
        low, high = int(chunk.min()), int(chunk.max())
        if low < 0 or high >= vocab_size:
            bad = low if low < 0 else high
            raise ValueError(f"{source or 'input'}: token id {bad} is outside the vocabulary [0, {vocab_size})")
        counts += np.bincount(chunk, minlength=vocab_size)
    return counts


def is_mindrecord(path: str | Path) -> bool:
    """A MindRecord shard has a `<name>.db` index beside it."""
    return Path(f"{path}.db").is_file()


def iter_mindrecord_batches(path: str | Path, workers: int = 1, rows: int = BATCH_ROWS) -> Iterator[np.ndarray]:
    """The `input_ids` of one MindRecord shard, `rows` rows at a time, flat. MindSpore's pipeline reads
    and batches with `workers` threads; rows of different lengths are padded with PAD_ID, which is
    dropped here (no tokenizer gives the id -2**31)."""
    import mindspore.dataset as ds

    data = ds.MindDataset([str(path)], columns_list=[MINDRECORD_COLUMN], num_parallel_workers=workers,
                          shuffle=False)
    data = data.padded_batch(rows, drop_remainder=False, num_parallel_workers=workers,
                             pad_info={MINDRECORD_COLUMN: (None, PAD_ID)})
    for (ids,) in data.create_tuple_iterator(output_numpy=True, num_epochs=1):
        flat = ids.reshape(-1)
        if flat.size and flat.min() == PAD_ID:  # a ragged batch: padding to drop
            flat = flat[flat != PAD_ID]
        yield flat


def count_mindrecord(paths: Sequence[str | Path], vocab_size: int, workers: Optional[int] = None,
                     show_progress: bool = True) -> np.ndarray:
    """Counts over MindRecord shards: `workers` shards at a time (all cores by default), each read by
    its own pipeline of `workers` threads (the threads mostly wait in C++, so this oversubscription
    measured faster than one thread per core); progress in tokens. An id outside the vocabulary
    names its shard."""
    from pangu_pro.progress import progress_bar

    paths = [str(p) for p in paths]
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: MindRecord shard not found")
    workers = max(1, workers or os.cpu_count() or 1)
    lock = threading.Lock()

    with progress_bar(desc="counting", unit="tok", unit_scale=True, disable=not show_progress) as bar:
        def count_shard(path: str) -> np.ndarray:
            counts = np.zeros(vocab_size, dtype=np.int64)
            for ids in iter_mindrecord_batches(path, workers):
                counts += bincount_chunks([ids], vocab_size, path)
                with lock:
                    bar.update(ids.size)
            return counts

        with ThreadPoolExecutor(min(workers, len(paths)) or 1) as pool:
            return sum(pool.map(count_shard, paths), np.zeros(vocab_size, dtype=np.int64))


def count_text(paths: Sequence[str | Path], model_path: str | Path, workers: Optional[int] = None,
               lines_per_chunk: int = 20000, show_progress: bool = True) -> np.ndarray:
    """Counts of the ids SentencePiece model `model_path` gives the lines of text files `paths`."""
    import sentencepiece as spm
    from pangu_pro.progress import progress_bar

    processor = spm.SentencePieceProcessor(model_file=str(model_path))
    vocab_size = processor.get_piece_size()
    threads = workers or os.cpu_count() or 1
    total_bytes = 0
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: text file not found")
        total_bytes += Path(path).stat().st_size
    counts = np.zeros(vocab_size, dtype=np.int64)
    with progress_bar(total=total_bytes, desc="counting", unit="B", unit_scale=True, disable=not show_progress) as bar:
        for path in paths:
            with open(path, encoding="utf-8") as handle:
                while True:
                    lines = [line.rstrip("\n") for _, line in zip(range(lines_per_chunk), handle)]
                    if not lines:
                        break
                    pieces = processor.encode(lines, num_threads=threads)
                    flat = np.fromiter((i for ids in pieces for i in ids), dtype=np.int64)
                    counts += bincount_chunks([flat], vocab_size, str(path))
                    bar.update(sum(len(line.encode("utf-8")) + 1 for line in lines))
    return counts


@dataclass(frozen=True)
class CountsFile:
    counts: np.ndarray
    info: dict


def sidecar_path(counts_path: str | Path) -> Path:
    return Path(counts_path).with_suffix(".json")


def save_counts(path: str | Path, counts: np.ndarray, tokenizer: str | Path, sources: Sequence[str],
                source_format: str) -> dict:
    """Write `counts` to `path` (.npy, int64) and the sidecar `<path stem>.json`; returns the sidecar."""
    path = Path(path)
    if path.suffix != ".npy":
        raise ValueError(f"{path}: the counts file must end in .npy")
    counts = np.asarray(counts, dtype=np.int64)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, counts)
    info = {"tokenizer": str(tokenizer), "tokenizer_sha256": file_sha256(tokenizer), "vocab_size": int(counts.size),
            "total_tokens": int(counts.sum()), "distinct_tokens": int(np.count_nonzero(counts)),
            "format": source_format, "sources": [str(s) for s in sources]}
    atomic_write_json(sidecar_path(path), info)
    return info


def load_counts(path: str | Path, tokenizer: Optional[str | Path] = None) -> CountsFile:
    """Read a counts file; with `tokenizer`, check the sidecar says it was counted with that model."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: counts file not found")
    counts = np.load(path)
    if counts.ndim != 1 or counts.dtype.kind not in "iu":
        raise ValueError(f"{path}: expected a 1-D integer array, got {counts.dtype} {counts.shape}")
    side = sidecar_path(path)
    info = read_json(side) if side.is_file() else {}
    if tokenizer is not None and info.get("tokenizer_sha256"):
        sha = file_sha256(tokenizer)
        if sha != info["tokenizer_sha256"]:
            raise ValueError(f"{path}: counted with tokenizer {info.get('tokenizer')} (sha256 "
                             f"{info['tokenizer_sha256'][:12]}…), not with {tokenizer} (sha256 {sha[:12]}…)")
    return CountsFile(counts.astype(np.int64), info)
