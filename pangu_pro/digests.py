"""SHA-256 digests of checkpoint files: written with each file, checked on every load.

Every checkpoint file we write (``model.safetensors``, ``optimizer.safetensors``, ``state.json``, a
standalone weights file, a converted shard) gets a sidecar ``<name>.sha256`` in ``sha256sum`` format
(``<hex>  <name>``), so ``sha256sum -c model.safetensors.sha256`` checks it too. `atomic_digested_path`
writes it: the digest is taken from the finished temporary file, any old sidecar is removed before
the file is renamed into place, and the new sidecar is written (atomically) after. A killed save
therefore leaves at worst a file without a digest, never a digest of other bytes.

Loads call `verify` before reading a file. A mismatch raises `DigestMismatch` naming the file and
its checkpoint folder; a file without a sidecar (written before digests existed) loads after a
one-line note per folder. A file verified once in this process (same inode, size and mtime) is not
hashed again, so picking a resume checkpoint and then loading it reads each file once for hashing.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

from pangu_pro.io import WEIGHTS_NAME, atomic_path, atomic_write_text, file_sha256

SUFFIX = ".sha256"
OK, UNRECORDED = "ok", "unrecorded"

_verified: dict[str, tuple[int, int, int, int]] = {}  # path -> stat signature of the bytes it was verified with
_noted: set[str] = set()


class DigestMismatch(ValueError):
    """A checkpoint file's bytes no longer match the digest written with it."""


def digest_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + SUFFIX)


@contextmanager
def atomic_digested_path(path: str | Path) -> Iterator[Path]:
    """`io.atomic_path` whose finished file gets its SHA-256 recorded beside it."""
    with atomic_path(path) as tmp:
        yield tmp
        digest = file_sha256(tmp)
        forget(path)  # a kill before `record` leaves no digest rather than a stale one
    record(path, digest)


def record(path: str | Path, digest: str) -> None:
    """Write `digest` as the sidecar of `path` (atomically)."""
    path = Path(path)
    atomic_write_text(digest_path(path), f"{digest}  {path.name}\n")
    _verified[str(path)] = _signature(path)


def forget(path: str | Path) -> None:
    """Remove the sidecar of `path` (before the file is replaced)."""
    digest_path(path).unlink(missing_ok=True)
    _verified.pop(str(path), None)


def seal(path: str | Path) -> str:
    """Hash `path` and record its digest (for a file written without `atomic_digested_path`: one in a
    folder not yet renamed into place, or by another writer, e.g. MindSpore)."""
    digest = file_sha256(path)
    record(path, digest)
    return digest


def recorded(path: str | Path) -> str | None:
    """The digest recorded for `path`, or None when it has no sidecar."""
    side = digest_path(path)
    if not side.is_file():
        return None
    try:
        text = side.read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError) as err:
        raise DigestMismatch(f"{side}: unreadable digest file ({err}); checkpoint {Path(path).parent} "
                             "cannot be verified") from None
    if not text or len(text[0]) != 64 or any(c not in "0123456789abcdef" for c in text[0]):
        raise DigestMismatch(f"{side}: not a SHA-256 digest file; checkpoint {Path(path).parent} cannot be verified")
    return text[0]


def verify(path: str | Path, note: Callable[[str], None] | None = None) -> str:
    """Check `path` against its sidecar: `OK`, or `UNRECORDED` (no sidecar; noted once per folder).

    Raises DigestMismatch (naming the file and its checkpoint folder) when the bytes differ."""
    path = Path(path)
    expected = recorded(path)
    if expected is None:
        folder = str(path.parent.resolve())
        if folder not in _noted:
            _noted.add(folder)
            (note or _stderr)(f"note: {path}: written without a SHA-256 digest (before pangu-pro recorded "
                              "them); loaded unverified")
        return UNRECORDED
    signature = _signature(path)
    if _verified.get(str(path)) == signature:
        return OK
    actual = file_sha256(path)
    if actual != expected:
        raise DigestMismatch(f"{path}: SHA-256 mismatch (recorded {expected[:16]}…, the file now hashes to "
                             f"{actual[:16]}…): the file changed after it was written; checkpoint "
                             f"{path.parent} is damaged")
    _verified[str(path)] = signature
    return OK


def checkpoint_files(folder: str | Path) -> list[Path]:
    """The files of a checkpoint folder that carry (or should carry) a digest."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and not p.name.endswith(SUFFIX))


def verify_folder(folder: str | Path, note: Callable[[str], None] | None = None) -> dict[str, str]:
    """Verify every file of a checkpoint folder: file name -> `OK` / `UNRECORDED`.

    Raises DigestMismatch for a changed file, or for a digest whose file is gone."""
    folder = Path(folder)
    for side in sorted(folder.glob("*" + SUFFIX)):
        if not side.with_name(side.name[:-len(SUFFIX)]).is_file():
            raise DigestMismatch(f"{side}: the file it describes is missing; checkpoint {folder} is incomplete")
    return {p.name: verify(p, note) for p in checkpoint_files(folder)}


def checkpoint_folders(root: str | Path) -> Iterable[Path]:
    """Folders under `root` (itself included) that hold a checkpoint or digested files, sorted."""
    root = Path(root)
    for folder in sorted({root, *(p for p in root.rglob("*") if p.is_dir())}):
        if any(part.startswith(".") for part in folder.relative_to(root).parts):  # .tmp-/.trash- leftovers
            continue
        if (folder / WEIGHTS_NAME).is_file() or (folder / "state.json").is_file() or any(folder.glob("*" + SUFFIX)):
            yield folder


def verify_tree(path: str | Path) -> list[tuple[Path, str, str]]:
    """Verify one file, one checkpoint folder or every checkpoint under a run directory.

    Returns (folder or file, status, detail) with status "ok", "unrecorded" (no digests: written
    before they existed) or "damaged" (the DigestMismatch message)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    targets = [path] if path.is_file() else list(checkpoint_folders(path))
    if not targets:
        raise FileNotFoundError(f"{path}: holds no checkpoint (no {SUFFIX} digests, model.safetensors or state.json)")
    results = []
    for target in targets:
        try:
            if target.is_file():
                statuses = {target.name: verify(target, note=lambda _: None)}
            else:
                statuses = verify_folder(target, note=lambda _: None)
        except DigestMismatch as err:
            results.append((target, "damaged", str(err)))
            continue
        missing = sorted(name for name, status in statuses.items() if status == UNRECORDED)
        checked = len(statuses) - len(missing)
        if missing and not checked:
            results.append((target, UNRECORDED, f"{len(missing)} file(s) without digests"))
        else:
            extra = f"; without digests: {', '.join(missing)}" if missing else ""
            results.append((target, OK, f"{checked} file(s) match their digests{extra}"))
    return results


def _signature(path: Path) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)
