"""`pangu-pro score`: the frozen model's loss on every batch and every sample of the training set.

Units. Sample i is row i of the training files (counted across `data.train_files` in order, as the
data loader counts). Scoring batch b is samples ``[b*B, min((b+1)*B, N))`` — consecutive samples in
corpus order, the last batch possibly short; B is `--batch-size` (default train.batch_size).
A sample's score is its token-mean next-token loss; a batch's score is the token-mean loss over
its samples (= `PanGuPiWithLoss` on that batch).

Data parallel. Under msrun each of the w ranks scores batches ``b = rank, rank + w, ...`` and saves
its results to ``OUT.parts/rank{r}-of{w}.npz``; rank 0 waits for every part and assembles them in
batch order into OUT (a .npz file):

    batch_loss   float64 [num_batches]   indexed by batch id
    sample_loss  float64 [N]             indexed by sample id
    batch_size, num_samples              int64 scalars
    meta         JSON string: checkpoint, files, world, and the fingerprint of the weights

plus OUT with suffix .json: a readable summary. Resume: a rank's part is rewritten atomically every
`flush_every` batches; a restart with the same checkpoint, data, batch size and world loads it and
scores only the batches after it. A part from a different checkpoint or data is refused (``--overwrite``
starts over). A non-finite loss stops scoring, naming the batch and its samples.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional

import numpy as np

from pangu_pro.io import atomic_path, atomic_write_json
from pangu_pro.rounds.sampling import num_batches as count_batches

PARTS_SUFFIX = ".parts"


def per_sample_loss_cell(network):
    """Per-row (summed NLL [B], counted positions [B]) of `network`: `PanGuPiRowLosses`."""
    from pangu_pro.model.pangu_pi import PanGuPiRowLosses

    return PanGuPiRowLosses(network)


# ------------------------------------------------------------------------------ work split and parts

def rank_batches(num_batches: int, rank: int, world: int) -> np.ndarray:
    """The batch ids rank `rank` of `world` scores, in order: ``range(num_batches)[rank::world]``."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside [0, {world})")
    return np.arange(num_batches, dtype=np.int64)[rank::world]


def parts_dir(out: Path) -> Path:
    return out.parent / f"{out.name}{PARTS_SUFFIX}"


def part_path(out: Path, rank: int, world: int) -> Path:
    return parts_dir(out) / f"rank{rank:03d}-of{world:03d}.npz"


def weights_fingerprint(path: Path) -> dict:
    """What identifies a weights file cheaply: its resolved path, size and modification time."""
    stat = path.stat()
    return {"weights": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def save_part(path: Path, meta: dict, batch_ids: np.ndarray, batch_loss: np.ndarray, sample_loss: np.ndarray,
              complete: bool) -> None:
    """One rank's results so far, written atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, meta=np.array(json.dumps(meta)), batch_ids=np.asarray(batch_ids, np.int64),
                     batch_loss=np.asarray(batch_loss, np.float64), sample_loss=np.asarray(sample_loss, np.float64),
                     complete=np.array(complete))


def load_part(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as data:
        return {"meta": json.loads(str(data["meta"])), "batch_ids": data["batch_ids"],
                "batch_loss": data["batch_loss"], "sample_loss": data["sample_loss"],
                "complete": bool(data["complete"])}


def check_part(part: dict, meta: dict, expected_ids: np.ndarray, path: Path) -> None:
    """Refuse a part written for another run; check that it holds a prefix of this rank's batches."""
    for key in sorted(set(meta) | set(part["meta"])):
        if part["meta"].get(key) != meta.get(key):
            raise ValueError(f"{path}: partial scores of another run ({key}: {part['meta'].get(key)!r} there, "
                             f"{meta.get(key)!r} now); pass --overwrite to start over")
    done = part["batch_ids"]
    if done.size > expected_ids.size or not np.array_equal(done, expected_ids[:done.size]):
        raise ValueError(f"{path}: holds batches that are not this rank's next ones; pass --overwrite")


def merge_parts(parts: list[dict], num_batches: int, batch_size: int, num_samples: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Assemble the ranks' parts by batch id into (batch_loss [num_batches], sample_loss [N]).

    Every batch must appear exactly once; ValueError otherwise (naming a missing or repeated batch).
    """
    batch_loss = np.full(num_batches, np.nan)
    sample_loss = np.full(num_samples, np.nan)
    seen = np.zeros(num_batches, dtype=np.int64)
    for part in parts:
        ids = part["batch_ids"]
        seen[ids] += 1
        batch_loss[ids] = part["batch_loss"]
        offset = 0
        for b in ids:
            start, stop = b * batch_size, min((b + 1) * batch_size, num_samples)
            sample_loss[start:stop] = part["sample_loss"][offset:offset + stop - start]
            offset += stop - start
        if offset != part["sample_loss"].size:
            raise ValueError(f"a part holds {part['sample_loss'].size} sample losses for batches of {offset} samples")
    if (seen != 1).any():
        bad = int(np.flatnonzero(seen != 1)[0])
        raise ValueError(f"batch {bad} was scored {seen[bad]} times by the parts (expected once)")
    return batch_loss, sample_loss


def save_scores(out: Path, batch_loss: np.ndarray, sample_loss: np.ndarray, batch_size: int, meta: dict) -> dict:
    """Write the scores file OUT (.npz) and its summary OUT.json; returns the summary."""
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, batch_loss=batch_loss, sample_loss=sample_loss, batch_size=np.int64(batch_size),
                     num_samples=np.int64(sample_loss.size), meta=np.array(json.dumps(meta)))
    summary = {"scores": str(out), "num_batches": int(batch_loss.size), "num_samples": int(sample_loss.size),
               "batch_size": int(batch_size), "mean_batch_loss": float(batch_loss.mean()),
               "min_batch_loss": float(batch_loss.min()), "max_batch_loss": float(batch_loss.max()),
               "mean_sample_loss": float(sample_loss.mean()), **meta}
    atomic_write_json(out.with_suffix(".json"), summary)
    return summary


def load_scores(path: str | Path) -> dict:
    """A scores file as {batch_loss, sample_loss, batch_size, num_samples, meta}; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: scores file not found (write one with `pangu-pro score`)")
    try:
        with np.load(path, allow_pickle=False) as data:
            scores = {"batch_loss": np.asarray(data["batch_loss"], np.float64),
                      "sample_loss": np.asarray(data["sample_loss"], np.float64),
                      "batch_size": int(data["batch_size"]), "num_samples": int(data["num_samples"]),
                      "meta": json.loads(str(data["meta"]))}
    except (KeyError, ValueError, OSError) as err:
        raise ValueError(f"{path}: not a pangu-pro scores file ({err})") from None
    if scores["sample_loss"].size != scores["num_samples"] or \
            scores["batch_loss"].size != count_batches(scores["num_samples"], scores["batch_size"]):
        raise ValueError(f"{path}: inconsistent sizes: {scores['batch_loss'].size} batch and "
                         f"{scores['sample_loss'].size} sample scores for {scores['num_samples']} samples in "
                         f"batches of {scores['batch_size']}")
    return scores


# ------------------------------------------------------------------------------------- the command

def score(config, checkpoint, *, out=None, files=None, batch_size: Optional[int] = None, flush_every: int = 16,
          overwrite: bool = False, progress: bool = True, merge_timeout: float = 3600.0, announce=print) -> dict:
    """Score the training set with the weights in `checkpoint` (module doc); returns rank 0's summary
    (other ranks return their own part's counts)."""
    from pangu_pro.progress import progress_bar
    from mindspore import Tensor

    from pangu_pro.data.dataset import count_samples, create_dataset, resolve_files
    from pangu_pro.model.weights import build_model, resolve_weights
    from pangu_pro.runtime import adapt_to_device, init_mindspore
    from pangu_pro.train.trainer import setup_parallel

    if flush_every < 1:
        raise ValueError(f"flush_every must be at least 1, got {flush_every}")
    target = init_mindspore()
    par = setup_parallel(config)
    lead = par.rank == 0
    say = announce if (lead and announce is not None) else (lambda *_: None)
    paths = resolve_files(files or config.data.train_files) if (files or config.data.train_files) else None
    if paths is None:
        raise ValueError("no training data to score: set data.train_files or pass --data")
    weights = resolve_weights(checkpoint)
    batch_size = batch_size or config.train.batch_size
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    total = count_samples(paths)
    n_batches = count_batches(total, batch_size)
    out = Path(out or Path(config.train.output_dir) / "scores.npz")
    meta = {**weights_fingerprint(weights), "files": [str(Path(p).resolve()) for p in paths],
            "num_samples": total, "batch_size": batch_size, "world": par.world}

    if out.is_file() and not overwrite:
        existing = load_scores(out)
        if existing["meta"] == meta:
            say(f"{out} already holds these scores")
            return json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").is_file() else {}
        raise ValueError(f"{out} holds scores of another run (checkpoint, data, batch size or world differ); "
                         f"pass --overwrite or choose another --out")

    mine = rank_batches(n_batches, par.rank, par.world)
    part_file = part_path(out, par.rank, par.world)
    done_ids, batch_losses, sample_losses = np.zeros(0, np.int64), [], []
    if part_file.is_file():
        if overwrite:
            part_file.unlink()
        else:
            part = load_part(part_file)
            check_part(part, meta, mine, part_file)
            done_ids = part["batch_ids"]
            batch_losses = list(part["batch_loss"])
            sample_losses = list(part["sample_loss"])
    if lead and overwrite and out.is_file():
        out.unlink()

    def flush(complete: bool) -> None:
        save_part(part_file, meta, mine[:len(batch_losses)], np.array(batch_losses), np.array(sample_losses),
                  complete)

    todo = mine[done_ids.size:]
    bar = progress_bar(total=mine.size, initial=done_ids.size, disable=not (progress and lead), desc="score",
                       unit="batch")
    try:
        if todo.size:
            if done_ids.size:
                say(f"resuming: {done_ids.size} of rank {par.rank}'s {mine.size} batches already scored")
            order = np.concatenate([np.arange(b * batch_size, min((b + 1) * batch_size, total)) for b in todo])
            dataset = create_dataset(paths, batch_size, shuffle=False, indices=order, drop_remainder=False)
            model = build_model(adapt_to_device(config.model, target, say), weights=weights)
            net = per_sample_loss_cell(model)
            net.set_train(False)
            for position, (input_ids,) in enumerate(dataset.create_tuple_iterator(num_epochs=1, output_numpy=True)):
                b = int(todo[position])
                rows = input_ids.shape[0]
                if input_ids.shape[1] - 1 > config.model.seq_length:
                    raise ValueError(f"model.seq_length {config.model.seq_length} is shorter than the data's "
                                     f"{input_ids.shape[1] - 1}-token samples")
                if rows < batch_size:  # the short last batch: pad to keep one compiled shape
                    input_ids = np.concatenate([input_ids, np.repeat(input_ids[:1], batch_size - rows, 0)])
                sums, counts = (x.asnumpy().astype(np.float64) for x in net(Tensor(input_ids)))
                sums, counts = sums[:rows], counts[:rows]
                per_sample = sums / np.maximum(counts, 1.0)
                batch = sums.sum() / max(counts.sum(), 1.0)
                if not (np.isfinite(per_sample).all() and math.isfinite(batch)):
                    flush(False)
                    bad = [b * batch_size + int(i) for i in np.flatnonzero(~np.isfinite(per_sample))]
                    raise ValueError(f"non-finite loss on batch {b} (samples {bad[:8]}): the checkpoint "
                                     f"{weights} cannot score the data")
                batch_losses.append(batch)
                sample_losses.extend(per_sample.tolist())
                bar.update(1)
                if len(batch_losses) % flush_every == 0:
                    flush(False)
        flush(True)
    finally:
        bar.close()
    if not lead:
        return {"rank": par.rank, "batches": int(mine.size)}

    parts = [wait_for_part(part_path(out, r, par.world), meta, merge_timeout) for r in range(par.world)]
    batch_loss, sample_loss = merge_parts(parts, n_batches, batch_size, total)
    summary = save_scores(out, batch_loss, sample_loss, batch_size, meta)
    for r in range(par.world):
        part_path(out, r, par.world).unlink(missing_ok=True)
    try:
        parts_dir(out).rmdir()
    except OSError:
        pass
    say(f"scored {total} samples in {n_batches} batches: mean batch loss {summary['mean_batch_loss']:.4f}; "
        f"wrote {out}")
    return summary


def wait_for_part(path: Path, meta: dict, timeout: float, poll: float = 0.2) -> dict:
    """Rank 0: wait until another rank's part is complete (written atomically, so a file read is whole)."""
    deadline = time.monotonic() + timeout
    while True:
        if path.is_file():
            part = load_part(path)
            if part["meta"] != meta:
                raise ValueError(f"{path}: written for another run")
            if part["complete"]:
                return part
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: rank did not finish scoring within {timeout:.0f} s")
        time.sleep(poll)


def score_command(args) -> int:
    from pangu_pro.config import load_config

    config = load_config(args.config, args.overrides)
    score(config, args.checkpoint, out=args.out, files=args.data, batch_size=args.batch_size,
          flush_every=args.flush_every, overwrite=args.overwrite, progress=not args.no_progress)
    return 0

