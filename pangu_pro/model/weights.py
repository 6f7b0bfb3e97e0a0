"""Model weights to and from safetensors checkpoints.

A *weights file* is a safetensors file of fp32 arrays named like the model's parameters
(``model.layers.0.attention.wq.weight``). A *training checkpoint* is a folder that holds one as
``model.safetensors`` (plus optimizer state); every tool that reads weights accepts either.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn

from pangu_pro.config import ModelConfig
from pangu_pro.io import WEIGHTS_NAME, resolve_weights  # noqa: F401  (re-exported)
from pangu_pro.tensors import load_tensors, save_tensors


def model_state(model: nn.Cell) -> dict[str, np.ndarray]:
    """Every trainable parameter of `model` as a numpy array, by parameter name."""
    return {p.name: p.asnumpy() for p in model.trainable_params()}


def load_state(model: nn.Cell, tensors: dict[str, np.ndarray], source: str = "weights", strict: bool = True) -> None:
    """Copy `tensors` into `model`'s parameters, checking names and shapes.

    With `strict`, a missing or unexpected tensor is an error; a shape mismatch always is.
    """
    params = {p.name: p for p in model.trainable_params()}
    missing = sorted(set(params) - set(tensors))
    unexpected = sorted(set(tensors) - set(params))
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:5]}{' …' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected tensors {unexpected[:5]}{' …' if len(unexpected) > 5 else ''}")
        raise ValueError(f"{source}: does not fit the model: " + "; ".join(parts))
    for name, param in params.items():
        if name not in tensors:
            continue
        value = np.asarray(tensors[name])
        if tuple(value.shape) != tuple(param.shape):
            raise ValueError(f"{source}: tensor {name} has shape {tuple(value.shape)}, "
                             f"the model expects {tuple(param.shape)}")
        param.set_data(Tensor(value.astype(np.float32), ms.float32))


def save_weights(model: nn.Cell, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write the model's parameters to a safetensors file, atomically."""
    save_tensors(path, model_state(model), metadata)


def load_weights(model: nn.Cell, path: str | Path, strict: bool = True) -> dict[str, str]:
    """Load a weights file (or checkpoint folder) into `model`; returns the file's metadata."""
    path = resolve_weights(path)
    tensors, metadata = load_tensors(path)
    load_state(model, tensors, str(path), strict)
    return metadata


def build_model(cfg: ModelConfig, weights: str | Path | None = None, seed: int | None = None):
    """A PanGuPiForCausalLM for `cfg`, randomly initialised (with `seed`) or loaded from `weights`."""
    from pangu_pro.model.pangu_pi import PanGuPiForCausalLM

    if seed is not None:
        ms.set_seed(seed)
    model = PanGuPiForCausalLM(cfg)
    if weights is not None:
        load_weights(model, weights)
    return model
