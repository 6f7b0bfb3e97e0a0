"""Safetensors read and written one tensor at a time, for checkpoints larger than memory.

`SafetensorsFile` parses and checks the header of a file, then reads single tensors from a memory map,
converted to fp32 (F32, F16, BF16 and F64 are understood; numpy has no bfloat16, so BF16 is widened by
bit shifting). `write_safetensors` writes the header first (shapes are known in advance) and then each
tensor as it is produced, so a shard never has to be assembled in memory. Both follow the format
specification (8-byte little-endian header length, JSON header, raw little-endian data).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from pangu_pro.digests import atomic_digested_path

NUMPY_DTYPES = {"F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}
ITEM_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
HEADER_LIMIT = 100 * 1024 * 1024  # the reference implementation refuses larger headers too
ALIGNMENT = 8


def bf16_to_fp32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def fp32_to_bf16(values: np.ndarray) -> np.ndarray:
    """fp32 -> bf16 bits with round-to-nearest-even (as torch's `.to(torch.bfloat16)`); NaN stays NaN."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    return np.where(np.isnan(values), np.uint16(0x7FC0), rounded)


def cast_for_storage(values: np.ndarray, code: str) -> np.ndarray:
    """fp32 array -> the array whose bytes are stored for dtype `code` (F32, F16 or BF16)."""
    if code == "BF16":
        return fp32_to_bf16(values)
    return np.ascontiguousarray(values, dtype=NUMPY_DTYPES[code])


class SafetensorsFile:
    """A safetensors file opened for reading tensor by tensor; errors name the file and the tensor."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        size = self.path.stat().st_size
        with open(self.path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise ValueError(f"{self.path}: not a safetensors file (shorter than 8 bytes)")
            length = int.from_bytes(prefix, "little")
            if length > min(HEADER_LIMIT, size - 8):
                raise ValueError(f"{self.path}: not a safetensors file (header length {length} is impossible)")
            try:
                header = json.loads(handle.read(length).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise ValueError(f"{self.path}: not a safetensors file (header is not JSON: {err})") from None
        if not isinstance(header, dict):
            raise ValueError(f"{self.path}: not a safetensors file (header is not a mapping)")
        self.metadata = {str(k): str(v) for k, v in (header.pop("__metadata__", None) or {}).items()}
        self.data_start = 8 + length
        data_size = size - self.data_start
        self.entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, entry in header.items():
            try:
                code, shape, (begin, end) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{self.path}: tensor {name}: malformed header entry {entry!r}") from None
            if code not in ITEM_SIZES:
                raise ValueError(f"{self.path}: tensor {name} has dtype {code}; only {sorted(ITEM_SIZES)} "
                                 "(floating point) can be converted")
            if any(d < 0 for d in shape) or not 0 <= begin <= end <= data_size \
                    or end - begin != math.prod(shape) * ITEM_SIZES[code]:
                raise ValueError(f"{self.path}: tensor {name}: data offsets {[begin, end]} do not fit shape "
                                 f"{list(shape)} of {code} in a data section of {data_size} bytes")
            self.entries[name] = (code, shape, begin, end)
        self._map = None

    def keys(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name][1]

    def dtype(self, name: str) -> str:
        return self.entries[name][0]

    def get(self, name: str) -> np.ndarray:
        """Tensor `name` as a new fp32 array."""
        if name not in self.entries:
            raise KeyError(f"{self.path}: no tensor {name}")
        code, shape, begin, end = self.entries[name]
        if self._map is None and end > begin:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self.data_start)
        raw = self._map[begin:end] if end > begin else np.zeros(0, np.uint8)
        values = raw.view(NUMPY_DTYPES[code]).reshape(shape)
        if code == "BF16":
            return bf16_to_fp32(values)
        return values.astype(np.float32)  # always a copy: the map stays read-only and may close


def write_safetensors(path: str | Path, entries: Iterable[tuple[str, tuple[int, ...], str]],
                      produce: Callable[[str], np.ndarray], metadata: dict[str, str] | None = None,
                      on_tensor: Callable[[str], None] | None = None) -> int:
    """Write tensors `(name, shape, dtype code)` to `path`, atomically (with its SHA-256 digest beside
    it, `pangu_pro.digests`), asking `produce(name)` for each.

    `produce` returns the stored array (see `cast_for_storage`); its shape and size are checked against
    the header. Returns the number of data bytes written.
    """
    entries = list(entries)
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, shape, code in entries:
        nbytes = math.prod(shape) * ITEM_SIZES[code]
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % ALIGNMENT)
    with atomic_digested_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(len(encoded).to_bytes(8, "little"))
            handle.write(encoded)
            for name, shape, code in entries:
                array = np.ascontiguousarray(produce(name))
                expected = math.prod(shape) * ITEM_SIZES[code]
                if tuple(array.shape) != tuple(shape) or array.nbytes != expected:
                    raise ValueError(f"{path}: tensor {name} came as {array.dtype} {tuple(array.shape)}, "
                                     f"the header says {code} {tuple(shape)}")
                handle.write(array.data)
                if on_tensor is not None:
                    on_tensor(name)
    return offset
