"""Training checkpoints: one folder per save, written atomically, the last K kept.

    OUTPUT_DIR/checkpoints/step_00000200/
        model.safetensors       the model's parameters, named as in the model (weights.WEIGHTS_NAME)
        optimizer.safetensors   AdamW moments (adam_m.*, adam_v.*) and its update count (adam_step)
        state.json              step, data position, loss scale, lr, RNG seeds, config snapshot
        *.sha256                each file's SHA-256, checked on every load (pangu_pro.digests)

A save writes everything into ``.tmp-step_N-<pid>/`` beside the final folder and renames it in one
step, so a killed job leaves either a complete checkpoint or a temporary folder that the next run
deletes (`clean_partial`); it never leaves a half `step_N` folder. Old checkpoints are renamed to
``.trash-...`` before being deleted, for the same reason.

Under semi-auto parallel (tensor/pipeline parallel, ZeRO) every rank writes the same folders under
``OUTPUT_DIR/checkpoints/rank_<r>/`` (`distributed_ckpt.rank_checkpoint_dir`) holding only what it
owns: its pipeline stage's parameters and their moments, each as the slice the rank holds (tensor
parallel and ZeRO split). MindSpore writes ``OUTPUT_DIR/strategy/strategy_rank_<r>.ckpt`` at compile
time. Their state.json adds ``rank``, ``layout`` and ``strategy``; `resolve_rank_resume` finds this
rank's folder; `pangu_pro.train.merge` turns the rank folders into one whole checkpoint.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Optional

import numpy as np

from pangu_pro.digests import seal, verify, verify_folder
from pangu_pro.io import WEIGHTS_NAME, atomic_write_json, read_json
from pangu_pro.tensors import load_tensors, save_tensors

OPTIMIZER_NAME = "optimizer.safetensors"
STATE_NAME = "state.json"
CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step_(\d{8,})$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def merged_checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    """<run>/checkpoints/merged/step_N: the whole tensors of a semi-auto run's step, merged once from
    the ranks' slices (by the trainer on a change of layout, by the rounds driver after a round)."""
    return Path(run_dir) / CHECKPOINTS / "merged" / checkpoint_name(step)


def optimizer_state(optimizer) -> dict[str, np.ndarray]:
    """The optimizer's state parameters as numpy arrays, by name."""
    return {p.name: p.asnumpy() for p in optimizer.state_parameters()}


def load_optimizer_state(optimizer, tensors: dict[str, np.ndarray], source: str,
                         names: Optional[set[str]] = None) -> None:
    """`names`: the model parameters the file covers (a pipeline stage's); None: all."""
    from mindspore import Tensor

    params = {p.name: p for p in optimizer.state_parameters()
              if names is None or _moment_of(p.name) is None or _moment_of(p.name) in names}
    missing = sorted(set(params) - set(tensors))
    unexpected = sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise ValueError(f"{source}: does not fit the optimizer: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for name, param in params.items():
        value = tensors[name]
        if tuple(value.shape) != tuple(param.shape):
            raise ValueError(f"{source}: {name} has shape {tuple(value.shape)}, expected {tuple(param.shape)}")
        param.set_data(Tensor(value.astype(param.asnumpy().dtype)))


def save_checkpoint(directory: str | Path, model, optimizer, state: dict,
                    names: Optional[set[str]] = None) -> Path:
    """Write model, optimizer and `state` (JSON-ready) as the folder `directory`, atomically.

    `names`: the parameters this rank owns (its pipeline stage's, `distributed_ckpt.owned_parameters`);
    only they and their optimizer moments are written. None: all of them."""
    from pangu_pro.model.weights import model_state

    weights = model_state(model)
    moments = optimizer_state(optimizer) if optimizer is not None else None
    if names is not None:
        weights = {name: value for name, value in weights.items() if name in names}
        if moments is not None:
            moments = {name: value for name, value in moments.items() if _moment_of(name) in names | {None}}
    return write_checkpoint(directory, weights, moments, state)


def write_checkpoint(directory: str | Path, weights: dict[str, np.ndarray],
                     moments: Optional[dict[str, np.ndarray]], state: dict) -> Path:
    """The one writer of checkpoint folders (training saves, `convert merge`): files into a temporary
    folder, then one rename. Refuses before writing when the disk has less free space than the files
    need; a failed write (ENOSPC, an I/O error) removes the temporary folder and raises
    CheckpointWriteError naming the folder and the space; older checkpoints are never touched."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    needed = tensors_bytes(weights) + (tensors_bytes(moments) if moments is not None else 0) + STATE_RESERVE
    free = shutil.disk_usage(directory.parent).free
    if free < needed:
        raise CheckpointWriteError(directory, needed, free, "not enough free space; nothing was written")
    tmp = directory.parent / f".tmp-{directory.name}-{os.getpid()}"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        save_tensors(tmp / WEIGHTS_NAME, weights, {"format": "pangu-pro", "step": str(state.get("step", ""))})
        if moments is not None:
            save_tensors(tmp / OPTIMIZER_NAME, moments)
        atomic_write_json(tmp / STATE_NAME, state)
        seal(tmp / STATE_NAME)
    except Exception as err:  # OSError, or safetensors' own error type wrapping one
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointWriteError(directory, needed, _free_bytes(directory.parent), str(err)) from err
    if directory.exists():  # re-saving the same step: move the old one out of the way first
        _discard(directory)
    os.rename(tmp, directory)
    return directory


STATE_RESERVE = 1 << 20  # state.json, digests and safetensors headers: well under a MiB


class CheckpointWriteError(ValueError):
    """A checkpoint could not be written (disk full, an I/O error); the previous ones are intact. A
    ValueError so that every command (train: exit 4; inherit's mask checkpoints) reports it without a
    traceback."""

    def __init__(self, directory: Path, needed: int, free: Optional[int], reason: str):
        self.directory, self.needed, self.free = directory, needed, free
        room = f"{_gib(free)} free" if free is not None else "free space unknown"
        super().__init__(f"could not save checkpoint {directory}: {reason}. It needs about {_gib(needed)} in "
                         f"{directory.parent} ({room}); the checkpoints already there are intact (check them with "
                         f"`pangu-pro checkpoint verify {directory.parent}`). Free space there, or lower "
                         f"train.keep_last, and continue with --resume")


def _gib(size: int) -> str:
    return f"{size / 2 ** 30:.2f} GiB"


def _free_bytes(path: Path) -> Optional[int]:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def tensors_bytes(tensors: dict[str, np.ndarray]) -> int:
    return sum(int(np.asarray(value).nbytes) for value in tensors.values())


def checkpoint_bytes(model, optimizer=None, names: Optional[set[str]] = None) -> int:
    """About what `save_checkpoint(model, optimizer, names=names)` writes (fp32 parameters and moments),
    from the shapes alone."""
    def size(params, keep) -> int:
        return sum(4 * int(np.prod(p.shape)) for p in params if keep(p.name))

    total = size(model.trainable_params(), lambda name: names is None or name in names)
    if optimizer is not None:
        total += size(optimizer.state_parameters(),
                      lambda name: names is None or _moment_of(name) is None or _moment_of(name) in names)
    return total + STATE_RESERVE


def folder_bytes(folder: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())


def warn_if_no_space(directory: str | Path, needed: int, what: str, announce=print) -> bool:
    """Say so (and return False) when `directory`'s disk has less free space than `needed` bytes for
    `what` (checked at the start of a run and after each save: the rotation frees space only once the
    new checkpoint is complete, so the next save needs the whole of it free)."""
    probe = Path(directory).absolute()
    while not probe.exists():
        probe = probe.parent
    free = _free_bytes(probe)
    if free is None or free >= needed:
        return True
    announce(f"warning: {probe}: {_gib(free)} free, but {what} needs about {_gib(needed)}: it will fail "
             f"unless space is freed")
    return False


def _moment_of(name: str) -> Optional[str]:
    """The parameter an optimizer state tensor belongs to (adam_m.X -> X); None for shared ones
    (the update count), which every rank writes."""
    prefix, _, rest = name.partition(".")
    return rest if prefix in ("adam_m", "adam_v") and rest else None


def read_state(directory: str | Path) -> dict:
    """A checkpoint folder's state.json."""
    state_path = Path(directory) / STATE_NAME
    if not state_path.is_file():
        raise FileNotFoundError(f"{directory}: not a training checkpoint (no {STATE_NAME})")
    verify(state_path)
    return read_json(state_path)


def load_checkpoint(directory: str | Path, model, optimizer=None, names: Optional[set[str]] = None) -> dict:
    """Load a checkpoint folder into `model` (and `optimizer`); returns its state.json.
    `names`: the parameters a rank's folder holds (its pipeline stage's, as saved); None: all."""
    directory = Path(directory)
    state_path = directory / STATE_NAME
    if not state_path.is_file():
        raise FileNotFoundError(f"{directory}: not a training checkpoint (no {STATE_NAME})")
    tensors, _ = load_tensors(directory / WEIGHTS_NAME)
    if names is not None:
        missing = sorted(names - set(tensors))
        if missing:
            raise ValueError(f"{directory / WEIGHTS_NAME}: lacks this rank's parameters {missing[:3]}")
    from pangu_pro.model.weights import load_state

    load_state(model, tensors, str(directory / WEIGHTS_NAME), strict=names is None)
    if optimizer is not None:
        opt_tensors, _ = load_tensors(directory / OPTIMIZER_NAME)
        load_optimizer_state(optimizer, opt_tensors, str(directory / OPTIMIZER_NAME), names)
    return read_state(directory)


def list_checkpoints(checkpoints_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under `checkpoints_dir` as (step, folder), oldest first."""
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / STATE_NAME).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(checkpoints_dir: str | Path) -> Optional[Path]:
    found = list_checkpoints(checkpoints_dir)
    return found[-1][1] if found else None


def resolve_resume(path: str | Path) -> Path:
    """A checkpoint folder from a checkpoint folder, a run's output dir or its checkpoints/ folder."""
    path = Path(path)
    if (path / STATE_NAME).is_file():
        return path
    for root in (path / CHECKPOINTS, path):
        latest = latest_checkpoint(root)
        if latest is not None:
            return latest
    where = "" if path.is_absolute() else f" = {path.resolve()}, relative to the working directory {os.getcwd()}"
    raise FileNotFoundError(f"{path}: no checkpoint to resume from (looked for {path}/{CHECKPOINTS}/step_*/{STATE_NAME}"
                            f"{where})")


def intact_resume(chosen: Path, fallback: bool, announce=print) -> Path:
    """`chosen` if its files match their digests and its state.json reads; with `fallback`, else the
    newest older checkpoint beside it that does, announcing each one skipped and why."""
    step = int(_STEP_DIR.match(chosen.name).group(1)) if _STEP_DIR.match(chosen.name) else None
    older = [p for s, p in reversed(list_checkpoints(chosen.parent)) if step is not None and s < step]
    for candidate in [chosen] + (older if fallback else []):
        try:
            verify_folder(candidate)
            read_state(candidate)
            return candidate
        except ValueError as err:
            if not fallback:
                raise
            announce(f"skipping checkpoint {candidate}: {err}")
    raise ValueError(f"{chosen.parent}: no intact checkpoint to resume from (all were skipped, see above)")


_RANK_DIR = re.compile(r"^rank_(\d+)$")


def resolve_rank_resume(path: str | Path, rank: int) -> Path:
    """Rank `rank`'s checkpoint of a semi-auto run, from: a run's output dir or its checkpoints/
    folder (this rank's newest), any rank's step folder (this rank's folder of that step), or a
    whole checkpoint (a step folder with no rank parent, e.g. merged from the slices)."""
    path = Path(path)
    if (path / STATE_NAME).is_file():
        if _RANK_DIR.match(path.parent.name):
            own = path.parent.parent / f"rank_{rank}" / path.name
            if not (own / STATE_NAME).is_file():
                raise FileNotFoundError(f"{own}: rank {rank} has no checkpoint of {path.name}")
            return own
        return path
    for root in (path / CHECKPOINTS / f"rank_{rank}", path / f"rank_{rank}"):
        latest = latest_checkpoint(root)
        if latest is not None:
            return latest
    return resolve_resume(path)


def prune_checkpoints(checkpoints_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints; returns what was deleted."""
    found = list_checkpoints(checkpoints_dir)
    doomed = [path for _, path in found[:max(len(found) - keep_last, 0)]]
    for path in doomed:
        _discard(path)
    return doomed


def clean_partial(checkpoints_dir: str | Path) -> list[Path]:
    """Remove temporary and half-deleted folders left by a killed run."""
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return []
    leftovers = [p for p in root.iterdir() if p.name.startswith((".tmp-", ".trash-"))]
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return leftovers


def _discard(path: Path) -> None:
    trash = path.parent / f".trash-{path.name}-{os.getpid()}"
    os.rename(path, trash)
    shutil.rmtree(trash)
