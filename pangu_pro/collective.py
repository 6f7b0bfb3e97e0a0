"""Collectives every rank calls at the same point: did any rank see something (a stop signal, a refused
lock, an error)? Used where a decision on one rank must stop all of them together, since a rank that
stops alone leaves the others waiting in their next collective."""
from __future__ import annotations

from typing import Optional

import numpy as np

_allreduce = None


def any_rank(flag: bool, world: int) -> bool:
    """True on every rank if `flag` is true on any rank: an all-reduce over the world group that every
    rank must call at the same point (one float32; single process: no communication)."""
    global _allreduce
    if world == 1:
        return bool(flag)
    from mindspore import Tensor, ops

    if _allreduce is None:
        _allreduce = ops.AllReduce()
    return float(_allreduce(Tensor(np.array([1.0 if flag else 0.0], np.float32))).asnumpy()[0]) > 0


def agree(rank: int, world: int, error: Optional[BaseException]) -> None:
    """Raise on every rank if any rank failed (an error on one rank alone would leave the others waiting
    in their next collective forever). Single process: re-raise `error`."""
    if any_rank(error is not None, world) and error is None:
        raise RuntimeError(f"rank {rank}: stopping because another rank failed (see its error)")
    if error is not None:
        raise error
