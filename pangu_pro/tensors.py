"""The safetensors checkpoint format shared by every stage.

A checkpoint file is a safetensors file mapping parameter names (as MindSpore names them, e.g.
``model.layers.0.attention.wq.weight``) to fp32 arrays, with string metadata. It is written atomically
with its SHA-256 digest beside it and checked against that digest when it is read (`pangu_pro.digests`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from pangu_pro.digests import atomic_digested_path, verify


def save_tensors(path: str | Path, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> None:
    """Write numpy arrays as one safetensors file, atomically, with its SHA-256 digest beside it."""
    from safetensors.numpy import save_file

    arrays = {name: np.require(value, requirements="C") for name, value in tensors.items()}  # keeps 0-d shapes
    with atomic_digested_path(path) as tmp:
        save_file(arrays, str(tmp), metadata=dict(metadata or {}))


def load_tensors(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file into numpy arrays and its metadata, after checking its digest
    (`pangu_pro.digests.verify`); errors name the file."""
    from safetensors import safe_open

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
