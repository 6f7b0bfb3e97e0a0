"""Carry a checkpoint and its config over to the compact vocabulary by gathering rows through `new2old`."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from pangu_pro.config import Config, load_config, replace_model, save_config
from pangu_pro.io import load_tensors, save_tensors
from pangu_pro.model.weights import WEIGHTS_NAME, resolve_weights
from pangu_pro.tokenizer.vocab import old2new_array

EMBEDDING = "model.embed_tokens.weight"
LM_HEAD = "lm_head.weight"


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


def remap_checkpoint(checkpoint: str | Path, config_path: str | Path, new2old: np.ndarray,
                     out_checkpoint: str | Path, out_config: str | Path) -> Config:
    """Write the remapped checkpoint (metadata kept) and config; returns the new config."""
    config = load_config(config_path)
    new_config = remap_config(config, new2old)
    path = resolve_weights(checkpoint)
    tensors, metadata = load_tensors(path)
    remapped = remap_tensors(tensors, new2old, config.model.vocab_size, str(path))
    out_checkpoint = Path(out_checkpoint)
    if out_checkpoint.suffix != ".safetensors":
        out_checkpoint = out_checkpoint / WEIGHTS_NAME
    save_tensors(out_checkpoint, remapped, metadata)
    save_config(new_config, out_config)
    return new_config
