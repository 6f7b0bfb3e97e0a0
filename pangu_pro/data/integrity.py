"""A cheap check of every MindRecord shard before training reads it, and shard names on read errors.

A shard copied half-way, or its index lost, otherwise stops a run with MindSpore's C++ message and no
file name, possibly hours in. What a MindRecord shard is (MindSpore's `shard_header` / `shard_writer`):

    SHARD                 8 bytes: the header's length n (little-endian uint64), then n bytes of JSON
                          (header_size, page_size, page: [{page_id, page_type, page_size, start_row_id,
                          end_row_id}, ...], shard_addresses, schema); the header region takes
                          header_size bytes; page k starts at header_size + k * page_size, and the last
                          page is cut to its own page_size. So the file is exactly
                          header_size + page_size * last_id + page[last_id].page_size bytes.
    SHARD.db              the SQLite index beside it: table SHARD_NAME (the shard's file name) and
                          INDEXES (one row per sample: ROW_ID, page ids and offsets)

`check_shards` reads the first bytes of each shard and of its index and makes two indexed queries:
milliseconds per shard whatever its size, so it runs on every dataset opening (and is remembered
per file size and modification time). It finds a truncated or over-long shard, a header that is not
MindRecord's, a missing, truncated or foreign `.db`, and an index that counts other samples than the
header. Damage inside a page (flipped bits) needs a full read and is not looked for.

`name_read_errors` wraps a dataset iterator: when a read fails later in the run (a file changed or a
disk failed under the job), it checks the shards again and names the damaged one.
"""
from __future__ import annotations

import json
import os
import sqlite3
import struct
from contextlib import closing
from pathlib import Path
from typing import Iterator, Sequence

MAX_HEADER = 1 << 30  # a header longer than this is a damaged length field, not a header
_checked: dict[tuple, list[str]] = {}


class DamagedShardError(ValueError):
    """One or more MindRecord shards are damaged; the message names each and what is wrong."""


def _header(path: Path, size: int) -> dict:
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ValueError(f"{size} bytes: too short for a MindRecord header")
        length = struct.unpack("<Q", head)[0]
        if not 0 < length <= min(MAX_HEADER, size - 8):
            raise ValueError(f"corrupt header: its length field says {length} bytes in a {size}-byte file")
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"corrupt header: not MindRecord's JSON header ({err})") from None
    if not isinstance(header, dict) or not all(key in header for key in ("header_size", "page_size", "page")):
        raise ValueError("corrupt header: no header_size, page_size and page list")
    return header


def _expected_size(header: dict) -> tuple[int, int]:
    """(file size the header describes, samples it holds)."""
    pages = header["page"]
    if not pages:
        return int(header["header_size"]), 0
    last = max(pages, key=lambda page: page["page_id"])
    size = int(header["header_size"]) + int(header["page_size"]) * int(last["page_id"]) + int(last["page_size"])
    return size, max(int(page["end_row_id"]) for page in pages)


def _index_problem(shard: Path, rows: int) -> str | None:
    db = Path(f"{shard}.db")
    if not db.is_file():
        return f"its index {db.name} is missing (MindRecord writes SHARD.db beside each shard; copy it too)"
    with open(db, "rb") as handle:
        head = handle.read(100)
    if len(head) < 100 or not head.startswith(b"SQLite format 3\0"):
        return f"its index {db.name} is not an SQLite file"
    page_size = struct.unpack(">H", head[16:18])[0]
    page_size = 65536 if page_size == 1 else page_size
    pages, counter, valid_for = (struct.unpack(">I", head[i:i + 4])[0] for i in (28, 24, 92))
    size = db.stat().st_size
    if counter == valid_for and size < pages * page_size:
        return f"its index {db.name} is truncated ({size} bytes, its header says {pages * page_size})"
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro&immutable=1", uri=True)) as conn:
            names = [row[0] for row in conn.execute("SELECT NAME FROM SHARD_NAME")]
            last_row = conn.execute("SELECT MAX(ROW_ID) FROM INDEXES").fetchone()[0]
    except sqlite3.DatabaseError as err:
        return f"its index {db.name} cannot be read ({err})"
    if names != [shard.name]:
        return f"its index {db.name} belongs to {names[:1] or 'no shard'}, not to {shard.name}"
    indexed = 0 if last_row is None else int(last_row) + 1
    if indexed != rows:
        return f"its index {db.name} lists {indexed} samples, the shard's header {rows}"
    return None


def shard_problem(path: str | Path) -> str | None:
    """What is wrong with one shard (and its `.db`), or None."""
    path = Path(path)
    try:
        size = path.stat().st_size
        header = _header(path, size)
        expected, rows = _expected_size(header)
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    except (ValueError, KeyError, TypeError) as err:
        return str(err) if isinstance(err, ValueError) else f"corrupt header: page list malformed ({err})"
    if size < expected:
        return f"truncated: {size} bytes, its header describes {expected} (a copy that stopped half-way?)"
    if size > expected:
        return f"{size - expected} bytes longer than its header describes ({expected}): not the shard as written"
    try:
        return _index_problem(path, rows)
    except OSError as err:
        return f"its index cannot be read ({err.strerror or err})"


def _stamp(path: str) -> tuple:
    stamps = []
    for name in (path, f"{path}.db"):
        try:
            st = os.stat(name)
            stamps.append((st.st_size, st.st_mtime_ns))
        except OSError:
            stamps.append(None)
    return (path, *stamps)


def check_shards(paths: Sequence[str], cached: bool = True) -> None:
    """Raise DamagedShardError naming every damaged shard of `paths` and what is wrong with it."""
    problems = []
    for path in paths:
        key = _stamp(str(path))
        if not cached or key not in _checked:
            problem = shard_problem(path)
            _checked[key] = [problem] if problem else []
        problems += [f"{path}: {problem}" for problem in _checked[key]]
    if problems:
        raise DamagedShardError(f"{len(problems)} of {len(paths)} MindRecord shards damaged:\n  - "
                                + "\n  - ".join(problems))


def name_read_errors(batches: Iterator, paths: list[str]) -> Iterator:
    """`batches`, but a read error (MindSpore's RuntimeError) re-checks the shard files `paths`
    (`dataset.resolve_files`) and names the damaged shard; if none looks damaged, it names the files
    with the error."""
    while True:
        try:
            item = next(batches)
        except StopIteration:
            return
        except RuntimeError as err:
            check_shards(paths, cached=False)
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            more = " ..." if len(paths) > 3 else ""
            raise DamagedShardError(f"reading the training data ({len(paths)} MindRecord files: "
                                    f"{', '.join(paths[:3])}{more}) failed: {first}") from err
        yield item
