"""Distributed checkpoints: what each rank holds and saves, and the strategy files that describe it.

Under semi-auto parallel each rank saves only what it owns (`owned_parameters`: its pipeline stage's
parameters) as the slices it holds, in `rank_checkpoint_dir(output_dir, rank)`, and MindSpore writes
(`strategy_ckpt_config`, set by `sharding.set_parallel_context`) a strategy file describing how each
parameter was split:

    layout of a parameter = device matrix (e.g. [dp, mp]) + tensor map (per tensor dim, the device
    matrix dim it is split over, counted from the right; -1 = not split) + the parallel optimizer's
    (ZeRO's) further split of dimension 0 (opt_weight_shard_size / _step)

e.g. a column-parallel weight [out, in] under ((dp, 1), (mp, 1)) has device matrix [dp, mp] and
tensor map [0, -1]: rows split over mp (the rightmost device dimension), repeated over dp; under ZeRO
each mp piece is split again over dp. A rank's coordinates in the device matrix are its index in
row-major order (the last dimension varies fastest). With pipeline parallel every stage writes its
own strategy file; its device matrix covers the ranks of that stage, which are consecutive.

Merging (whole tensors for export, or a resume on another layout) is MindSpore's
`transform_checkpoints`, driven by `pangu_pro.train.merge`. `slice_for_rank` is our NumPy statement
of the same layout rules (tests build synthetic rank files with it, and MindSpore's merge must give
the full tensors back); `write_strategy_file` writes strategy files as MindSpore does.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import mindspore as ms


@dataclass(frozen=True)
class ParamLayout:
    """How one parameter is split over the devices of its (pipeline stage's) group."""

    dev_matrix: tuple[int, ...]
    tensor_map: tuple[int, ...]
    field: int = 0  # MindSpore's "field" split (embedding-bag style); 0 for every layout we use
    opt_weight_shard_size: int = 0
    opt_weight_shard_step: int = 0

    @property
    def device_count(self) -> int:
        return int(np.prod(self.dev_matrix))

    @property
    def splits(self) -> tuple[int, ...]:
        """Number of pieces along each tensor dimension."""
        return tuple(1 if m == -1 else self.dev_matrix[len(self.dev_matrix) - 1 - m] for m in self.tensor_map)

    def coordinates(self, rank: int) -> tuple[int, ...]:
        """The device-matrix coordinates of local rank `rank` (row-major, last dimension fastest)."""
        return tuple(int(c) for c in np.unravel_index(rank, self.dev_matrix))

    def block(self, rank: int) -> tuple[int, ...]:
        """Which piece along each tensor dimension local rank `rank` holds (model-parallel split)."""
        coords = self.coordinates(rank)
        return tuple(0 if m == -1 else coords[len(self.dev_matrix) - 1 - m] for m in self.tensor_map)

    def optimizer_split(self, rank: int) -> tuple[int, int]:
        """(pieces, piece) of the parallel optimizer's (ZeRO's) further split of dimension 0 within
        the model-parallel piece; (1, 0) without it.

        MindSpore (`parallel/_tensor.py`, `_construct_tensor_layout_for_opt_shard`) takes the device
        dimensions the tensor is repeated over, innermost first, until `opt_weight_shard_size` pieces
        are covered (-1: all of them); a dimension larger than what is left contributes its inner
        part (its coordinate modulo what is left). The piece index is row-major over those."""
        if self.opt_weight_shard_size == 0:
            return 1, 0
        sharded = {len(self.dev_matrix) - 1 - m for m in self.tensor_map if m != -1}
        repeated = [i for i, size in enumerate(self.dev_matrix) if i not in sharded and size > 1]
        remaining = (self.opt_weight_shard_size if self.opt_weight_shard_size > 0
                     else int(np.prod([self.dev_matrix[i] for i in repeated])))
        pieces, coords = remaining, self.coordinates(rank)
        index, stride = 0, 1
        for dim in reversed(repeated):
            size = min(self.dev_matrix[dim], remaining)
            if self.dev_matrix[dim] % size or remaining % size:
                raise ValueError(f"optimizer shard size {self.opt_weight_shard_size} does not divide the repeated "
                                 f"device dimensions of {list(self.dev_matrix)}")
            index += (coords[dim] % size) * stride
            stride *= size
            remaining //= size
            if remaining == 1:
                break
        if remaining != 1:
            raise ValueError(f"optimizer shard size {self.opt_weight_shard_size} exceeds the repeated devices of "
                             f"{list(self.dev_matrix)} (tensor map {list(self.tensor_map)})")
        return pieces, index


def layout_from_strategy(dp_mp_strategy: Sequence[int], dev_matrix: Sequence[int]) -> ParamLayout:
    """A layout from a weight's shard strategy over a device matrix, e.g. (mp, 1) over [dp, mp].

    Each split of the strategy is matched to the rightmost unused device dimension of that size
    (the convention MindSpore follows for the weights of our layout)."""
    tensor_map, used = [], set()
    for split in dp_mp_strategy:
        if split == 1:
            tensor_map.append(-1)
            continue
        for dim in range(len(dev_matrix) - 1, -1, -1):
            if dev_matrix[dim] == split and dim not in used:
                used.add(dim)
                tensor_map.append(len(dev_matrix) - 1 - dim)
                break
        else:
            raise ValueError(f"split {split} matches no free dimension of the device matrix {list(dev_matrix)}")
    return ParamLayout(tuple(dev_matrix), tuple(tensor_map))


def _from_proto(layout) -> ParamLayout:
    return ParamLayout(tuple(layout.dev_matrix[0].dim), tuple(layout.tensor_map[0].dim), int(layout.field),
                       int(layout.opt_weight_shard_size), int(layout.opt_weight_shard_step))


def _to_proto(layout: ParamLayout):
    from mindspore.train.node_strategy_pb2 import ParallelLayouts

    proto = ParallelLayouts()
    proto.dev_matrix.add().dim.extend(layout.dev_matrix)
    proto.tensor_map.add().dim.extend(layout.tensor_map)
    proto.param_split_shape.add()
    proto.indices_offset.add()
    proto.field = layout.field
    proto.opt_weight_shard_size = layout.opt_weight_shard_size
    proto.opt_weight_shard_step = layout.opt_weight_shard_step
    return proto


def read_strategy(path: str | Path) -> dict[str, ParamLayout]:
    """Parameter name -> layout, from a strategy file MindSpore wrote (protobuf, or `.json`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"strategy file not found: {path}")
    return {name: _from_proto(layout) for name, layout in ms.build_searched_strategy(str(path)).items()}


def write_strategy_file(layouts: Mapping[str, ParamLayout], path: str | Path, stage: int = 0) -> None:
    """Write layouts as MindSpore writes a rank's strategy at compile time (protobuf
    `ParallelStrategyMap`, with the pipeline stage that `merge_pipeline_strategys` groups by).
    For synthetic runs in tests and for the cluster check's expected strategies."""
    from mindspore.train.node_strategy_pb2 import ParallelStrategyMap

    proto = ParallelStrategyMap()
    proto.current_stage = stage
    marker = proto.parallel_strategy_item.add()
    marker.node_name = f"stage_{stage}"
    marker.parallel_strategys.stage = stage
    for name, layout in layouts.items():
        item = proto.parallel_layout_item.add()
        item.param_name = name
        item.parallel_layouts.CopyFrom(_to_proto(layout))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(proto.SerializeToString())


def slice_for_rank(full: np.ndarray, layout: ParamLayout, rank: int) -> np.ndarray:
    """The piece of `full` that local rank `rank` holds under `layout` (even splits): the
    model-parallel piece, then, under the parallel optimizer, its piece of dimension 0 of that."""
    if len(layout.tensor_map) != full.ndim:
        raise ValueError(f"layout has {len(layout.tensor_map)} dims, tensor has {full.ndim}")
    index = []
    for size, pieces, piece in zip(full.shape, layout.splits, layout.block(rank)):
        if size % pieces:
            raise ValueError(f"dimension of size {size} does not split evenly into {pieces}")
        step = size // pieces
        index.append(slice(piece * step, (piece + 1) * step))
    local = full[tuple(index)]
    pieces, piece = layout.optimizer_split(rank)
    if pieces > 1:
        if local.shape[0] % pieces:
            raise ValueError(f"dimension 0 of size {local.shape[0]} does not split evenly into {pieces} "
                             f"optimizer shards")
        local = np.split(local, pieces, axis=0)[piece]
    return local


def parameter_stages(model) -> dict[str, int]:
    """Pipeline stage of each parameter of `model`, from the `pipeline_stage` of the innermost cell
    that has one (`sharding.assign_pipeline_stages`); parameters of no staged cell are left out."""
    stages: dict[str, int] = {}
    for _, cell in model.cells_and_names():  # parents come before their children: the innermost wins
        stage = getattr(cell, "_pipeline_stage", None)
        if stage is None:
            continue
        for param in cell.get_parameters():
            stages[param.name] = int(stage)
    return stages


def owned_parameters(model, pipeline_stages: int, world: int, rank: int) -> Optional[set[str]]:
    """Names of the parameters rank `rank` holds and saves: those of its pipeline stage (ranks are
    split into `pipeline_stages` consecutive groups, as MindSpore does) plus any parameter of no
    stage. None without pipeline parallelism (every rank holds every parameter, maybe sliced)."""
    if pipeline_stages <= 1:
        return None
    own = rank // (world // pipeline_stages)
    stages = parameter_stages(model)
    return {p.name for p in model.trainable_params() if stages.get(p.name, own) == own}


def rank_checkpoint_dir(output_dir: str | Path, rank: int) -> Path:
    """Where rank `rank` writes its checkpoints: <output_dir>/checkpoints/rank_<rank>."""
    return Path(output_dir) / "checkpoints" / f"rank_{rank}"
