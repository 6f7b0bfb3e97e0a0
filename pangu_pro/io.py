"""Atomic file writes and the safetensors checkpoint format shared by every stage.

A checkpoint is a safetensors file mapping parameter names (as MindSpore names them, e.g.
``model.layers.0.attention.wq.weight``) to fp32 arrays, with string metadata. Files are written to a
temporary name in the same folder and renamed, so a killed job never leaves a half-written file.
Checkpoint files also get a SHA-256 digest beside them, checked when they are read (`pangu_pro.digests`).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | Path, digest: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    With `digest`, the finished file's SHA-256 is recorded beside it (`pangu_pro.digests`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp
        if digest:
            from pangu_pro import digests

            value = file_sha256(tmp)
            digests.forget(path)  # a kill before `record` leaves no digest rather than a stale one
        os.replace(tmp, path)
        if digest:
            digests.record(path, value)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str, digest: bool = False) -> None:
    with atomic_path(path, digest) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | Path, data, digest: bool = False) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n", digest)


def read_json(path: str | Path, verify: bool = False):
    """Parse a JSON file; errors name the file (and line). With `verify`, check its digest first."""
    path = Path(path)
    if verify:
        from pangu_pro.digests import verify as verify_digest

        verify_digest(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON (line {err.lineno} column {err.colno}: {err.msg})") from None
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply to read") from None


def save_tensors(path: str | Path, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> None:
    """Write numpy arrays as one safetensors file, atomically, with its SHA-256 digest beside it."""
    from safetensors.numpy import save_file

    arrays = {name: np.require(value, requirements="C") for name, value in tensors.items()}  # keeps 0-d shapes
    with atomic_path(path, digest=True) as tmp:
        save_file(arrays, str(tmp), metadata=dict(metadata or {}))


WEIGHTS_NAME = "model.safetensors"


def resolve_weights(path: str | Path) -> Path:
    """The weights file for `path`: the file itself, or `model.safetensors` inside a checkpoint folder."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no weights file (expected a .safetensors file or a checkpoint "
                                f"folder holding {WEIGHTS_NAME})")
    return path


def load_tensors(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file into numpy arrays and its metadata, after checking its digest
    (`pangu_pro.digests.verify`); errors name the file."""
    from safetensors import safe_open

    from pangu_pro.digests import verify

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    verify(path)
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as err:  # safetensors raises several types for a damaged file
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
    return tensors, metadata


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (identifies tokenizers and weights in manifests)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
