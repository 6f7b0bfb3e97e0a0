"""Opening our checkpoints for conversion: one weights file, a checkpoint folder, or a distributed run.

A distributed run is a folder of `rank_0/`, `rank_1/`, ... (each holding a safetensors weights file,
or, as the trainer writes them, `step_N/model.safetensors` folders: the newest step every rank holds
is read), or a training output folder with them under `checkpoints/`, plus, when tensors were sliced (tensor or
pipeline parallel), strategy files (`strategy/*.ckpt`, as training writes them). Without a strategy
file (pure data parallel) every rank holds the whole model and rank 0 is read; with one, the run is
merged first into a temporary checkpoint (`pangu_pro.convert.merge`, MindSpore's
`transform_checkpoints`). Every file read is first checked against its digest (`pangu_pro.digests`).
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

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


def open_distributed(run: Path, ranks: list[Path]):
    """Rank 0 for a data-parallel run (no strategy file: every rank holds the whole model); else the
    run merged into a temporary checkpoint by `convert.merge.merge_run` (MindSpore's
    `transform_checkpoints`), deleted when the returned handle is."""
    strategies = strategy_files(run, ranks[0].parent)
    if not strategies:
        return open_verified(rank_weights(ranks[0]))
    import tempfile
    import weakref

    from pangu_pro.convert.merge import merge_run

    tmp = Path(tempfile.mkdtemp(prefix="pangu-pro-merge-"))
    try:
        merge_run(run, tmp / "merged", rank_folders=ranks)
        handle = SafetensorsFile(tmp / "merged" / WEIGHTS_NAME)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    weakref.finalize(handle, shutil.rmtree, tmp, True)
    return handle


def open_checkpoint(path: str | Path):
    """A tensor source (`keys`, `shape`, `get` -> fp32) for a weights file, a checkpoint folder, or a
    training run (its newest checkpoint; a distributed run merged)."""
    path = Path(path)
    if path.is_dir():
        for ranks_dir in (path, path / "checkpoints"):
            ranks = rank_dirs(ranks_dir) if ranks_dir.is_dir() else []
            if ranks:
                return open_distributed(path, latest_common_step(ranks))
        if not (path / WEIGHTS_NAME).is_file():  # a data-parallel run: rank 0 wrote checkpoints/step_N
            from pangu_pro.train.checkpoint import latest_checkpoint

            path = latest_checkpoint(path / "checkpoints") or path
    return open_verified(resolve_weights(path))
