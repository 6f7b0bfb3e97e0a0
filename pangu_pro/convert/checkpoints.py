"""Opening our checkpoints for conversion: one weights file, a checkpoint folder, or a distributed run.

A distributed run is a folder of `rank_0/`, `rank_1/`, ... (each holding a safetensors weights file)
and, when tensors were sliced (tensor / optimizer parallel), a strategy file (`*strategy*.ckpt`, in the
folder or its `strategy/` sub-folder). Without a strategy file, or when the strategy slices nothing
(pure data parallel), every rank holds the whole model and rank 0 is read. Sliced parameters are merged
one at a time with `mindspore.merge_sliced_parameter`, so only one parameter's slices are in memory.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from pangu_pro.convert.safetensors_stream import SafetensorsFile
from pangu_pro.model.weights import WEIGHTS_NAME, resolve_weights

RANK_DIR = re.compile(r"rank_(\d+)")


def rank_dirs(path: Path) -> list[Path]:
    """The `rank_<i>` sub-folders of `path` in rank order; they must be numbered 0..N-1."""
    found = {int(m.group(1)): p for p in path.iterdir() if p.is_dir() and (m := RANK_DIR.fullmatch(p.name))}
    if found and sorted(found) != list(range(len(found))):
        raise ValueError(f"{path}: rank folders {sorted(found)} are not numbered 0..{len(found) - 1}")
    return [found[i] for i in range(len(found))]


def rank_weights(rank_dir: Path) -> Path:
    """The weights file of one rank: `model.safetensors`, or the only `*.safetensors` file."""
    if (rank_dir / WEIGHTS_NAME).is_file():
        return rank_dir / WEIGHTS_NAME
    files = sorted(rank_dir.glob("*.safetensors"))
    if len(files) != 1:
        what = "no safetensors file" if not files else f"several safetensors files {[f.name for f in files]}"
        raise ValueError(f"{rank_dir}: {what}; each rank folder must hold exactly one weights file "
                         f"(or a {WEIGHTS_NAME})")
    return files[0]


def strategy_files(path: Path) -> list[Path]:
    return sorted(p for folder in (path, path / "strategy") if folder.is_dir()
                  for p in folder.glob("*.ckpt") if "strategy" in p.name or folder.name == "strategy")


def is_sliced(layout) -> bool:
    """True if a strategy layout splits the parameter (tensor map or optimizer sharding)."""
    return any(d != -1 for d in layout.tensor_map[0].dim) or layout.opt_weight_shard_size > 1


def merged_shape(slice_shape: tuple[int, ...], layout) -> tuple[int, ...]:
    """Full shape of a parameter from one slice's shape and its layout."""
    devices = list(layout.dev_matrix[0].dim)
    shape = list(slice_shape)
    for axis, index in enumerate(layout.tensor_map[0].dim):
        if index != -1:
            shape[axis] *= devices[len(devices) - 1 - index]
    if layout.opt_weight_shard_size > 1 and shape:
        shape[0] *= layout.opt_weight_shard_size
    return tuple(shape)


class MergedCheckpoint:
    """Tensors of a sliced distributed run, merged parameter by parameter."""

    def __init__(self, ranks: list[SafetensorsFile], layouts: dict, sliced: set[str], description: str):
        self.ranks = ranks
        self.layouts = layouts
        self.sliced = sliced
        self.path = description
        for name in sliced:
            for rank, handle in enumerate(ranks):
                if name not in handle.entries:
                    raise ValueError(f"{handle.path}: sliced parameter {name} is missing on rank {rank}")

    def keys(self) -> list[str]:
        return self.ranks[0].keys()

    def shape(self, name: str) -> tuple[int, ...]:
        shape = self.ranks[0].shape(name)
        return merged_shape(shape, self.layouts[name]) if name in self.sliced else shape

    def get(self, name: str) -> np.ndarray:
        if name not in self.sliced:
            return self.ranks[0].get(name)
        import mindspore as ms

        slices = [ms.Parameter(ms.Tensor(handle.get(name)), name=name) for handle in self.ranks]
        merged = ms.merge_sliced_parameter(slices, {name: self.layouts[name]}).asnumpy()
        if math.prod(merged.shape) != math.prod(self.shape(name)):
            raise ValueError(f"{self.path}: merging {name} gave shape {merged.shape}, expected {self.shape(name)}")
        return merged.astype(np.float32).reshape(self.shape(name))


def open_distributed(path: Path, ranks: list[Path]):
    strategies = strategy_files(path)
    if len(strategies) > 1:
        raise ValueError(f"{path}: several strategy files {[s.name for s in strategies]} (pipeline stages?); merge "
                         "them into one with mindspore.merge_pipeline_strategys first")
    if not strategies:  # data parallel: no strategy file is written, every rank holds the whole model
        return SafetensorsFile(rank_weights(ranks[0]))
    import mindspore as ms

    try:
        layouts = ms.build_searched_strategy(str(strategies[0]))
    except Exception as err:  # MindSpore raises several types for a bad file
        raise ValueError(f"{strategies[0]}: not a readable strategy file ({err})") from None
    sliced = {name for name, layout in layouts.items() if is_sliced(layout)}
    first = SafetensorsFile(rank_weights(ranks[0]))
    if not sliced:
        return first
    handles = [first] + [SafetensorsFile(rank_weights(r)) for r in ranks[1:]]
    return MergedCheckpoint(handles, layouts, sliced & set(first.keys()), f"{path} (merged from {len(ranks)} ranks)")


def open_checkpoint(path: str | Path):
    """A tensor source (`keys`, `shape`, `get` -> fp32) for a weights file, checkpoint folder or distributed run."""
    path = Path(path)
    if path.is_dir():
        ranks = rank_dirs(path)
        if ranks:
            return open_distributed(path, ranks)
    return SafetensorsFile(resolve_weights(path))
