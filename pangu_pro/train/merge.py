"""One whole checkpoint from a distributed run (dp, tp, pp, ZeRO, any mix): `convert merge`, the
trainer's resume onto another layout, the multi-round driver and `convert to-hf` of a distributed run.

A semi-auto run holds, per rank, `checkpoints/rank_<r>/step_N/{model,optimizer}.safetensors` with
only that rank's pipeline stage and its tensor-parallel / ZeRO slices, and `strategy/strategy_rank_<r>.ckpt`
(what MindSpore wrote at compile time). The merge is MindSpore's own: the stages' strategy files are
joined with `mindspore.parallel.merge_pipeline_strategys` and the slices put together by
`mindspore.transform_checkpoints` (destination strategy None = whole tensors), which understands the
model-parallel split, the parallel optimizer's split and pipeline stages, and runs on the CPU. We only
stage the files where it expects them (`<dir>/rank_<r>/<one file>`) and write the result as an ordinary
checkpoint folder (`train.checkpoint.write_checkpoint`): model.safetensors, optimizer.safetensors and
state.json, loadable by `train --resume`, `convert to-hf`, `perplexity`.

A data-parallel run (no strategy files; rank 0 wrote `checkpoints/step_N`, or every rank the whole
model) needs no merge: its newest checkpoint is copied.
"""
from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from pangu_pro.io import WEIGHTS_NAME
from pangu_pro.tensors import load_tensors
from pangu_pro.train.checkpoint import (OPTIMIZER_NAME, STATE_NAME, read_state, resolve_resume,
                                        write_checkpoint)

MERGED_KEYS_DROPPED = ("rank", "layout", "strategy")
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


def find_rank_steps(run: Path, step: Optional[int] = None) -> tuple[list[Path], Path]:
    """(rank step folders in rank order, the folder holding the rank_* folders) of a run, a run's
    checkpoints/ folder or the folder of rank_* folders; the newest step every rank finished, or `step`."""
    for ranks_dir in (run, run / "checkpoints"):
        ranks = rank_dirs(ranks_dir) if ranks_dir.is_dir() else []
        if ranks:
            break
    else:
        raise FileNotFoundError(f"{run}: no rank_<r>/ checkpoint folders (a semi-auto run keeps them under "
                                f"checkpoints/)")
    if step is None:
        return latest_common_step(ranks), ranks_dir
    folders = [r / f"step_{step:08d}" for r in ranks]
    absent = [str(f) for f in folders if not f.is_dir()]
    if absent:
        raise FileNotFoundError(f"{run}: step {step} is missing in {absent[:3]}")
    return folders, ranks_dir


def merge_run(run: str | Path, out: str | Path, step: Optional[int] = None, overwrite: bool = False,
              rank_folders: Optional[list[Path]] = None) -> dict:
    """Write the whole checkpoint of distributed run `run` (at `step`, default the newest complete
    one; or the given `rank_folders`, one per rank) as the checkpoint folder `out`; returns a summary."""
    run, out = Path(run), Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: exists and is not empty (pass --overwrite to replace it)")
    try:
        folders, ranks_dir = ((rank_folders, rank_folders[0].parent) if rank_folders
                              else find_rank_steps(run, step))
    except FileNotFoundError:
        data_parallel = (run / STATE_NAME).is_file() or (run / "checkpoints").is_dir()
        if step is not None or not data_parallel:
            raise
        folders, ranks_dir = [resolve_resume(run)], None  # a data-parallel run: rank 0 saved whole tensors
    state = read_state(folders[0]) if (folders[0] / STATE_NAME).is_file() else {}  # bare weights files: no state
    strategies = strategy_files(run, ranks_dir) if ranks_dir is not None else []
    if not strategies:  # nothing sliced: every rank's folder holds the whole model
        weights, _ = load_tensors(rank_weights(folders[0]))
        moments = _optional_tensors(folders[0] / OPTIMIZER_NAME)
        how = "copied (no strategy files: a data-parallel run)"
    else:
        with tempfile.TemporaryDirectory(prefix=".merge-", dir=out.parent if out.parent.is_dir() else None) as tmp:
            tmp = Path(tmp)
            merged_strategy = join_strategies(strategies, tmp)
            weights = transform_to_whole([rank_weights(f) for f in folders], "model", merged_strategy, tmp)
            optimizer_files = [f / OPTIMIZER_NAME for f in folders]
            moments = (transform_to_whole(optimizer_files, "optimizer", merged_strategy, tmp)
                       if all(f.is_file() for f in optimizer_files) else None)
        how = f"merged from {len(folders)} ranks with mindspore.transform_checkpoints"
    merged_state = {k: v for k, v in state.items() if k not in MERGED_KEYS_DROPPED}
    merged_state["merged_from"] = {"run": str(run), "ranks": len(folders), "layout": state.get("layout"),
                                   "step_folders": [str(f) for f in folders[:2]] + (["…"] if len(folders) > 2 else [])}
    write_checkpoint(out, weights, moments, merged_state)  # replaces an existing `out` in one rename
    return {"checkpoint": str(out), "step": state.get("step"), "ranks": len(folders), "how": how,
            "tensors": len(weights), "optimizer_tensors": len(moments) if moments is not None else 0}


def join_strategies(strategies: list[Path], tmp: Path) -> Path:
    """One strategy file for all pipeline stages (`mindspore.parallel.merge_pipeline_strategys`, which
    reads a folder; identical files of the ranks of one stage count once)."""
    import mindspore as ms

    folder = tmp / "strategy"
    folder.mkdir()
    for i, path in enumerate(strategies):
        shutil.copyfile(path, folder / f"{i:05d}_{path.name}")
    merged = tmp / ("merged_strategy" + strategies[0].suffix)
    try:
        ms.parallel.merge_pipeline_strategys(str(folder), str(merged))
    except (ValueError, TypeError, RuntimeError) as err:
        raise ValueError(f"cannot join the strategy files {[str(p) for p in strategies[:3]]}: {err}") from None
    return merged


def transform_to_whole(files: list[Path], kind: str, strategy: Path, tmp: Path) -> dict:
    """Whole tensors from one safetensors file per rank (rank order), by `mindspore.transform_checkpoints`."""
    import mindspore as ms

    from pangu_pro.digests import verify

    for path in files:  # MindSpore reads the files itself: check each against its digest first
        verify(path)
    src, dst = tmp / f"{kind}_ranks", tmp / f"{kind}_whole"
    for rank, path in enumerate(files):
        (src / f"rank_{rank}").mkdir(parents=True)
        (src / f"rank_{rank}" / f"{kind}.safetensors").symlink_to(path.resolve())
    try:
        ms.transform_checkpoints(str(src), str(dst), kind, str(strategy), None, output_format="safetensors")
    except (ValueError, TypeError, RuntimeError, KeyError) as err:
        raise ValueError(f"merging {files[0].name} of {len(files)} ranks ({files[0].parent.parent}) failed in "
                         f"mindspore.transform_checkpoints: {err}") from None
    written = sorted((dst / "rank_0").glob("*.safetensors"))
    if len(written) != 1:
        raise ValueError(f"mindspore.transform_checkpoints wrote {written} for {kind}, expected one file")
    whole = load_tensors(written[0])[0]
    # a tensor no strategy file names (the optimizer's update count) is whole on every rank holding
    # it; with pipeline stages transform_checkpoints leaves it out: take it from the first holder
    from safetensors import safe_open

    for path in files:
        with safe_open(str(path), framework="numpy") as handle:
            for name in handle.keys():
                if name not in whole:
                    whole[name] = handle.get_tensor(name)
    return whole


def _optional_tensors(path: Path) -> Optional[dict]:
    return load_tensors(path)[0] if path.is_file() else None
