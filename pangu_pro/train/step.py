"""One training step as compiled cells: forward, backward, (accumulate), reduce, check, clip, update.

    TrainStep(loss_net, optimizer, grad_clip=1.0, grad_accum_steps=k, world=w)
    out = step(batches, lr, loss_scale)   # k batches of input_ids [B, S+1] -> StepOutput

With k = 1 a single graph (`FusedStep`) does everything. With k > 1 on the stand-alone / data-parallel
path, `MicroStep` runs k times, each adding its gradients into zeroed accumulators (``ops.assign_add``,
no communication), then `AccumulatedUpdate` divides by k and applies them once (mindspore-notes,
gradient accumulation); MindFormers' accumulation cell needs semi-auto parallel, which the CPU lacks.
Both end in `GradientUpdate`:

    grads  = mean over data-parallel ranks    (DistributedGradReducer, world > 1 only)
    norm   = sqrt(sum ||g||^2) / (loss_scale * k)   (the loss was multiplied by loss_scale before backward)
    finite = isfinite(norm) and isfinite(loss) (works on the CPU, unlike TrainOneStepWithLossScaleCell)
    grads *= 1 / (loss_scale * k) * min(1, clip / norm)
    if finite: optimizer(grads, lr)           (otherwise nothing changes: weights, moments, step count)

The loss returned is the mean over the k micro batches and, in data parallel, over the ranks.

Semi-auto parallel (tensor/pipeline parallel, ZeRO; Ascend) has one graph per update, always: the loss
net is an `nn.PipelineCell` (pipeline, `micro_batch_num` micro batches) or MindSpore's
`GradAccumulation` (k > 1 without a pipeline, the k batches concatenated), each summing its micro
losses while the framework accumulates their gradients, so gradients are reduced (all-reduce /
ZeRO reduce-scatter) once per update. `nn.PipelineGradReducer` hands the accumulated gradients over
and `ParallelGradientUpdate` computes the norm over every slice and the overflow flag over every
rank (see its doc; docs/training.md, "Gradient norm, overflow and accumulation under
parallelism").
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import mindspore as ms
from mindspore import Tensor, nn, ops

from pangu_pro.model.sharding import gradients_mean


@dataclass
class StepOutput:
    loss: float
    finite: bool  # loss and every gradient finite; False means the update was not applied
    grad_norm: float  # global norm before clipping (unscaled)


def sum_of_squares(x):
    """||x||^2 as a BLAS dot product: faster than square + sum on the CPU, and more exact than L2Loss."""
    flat = ops.cast(x, ms.float32).reshape(1, -1)
    return ops.matmul(flat, flat.reshape(-1, 1)).reshape(())


class GradientUpdate(nn.Cell):
    """Raw gradients -> data-parallel mean, overflow check, unscale + clip, optimizer (if finite).

    Stand-alone and data parallel (the CPU path): every rank holds whole, already reduced gradients,
    so the norm is a local sum; it is a BLAS dot per tensor (`sum_of_squares`), the fastest form on
    the CPU. `grad_scale` is what the raw gradients must be divided by (loss scale x summed micro
    losses); it is folded into the clip factor so the gradients are multiplied once:
    g <- g * (1 / grad_scale) * min(1, clip / norm), norm = ||g|| / grad_scale.
    `finite` is isfinite(norm) and isfinite(loss): any NaN/inf gradient makes the sum of squares NaN/inf.
    """

    def __init__(self, optimizer, grad_clip: float, world: int = 1, reducer=None):
        super().__init__(auto_prefix=False)
        self.optimizer = optimizer
        self.grad_clip = float(grad_clip)
        self.world = world
        if reducer is None and world > 1:
            reducer = nn.DistributedGradReducer(optimizer.params, mean=gradients_mean("data_parallel"), degree=world)
        self.reducer = reducer

    def construct(self, grads, lr, grad_scale, loss):
        if self.reducer is not None:
            grads = self.reducer(grads)
        norm = ops.sqrt(ops.stack([sum_of_squares(g) for g in grads]).sum()) / grad_scale
        finite = ops.logical_and(ops.isfinite(norm), ops.isfinite(loss))
        factor = 1.0 / grad_scale
        if self.grad_clip > 0:
            factor = factor * self.grad_clip / ops.maximum(norm, self.grad_clip)
        if finite:
            self.optimizer(tuple(g * factor for g in grads), lr)
        return finite, norm


_unscale = ops.MultitypeFuncGraph("unscale")
_nonfinite = ops.MultitypeFuncGraph("nonfinite")


@_unscale.register("Tensor", "Tensor")
def _unscale_tensor(inverse_scale, grad):
    return ops.cast(grad, ms.float32) * inverse_scale


@_nonfinite.register("Tensor")
def _nonfinite_tensor(grad):
    """1.0 if `grad` holds a NaN/inf, else 0.0 (MindSpore's loss-scale cell's infnan check), shape (1,)."""
    return (1.0 - ops.cast(ops.isfinite(grad).all(), ms.float32)).reshape((1,))


class ParallelGradientUpdate(nn.Cell):
    """The same update under semi-auto parallel (tensor/pipeline parallel, ZeRO; Ascend).

    Here a rank's gradients are slices (1/mp under tensor parallel, its stage's under a pipeline,
    1/dp under ZeRO), so a local norm or overflow test is wrong. As MindFormers' `MFTrainOneStepCell`
    / `MFPipelineWithLossScaleCell` do:
    - `reducer` (`nn.PipelineGradReducer`, with a pipeline or one-graph accumulation) hands over the
      gradients the framework accumulated over the micro batches;
    - the gradients are unscaled, then clipped by MindFormers' `ClipGradNorm`: its per-tensor square
      sums go through an `ExpandDims` marked `grad_scale`, the pattern MindSpore's parallel pass
      recognises to all-reduce the norm over every slice (a MatMul dot product is not recognised);
      with `grad_clip` 0 the norm is written with the same square-sum function and not applied;
    - the overflow flag (NaN/inf in any gradient slice or the loss) is summed over all ranks with an
      AllReduce, so every rank skips or applies the update together.
    """

    def __init__(self, optimizer, grad_clip: float, reducer=None):
        super().__init__(auto_prefix=False)
        from mindformers.core.clip_grad import ClipGradNorm, get_square_sum

        self.optimizer = optimizer
        self.reducer = reducer
        self.world = 1  # the graph has global semantics: no loss all-reduce in the step
        self.clip = ClipGradNorm(max_norm=float(grad_clip)) if grad_clip > 0 else None
        self.square_sum = get_square_sum
        self.hyper_map = ops.HyperMap()
        self.allreduce = ops.AllReduce()

    def construct(self, grads, lr, grad_scale, loss):
        if self.reducer is not None:
            grads = self.reducer(grads)
        grads = self.hyper_map(ops.partial(_unscale, 1.0 / grad_scale), grads)
        if self.clip is not None:
            grads, norm = self.clip(grads)
        else:
            norm = ops.sqrt(ops.addn(self.hyper_map(self.square_sum, grads)))
        flags = ops.addn(self.hyper_map(_nonfinite, grads)) + _nonfinite_tensor(loss)
        finite = self.allreduce(flags).reshape(()) < 0.5
        if finite:
            self.optimizer(grads, lr)
        return finite, norm.reshape(())


class FusedStep(nn.Cell):
    """input_ids, lr, loss_scale -> (loss, finite, grad_norm) in one graph. `micro_batches`: how many
    micro losses the loss net sums (a PipelineCell's micro_batch_num, a GradAccumulation's steps)."""

    def __init__(self, loss_net, update, micro_batches: int = 1):
        super().__init__(auto_prefix=False)
        self.loss_net = loss_net
        self.update = update
        self.micro_batches = float(micro_batches)
        self.weights = update.optimizer.params
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.world = update.world
        self.allreduce = ops.AllReduce() if self.world > 1 else None

    def construct(self, input_ids, lr, loss_scale):
        loss = self.loss_net(input_ids)
        grads = self.grad(self.loss_net, self.weights)(input_ids, ops.cast(loss_scale, loss.dtype))
        if self.allreduce is not None:
            loss = self.allreduce(loss) / self.world
        loss = loss / self.micro_batches
        finite, norm = self.update(grads, lr, loss_scale * self.micro_batches, loss)
        return loss, finite, norm


class MicroStep(nn.Cell):
    """k > 1 (CPU path): one micro batch's forward and backward, gradients added into the accumulators."""

    def __init__(self, loss_net, weights, accumulators, world: int = 1):
        super().__init__(auto_prefix=False)
        self.loss_net = loss_net
        self.world = world
        self.allreduce = ops.AllReduce() if world > 1 else None
        self.weights = weights
        self.accumulators = accumulators
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.hyper_map = ops.HyperMap()

    def construct(self, input_ids, loss_scale):
        loss = self.loss_net(input_ids)
        grads = self.grad(self.loss_net, self.weights)(input_ids, ops.cast(loss_scale, loss.dtype))
        added = self.hyper_map(ops.assign_add, self.accumulators, grads)
        if self.allreduce is not None:  # report the mean over ranks (gradients are reduced once, later)
            loss = self.allreduce(loss) / self.world
        return ops.depend(loss, added)


class AccumulatedUpdate(nn.Cell):
    """k > 1 (CPU path): the mean of the accumulated gradients through GradientUpdate, then zero the
    accumulators. The micro losses' finiteness is checked on the host."""

    def __init__(self, update: GradientUpdate, accumulators, grad_accum_steps: int):
        super().__init__(auto_prefix=False)
        self.update = update
        self.accumulators = accumulators
        self.k = float(grad_accum_steps)
        self.hyper_map = ops.HyperMap()

    def construct(self, lr, loss_scale):
        finite, norm = self.update(self.accumulators, lr, loss_scale * self.k, ops.zeros((), ms.float32))
        zeroed = self.hyper_map(ops.assign, self.accumulators, tuple(ops.zeros_like(a) for a in self.accumulators))
        return ops.depend(finite, zeroed), norm


class TrainStep:
    """One optimizer step over `grad_accum_steps` micro batches (see the module doc).

    `semi_auto`: the step of a semi-auto parallel run (`ParallelGradientUpdate`, one graph). There
    `grad_accum_steps` > 1 needs `loss_net` to be the framework's one-graph accumulation wrapper
    (`sharding.parallelize`), which sums `micro_batches` = k micro losses; the k batches are
    concatenated along the batch axis and the wrapper slices them again inside the graph.
    """

    def __init__(self, loss_net: nn.Cell, optimizer, *, grad_clip: float = 1.0, grad_accum_steps: int = 1,
                 world: int = 1, micro_batches: int = 1, grad_reducer=None, semi_auto: bool = False):
        if micro_batches > 1 and grad_accum_steps > 1 and not semi_auto:
            raise ValueError("pipeline micro batches and grad_accum_steps > 1 do not combine; raise micro_batches")
        self.grad_accum_steps = grad_accum_steps
        self.world = world
        self.semi_auto = semi_auto
        loss_net.set_train(True)
        if semi_auto:
            self.update = ParallelGradientUpdate(optimizer, grad_clip, grad_reducer)
        else:
            self.update = GradientUpdate(optimizer, grad_clip, world, grad_reducer)
        if grad_accum_steps == 1 or semi_auto:
            self.fused = FusedStep(loss_net, self.update, micro_batches)
        else:
            self.accumulators = optimizer.params.clone(prefix="grad_accum", init="zeros")
            self.micro = MicroStep(loss_net, optimizer.params, self.accumulators, world)
            self.apply = AccumulatedUpdate(self.update, self.accumulators, grad_accum_steps)

    @property
    def one_graph(self) -> bool:
        return self.grad_accum_steps == 1 or self.semi_auto

    def _joined(self, batches: Sequence[Tensor]) -> Tensor:
        return batches[0] if len(batches) == 1 else ops.concat(tuple(batches), axis=0)

    def compile(self, batches: Sequence[Tensor]) -> None:
        """Compile without running (under semi-auto this slices the parameters, so that a rank's
        checkpoint slice can be loaded before the first step)."""
        lr_t, scale_t = Tensor(0.0, ms.float32), Tensor(1.0, ms.float32)
        if self.one_graph:
            self.fused.compile(self._joined(batches), lr_t, scale_t)
        else:
            self.micro.compile(batches[0], scale_t)
            self.apply.compile(lr_t, scale_t)

    def __call__(self, batches: Sequence[Tensor], lr: float, loss_scale: float = 1.0) -> StepOutput:
        if len(batches) != self.grad_accum_steps:
            raise ValueError(f"expected {self.grad_accum_steps} micro batches, got {len(batches)}")
        lr_t = Tensor(lr, ms.float32)
        scale_t = Tensor(loss_scale, ms.float32)
        if self.one_graph:
            loss, finite, norm = self.fused(self._joined(batches), lr_t, scale_t)
            return StepOutput(float(loss.asnumpy()), bool(finite.asnumpy()), float(norm.asnumpy()))
        losses = [self.micro(batch, scale_t) for batch in batches]
        finite, norm = self.apply(lr_t, scale_t)
        loss = sum(float(l.asnumpy()) for l in losses) / len(losses)
        return StepOutput(loss, bool(finite.asnumpy()) and math.isfinite(loss), float(norm.asnumpy()))
