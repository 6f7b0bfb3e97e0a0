"""Opening our checkpoints for conversion: one weights file, a checkpoint folder, or a distributed run.

A distributed run is a folder of `rank_0/`, `rank_1/`, ... (each holding a safetensors weights file,
or, as the trainer writes them, `step_N/model.safetensors` folders: the newest step every rank holds
is read), or a training output folder with them under `checkpoints/`, plus, when tensors were sliced (tensor or
pipeline parallel), strategy files (`strategy/*.ckpt`, as training writes them). Without a strategy
file (pure data parallel) every rank holds the whole model and rank 0 is read; with one, the run is
merged first into a temporary checkpoint (`pangu_pro.train.merge`, MindSpore's
`transform_checkpoints`). Every file read is first checked against its digest (`pangu_pro.digests`).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from pangu_pro.convert.safetensors_stream import SafetensorsFile
from pangu_pro.model.weights import WEIGHTS_NAME, resolve_weights
from pangu_pro.train.merge import latest_common_step, merge_run, rank_dirs, rank_weights, strategy_files


def open_verified(path: Path) -> SafetensorsFile:
    """One of our weights files, after checking it against its recorded digest."""
    from pangu_pro.digests import verify

    verify(path)
    return SafetensorsFile(path)


def open_distributed(run: Path, ranks: list[Path]):
    """Rank 0 for a data-parallel run (no strategy file: every rank holds the whole model); else the
    run merged into a temporary checkpoint by `train.merge.merge_run` (MindSpore's
    `transform_checkpoints`), deleted when the returned handle is."""
    strategies = strategy_files(run, ranks[0].parent)
    if not strategies:
        return open_verified(rank_weights(ranks[0]))
    import tempfile
    import weakref

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
