"""Write the compact tokenizer: pruned SentencePiece model plus the `new2old` id map.

Outputs, for an output prefix ``out/compact``: ``out/compact.model`` (SentencePiece),
``out/compact.new2old.npy`` (int64, increasing: new id -> old id, so ``E_new = E_old[new2old]``)
and ``out/compact.new2old.json`` (the same map with the sizes, coverage and both models' SHA-256).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from pangu_pro.io import atomic_path, atomic_write_json, file_sha256, read_json
from pangu_pro.tokenizer.counting import load_counts
from pangu_pro.tokenizer.select import Selection, select_ids
from pangu_pro.tokenizer.vocab import compact_model_bytes, read_model_proto, vocab_from_proto


@dataclass(frozen=True)
class CompressResult:
    model_path: Path
    map_path: Path
    selection: Selection


def compress_tokenizer(model_path: str | Path, counts_path: str | Path, out_prefix: str | Path,
                       vocab_size: Optional[int] = None, coverage: Optional[float] = None,
                       closure: bool = True, keep_bracketed: bool = True) -> CompressResult:
    """Prune `model_path` to `vocab_size` pieces (or to `coverage`) by the counts in `counts_path`;
    `keep_bracketed` keeps `<…>` / `[…]` pieces as the official script does (`select.required_ids`)."""
    proto = read_model_proto(model_path)
    vocab = vocab_from_proto(proto, str(model_path))
    counts = load_counts(counts_path, tokenizer=model_path).counts
    if counts.size != len(vocab):
        raise ValueError(f"{counts_path}: {counts.size} counts, but {model_path} has {len(vocab)} pieces")
    selection = select_ids(vocab, counts, vocab_size=vocab_size, coverage=coverage, closure=closure,
                           keep_bracketed=keep_bracketed)
    out_prefix = Path(out_prefix)
    compact_path = out_prefix.with_name(out_prefix.name + ".model")
    map_path = out_prefix.with_name(out_prefix.name + ".new2old.npy")
    with atomic_path(compact_path) as tmp:
        tmp.write_bytes(compact_model_bytes(proto, selection.new2old))
    with atomic_path(map_path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, selection.new2old)
    atomic_write_json(map_path.with_suffix(".json"), {
        "source_tokenizer": str(model_path), "source_sha256": file_sha256(model_path),
        "compact_tokenizer": str(compact_path), "compact_sha256": file_sha256(compact_path),
        "old_vocab_size": len(vocab), "new_vocab_size": int(selection.new2old.size),
        "required_pieces": selection.required, "coverage": selection.coverage, "merge_closure": closure,
        "keep_bracketed": keep_bracketed,
        "new2old": selection.new2old.tolist()})
    return CompressResult(compact_path, map_path, selection)


def load_map_info(path: str | Path) -> dict:
    """The JSON written beside a `new2old` map (source and compact tokenizers with their sha256);
    `path` is the .npy map or that .json."""
    path = Path(path)
    info_path = path if path.suffix == ".json" else path.with_suffix(".json")
    if not info_path.is_file():
        raise FileNotFoundError(f"{info_path}: the id map's record (source tokenizer digest) is missing; it is "
                                f"written beside {path.with_suffix('.npy').name} by `pangu-pro tokenizer compress`")
    info = read_json(info_path)
    if "source_sha256" not in info:
        raise ValueError(f"{info_path}: no source_sha256: not an id map record of `pangu-pro tokenizer compress`")
    return info


def load_new2old(path: str | Path) -> np.ndarray:
    """Read a `new2old` map (.npy or the .json written beside it) and check it is increasing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: id map not found")
    if path.suffix == ".json":
        new2old = np.asarray(read_json(path)["new2old"], dtype=np.int64)
    else:
        new2old = np.load(path).astype(np.int64)
    if new2old.ndim != 1 or new2old.size == 0:
        raise ValueError(f"{path}: expected a non-empty 1-D id map, got shape {new2old.shape}")
    if new2old[0] < 0 or np.any(np.diff(new2old) <= 0):
        raise ValueError(f"{path}: new2old must be non-negative and strictly increasing")
    return new2old
