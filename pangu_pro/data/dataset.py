"""Reading packed MindRecord data for training and scoring.

The training loader is a `mindspore.dataset.MindDataset` driven by a `SubsetSampler` whose index list
this module computes in numpy (`sample_order`). Doing the order ourselves, rather than with the
dataset's own shuffle and sharding, makes every property exact and easy to check:

* shuffling: epoch e uses ``default_rng([seed, e]).permutation(n)``, the same on every machine;
* data parallel: rank r of w reads ``order[r::w]``, cut to ``n // w`` samples so that all ranks run
  the same number of steps (disjoint, and together covering all but ``n % w`` samples per epoch);
* a subset (multi-round training): `indices` (an array or a ``.npy`` file) replaces the epoch order
  (no shuffling: the list fixes the order) and is split the same way;
* several epochs: the per-rank orders of the epochs are concatenated before batching, so a batch may
  straddle two epochs and only the very last partial batch is dropped;
* exact resume: `skip_batches=k` removes the first ``k * batch_size`` entries of that list, so the
  batches after skipping are the batches an uninterrupted run would have read next. Skipped samples
  are never read.

Sample indices count across `files` in the order given (file 0's rows first). `resolve_files` turns
a preprocess output folder into its shard files in that order.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from pangu_pro.data.integrity import check_shards
from pangu_pro.data.preprocess import SHARD_PREFIX, SHARD_SUFFIX
from pangu_pro.tokens import check_shard_convention

Files = Union[str, Path, Sequence[Union[str, Path]]]
Indices = Union[None, str, Path, Sequence[int], np.ndarray]
COLUMN = "input_ids"


def resolve_files(paths: Files) -> list[str]:
    """Shard files from files and/or preprocess output folders (a folder gives its shards, sorted)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            shards = sorted(path.glob(f"{SHARD_PREFIX}*{SHARD_SUFFIX}"))
            if not shards:
                raise FileNotFoundError(f"{path}: no {SHARD_PREFIX}*{SHARD_SUFFIX} shards in this folder")
            files.extend(str(p) for p in shards)
        elif path.is_file():
            files.append(str(path))
        else:
            raise FileNotFoundError(f"{path}: MindRecord file or folder not found")
    if not files:
        raise ValueError("no MindRecord files given")
    return files


def count_samples(files: Files) -> int:
    """Number of samples in `files` (read from the MindRecord headers)."""
    import mindspore.dataset as ds

    paths = resolve_files(files)
    check_shards(paths)  # names a truncated or damaged shard before MindSpore reads it
    return ds.MindDataset(paths, columns_list=[COLUMN], shuffle=False).get_dataset_size()


def load_indices(indices: Indices, num_samples: int) -> Optional[np.ndarray]:
    """Indices as int64 [k] (from a list, an array or a .npy file), checked against `num_samples`."""
    if indices is None:
        return None
    where = "indices"
    if isinstance(indices, (str, Path)):
        where = str(indices)
        if not Path(indices).is_file():
            raise FileNotFoundError(f"{where}: index file not found")
        try:
            indices = np.load(where, allow_pickle=False)
        except ValueError as err:
            raise ValueError(f"{where}: not a numpy .npy file ({err})") from None
    array = np.asarray(indices)
    if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{where}: expected a 1-D integer array, got shape {array.shape} dtype {array.dtype}")
    array = array.astype(np.int64)
    bad = np.flatnonzero((array < 0) | (array >= num_samples))
    if bad.size:
        raise ValueError(f"{where}: index {array[bad[0]]} at position {bad[0]} is outside the data's "
                         f"{num_samples} samples ({bad.size} indices out of range)")
    return array


def epoch_order(num_samples: int, *, shuffle: bool, seed: int, epoch: int = 0) -> np.ndarray:
    """The global sample order of one epoch (int64 [num_samples]): ``default_rng([seed, epoch])``'s
    permutation, or ascending ids without shuffling. Global batch t of that epoch is the set
    ``order[t*G:(t+1)*G]`` for G samples per global batch, whatever the number of ranks (rank r reads
    ``order[r::w]``), which is what multi-round scoring units are cut from."""
    if shuffle:
        return np.random.default_rng([seed, epoch]).permutation(num_samples).astype(np.int64)
    return np.arange(num_samples, dtype=np.int64)


def sample_segments(num_samples: int, batch_size: int, *, shuffle: bool = True, seed: int = 1234, rank: int = 0,
                    world: int = 1, skip_batches: int = 0, indices: Optional[np.ndarray] = None,
                    num_epochs: int = 1) -> list[np.ndarray]:
    """`sample_order` cut at epoch boundaries: each segment holds no index twice."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside [0, {world})")
    if batch_size < 1 or num_epochs < 1 or skip_batches < 0:
        raise ValueError(f"need batch_size >= 1, num_epochs >= 1, skip_batches >= 0; got {batch_size}, "
                         f"{num_epochs}, {skip_batches}")
    to_skip = skip_batches * batch_size
    segments = []
    for epoch in range(num_epochs):
        order = indices if indices is not None else epoch_order(num_samples, shuffle=shuffle, seed=seed, epoch=epoch)
        per_rank = len(order) // world
        segment = order[rank::world][:per_rank].astype(np.int64)
        dropped = min(to_skip, len(segment))
        to_skip -= dropped
        if len(segment) > dropped:
            segments.append(segment[dropped:])
    return segments


def sample_order(num_samples: int, batch_size: int, **kwargs) -> np.ndarray:
    """The global sample indices rank `rank` reads, in order, after skipping (see the module doc)."""
    segments = sample_segments(num_samples, batch_size, **kwargs)
    return np.concatenate(segments) if segments else np.zeros(0, np.int64)


def create_dataset(files: Files, batch_size: int, *, shuffle: bool = True, seed: int = 1234, rank: int = 0,
                   world: int = 1, skip_batches: int = 0, indices: Indices = None, drop_remainder: bool = True,
                   num_epochs: int = 1, num_parallel_workers: int = 2):
    """A MindDataset yielding ``input_ids`` int32 [batch_size, seq_length + 1], ordered by `sample_order`.

    `files`: shard files or preprocess folders (a shard set written under another token convention is
    refused: `pangu_pro.tokens.check_shard_convention`). `indices`: a subset (array or .npy path) read in its
    own order instead of a shuffle. Raises ValueError when nothing is left to read (e.g. `skip_batches`
    past the end), naming the numbers.
    """
    import mindspore.dataset as ds

    paths = resolve_files(files)
    check_shard_convention(paths)
    total = count_samples(paths)
    segments = sample_segments(total, batch_size, shuffle=shuffle, seed=seed, rank=rank, world=world,
                               skip_batches=skip_batches, indices=load_indices(indices, total),
                               num_epochs=num_epochs)
    length = sum(len(segment) for segment in segments)
    if length // batch_size == 0 and (drop_remainder or length == 0):
        raise ValueError(f"no batch of {batch_size} left for rank {rank}/{world} after skipping {skip_batches} "
                         f"batches ({total} samples in {len(paths)} files, {num_epochs} epochs)")
    # A SubsetSampler takes at most one epoch's worth of indices: one dataset per epoch, concatenated
    # before batching, so a batch may still straddle two epochs.
    dataset = None
    for segment in segments:
        part = ds.MindDataset(paths, columns_list=[COLUMN], sampler=ds.SubsetSampler(segment),
                              num_parallel_workers=num_parallel_workers)
        dataset = part if dataset is None else dataset + part
    return dataset.batch(batch_size, drop_remainder=drop_remainder)


def read_samples(files: Files, indices: Indices = None) -> np.ndarray:
    """Samples as int32 [k, L], read sequentially with `FileReader` (all of them when `indices` is None).

    Independent of `create_dataset`'s sampler path, so tests can check one against the other; it
    reads every file, so it is meant for tests and scoring sets, not for training data.
    """
    from mindspore.mindrecord import FileReader

    rows = []
    for path in resolve_files(files):
        reader = FileReader(path, num_consumer=1, columns=[COLUMN])
        try:
            rows.extend(np.asarray(item[COLUMN], dtype=np.int32) for item in reader.get_next())
        finally:
            reader.close()
    lengths = {row.size for row in rows}
    if len(lengths) > 1:
        raise ValueError(f"samples of different lengths {sorted(lengths)} in {files}: not packed data")
    data = np.stack(rows) if rows else np.zeros((0, 0), dtype=np.int32)
    chosen = load_indices(indices, len(data))
    return data if chosen is None else data[chosen]
