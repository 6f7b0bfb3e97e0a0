"""Thin MindSpore cells for inheritance: hard-concrete masks, the masked-teacher loss with its size
constraint, the mask-learning train step, mask gradients (Taylor) and block similarities (cosine).

The formulas are those of `pangu_pro.inherit.hardconcrete` (tested there in numpy); these cells only
evaluate them on tensors inside the compiled graph.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from mindspore import Parameter, ParameterTuple, Tensor, mutable, nn, ops

from pangu_pro.config import ModelConfig
from pangu_pro.inherit.hardconcrete import (BETA, EPS, KEEP_CEILING, KEEP_FLOOR, KEEP_OFFSET, LIMIT_L, LIMIT_R,
                                            LOG_ALPHA_LIMIT, log_alpha_for_keep_probability)


class HardConcrete(nn.Cell):
    """One hard-concrete mask of `shape`: sampled z for uniform noise `u`, or the noise-free median.

    The noise is an input, drawn on the host from (seed, step, rank): a resumed run sees exactly the
    same draws (an in-graph sampler would restart its stream on resume)."""

    def __init__(self, name: str, shape: Sequence[int], init_keep: float):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.size = int(np.prod(self.shape))
        init = float(np.clip(log_alpha_for_keep_probability(init_keep), -LOG_ALPHA_LIMIT, LOG_ALPHA_LIMIT))
        self.log_alpha = Parameter(Tensor(np.full(self.shape, init, np.float32)), name=f"masks.{name}.log_alpha")
        self.sigmoid = ops.Sigmoid()

    def clamped(self):
        return ops.clip_by_value(self.log_alpha, -LOG_ALPHA_LIMIT, LOG_ALPHA_LIMIT)

    def construct(self, u=None):
        log_alpha = self.clamped()
        if u is not None:
            u = ops.clip_by_value(ops.reshape(u, self.shape), EPS, 1.0 - EPS)
            s = self.sigmoid((ops.log(u) - ops.log(1.0 - u) + log_alpha) / BETA)
        else:
            s = self.sigmoid(log_alpha / BETA)
        return ops.clip_by_value(s * (LIMIT_R - LIMIT_L) + LIMIT_L, 0.0, 1.0)

    def counted_keep(self):
        """`hardconcrete.counted_keep`: the keep probability rescaled to the clamp's range."""
        return (self.sigmoid(self.clamped() - KEEP_OFFSET) - KEEP_FLOOR) / (KEEP_CEILING - KEEP_FLOOR)


def _scatter_matrix(rows: np.ndarray, total: int) -> Tensor:
    """[total, len(rows)] one-hot matrix placing a mask of the kept rows into all `total` rows."""
    m = np.zeros((total, len(rows)), np.float32)
    m[np.asarray(rows), np.arange(len(rows))] = 1.0
    return Tensor(m)


class InheritMasks(nn.Cell):
    """The network's masks (head [L, H], neuron [L, F], hidden [d], layer gates [L], AugShortcut
    bottleneck [L, B]) from learned hard-concrete masks and fixed parts.

    `learned`: the mask types to learn, a subset of heads / neurons / hidden / layers / bottleneck. `layers`:
    the teacher layers kept by a fixed layer selection (their gates are 1, the others 0; heads, neurons
    and bottleneck units are learned for those layers only). With "layers" learned, the first and last gates stay 1 and the
    intermediate ones are learned. `penalty()` gives the size constraint and the expected sparsity of each learned type, in
    the order of `learned`. ``masks(noise)`` samples with `noise` [noise_size] uniform in (0, 1) (see
    `noise`), ``masks()`` gives the noise-free masks.
    """

    def __init__(self, cfg: ModelConfig, learned: Sequence[str], layers: Optional[np.ndarray] = None,
                 init_keep: float = 0.9979):
        super().__init__()
        self.learned = tuple(learned)
        self.num_layers = cfg.num_layers
        self.groups = cfg.num_heads // cfg.kv_heads
        self.learn_heads = "heads" in self.learned
        self.learn_neurons = "neurons" in self.learned
        self.learn_hidden = "hidden" in self.learned
        self.learn_layers = "layers" in self.learned
        self.learn_bottleneck = "bottleneck" in self.learned
        if self.learn_layers and layers is not None:
            raise ValueError("layers are either learned or fixed, not both")
        kept = np.arange(cfg.num_layers) if layers is None else np.asarray(layers)
        self.fixed_layers = layers is not None and len(kept) < cfg.num_layers
        self.place = _scatter_matrix(kept, cfg.num_layers)  # [L, L_kept]
        gates = np.zeros(cfg.num_layers, np.float32)
        gates[kept] = 1.0
        self.fixed_gates = Tensor(gates)
        n = len(kept)
        self.heads = HardConcrete("heads", (n, cfg.kv_heads), init_keep) if self.learn_heads else None
        self.neurons = (HardConcrete("neurons", (n, cfg.intermediate_size), init_keep)
                        if self.learn_neurons else None)
        self.hidden = HardConcrete("hidden", (cfg.hidden_size,), init_keep) if self.learn_hidden else None
        self.layers = (HardConcrete("layers", (cfg.num_layers - 2,), init_keep) if self.learn_layers else None)
        self.bottleneck = (HardConcrete("bottleneck", (n, cfg.aug_shortcut_dim), init_keep)
                           if self.learn_bottleneck else None)
        cells = [c for c in self.cells_in_order() if c is not None]  # noise layout: new types go last
        self.noise_size = sum(c.size for c in cells)
        offsets = np.cumsum([0] + [c.size for c in cells]).tolist()
        self.slices = {id(c): (offsets[i], offsets[i + 1]) for i, c in enumerate(cells)}
        self.head_slice = self._slice(self.heads)
        self.neuron_slice = self._slice(self.neurons)
        self.hidden_slice = self._slice(self.hidden)
        self.layer_slice = self._slice(self.layers)
        self.bottleneck_slice = self._slice(self.bottleneck)
        self.ones_head = Tensor(np.ones((cfg.num_layers, cfg.num_heads), np.float32))
        self.ones_neuron = Tensor(np.ones((cfg.num_layers, cfg.intermediate_size), np.float32))
        self.one = Tensor(np.ones((1,), np.float32))
        self.matmul = ops.MatMul()

    def cells_in_order(self):
        """The mask cells in `hardconcrete.MASK_TYPES` order (None where not learned)."""
        return (self.heads, self.neurons, self.hidden, self.layers, self.bottleneck)

    def _slice(self, cell):
        return self.slices[id(cell)] if cell is not None else (0, 0)

    def noise(self, seed: int, step: int, rank: int = 0) -> np.ndarray:
        """The uniform noise of `step` on data-parallel rank `rank`, a function of (seed, step, rank) only:
        every rank samples its own masks (the averaged gradient sees `world` samples), and a resumed
        run draws exactly what the uninterrupted one did."""
        return np.random.default_rng([seed, step, rank]).random(self.noise_size, dtype=np.float32)

    def construct(self, noise=None):
        if self.learn_heads:
            u = None if noise is None else noise[self.head_slice[0]:self.head_slice[1]]
            z = self.matmul(self.place, self.heads(u))  # [L, KV]
            n, kv = z.shape
            head = ops.reshape(ops.tile(ops.reshape(z, (n, kv, 1)), (1, 1, self.groups)), (n, kv * self.groups))
        else:
            head = self.ones_head
        if self.learn_neurons:
            u = None if noise is None else noise[self.neuron_slice[0]:self.neuron_slice[1]]
            neuron = self.matmul(self.place, self.neurons(u))
        else:
            neuron = self.ones_neuron
        hidden = None
        if self.learn_hidden:
            hidden = self.hidden(None if noise is None else noise[self.hidden_slice[0]:self.hidden_slice[1]])
        if self.learn_layers:
            u = None if noise is None else noise[self.layer_slice[0]:self.layer_slice[1]]
            layer = ops.concat((self.one, self.layers(u), self.one))
        elif self.fixed_layers:
            layer = self.fixed_gates
        else:
            layer = None
        bottleneck = None
        if self.learn_bottleneck:
            u = None if noise is None else noise[self.bottleneck_slice[0]:self.bottleneck_slice[1]]
            bottleneck = self.matmul(self.place, self.bottleneck(u))  # [L, B]
        return head, neuron, hidden, layer, bottleneck

    def penalty(self, targets, lambda1, lambda2):
        """(sum over learned types of the mean over rows of lambda1 (s_r - t) + lambda2 (s_r - t)^2,
        mean sparsity per type [T]), s_r from `counted_keep`: heads, neurons and bottleneck units have a
        row per layer, each pulled to the target on its own; hidden channels and layer gates are one row (`hardconcrete.layer_constraint`)."""
        total = 0.0
        means = []
        for cell in self.cells_in_order():
            if cell is None:
                continue
            j = len(means)
            keep = cell.counted_keep()
            rows = 1.0 - (keep.mean(-1) if len(cell.shape) == 2 else keep.mean(keep_dims=True))
            gap = rows - targets[j]
            total = total + (lambda1[j] * gap + lambda2[j] * gap * gap).mean()
            means.append(rows.mean())
        return total, ops.stack(means)

    def mask_parameters(self) -> list[Parameter]:
        return [c.log_alpha for c in self.cells_in_order() if c is not None]


class MaskedTeacherLoss(nn.Cell):
    """(input_ids, targets [T], noise) -> (LM loss + per-layer size constraint (`InheritMasks.penalty`),
    LM loss, mean sparsity per type s [T])."""

    def __init__(self, loss_net: nn.Cell, masks: InheritMasks):
        super().__init__(auto_prefix=False)
        self.loss_net = loss_net
        self.masks = masks
        n = len(masks.learned)
        self.lambda1 = Parameter(Tensor(np.zeros(n, np.float32)), name="lagrangian.lambda1")
        self.lambda2 = Parameter(Tensor(np.zeros(n, np.float32)), name="lagrangian.lambda2")

    def construct(self, input_ids, targets, noise):
        head, neuron, hidden, layer, bottleneck = self.masks(noise)
        lm = self.loss_net(input_ids, None, head, neuron, hidden, layer, bottleneck)
        penalty, s = self.masks.penalty(targets, self.lambda1, self.lambda2)
        return lm + penalty, lm, s


class GradientAscent(nn.Cell):
    """Plain gradient steps p <- p - lr * g on the lambdas, whose gradients arrive negated (so this
    ascends). No momentum: a multiplier with momentum keeps pushing after the constraint is met and the
    sparsity overshoots its target."""

    def __init__(self, params):
        super().__init__(auto_prefix=False)
        self.params = ParameterTuple(params)

    def state_parameters(self):
        return []

    def construct(self, grads, lr):
        done = True
        for p, g in zip(self.params, grads):
            done = ops.depend(done, ops.assign(p, p - lr * g))
        return done


class MaskGradients(nn.Cell):
    """(input_ids, targets, noise) -> (total, LM loss, s [T], gradients of the total loss with respect to
    the log_alphas, the lambdas and, when they train, the teacher's weights). Frozen weights get none."""

    def __init__(self, loss: MaskedTeacherLoss, params):
        super().__init__(auto_prefix=False)
        self.loss = loss
        self.params = ParameterTuple(params)
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)

    def construct(self, input_ids, targets, noise):
        total, lm, s = self.loss(input_ids, targets, noise)
        sens = (ops.ones_like(total), ops.zeros_like(lm), ops.zeros_like(s))
        grads = self.grad(self.loss, self.params)(input_ids, targets, noise, sens)
        return total, lm, s, grads


class MaskUpdate(nn.Cell):
    """Apply (accumulated) gradients: AdamW on the log_alphas, ascent on the lambdas (their gradients are
    negated: MindSpore optimizers reject negative learning rates), clipped AdamW on the teacher's weights
    when they train; log_alpha is clamped to [-4.6, 4.6] afterwards. In data parallel (`world` > 1)
    every gradient is first averaged over the ranks."""

    def __init__(self, params, mask_opt, lambda_opt, weight_opt=None, grad_clip: float = 1.0, world: int = 1):
        super().__init__(auto_prefix=False)
        self.mask_opt = mask_opt
        self.lambda_opt = lambda_opt
        self.weight_opt = weight_opt
        self.n_mask = len(mask_opt.params)
        self.n_lambda = len(lambda_opt.params)
        self.log_alphas = mask_opt.params
        self.grad_clip = float(grad_clip)
        self.reducer = nn.DistributedGradReducer(ParameterTuple(params), mean=True, degree=world) if world > 1 else None

    def construct(self, grads, lr_mask, lr_lambda, lr_weights):
        if self.reducer is not None:
            grads = self.reducer(grads)
        mask_grads = grads[:self.n_mask]
        lambda_grads = tuple(-g for g in grads[self.n_mask:self.n_mask + self.n_lambda])
        done = self.mask_opt(mask_grads, lr_mask)
        done = ops.depend(done, self.lambda_opt(lambda_grads, lr_lambda))
        if self.weight_opt is not None:
            weight_grads = grads[self.n_mask + self.n_lambda:]
            norm = ops.sqrt(ops.stack([ops.square(g).sum() for g in weight_grads]).sum())
            factor = self.grad_clip / ops.maximum(norm, self.grad_clip)
            done = ops.depend(done, self.weight_opt(tuple(g * factor for g in weight_grads), lr_weights))
        for p in self.log_alphas:
            done = ops.depend(done, ops.assign(p, ops.clip_by_value(ops.depend(p, done), -LOG_ALPHA_LIMIT,
                                                                         LOG_ALPHA_LIMIT)))
        return done


class MaskTrainStep:
    """One mask-learning step over `len(micro_batches)` micro batches (gradient accumulation): the
    gradients of every micro batch are averaged, then applied once (`MaskUpdate`). Returns (total,
    LM loss averaged over the micro batches and, in data parallel, the ranks, s [T]) as numpy."""

    def __init__(self, loss: MaskedTeacherLoss, mask_opt, lambda_opt, weight_opt=None, grad_clip: float = 1.0,
                 world: int = 1):
        params = list(mask_opt.params) + list(lambda_opt.params)
        if weight_opt is not None:
            params += list(weight_opt.params)
        self.gradients = MaskGradients(loss, params)
        self.update = MaskUpdate(params, mask_opt, lambda_opt, weight_opt, grad_clip, world)
        self.allreduce = ops.AllReduce() if world > 1 else None
        self.world = world

    def set_train(self, mode: bool = True):
        self.gradients.set_train(mode)
        self.update.set_train(mode)

    def __call__(self, micro_batches, targets, noises, lr_mask, lr_lambda, lr_weights):
        totals, lms, summed = [], [], None
        for ids, noise in zip(micro_batches, noises):
            total, lm, s, grads = self.gradients(ids, targets, noise)
            summed = grads if summed is None else tuple(a + b for a, b in zip(summed, grads))
            totals.append(float(total.asnumpy()))
            lms.append(float(lm.asnumpy()))
        n = len(micro_batches)
        if n > 1:
            summed = tuple(g / n for g in summed)
        self.update(mutable(tuple(summed)), lr_mask, lr_lambda, lr_weights)  # mutable: compiled once, not per call
        lm = np.float32(np.mean(lms))
        if self.allreduce is not None:
            lm = float(self.allreduce(Tensor(np.array([lm], np.float32))).asnumpy()[0]) / self.world
        return float(np.mean(totals)), float(lm), s.asnumpy()


class _LossOfMasks(nn.Cell):
    def __init__(self, loss_net: nn.Cell):
        super().__init__(auto_prefix=False)
        self.loss_net = loss_net

    def construct(self, input_ids, head, neuron, hidden, layer, bottleneck):
        return self.loss_net(input_ids, None, head, neuron, hidden, layer, bottleneck)


class MaskGradient(nn.Cell):
    """(input_ids, head [L, H], neuron [L, F], hidden [d], layer [L], bottleneck [L, B]) -> (loss, dL/dhead,
    dL/dneuron, dL/dhidden, dL/dbottleneck).

    At masks of ones, dL/dm of a unit equals the sum over its weights of w * dL/dw (first-order Taylor)."""

    def __init__(self, loss_net: nn.Cell):
        super().__init__(auto_prefix=False)
        self.forward = _LossOfMasks(loss_net)
        self.grad = ops.GradOperation(get_all=True)

    def construct(self, input_ids, head, neuron, hidden, layer, bottleneck):
        loss = self.forward(input_ids, head, neuron, hidden, layer, bottleneck)
        grads = self.grad(self.forward)(input_ids, head, neuron, hidden, layer, bottleneck)
        return loss, grads[1], grads[2], grads[3], grads[5]


class WeightGradient(nn.Cell):
    """(input_ids, head, neuron, hidden, layer, bottleneck) -> gradients of the LM loss with respect to the
    teacher's weights (`params`), under the given masks (Taylor's sum_abs form)."""

    def __init__(self, loss_net: nn.Cell, params):
        super().__init__(auto_prefix=False)
        self.forward = _LossOfMasks(loss_net)
        self.params = ParameterTuple(params)
        self.grad = ops.GradOperation(get_by_list=True)

    def construct(self, input_ids, head, neuron, hidden, layer, bottleneck):
        return self.grad(self.forward, self.params)(input_ids, head, neuron, hidden, layer, bottleneck)


class BlockSimilarity(nn.Cell):
    """input_ids [B, S] -> [L]: mean over tokens of 1 - cos(block input, block output) per layer
    (how much each block changes the residual stream; small means redundant)."""

    def __init__(self, network: nn.Cell):
        super().__init__(auto_prefix=False)
        self.network = network
        self.eps = 1e-8

    def construct(self, input_ids):
        model = self.network.model
        t = input_ids.shape[1]
        x = model.embed_tokens(input_ids)
        cos, sin = model.rope_cos[:t], model.rope_sin[:t]
        mask = model.mask_for(t)  # the compressed flash mask stays whole
        changes = []
        for i in range(len(model.layers)):
            y = model.layers[i](x, cos, sin, mask)
            dot = (x * y).sum(-1)
            norms = ops.sqrt((x * x).sum(-1) * (y * y).sum(-1)) + self.eps
            changes.append((1.0 - dot / norms).mean())
            x = y
        return ops.stack(changes)
