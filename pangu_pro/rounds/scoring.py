"""`pangu-pro score`: the frozen model's loss on every scoring unit and every sample of the training set.

Units. Sample i is row i of the training files (counted across `data.train_files` in order, as the
data loader counts). Scoring unit u is the samples at positions ``[u*U, min((u+1)*U, N))`` of round 1's
first-pass order — `data.dataset.epoch_order` with the config's `data.shuffle` and `data.seed`, the
order the trainer read (ascending ids without shuffling) — the last unit possibly short. U
(`--unit-samples`) is a whole number of global training batches: `multi_round.score_unit_tokens`
(default ~2M tokens, the official unit) rounded to whole batches (`score_unit_samples`), so a
unit is exactly k consecutive optimizer steps' batches of round 1 (as sets of samples), shuffled or
not. The order's recipe is recorded in the meta (`unit_order`). The model runs `--batch-size` rows at a time (default train.batch_size, the compiled training
shape), U being a multiple of it. A sample's score is its token-mean next-token loss; a unit's score is
the token-mean loss over its samples (= `PanGuPiWithLoss` on the whole unit).

Parallel layout. The scorer builds the model through the trainer (`trainer.build_loss_network`)
and sets it up with `sharding.parallelize`, under the layout `setup_parallel` sets from the config:
  * data parallel (msrun, w ranks): rank r scores units ``r, r + w, ...`` and saves them to
    ``OUT.parts/rank{r:03d}-of{w:03d}.npz``; rank 0 checks and merges every part;
  * semi-auto parallel (tensor parallel / ZeRO, Ascend): the ranks run one sharded graph with the
    layout's strategies on full global batches (`full_batch`), so all ranks score every unit together
    and the first rank of the last stage writes the single part ``rank000-of001.npz`` and merges it.
    A pipeline-parallel forward is not supported (score with parallel.pipeline_stage=1).

OUT (a .npz file) holds

    unit_loss    float64 [num_units]   indexed by unit id
    sample_loss  float64 [N]           indexed by sample id
    unit_size, num_samples             int64 scalars
    meta         JSON string: checkpoint, files, unit size, unit order (shuffle, seed), scorers, and the
                 fingerprint of the weights

plus OUT with suffix .json: a readable summary. Every part records the unit ids it holds; merging
refuses a part whose ids are not exactly the ones its rank owes (a repeated, missing or foreign id),
whose sample count does not fit its units, or whose losses are not finite. Resume: a rank's part is
rewritten atomically every `flush_every` units; a restart with the same checkpoint, data, unit size
and world loads it and scores only the units after it. A part from a different run is refused
(``--overwrite`` starts over). A non-finite loss stops scoring, naming the unit and its samples.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Optional

import numpy as np

from pangu_pro.io import atomic_path, atomic_write_json, read_json
from pangu_pro.rounds import sampling
from pangu_pro.rounds.sampling import num_units as count_units, unit_size
from pangu_pro.runlock import hold_on_rank0
from pangu_pro.tokens import checkpoint_convention_problem

PARTS_SUFFIX = ".parts"


def score_unit_samples(config, workers: int) -> int:
    """Samples per scoring unit: `multi_round.score_unit_tokens` rounded to whole global training
    batches (train.batch_size x grad_accum_steps x data-parallel replicas x pipeline micro batches),
    at least one. Replicas: `workers` under data parallel, parallel.data_parallel under semi-auto."""
    tc, p = config.train, config.parallel
    semi_auto = p.model_parallel > 1 or p.pipeline_stage > 1 or p.optimizer_shard
    replicas = p.data_parallel if semi_auto else workers
    micro = p.micro_batch_num if p.pipeline_stage > 1 else 1
    global_batch = tc.batch_size * tc.grad_accum_steps * replicas * micro
    return unit_size(config.multi_round.score_unit_tokens, global_batch, config.model.seq_length)


def per_sample_loss_cell(network):
    """Per-row (summed NLL [B], counted positions [B]) of `network`: `PanGuPiRowLosses`."""
    from pangu_pro.model.pangu_pi import PanGuPiRowLosses

    return PanGuPiRowLosses(network)


def scoring_network(config, par, weights=None):
    """The per-row loss network of `config` under this process's layout (the trainer's builder):
    under semi-auto parallel it is set up as a forward-only net (`sharding.parallelize`: the layout's
    strategies, no wrapper); the per-row sum runs replicated (its [B, T] input gathered), so every
    rank holds every row's loss."""
    from pangu_pro.model.sharding import parallelize
    from pangu_pro.train.trainer import build_loss_network

    if par.semi_auto and config.parallel.pipeline_stage > 1:
        from pangu_pro.configtools import ConfigError

        raise ConfigError("parallel.pipeline_stage", f"is {config.parallel.pipeline_stage}: scoring runs no pipeline "
                          "forward; score with parallel.pipeline_stage=1 (tensor/data parallel) on merged weights")
    _, net = build_loss_network(config, loss_cell=per_sample_loss_cell, weights=weights)
    if par.semi_auto:
        net = parallelize(net, config.parallel, forward_only=True).net
        net.row_sum.shard(((1, 1),))
    net.set_train(False)
    return net


# ------------------------------------------------------------------------------ work split and parts

def rank_units(num_units: int, rank: int, world: int) -> np.ndarray:
    """The unit ids scorer `rank` of `world` scores, in order: ``range(num_units)[rank::world]``."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside [0, {world})")
    return np.arange(num_units, dtype=np.int64)[rank::world]


def unit_lengths(ids: np.ndarray, unit_size: int, num_samples: int) -> np.ndarray:
    """Samples in each unit of `ids` (unit_size, or fewer for the last unit)."""
    ids = np.asarray(ids, np.int64)
    return np.minimum((ids + 1) * unit_size, num_samples) - ids * unit_size


def unit_order(meta: dict, num_samples: int) -> np.ndarray:
    """The order of `num_samples` samples that units are cut from (module doc), rebuilt from a scores
    file's meta. Files written before the order was recorded cut their units from corpus order, and
    get that."""
    from pangu_pro.data.dataset import epoch_order

    spec = meta.get("unit_order", {"shuffle": False, "seed": 0})
    return epoch_order(num_samples, shuffle=bool(spec["shuffle"]), seed=int(spec["seed"]))


def parts_dir(out: Path) -> Path:
    return out.parent / f"{out.name}{PARTS_SUFFIX}"


def part_path(out: Path, rank: int, world: int) -> Path:
    return parts_dir(out) / f"rank{rank:03d}-of{world:03d}.npz"


def weights_fingerprint(path: Path) -> dict:
    """What identifies a weights file cheaply: its resolved path, size and modification time."""
    stat = path.stat()
    return {"weights": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def save_part(path: Path, meta: dict, unit_ids: np.ndarray, unit_loss: np.ndarray, sample_loss: np.ndarray,
              complete: bool) -> None:
    """One rank's results so far, written atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, meta=np.array(json.dumps(meta)), unit_ids=np.asarray(unit_ids, np.int64),
                     unit_loss=np.asarray(unit_loss, np.float64), sample_loss=np.asarray(sample_loss, np.float64),
                     complete=np.array(complete))


def load_part(path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {"meta": json.loads(str(data["meta"])), "unit_ids": data["unit_ids"],
                    "unit_loss": data["unit_loss"], "sample_loss": data["sample_loss"],
                    "complete": bool(data["complete"]), "path": str(path)}
    except (KeyError, ValueError, OSError) as err:
        raise ValueError(f"{path}: not a scoring part file ({err}); pass --overwrite to start over") from None


def check_part(part: dict, meta: dict, expected_ids: np.ndarray, path: Path, complete: bool = False) -> None:
    """Refuse a part written for another run, or one that does not hold a prefix of this rank's units
    (all of them when `complete`) with one finite loss per unit and per sample of those units."""
    for key in sorted(set(meta) | set(part["meta"])):
        if part["meta"].get(key) != meta.get(key):
            raise ValueError(f"{path}: partial scores of another run ({key}: {part['meta'].get(key)!r} there, "
                             f"{meta.get(key)!r} now); pass --overwrite to start over")
    ids = np.asarray(part["unit_ids"], np.int64)
    repeated = _first_repeat(ids)
    if repeated is not None:
        raise ValueError(f"{path}: unit {repeated} appears more than once; the part is corrupt, pass --overwrite")
    want = expected_ids if complete else expected_ids[:ids.size]
    if ids.size > expected_ids.size or not np.array_equal(ids, want):
        raise ValueError(f"{path}: holds units {ids[:8].tolist()}..., not this rank's "
                         f"{'' if complete else 'next '}units {want[:8].tolist()}...; pass --overwrite")
    if part["unit_loss"].shape != ids.shape:
        raise ValueError(f"{path}: {part['unit_loss'].size} unit losses for {ids.size} unit ids")
    n = int(unit_lengths(ids, meta["unit_size"], meta["num_samples"]).sum())
    if part["sample_loss"].size != n:
        raise ValueError(f"{path}: {part['sample_loss'].size} sample losses for units of {n} samples")
    if not (np.isfinite(part["unit_loss"]).all() and np.isfinite(part["sample_loss"]).all()):
        raise ValueError(f"{path}: holds non-finite losses")


def _first_repeat(ids: np.ndarray) -> Optional[int]:
    values, counts = np.unique(ids, return_counts=True)
    return int(values[counts > 1][0]) if (counts > 1).any() else None


def merge_parts(parts: list[dict], num_units: int, unit_size: int, num_samples: int,
                order: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """Assemble the ranks' parts by unit id into (unit_loss [num_units], sample_loss [N] by sample id);
    a part's sample losses follow its units' samples in `order` (`unit_order`; ascending when None).

    Every unit must appear exactly once over all parts (a part repeating an id inside itself included);
    ValueError otherwise, naming the unit and the part."""
    unit_loss = np.full(num_units, np.nan)
    sample_loss = np.full(num_samples, np.nan)
    seen = np.zeros(num_units, dtype=np.int64)
    for part in parts:
        where = part.get("path", "a part")
        ids = np.asarray(part["unit_ids"], np.int64)
        repeated = _first_repeat(ids)
        if repeated is not None:
            raise ValueError(f"{where}: unit {repeated} appears more than once in the part")
        if ids.size and (ids.min() < 0 or ids.max() >= num_units):
            raise ValueError(f"{where}: unit id outside [0, {num_units})")
        if part["unit_loss"].size != ids.size:
            raise ValueError(f"{where}: {part['unit_loss'].size} unit losses for {ids.size} unit ids")
        lengths = unit_lengths(ids, unit_size, num_samples)
        if lengths.sum() != part["sample_loss"].size:
            raise ValueError(f"{where}: holds {part['sample_loss'].size} sample losses for units of "
                             f"{int(lengths.sum())} samples")
        seen[ids] += 1
        unit_loss[ids] = part["unit_loss"]
        offset = 0
        for u, length in zip(ids, lengths):
            positions = slice(u * unit_size, u * unit_size + length)
            sample_loss[positions if order is None else order[positions]] = \
                part["sample_loss"][offset:offset + length]
            offset += length
    if (seen != 1).any():
        bad = int(np.flatnonzero(seen != 1)[0])
        raise ValueError(f"unit {bad} was scored {seen[bad]} times by the parts (expected once)")
    return unit_loss, sample_loss


def save_scores(out: Path, unit_loss: np.ndarray, sample_loss: np.ndarray, unit_size: int, meta: dict) -> dict:
    """Write the scores file OUT (.npz) and its summary OUT.json; returns the summary."""
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, unit_loss=unit_loss, sample_loss=sample_loss, unit_size=np.int64(unit_size),
                     num_samples=np.int64(sample_loss.size), meta=np.array(json.dumps(meta)))
    summary = {"scores": str(out), "num_units": int(unit_loss.size), "num_samples": int(sample_loss.size),
               "unit_size": int(unit_size), "mean_unit_loss": float(unit_loss.mean()),
               "min_unit_loss": float(unit_loss.min()), "max_unit_loss": float(unit_loss.max()),
               "mean_sample_loss": float(sample_loss.mean()), **meta}
    atomic_write_json(out.with_suffix(".json"), summary)
    return summary


def load_scores(path: str | Path) -> dict:
    """A scores file as {unit_loss, sample_loss, unit_size, num_samples, meta}; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: scores file not found (write one with `pangu-pro score`)")
    try:
        with np.load(path, allow_pickle=False) as data:
            scores = {"unit_loss": np.asarray(data["unit_loss"], np.float64),
                      "sample_loss": np.asarray(data["sample_loss"], np.float64),
                      "unit_size": int(data["unit_size"]), "num_samples": int(data["num_samples"]),
                      "meta": json.loads(str(data["meta"]))}
    except (KeyError, ValueError, OSError) as err:
        raise ValueError(f"{path}: not a pangu-pro scores file ({err}); re-run `pangu-pro score`") from None
    if scores["sample_loss"].size != scores["num_samples"] or \
            scores["unit_loss"].size != count_units(scores["num_samples"], scores["unit_size"]):
        raise ValueError(f"{path}: inconsistent sizes: {scores['unit_loss'].size} unit and "
                         f"{scores['sample_loss'].size} sample scores for {scores['num_samples']} samples in "
                         f"units of {scores['unit_size']}")
    return scores


# ------------------------------------------------------------------------------------- the command

def score(config, checkpoint, *, out=None, files=None, unit_samples: Optional[int] = None,
          batch_size: Optional[int] = None, flush_every: int = 16, overwrite: bool = False, progress: bool = True,
          merge_timeout: float = 3600.0, announce=print) -> dict:
    """Score the training set with the weights in `checkpoint` (module doc); returns the merging rank's
    summary (other ranks return their own part's counts). `unit_samples` defaults to
    `score_unit_samples` for this layout. Rank 0 holds the run lock of the parts folder
    (`pangu_pro.runlock`: a second scoring run onto the same --out refuses)."""
    with contextlib.ExitStack() as held:
        return _score(config, checkpoint, out, files, unit_samples, batch_size, flush_every, overwrite, progress,
                      merge_timeout, announce, held)


def _score(config, checkpoint, out, files, unit_samples: Optional[int], batch_size: Optional[int], flush_every: int,
           overwrite: bool, progress: bool, merge_timeout: float, announce, held: contextlib.ExitStack) -> dict:
    from pangu_pro.progress import progress_bar
    from mindspore import Tensor

    from pangu_pro.data.dataset import count_samples, create_dataset, resolve_files
    from pangu_pro.model.weights import resolve_weights
    from pangu_pro.runtime import adapt_to_device, init_mindspore
    from pangu_pro.train.trainer import setup_parallel

    if flush_every < 1:
        raise ValueError(f"flush_every must be at least 1, got {flush_every}")
    target = init_mindspore()
    par = setup_parallel(config)
    # data parallel: every rank scores its own units; semi-auto: one sharded graph scores them all
    scorer, scorers = (0, 1) if par.semi_auto else (par.rank, par.world)
    lead = par.rank == (par.writer if par.semi_auto else 0)
    say = announce if (lead and announce is not None) else (lambda *_: None)
    paths = resolve_files(files or config.data.train_files) if (files or config.data.train_files) else None
    if paths is None:
        raise ValueError("no training data to score: set data.train_files or pass --data")
    weights = resolve_weights(checkpoint)
    problem = checkpoint_convention_problem(weights)
    if problem:  # the data itself is checked by the loader
        say(f"warning: {problem}")
    rows = (batch_size or config.train.batch_size) * (par.read_factor if par.semi_auto else 1)
    if config.multi_round is None:
        from pangu_pro.config import MultiRoundConfig

        config = dataclasses.replace(config, multi_round=MultiRoundConfig())
    unit = unit_samples or score_unit_samples(config, par.world)
    if rows < 1 or unit < 1 or unit % rows:
        raise ValueError(f"the scoring unit ({unit} samples) must be a positive multiple of the rows scored at a "
                         f"time ({rows}); set --unit-samples / --batch-size accordingly")
    total = count_samples(paths)
    n_units = count_units(total, unit)
    out = Path(out or Path(config.train.output_dir) / "scores.npz")
    hold_on_rank0(held, parts_dir(out), "scoring", par.rank, par.world, remove=True)
    meta = {**weights_fingerprint(weights), "files": [str(Path(p).resolve()) for p in paths],
            "num_samples": total, "unit_size": unit, "scorers": scorers,
            "unit_order": {"shuffle": bool(config.data.shuffle), "seed": int(config.data.seed)}}
    first_pass = unit_order(meta, total)

    if out.is_file() and not overwrite:
        existing = load_scores(out)
        if existing["meta"] == meta:
            say(f"{out} already holds these scores")
            return read_json(out.with_suffix(".json")) if out.with_suffix(".json").is_file() else {}
        raise ValueError(f"{out} holds scores of another run (checkpoint, data, unit size or world differ); "
                         f"pass --overwrite or choose another --out")

    mine = rank_units(n_units, scorer, scorers)
    part_file = part_path(out, scorer, scorers)
    writes = lead or not par.semi_auto
    done, unit_losses, sample_losses = 0, [], []
    if part_file.is_file() and writes:
        if overwrite:
            part_file.unlink()
        else:
            part = load_part(part_file)
            check_part(part, meta, mine, part_file)
            done = part["unit_ids"].size
            unit_losses, sample_losses = list(part["unit_loss"]), list(part["sample_loss"])
    if lead and overwrite and out.is_file():
        out.unlink()

    def flush(complete: bool) -> None:
        if writes:
            save_part(part_file, meta, mine[:len(unit_losses)], np.array(unit_losses), np.array(sample_losses),
                      complete)

    todo = mine[done:]
    batches_per_unit = unit // rows
    bar = progress_bar(total=mine.size, initial=done, disable=not (progress and lead), desc="score",
                       unit="unit")
    try:
        if todo.size:
            if done:
                say(f"resuming: {done} of scorer {scorer}'s {mine.size} units already scored")
            order = sampling.unit_samples(todo, "batch", unit, total, first_pass)
            dataset = create_dataset(paths, rows, shuffle=False, indices=order, drop_remainder=False)
            device_config = dataclasses.replace(config, model=adapt_to_device(config.model, target, say))
            net = scoring_network(device_config, par, weights)
            sums, counts = [], []
            for position, (input_ids,) in enumerate(dataset.create_tuple_iterator(num_epochs=1, output_numpy=True)):
                u = int(todo[position // batches_per_unit])
                got = input_ids.shape[0]
                if input_ids.shape[1] - 1 > config.model.seq_length:
                    raise ValueError(f"model.seq_length {config.model.seq_length} is shorter than the data's "
                                     f"{input_ids.shape[1] - 1}-token samples")
                if got < rows:  # the short last batch: pad to keep one compiled shape
                    input_ids = np.concatenate([input_ids, np.repeat(input_ids[:1], rows - got, 0)])
                s, c = (x.asnumpy().astype(np.float64)[:got] for x in net(Tensor(input_ids)))
                sums.append(s)
                counts.append(c)
                length = int(unit_lengths(np.array([u]), unit, total)[0])
                if sum(x.size for x in sums) < length:
                    continue
                s, c = np.concatenate(sums), np.concatenate(counts)
                sums, counts = [], []
                per_sample = s / np.maximum(c, 1.0)
                unit_value = s.sum() / max(c.sum(), 1.0)
                if not (np.isfinite(per_sample).all() and math.isfinite(unit_value)):
                    flush(False)
                    bad = [int(first_pass[u * unit + i]) for i in np.flatnonzero(~np.isfinite(per_sample))]
                    raise ValueError(f"non-finite loss on unit {u} (samples {bad[:8]}): the checkpoint "
                                     f"{weights} cannot score the data")
                unit_losses.append(unit_value)
                sample_losses.extend(per_sample.tolist())
                bar.update(1)
                if len(unit_losses) % flush_every == 0:
                    flush(False)
        flush(True)
    finally:
        bar.close()
    if not lead:
        return {"rank": par.rank, "units": int(mine.size) if writes else 0}

    parts = [wait_for_part(part_path(out, r, scorers), meta, rank_units(n_units, r, scorers), merge_timeout)
             for r in range(scorers)]
    unit_loss, sample_loss = merge_parts(parts, n_units, unit, total, first_pass)
    summary = save_scores(out, unit_loss, sample_loss, unit, meta)
    held.close()  # the scores are written: release (and remove) the parts folder's lock, then the folder
    for r in range(scorers):
        part_path(out, r, scorers).unlink(missing_ok=True)
    try:
        parts_dir(out).rmdir()
    except OSError:
        pass
    say(f"scored {total} samples in {n_units} units of {unit}: mean unit loss {summary['mean_unit_loss']:.4f}; "
        f"wrote {out}")
    return summary


def wait_for_part(path: Path, meta: dict, expected_ids: np.ndarray, timeout: float, poll: float = 0.2) -> dict:
    """The merging rank: wait until another rank's part is complete (written atomically, so a file read
    is whole), then check it like a resumed part: same run, exactly the rank's unit ids, sizes, finite."""
    deadline = time.monotonic() + timeout
    while True:
        if path.is_file():
            part = load_part(path)
            if part["complete"]:
                check_part(part, meta, expected_ids, path, complete=True)
                return part
            if part["meta"] != meta:
                raise ValueError(f"{path}: written for another run")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: rank did not finish scoring within {timeout:.0f} s")
        time.sleep(poll)


def score_command(args) -> int:
    from pangu_pro.config import load_config
    from pangu_pro.provenance import check_checkpoint_data, check_data

    config = load_config(args.config, args.overrides)
    files, key = (args.data, "--data") if args.data else (config.data.train_files, "data.train_files")
    check_data(config, files, key)  # the shards against the model, and against the checkpoint's tokenizer
    check_checkpoint_data(files, key, args.checkpoint)
    score(config, args.checkpoint, out=args.out, files=args.data, unit_samples=args.unit_samples,
          batch_size=args.batch_size, flush_every=args.flush_every, overwrite=args.overwrite,
          progress=not args.no_progress)
    return 0
