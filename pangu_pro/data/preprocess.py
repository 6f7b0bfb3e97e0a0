"""Tokenize text into packed MindRecord shards: `pangu-pro preprocess`.

Inputs
  * a text file (any suffix but those below): **one document per line**, UTF-8 (``\\r\\n`` accepted);
  * a JSON-lines file (``.jsonl``, ``.ndjson``, or ``.json`` when named explicitly): one JSON object
    per line, the document in the string field `--text-field` (default ``text``);
  * a folder: every ``.txt``, ``.text``, ``.jsonl`` and ``.ndjson`` file below it, recursively, in sorted
    path order (other files, e.g. a pretty-printed ``manifest.json``, are listed in the summary as
    ignored).

Every document becomes ``<s> text </s>`` (SentencePiece's ids of the text between the BOS and EOS ids:
LLaMA's convention, `pangu_pro.tokens`, recorded in summary.json as ``token_convention``); the token
streams of all documents, in input order, are concatenated and cut into samples of exactly ``seq_length + 1``
tokens (the last, incomplete sample is dropped and counted). Samples go to MindRecord shards
``data_00000.mindrecord, ...`` of `--shard-size` samples each, schema ``input_ids: int32 [-1]``.

A line that is not a document is skipped and counted by reason, never fatal:
  ``empty``             blank line, or an empty text field;
  ``broken_json``       not valid JSON;
  ``missing_field``     JSON that is not an object with a string field `--text-field`;
  ``undecodable_bytes`` not UTF-8 (or a JSON string with a lone surrogate).
The first few places of each reason (``file:line``) are kept in the summary.

Work is split into chunks of lines that worker processes tokenize; results are merged in input
order, so the output is the same for any `--workers`. Everything is written into a temporary folder
beside DIR that becomes DIR with one rename at the end; DIR/summary.json describes the run.

As a by-product, DIR/token_counts.npy (with its sidecar token_counts.json) holds the frequency of every
token id in the written samples, the file `pangu-pro tokenizer count DIR/*.mindrecord` would write, so
`tokenizer coverage/compress` can use it without reading the corpus a second time.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence, TypeVar

import numpy as np

from pangu_pro.io import atomic_write_json, file_sha256
from pangu_pro.tokens import CONVENTION_KEY, TOKEN_CONVENTION, document_ids
from pangu_pro.tokenizer.counting import save_counts

JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson", ".json"})
FOLDER_SUFFIXES = frozenset({".txt", ".text", ".jsonl", ".ndjson"})  # what a folder contributes
REASONS = ("empty", "broken_json", "missing_field", "undecodable_bytes")
MAX_EXAMPLES = 5  # places kept per skip reason
CHUNK_BYTES = 1 << 20  # lines per work item: big enough to amortise pickling, small enough to balance
SHARD_PREFIX = "data_"
SHARD_SUFFIX = ".mindrecord"
COUNTS_FILE = "token_counts.npy"
SCHEMA = {"input_ids": {"type": "int32", "shape": [-1]}}
WRITE_ROWS = 4096  # rows per FileWriter.write_raw_data call

T = TypeVar("T")
R = TypeVar("R")


# ---------------------------------------------------------------- inputs and parsing (pure functions)

def is_jsonl(path: Path) -> bool:
    return path.suffix.lower() in JSONL_SUFFIXES


def discover_inputs(paths: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """The input files in order (folders expanded recursively, sorted) and the folder files ignored."""
    files: list[Path] = []
    ignored: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                if child.suffix.lower() in FOLDER_SUFFIXES and not child.name.startswith("."):
                    files.append(child)
                else:
                    ignored.append(str(child))
        else:
            raise FileNotFoundError(f"{path}: input file or folder not found")
    if not files:
        raise ValueError(f"no input files in {', '.join(map(str, paths))} "
                         f"(folders are searched for {', '.join(sorted(FOLDER_SUFFIXES))})")
    return files, ignored


def parse_line(raw: bytes, jsonl: bool, text_field: str) -> tuple[Optional[str], Optional[str]]:
    """One input line (without its newline) → (document, None) or (None, skip reason)."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "undecodable_bytes"
    if not line.strip():
        return None, "empty"
    if not jsonl:
        return line, None
    try:
        record = json.loads(line)
    except ValueError:
        return None, "broken_json"
    text = record.get(text_field) if isinstance(record, dict) else None
    if not isinstance(text, str):
        return None, "missing_field"
    if not text.strip():
        return None, "empty"
    try:
        text.encode("utf-8")  # JSON "\ud800" decodes to a lone surrogate that UTF-8 cannot hold
    except UnicodeEncodeError:
        return None, "undecodable_bytes"
    return text, None


@dataclass(frozen=True)
class Chunk:
    """Consecutive lines of one input file; `first_line` is the 1-based number of lines[0]."""

    path: str
    jsonl: bool
    first_line: int
    lines: tuple[bytes, ...]

    @property
    def nbytes(self) -> int:
        return sum(len(line) + 1 for line in self.lines)


def read_chunks(files: Iterable[Path], chunk_bytes: int = CHUNK_BYTES) -> Iterator[Chunk]:
    """Split every file into chunks of whole lines (about `chunk_bytes` each), in order."""
    for path in files:
        jsonl = is_jsonl(path)
        lines: list[bytes] = []
        size = 0
        first = 1
        with open(path, "rb") as handle:
            for number, line in enumerate(handle, start=1):
                if not lines:
                    first = number
                line = line.rstrip(b"\n")
                lines.append(line[:-1] if line.endswith(b"\r") else line)
                size += len(line) + 1
                if size >= chunk_bytes:
                    yield Chunk(str(path), jsonl, first, tuple(lines))
                    lines, size = [], 0
        if lines:
            yield Chunk(str(path), jsonl, first, tuple(lines))


@dataclass
class ChunkResult:
    """Tokens of a chunk's documents (each ``<s> text </s>``) and what was skipped where."""

    tokens: np.ndarray
    documents: int
    skipped: dict[str, int]
    examples: list[tuple[str, str]]  # (reason, "file:line")
    nbytes: int


def tokenize_chunk(chunk: Chunk, encode: Callable[[list[str]], list[list[int]]], bos_id: int, eos_id: int,
                   text_field: str) -> ChunkResult:
    """Parse and encode one chunk; pure apart from `encode`."""
    docs: list[str] = []
    skipped = dict.fromkeys(REASONS, 0)
    examples: list[tuple[str, str]] = []
    for offset, raw in enumerate(chunk.lines):
        text, reason = parse_line(raw, chunk.jsonl, text_field)
        if reason is not None:
            skipped[reason] += 1
            if skipped[reason] <= MAX_EXAMPLES:
                examples.append((reason, f"{chunk.path}:{chunk.first_line + offset}"))
        else:
            docs.append(text)
    pieces = [np.asarray(document_ids(ids, bos_id, eos_id), dtype=np.int32) for ids in encode(docs)]
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
    return ChunkResult(tokens, len(docs), skipped, examples, chunk.nbytes)


class Packer:
    """Cuts a token stream into rows of exactly `length` tokens, carrying the rest to the next call."""

    def __init__(self, length: int):
        self.length = length
        self.carry = np.zeros(0, dtype=np.int32)

    def add(self, tokens: np.ndarray) -> np.ndarray:
        """Append `tokens`; return the complete rows now available, shape [k, length]."""
        stream = np.concatenate([self.carry, tokens]) if self.carry.size else tokens
        rows = stream.size // self.length
        self.carry = stream[rows * self.length:].copy()
        return stream[:rows * self.length].reshape(rows, self.length)


# ------------------------------------------------------------------------------------ workers

_ENCODE: Optional[Callable[[list[str]], list[list[int]]]] = None


def _init_worker(model_file: str) -> None:
    """Load the SentencePiece model once per process."""
    import sentencepiece as spm

    global _ENCODE
    processor = spm.SentencePieceProcessor(model_file=model_file)
    _ENCODE = lambda docs: processor.encode(docs, out_type=int, add_bos=False, add_eos=False, num_threads=1)


def _work(job: tuple[Chunk, int, int, str]) -> ChunkResult:
    chunk, bos_id, eos_id, text_field = job
    return tokenize_chunk(chunk, _ENCODE, bos_id, eos_id, text_field)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int,
                initializer: Callable[..., None], initargs: tuple) -> Iterator[R]:
    """`map(fn, items)` over `workers` processes, results in input order, at most a few items in flight.

    (`Pool.imap` would read the whole input ahead into memory.)
    """
    if workers <= 1:
        initializer(*initargs)
        yield from map(fn, items)
        return
    # spawn: the parent may hold MindSpore threads, which a fork would copy in an unknown state
    with multiprocessing.get_context("spawn").Pool(workers, initializer, initargs) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.apply_async(fn, (item,)))
            if len(pending) >= 4 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


# ------------------------------------------------------------------------------------ output

class ShardWriter:
    """Writes rows into MindRecord files of `shard_size` rows: data_00000.mindrecord, ..."""

    def __init__(self, folder: Path, shard_size: int):
        self.folder = folder
        self.shard_size = shard_size
        self.shards: list[dict] = []  # {"file", "samples"}
        self._writer = None
        self._pending: list[np.ndarray] = []

    def _open(self) -> None:
        from mindspore.mindrecord import FileWriter

        name = f"{SHARD_PREFIX}{len(self.shards):05d}{SHARD_SUFFIX}"
        self._writer = FileWriter(str(self.folder / name), shard_num=1, overwrite=False)
        # The defaults (16 MB header, 32 MB pages) make every small shard a 48 MB sparse file.
        self._writer.set_header_size(1 << 20)
        self._writer.set_page_size(1 << 24)
        self._writer.add_schema(SCHEMA, "packed token ids, seq_length + 1 per sample")
        self.shards.append({"file": name, "samples": 0})

    def _flush(self) -> None:
        if self._pending:
            self._writer.write_raw_data([{"input_ids": row} for row in self._pending])
            self._pending = []

    def write(self, rows: np.ndarray) -> None:
        for row in rows:
            if self._writer is None:
                self._open()
            self._pending.append(row)
            self.shards[-1]["samples"] += 1
            if len(self._pending) >= WRITE_ROWS:
                self._flush()
            if self.shards[-1]["samples"] == self.shard_size:
                self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._flush()
            self._writer.commit()
            self._writer = None


def _looks_like_output(folder: Path) -> bool:
    return (folder / "summary.json").is_file()


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty DIR unless --overwrite, and never delete a folder we did not write."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"{out}: folder is not empty; pass --overwrite to replace it")
        if not _looks_like_output(out):
            raise ValueError(f"{out}: not replacing a folder that has no summary.json (it was not written "
                             f"by `pangu-pro preprocess`); remove it yourself")


def _publish(tmp: Path, out: Path) -> None:
    """Put the finished `tmp` folder at `out`, replacing a previous output."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)


# ------------------------------------------------------------------------------------ driver

@dataclass
class PreprocessResult:
    summary: dict
    seconds: float


def preprocess(inputs: Sequence[str | Path], tokenizer: str | Path, seq_length: int, out: str | Path, *,
               shard_size: int = 8192, workers: Optional[int] = None, text_field: str = "text",
               overwrite: bool = False, progress: bool = True, chunk_bytes: int = CHUNK_BYTES) -> PreprocessResult:
    """Tokenize, pack and write `inputs` to `out`; return the summary (also written to out/summary.json).

    `chunk_bytes` is the size of one work item; it changes the speed, never the output.
    """
    import sentencepiece as spm
    from pangu_pro.progress import progress_bar

    if seq_length < 1:
        raise ValueError(f"--seq-length must be at least 1, got {seq_length}")
    if shard_size < 1:
        raise ValueError(f"--shard-size must be at least 1, got {shard_size}")
    tokenizer = Path(tokenizer)
    if not tokenizer.is_file():
        raise FileNotFoundError(f"{tokenizer}: SentencePiece model not found")
    try:
        processor = spm.SentencePieceProcessor(model_file=str(tokenizer))
    except (OSError, RuntimeError) as err:
        raise ValueError(f"{tokenizer}: not a SentencePiece model ({err})") from None
    bos_id, eos_id = processor.bos_id(), processor.eos_id()
    for name, value in (("BOS", bos_id), ("EOS", eos_id)):
        if value < 0:
            raise ValueError(f"{tokenizer}: the model has no {name} piece ({name.lower()}_id = -1); documents are "
                             f"packed as <s> text </s>, so train it with one")
    workers = workers or os.cpu_count() or 1
    out = Path(out)
    files, ignored = discover_inputs(inputs)
    check_output_dir(out, overwrite)

    start = time.perf_counter()
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        packer = Packer(seq_length + 1)
        writer = ShardWriter(tmp, shard_size)
        vocab_size = processor.get_piece_size()
        counts = np.zeros(vocab_size, dtype=np.int64)
        documents = tokens = 0
        skipped = dict.fromkeys(REASONS, 0)
        examples: dict[str, list[str]] = {reason: [] for reason in REASONS}
        jobs = ((chunk, bos_id, eos_id, text_field) for chunk in read_chunks(files, chunk_bytes))
        total = sum(path.stat().st_size for path in files)
        with progress_bar(total=total, unit="B", unit_scale=True, desc="preprocess", disable=not progress) as bar:
            for result in ordered_map(_work, jobs, workers, _init_worker, (str(tokenizer),)):
                documents += result.documents
                tokens += int(result.tokens.size)
                for reason, count in result.skipped.items():
                    skipped[reason] += count
                for reason, place in result.examples:
                    if len(examples[reason]) < MAX_EXAMPLES:
                        examples[reason].append(place)
                rows = packer.add(result.tokens)
                counts += np.bincount(rows.reshape(-1), minlength=vocab_size)
                writer.write(rows)
                bar.update(result.nbytes)
        writer.close()
        if documents == 0:
            raise ValueError(no_documents(files, text_field, skipped))
        save_counts(tmp / COUNTS_FILE, counts, tokenizer, [str(out / shard["file"]) for shard in writer.shards],
                    "mindrecord")
        samples = sum(shard["samples"] for shard in writer.shards)
        summary = {
            "inputs": [{"path": str(p), "format": "jsonl" if is_jsonl(p) else "text", "bytes": p.stat().st_size}
                       for p in files],
            "ignored_files": ignored,
            "tokenizer": {"path": str(tokenizer), "sha256": file_sha256(tokenizer),
                          "vocab_size": processor.get_piece_size(), "bos_id": bos_id, "eos_id": eos_id},
            CONVENTION_KEY: TOKEN_CONVENTION,
            "text_field": text_field,
            "seq_length": seq_length,
            "sample_length": seq_length + 1,
            "documents": documents,
            "tokens": tokens,
            "samples": samples,
            "tokens_in_samples": samples * (seq_length + 1),
            "dropped_tail_tokens": int(packer.carry.size),
            "skipped": skipped,
            "skipped_total": sum(skipped.values()),
            "skipped_examples": {reason: places for reason, places in examples.items() if places},
            "shard_size": shard_size,
            "shards": writer.shards,
            "token_counts": COUNTS_FILE,
        }
        atomic_write_json(tmp / "summary.json", summary)
        _publish(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return PreprocessResult(summary, time.perf_counter() - start)


def no_documents(files: Sequence[Path], text_field: str, skipped: dict[str, int], lines: int = 5) -> str:
    """Why a run found no document: the skip counts, and for JSON lines the fields the first lines have."""
    counts = ", ".join(f"{reason} {n}" for reason, n in skipped.items() if n) or "the input is empty"
    message = f"no documents in {', '.join(map(str, files[:3]))} (skipped lines: {counts}); nothing written"
    fields: dict[str, None] = {}
    for path in files:
        if not is_jsonl(path):
            continue
        with open(path, "rb") as handle:
            for _, raw in zip(range(lines), handle):
                try:
                    record = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    fields.update(dict.fromkeys(map(str, record)))
    if fields:
        message += (f"; --text-field is {text_field!r} but the first lines have the fields "
                    f"{', '.join(repr(f) for f in fields)}")
    return message


def format_summary(summary: dict, seconds: float) -> str:
    """The human-readable summary printed at the end of a run."""
    lines = [
        f"documents {summary['documents']:,}  tokens {summary['tokens']:,}  "
        f"samples {summary['samples']:,} x {summary['sample_length']}  shards {len(summary['shards'])}",
        f"dropped tail tokens {summary['dropped_tail_tokens']:,}",
        "skipped lines: " + (", ".join(f"{reason} {count:,}" for reason, count in summary["skipped"].items())),
    ]
    for reason, places in summary["skipped_examples"].items():
        lines.append(f"  {reason}: e.g. {', '.join(places)}")
    if summary["ignored_files"]:
        lines.append(f"ignored {len(summary['ignored_files'])} files without a text/JSON-lines suffix")
    rate = summary["tokens"] / seconds if seconds > 0 else float("inf")
    lines.append(f"{seconds:.1f} s, {rate:,.0f} tokens/s")
    return "\n".join(lines)


def preprocess_command(args) -> int:
    """`pangu-pro preprocess ...`."""
    result = preprocess(args.inputs, args.tokenizer, args.seq_length, args.out, shard_size=args.shard_size,
                        workers=args.workers, text_field=args.text_field, overwrite=args.overwrite,
                        progress=not args.quiet)
    print(format_summary(result.summary, result.seconds))
    print(f"wrote {Path(args.out) / 'summary.json'}", file=sys.stderr)
    return 0
