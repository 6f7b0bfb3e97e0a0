"""Carry a checkpoint and its config over to the compact vocabulary by gathering rows through `new2old`.

Works on files and plain values (safetensors arrays, the config), never on model code.

The map must have been made from the tokenizer the checkpoint was trained with. The map's record
(`compress.load_map_info`) holds its source tokenizer's sha256; `remap_checkpoint` compares it with
the first of: the `tokenizer_sha256` the weights file records, the tokenizer passed as `tokenizer`
(`--tokenizer`), the config's `data.tokenizer`. A mismatch is refused naming the map and the other
file; when none is known the remap is refused too (pass the tokenizer). The remapped weights file
records the compact tokenizer's sha256 as `tokenizer_sha256`, and the remapped config's
`data.tokenizer` names the compact tokenizer, so the Hugging Face export can check what it ships.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from pangu_pro.config import Config, load_config, replace_model, save_config
from pangu_pro.io import WEIGHTS_NAME, file_sha256, resolve_weights
from pangu_pro.tensors import load_tensors, save_tensors
from pangu_pro.tokenizer.vocab import old2new_array

EMBEDDING = "model.embed_tokens.weight"
LM_HEAD = "lm_head.weight"
TOKENIZER_DIGEST = "tokenizer_sha256"  # safetensors metadata key: the tokenizer these weights expect


def remap_tensors(tensors: Mapping[str, np.ndarray], new2old: np.ndarray, old_vocab_size: int,
                  source: str = "checkpoint") -> dict[str, np.ndarray]:
    """Gather the embedding and (if present) LM-head rows through `new2old`; copy the rest unchanged."""
    if EMBEDDING not in tensors:
        raise ValueError(f"{source}: no tensor named {EMBEDDING!r}")
    out = dict(tensors)
    for name in (EMBEDDING, LM_HEAD):
        if name not in tensors:
            continue
        table = tensors[name]
        if table.ndim != 2 or table.shape[0] != old_vocab_size:
            raise ValueError(f"{source}: {name} has shape {table.shape}, expected ({old_vocab_size}, d)")
        if int(new2old.max()) >= old_vocab_size:
            raise ValueError(f"{source}: new2old refers to id {int(new2old.max())}, but the vocabulary has "
                             f"{old_vocab_size} rows")
        out[name] = np.ascontiguousarray(table[new2old])
    return out


def remap_config(config: Config, new2old: np.ndarray) -> Config:
    """`config` with vocab_size = len(new2old) and the pad/bos/eos ids remapped; fails if one is dropped."""
    old2new = old2new_array(new2old, max(config.model.vocab_size, int(new2old.max()) + 1))
    changes = {"vocab_size": int(new2old.size)}
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        old = getattr(config.model, name)
        new = int(old2new[old]) if 0 <= old < old2new.size else -1
        if new < 0:
            raise ValueError(f"{config.source or 'config'}: model.{name} = {old} is not kept by the id map")
        changes[name] = new
    return replace_model(config, **changes)


def checkpoint_tokenizer(metadata: Mapping[str, str], weights: Path, config: Config, config_path: str | Path,
                         tokenizer: Optional[str | Path] = None) -> tuple[str, str]:
    """(sha256, where it comes from) of the tokenizer the checkpoint was trained with (module doc)."""
    if metadata.get(TOKENIZER_DIGEST):
        return metadata[TOKENIZER_DIGEST], f"the tokenizer {weights} records"
    if tokenizer is not None:
        return file_sha256(tokenizer), str(tokenizer)
    named = config.data.tokenizer
    if named and Path(named).is_file():
        return file_sha256(named), f"{named} ({config_path}: data.tokenizer)"
    raise ValueError(f"cannot tell which tokenizer {weights} was trained with: {config_path} has no data.tokenizer "
                     f"file and the weights record none; pass the tokenizer (--tokenizer BIG.model)")


def check_map_source(info: Mapping, map_path: str | Path, digest: str, where: str) -> None:
    """Refuse an id map made from another tokenizer than the checkpoint's."""
    if info["source_sha256"] != digest:
        raise ValueError(f"{map_path} was made from {info.get('source_tokenizer', 'another tokenizer')} (sha256 "
                         f"{info['source_sha256'][:12]}…), not from {where} (sha256 {digest[:12]}…): this map "
                         "belongs to another tokenizer")


def remap_checkpoint(checkpoint: str | Path, config_path: str | Path, new2old: np.ndarray,
                     out_checkpoint: str | Path, out_config: str | Path, *, map_path: str | Path | None = None,
                     tokenizer: str | Path | None = None) -> Config:
    """Write the remapped checkpoint (metadata kept) and config; returns the new config. With `map_path`
    (the map's .npy or .json) the map's source tokenizer is checked first (module doc)."""
    config = load_config(config_path)
    new_config = remap_config(config, new2old)
    path = resolve_weights(checkpoint)
    tensors, metadata = load_tensors(path)
    metadata = dict(metadata)
    if map_path is not None:
        from pangu_pro.tokenizer.compress import load_map_info

        info = load_map_info(map_path)
        check_map_source(info, map_path, *checkpoint_tokenizer(metadata, path, config, config_path, tokenizer))
        if info.get("new_vocab_size") not in (None, int(new2old.size)):
            raise ValueError(f"{map_path}: its record says {info['new_vocab_size']} ids, the map holds {new2old.size}")
        metadata[TOKENIZER_DIGEST] = info["compact_sha256"]
        new_config = dataclasses.replace(new_config, data=dataclasses.replace(
            new_config.data, tokenizer=info["compact_tokenizer"]))
    remapped = remap_tensors(tensors, new2old, config.model.vocab_size, str(path))
    out_checkpoint = Path(out_checkpoint)
    if out_checkpoint.suffix != ".safetensors":
        out_checkpoint = out_checkpoint / WEIGHTS_NAME
    save_tensors(out_checkpoint, remapped, metadata)
    save_config(new_config, out_config)
    return new_config
