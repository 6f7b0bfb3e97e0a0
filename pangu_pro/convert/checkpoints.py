"""Opening our checkpoints for conversion: one weights file, a checkpoint folder, or a distributed run.

A distributed run is a folder of `rank_0/`, `rank_1/`, ... (each holding a safetensors weights file,
or, as the trainer writes them, `step_N/model.safetensors` folders: the newest step every rank holds
is read), or a training output folder with them under `checkpoints/`, plus, when tensors were sliced (tensor or
pipeline parallel), strategy files (`strategy/*.ckpt`, as training writes them). Without a strategy
file, or when the strategies slice nothing (pure data parallel), every rank holds the whole model and
rank 0 is read. Every file read is first checked against its digest (`pangu_pro.digests`). Sliced parameters are merged one at a time with the training stage's
`pangu_pro.model.distributed_ckpt` (MindSpore's `merge_sliced_parameter`), so only one parameter's
slices are in memory.
"""
from __future__ import annotations

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


def latest_common_step(ranks: list[Path]) -> list[Path]:
    """The trainer writes `rank_<i>/step_N/` folders: pick the newest step every rank has finished.

    Rank folders without step folders are returned unchanged."""
    steps = [{p.name for p in r.glob("step_*") if (p / WEIGHTS_NAME).is_file()} for r in ranks]
    if not any(steps):
        return ranks
    common = set.intersection(*steps)
    if not common:
        raise ValueError(f"{ranks[0].parent}: no step_* checkpoint is present in every rank folder "
                         f"(found {[sorted(s) for s in steps]})")
    newest = max(common, key=lambda name: int(name.split("_")[1]))
    return [r / newest for r in ranks]


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


def strategy_files(run: Path, ranks_dir: Path) -> list[Path]:
    """Strategy files of a run: `strategy/*.ckpt|json` beside the rank folders or in the run folder
    (training writes `<out>/strategy/strategy_rank_<i>.ckpt` next to `<out>/checkpoints/rank_<i>`)."""
    folders = dict.fromkeys([run / "strategy", ranks_dir.parent / "strategy"])
    found = [p for folder in folders if folder.is_dir() for p in sorted(folder.iterdir())
             if p.suffix in (".ckpt", ".json")]
    found += sorted(p for p in run.glob("*strategy*") if p.is_file() and p.suffix in (".ckpt", ".json"))
    return found


def open_verified(path: Path) -> SafetensorsFile:
    """One of our weights files, after checking it against its recorded digest."""
    from pangu_pro.digests import verify

    verify(path)
    return SafetensorsFile(path)


class MergedCheckpoint:
    """Tensors of a sliced distributed run, merged one parameter at a time.

    A parameter whose layout splits it is put together from the ranks that hold it (with pipeline
    parallel, the ranks of its stage) by `distributed_ckpt.merge_rank_slices`; any other is read
    from the first rank holding it. Only one parameter's slices are in memory at a time.
    """

    def __init__(self, ranks: list[SafetensorsFile], layouts: dict, description: str):
        self.ranks = ranks
        self.path = description
        self.holders: dict[str, list[SafetensorsFile]] = {}
        for handle in ranks:
            for name in handle.keys():
                self.holders.setdefault(name, []).append(handle)
        self.layouts = {name: layout for name, layout in layouts.items()
                        if name in self.holders and any(s > 1 for s in layout.splits)}
        for name, layout in self.layouts.items():
            if len(self.holders[name]) != layout.device_count:
                raise ValueError(f"{description}: sliced parameter {name} is held by {len(self.holders[name])} "
                                 f"ranks, its layout spans {layout.device_count} devices")

    def keys(self) -> list[str]:
        return list(self.holders)

    def shape(self, name: str) -> tuple[int, ...]:
        shape = self.holders[name][0].shape(name)
        if name not in self.layouts:
            return shape
        return tuple(size * pieces for size, pieces in zip(shape, self.layouts[name].splits))

    def get(self, name: str) -> np.ndarray:
        if name not in self.layouts:
            return self.holders[name][0].get(name)
        from pangu_pro.model.distributed_ckpt import merge_rank_slices

        merged = merge_rank_slices(name, [handle.get(name) for handle in self.holders[name]], self.layouts[name])
        if tuple(merged.shape) != self.shape(name):
            raise ValueError(f"{self.path}: merging {name} gave shape {merged.shape}, expected {self.shape(name)}")
        return merged.astype(np.float32)


def open_distributed(run: Path, ranks: list[Path]):
    """Rank 0 for a data-parallel run (no strategy file, or one that slices nothing); else a merge."""
    strategies = strategy_files(run, ranks[0].parent)
    first = open_verified(rank_weights(ranks[0]))
    if not strategies:  # data parallel: no strategy file is written, every rank holds the whole model
        return first
    from pangu_pro.model.distributed_ckpt import merge_strategies

    try:
        layouts = merge_strategies(strategies)
    except (ValueError, TypeError, RuntimeError) as err:
        raise ValueError(f"{run}: cannot read the strategy files {[str(p) for p in strategies]}: {err}") from None
    if not any(s > 1 for layout in layouts.values() for s in layout.splits):
        return first
    handles = [first] + [open_verified(rank_weights(r)) for r in ranks[1:]]
    return MergedCheckpoint(handles, layouts, f"{run} (merged from {len(ranks)} ranks)")


def open_checkpoint(path: str | Path):
    """A tensor source (`keys`, `shape`, `get` -> fp32) for a weights file, checkpoint folder or distributed run."""
    path = Path(path)
    if path.is_dir():
        for ranks_dir in (path, path / "checkpoints"):
            ranks = rank_dirs(ranks_dir) if ranks_dir.is_dir() else []
            if ranks:
                return open_distributed(path, latest_common_step(ranks))
    return open_verified(resolve_weights(path))
