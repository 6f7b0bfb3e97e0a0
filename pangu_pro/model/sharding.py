"""Tensor-, sequence- and pipeline-parallel layout of the PanGu-pi cells, in one file.

The cells (`layers.py`, `pangu_pi.py`) create every primitive in ``__init__`` and stay layout-free;
this module walks them and attaches strategies with ``prim.shard(...)`` (only under semi-auto or
auto parallel), assigns pipeline stages, marks recomputation and opts small parameters out of the
parallel optimizer. A tool calls two things: `set_parallel_context` (process set-up, once) and
`parallelize` (one loss network: strategies, stages, recompute, the pipeline/accumulation wrapper).

Layout (Megatron style, as MindFormers' LLaMA; weights are stored [out, in]; dp, mp = data and model
parallel; s = mp with sequence parallel, else 1). Linear layers flatten tokens to [B*T, in]:

| ops | strategy |
|---|---|
| wq, wk, wv, w1 (gate), w3 (up): column parallel | ((dp, 1), (mp, 1)) |
| wo, w2 (down): row parallel | ((dp, mp), (1, mp)); sequence parallel: out ((dp*mp, 1),) (reduce-scatter) |
| norms, residual adds ([B, T, d]) | (dp, s, 1); the norm weight (1,) |
| head split, RoPE, QK^T, softmax, PV ([B, N, T, D]) | (dp, mp, 1, 1); cos/sin tables and the mask replicated |
| SIAF per-channel ops ([B, T, F]) | (dp, 1, mp), a_i / b_i rows (1, mp): they follow the FFN split |
| AugShortcut W_down, W_up | ((dp*s, 1), (1, 1)): replicated weights, see below |
| embedding gather | ((1, 1), (dp, 1)), vocab parallel ((mp, 1), (dp, 1)) |
| LM head | ((dp*mp, 1), (1, 1)) (tokens split, weight replicated), vocab parallel ((dp, 1), (mp, 1)) |
| loss (log-softmax, gather) ([B, T, V]) | (dp, mp, 1): tokens split, the whole vocabulary on each device |
| loss with vocab parallel ([B*T, V]) | max, exp, sums, one-hot product (dp, mp); log-sum-exp, target (dp, 1): `vocab_nll` |

AugShortcut is replicated rather than split: its bottleneck is d/32 (56 for 1B Pro, 64 for 1.5B Pro,
128 for 7B), so splitting it would cost one extra [B, T, d] all-reduce per layer (the row-parallel
W_up) to save 2*d*d/32 FLOPs per token, ~1% of a layer; the replicated weights are 2*d^2/32 per
layer (0.2M at d = 1792). Under sequence parallel its input is already split along the sequence, so
the shortcut then runs on 1/mp of the tokens per device with no communication and no redundancy.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import mindspore as ms
from mindspore import nn

from pangu_pro.config import Config, ConfigError, ParallelConfig, check_layout
from pangu_pro.model.pangu_pi import PanGuPiWithLoss
from pangu_pro.model.plan import GRADIENT_ACCUMULATION_SHARD

PARALLEL_MODES = ("semi_auto_parallel", "auto_parallel")


def sharding_active() -> bool:
    """Whether the current auto-parallel context honours `.shard()` strategies."""
    return ms.get_auto_parallel_context("parallel_mode") in PARALLEL_MODES


def _shard(prim, in_strategy, out_strategy=None, applied: Optional[dict] = None, path: str = "") -> None:
    if out_strategy is None:
        prim.shard(in_strategy)
    else:
        prim.shard(in_strategy, out_strategy=out_strategy)
    if applied is not None:
        applied[path] = (in_strategy, out_strategy)


class _Sharder:
    """Attaches the table above to one model; `applied` records path -> (in, out) strategies."""

    def __init__(self, parallel_cfg: ParallelConfig):
        self.dp = parallel_cfg.data_parallel
        self.mp = parallel_cfg.model_parallel
        self.sp = parallel_cfg.model_parallel if parallel_cfg.sequence_parallel else 1
        self.sequence_parallel = parallel_cfg.sequence_parallel
        self.vocab_parallel = parallel_cfg.vocab_parallel
        self.applied: dict[str, tuple] = {}

    def op(self, cell, name, path, in_strategy, out_strategy=None):
        prim = getattr(cell, name, None)
        if prim is not None:
            _shard(prim, in_strategy, out_strategy, self.applied, f"{path}.{name}" if path else name)

    def column(self, linear, path):
        self.op(linear, "matmul", path, ((self.dp, 1), (self.mp, 1)))

    def row(self, linear, path):
        out = ((self.dp * self.mp, 1),) if self.sequence_parallel else None
        self.op(linear, "matmul", path, ((self.dp, self.mp), (1, self.mp)), out)

    def norm(self, norm, path):
        x = (self.dp, self.sp, 1)
        for name in ("square", "mean", "rsqrt"):
            self.op(norm, name, path, (x,))
        self.op(norm, "add", path, (x, ()))
        self.op(norm, "mul", path, (x, x))
        self.op(norm, "mul_weight", path, (x, (1,)))
        self.op(norm, "fused_norm", path, (x, (1,)))

    def rope(self, rope, path):
        heads = (self.dp, self.mp, 1, 1)
        for name in ("slice_lo", "slice_hi", "neg"):
            self.op(rope, name, path, (heads,))
        self.op(rope, "concat", path, (heads, heads))
        self.op(rope, "mul_cos", path, (heads, (1, 1)))
        self.op(rope, "mul_sin", path, (heads, (1, 1)))
        self.op(rope, "add", path, (heads, heads))
        self.op(rope, "fused_rope", path, (heads, (1, 1, 1, 1), (1, 1, 1, 1)))

    def attention(self, attn, path):
        dp, mp = self.dp, self.mp
        heads = (dp, mp, 1, 1)
        for name in ("wq", "wk", "wv"):
            self.column(getattr(attn, name), f"{path}.{name}")
        self.row(attn.wo, f"{path}.wo")
        self.op(attn, "transpose", path, ((dp, 1, mp, 1),))  # [B, T, N, D] -> [B, N, T, D]
        self.rope(attn.rope, f"{path}.rope")
        self.op(attn, "tile_kv", path, ((dp, mp, 1, 1, 1),))
        self.op(attn, "qk_matmul", path, (heads, heads))
        self.op(attn, "mul_scale", path, (heads, ()))
        self.op(attn, "add_mask", path, (heads, (1, 1)))
        self.op(attn, "softmax", path, (heads,))
        self.op(attn, "pv_matmul", path, (heads, heads))
        self.op(attn, "merge_heads", path, (heads,))
        self.op(attn, "mul_head_mask", path, (heads, (1, mp, 1, 1)))
        self.op(attn, "flash_attention", path, (heads, heads, heads, (1, 1)))

    def aug_shortcut(self, shortcut, path):
        rows = (self.dp * self.sp, 1)
        self.op(shortcut.down, "matmul", f"{path}.down", (rows, (1, 1)))
        self.op(shortcut.up, "matmul", f"{path}.up", (rows, (1, 1)))
        x = (self.dp, self.sp, 1)
        self.op(shortcut, "mul_inv_sqrt2", path, (x, ()))
        self.op(shortcut, "erf", path, (x,))
        self.op(shortcut, "add_one", path, (x, ()))
        self.op(shortcut, "mul", path, (x, x))
        self.op(shortcut, "mul_half", path, (x, ()))

    def feed_forward(self, ffn, path):
        channels = (self.dp, 1, self.mp)
        self.column(ffn.w1, f"{path}.w1")
        self.column(ffn.w3, f"{path}.w3")
        self.row(ffn.w2, f"{path}.w2")
        if ffn.use_siaf:
            siaf, spath = ffn.siaf, f"{path}.siaf"
            self.op(siaf, "row", spath, ((1, self.mp),))
            self.op(siaf, "mul", spath, (channels, (1, self.mp)))
            self.op(siaf, "add_bias", spath, (channels, (1, self.mp)))
            self.op(siaf, "silu", spath, (channels,))
            self.op(siaf, "sum_terms", spath, (channels, channels))
        else:
            self.op(ffn, "silu", path, (channels,))
        self.op(ffn, "mul", path, (channels, channels))
        self.op(ffn, "mul_neuron_mask", path, (channels, (self.mp,)))

    def layer(self, layer, path):
        x = (self.dp, self.sp, 1)
        self.norm(layer.attention_norm, f"{path}.attention_norm")
        self.attention(layer.attention, f"{path}.attention")
        if layer.use_aug_shortcut:
            self.aug_shortcut(layer.aug_shortcut, f"{path}.aug_shortcut")
        self.norm(layer.ffn_norm, f"{path}.ffn_norm")
        self.feed_forward(layer.feed_forward, f"{path}.feed_forward")
        for name in ("add_attention", "add_shortcut", "add_ffn"):
            self.op(layer, name, path, (x, x))

    def backbone(self, model, path):
        table = (self.mp, 1) if self.vocab_parallel else (1, 1)
        self.op(model.embed_tokens, "gather", f"{path}.embed_tokens", (table, (self.dp, 1)))
        for i, layer in enumerate(model.layers):
            self.layer(layer, f"{path}.layers.{i}")
        self.norm(model.norm, f"{path}.norm")

    def head(self, lm, path):
        if self.vocab_parallel:
            strategy = ((self.dp, 1), (self.mp, 1))
        else:
            strategy = ((self.dp * self.mp, 1), (1, 1))
        if lm.tie_word_embeddings:
            self.op(lm, "tied_matmul", path, strategy)
        else:
            self.op(lm.lm_head, "matmul", "lm_head", strategy)

    def loss(self, with_loss, path):
        self.op(with_loss, "reduce_sum", path, ((self.dp, self.mp),))
        if not self.vocab_parallel:
            tokens = (self.dp, self.mp, 1)
            self.op(with_loss, "log_softmax", path, (tokens,))
            self.op(with_loss, "gather_d", path, (tokens, tokens))
            return
        # vocabulary-parallel cross-entropy on the head's [tokens, V] layout (dp, mp): every reduction over V
        # is local to a device's slice, then an all-reduce of [tokens, 1] (MindFormers' CrossEntropyLoss)
        with_loss.vocab_parallel = True
        split, rows = (self.dp, self.mp), (self.dp, 1)
        for name in ("logit_max", "exp", "sum_exp", "sum_target"):
            self.op(with_loss, name, path, (split,))
        self.op(with_loss, "sub_max", path, (split, rows))
        self.op(with_loss, "one_hot", path, (split, (), ()))
        self.op(with_loss, "mul_target", path, (split, split))
        self.op(with_loss, "log", path, (rows,))
        self.op(with_loss, "sub_target", path, (rows, rows))


def _parts(model):
    """(loss cell or None, causal LM or None, backbone) of a PanGuPiWithLoss / ForCausalLM / Model."""
    loss = model if hasattr(model, "network") and hasattr(model, "gather_d") else None
    lm = model.network if loss is not None else model
    if not hasattr(lm, "model"):  # a bare PanGuPiModel
        return loss, None, lm
    return loss, lm, lm.model


def shard_model(model: nn.Cell, parallel_cfg: ParallelConfig, force: bool = False) -> dict[str, tuple]:
    """Attach the layout to every primitive of `model` (PanGuPiWithLoss, PanGuPiForCausalLM or
    PanGuPiModel). Does nothing unless the context is semi-auto/auto parallel (or `force`).

    Returns {primitive path: (in_strategy, out_strategy)} of what was applied, for logs and tests.
    """
    if not (force or sharding_active()):
        return {}
    sharder = _Sharder(parallel_cfg)
    loss, lm, backbone = _parts(model)
    sharder.backbone(backbone, "model")  # paths as the parameter names: model.layers.0.attention.wq
    if lm is not None:
        sharder.head(lm, "")
    if loss is not None:
        sharder.loss(loss, "loss")
    return sharder.applied


def assign_pipeline_stages(model: nn.Cell, parallel_cfg: ParallelConfig) -> list[int]:
    """Set `pipeline_stage` on what MindFormers stages: the embedding (0), each decoder layer
    (`ParallelConfig.layer_stages`), the final norm and LM head (last stage). The loss cell stays
    unstaged, so its `input_ids[:, :-1]` slice goes with its consumer, the stage-0 embedding, and the
    log-softmax with the last-stage logits. Returns the layers' stages."""
    _, lm, backbone = _parts(model)
    last = parallel_cfg.pipeline_stage - 1
    stages = parallel_cfg.layer_stages(len(backbone.layers))
    backbone.embed_tokens.pipeline_stage = 0
    for layer, stage in zip(backbone.layers, stages):
        layer.pipeline_stage = stage
    backbone.norm.pipeline_stage = last
    if lm is not None and not lm.tie_word_embeddings:
        lm.lm_head.pipeline_stage = last
    return stages


SELECTIVE_RECOMPUTE = {  # cell attribute -> primitives whose outputs are recomputed, not stored
    "attention": ("qk_matmul", "mul_scale", "add_mask", "softmax"),  # the [B, N, T, T] scores
    "siaf": ("row", "mul", "add_bias", "silu", "sum_terms"),  # SIAF's n terms of [B, T, F]
    "feed_forward": ("silu",),
}


def apply_recompute(model: nn.Cell, parallel_cfg: ParallelConfig) -> None:
    """`full`: each decoder layer keeps only its input and recomputes the rest in the backward pass.
    `selective`: only the attention scores/probabilities and the FFN activation (SiLU or SIAF) are
    recomputed; see `pangu_pro.model.plan` for what each mode stores."""
    _, _, backbone = _parts(model)
    if parallel_cfg.recompute == "full":
        for layer in backbone.layers:
            layer.recompute()
    elif parallel_cfg.recompute == "selective":
        for layer in backbone.layers:
            cells = {"attention": layer.attention, "feed_forward": layer.feed_forward,
                     "siaf": getattr(layer.feed_forward, "siaf", None)}
            for key, names in SELECTIVE_RECOMPUTE.items():
                for name in names:
                    prim = getattr(cells[key], name, None) if cells[key] is not None else None
                    if prim is not None:
                        prim.recompute()


def exclude_from_optimizer_shard(model: nn.Cell) -> list[str]:
    """Norm weights stay whole under the parallel optimizer (tiny, and read by every rank)."""
    names = []
    for param in model.get_parameters():
        if param.name.endswith("norm.weight"):
            param.parallel_optimizer = False
            names.append(param.name)
    return names


def configure_model(model: nn.Cell, parallel_cfg: ParallelConfig) -> dict[str, tuple]:
    """Everything a trainer needs on the network: shards, pipeline stages, recompute, ZeRO opt-outs.
    Call it on the network with loss, after `set_parallel_context` and before wrapping/compiling."""
    applied = shard_model(model, parallel_cfg)
    if parallel_cfg.pipeline_stage > 1:
        assign_pipeline_stages(model, parallel_cfg)
    apply_recompute(model, parallel_cfg)
    if parallel_cfg.optimizer_shard:
        exclude_from_optimizer_shard(model)
    return applied


def parallel_mode(parallel_cfg: ParallelConfig) -> str:
    """semi_auto_parallel for tensor or pipeline parallel, data_parallel for dp alone, else stand_alone."""
    if parallel_cfg.model_parallel > 1 or parallel_cfg.pipeline_stage > 1:
        return "semi_auto_parallel"
    return "data_parallel" if parallel_cfg.data_parallel > 1 else "stand_alone"


def needs_semi_auto(parallel_cfg: ParallelConfig) -> bool:
    """Tensor/pipeline parallel (`parallel_mode`), or ZeRO: the parallel optimizer slices the
    parameters our own AdamW updates only under semi-auto parallel."""
    return parallel_mode(parallel_cfg) == "semi_auto_parallel" or parallel_cfg.optimizer_shard


def gradients_mean(mode: str) -> bool:
    """Whether the gradient all-reduce must divide by the group size, from how the loss is reduced.

    `mode` is the MindSpore parallel mode the step runs under. The rule (docs/parallel.md, "Gradient
    scale"): divide when a rank's loss is a mean over its own samples only, never when it already is
    the mean over the global batch.

    - data_parallel: the loss cell runs unchanged on each rank, a mean over that rank's batch; the
      gradient all-reduce sums dp such gradients, so it must divide by dp: True.
    - semi_auto_parallel / auto_parallel (tensor/pipeline parallel, ZeRO, one-graph accumulation): the
      graph has global semantics. The loss is the mean over the global batch (its ReduceSum is
      sharded, the framework all-reduces the partial sums); the framework divides the scalar loss's
      sensitivity by the stage's device count (`loss_repeated_mean`, on by default) and the backward
      of that all-reduce sums it back, so each rank's gradient is its share of the global gradient and
      the mirror all-reduce (or ZeRO's reduce-scatter) has to sum, not average: False. With True the
      framework's mirror backward multiplies by 1/(mirror group size) once more
      (`ops/_grad_experimental/grad_comm_ops.py`, `_MirrorOperator`/`_MirrorMicroStepOperator`/AllGather).
    """
    if mode == "data_parallel":
        return True
    if mode in PARALLEL_MODES:
        return False
    raise ValueError(f"gradients_mean has no meaning for parallel mode {mode!r}")


def parallel_context_kwargs(parallel_cfg: ParallelConfig, strategy_file: Optional[str] = None) -> dict:
    """The keyword arguments of `ms.set_auto_parallel_context` for this layout (a pure function).

    Under semi-auto parallel `full_batch` is on: every rank reads the same global batch of
    batch_size * data_parallel (* micro_batch_num with pipelining) samples and the framework splits
    it by the strategies; in data-parallel mode each rank reads its own shard (`dataset_shard`).
    """
    mode = parallel_mode(parallel_cfg)
    if mode == "stand_alone":
        return {"parallel_mode": mode}
    kwargs = {"parallel_mode": mode, "device_num": parallel_cfg.device_num, "gradients_mean": gradients_mean(mode)}
    if mode == "semi_auto_parallel":
        kwargs["full_batch"] = True
        kwargs["pipeline_stages"] = parallel_cfg.pipeline_stage
        if parallel_cfg.pipeline_stage > 1:
            kwargs["pipeline_config"] = {"pipeline_interleave": False, "pipeline_scheduler": "1f1b"}
        if strategy_file:
            kwargs["strategy_ckpt_config"] = {"save_file": strategy_file, "only_trainable_params": False}
    if parallel_cfg.optimizer_shard:
        kwargs["enable_parallel_optimizer"] = True
        kwargs["parallel_optimizer_config"] = {
            "gradient_accumulation_shard": GRADIENT_ACCUMULATION_SHARD,  # explicit: 2.9 documents both defaults
            "parallel_optimizer_threshold": parallel_cfg.optimizer_shard_threshold_kb,
            "optimizer_weight_shard_size": parallel_cfg.optimizer_weight_shard_size}
    # one buffer size for the gradient all-reduce and ZeRO's reduce-scatter (gradients) / all-gather (weights)
    fusion = ({"mode": "size", "config": parallel_cfg.allreduce_fusion_mb} if parallel_cfg.allreduce_fusion_mb > 0
              else {"mode": "auto", "config": None})
    kwargs["comm_fusion"] = {kind: dict(fusion) for kind in ("allreduce", "allgather", "reducescatter")}
    return kwargs


def set_parallel_context(parallel_cfg: ParallelConfig, device_num: Optional[int] = None,
                         strategy_file: Optional[str] = None, config: Optional[Config] = None) -> dict:
    """Check the layout against the devices and set MindSpore's auto-parallel context.

    Call after `mindspore.communication.init()` (msrun); `device_num` defaults to the group size.
    `strategy_file`: where this rank writes its strategy (e.g. `strategy_file_path(out, rank)`),
    needed to merge or reshard the per-rank checkpoints. Pass `config` to run the cross-section
    checks too (`check_layout`). Raises ConfigError naming the parallel key at fault.
    """
    if device_num is None:
        from mindspore.communication import get_group_size
        device_num = get_group_size() if parallel_cfg.device_num > 1 else 1
    if config is not None:
        check_layout(config, device_num)
    elif parallel_cfg.device_num != device_num:
        raise ConfigError("parallel", f"data_parallel {parallel_cfg.data_parallel} x model_parallel "
                          f"{parallel_cfg.model_parallel} x pipeline_stage {parallel_cfg.pipeline_stage} = "
                          f"{parallel_cfg.device_num}, but the run has {device_num} devices")
    kwargs = parallel_context_kwargs(parallel_cfg, strategy_file)
    ms.reset_auto_parallel_context()
    ms.set_auto_parallel_context(**kwargs)
    return kwargs


def strategy_file_path(output_dir: str, rank: int) -> str:
    """Where rank `rank` saves its parallel strategy (`distributed_ckpt` reads these)."""
    return f"{output_dir}/strategy/strategy_rank_{rank}.ckpt"


def dataset_shard(parallel_cfg: ParallelConfig, rank: int) -> tuple[int, int]:
    """(num_shards, shard_id) for this rank's dataset: one shard per data-parallel rank in data
    parallel mode; (1, 0) under semi-auto parallel, whose `full_batch` feeds every rank the batch."""
    if parallel_mode(parallel_cfg) == "data_parallel":
        return parallel_cfg.data_parallel, rank
    return 1, 0


class LazyInlineWithLoss(PanGuPiWithLoss):
    """PanGuPiWithLoss compiled once as a reusable sub-graph (`mindspore.lazy_inline`) instead of being
    inlined once per micro batch: what MindFormers' legacy `LlamaForCausalLM` does (MindSpore: under
    gradient accumulation only the outermost cell may carry it). Used under semi-auto parallel when a
    pipeline or accumulation wrapper calls the loss net several times; stand-alone it is never chosen."""

    @ms.lazy_inline
    def __init__(self, network):
        super().__init__(network)


class InterleavedMean(nn.Cell):
    """`nn.MicroBatchInterleaved` returns the SUM of its n slices' losses (mindspore/nn/wrap/
    cell_wrapper.py), which would scale the loss and every gradient by n; this divides it back."""

    def __init__(self, network: nn.Cell, interleave_num: int):
        super().__init__(auto_prefix=False)
        self.interleaved = nn.MicroBatchInterleaved(network, interleave_num)
        self.inverse = 1.0 / interleave_num

    def construct(self, *inputs):
        return self.interleaved(*inputs) * self.inverse


def summed_micro_losses(parallel_cfg: ParallelConfig, grad_accum_steps: int = 1) -> int:
    """How many micro-batch losses the wrapped loss net (`wrap_for_pipeline`) sums: the train step
    divides the loss and the gradients by this."""
    if parallel_cfg.pipeline_stage > 1:
        return parallel_cfg.micro_batch_num
    return grad_accum_steps


def wrap_for_pipeline(network_with_loss: nn.Cell, parallel_cfg: ParallelConfig, grad_accum_steps: int = 1) -> nn.Cell:
    """Wrap the loss network for the semi-auto step cell, as MindFormers' trainer does: first
    `InterleavedMean` (`nn.MicroBatchInterleaved`, mean not sum) when micro_batch_interleave_num > 1,
    then `nn.PipelineCell` (micro_batch_num micro batches) when pipeline_stage > 1, or MindSpore's
    one-graph `GradAccumulation` (grad_accum_steps micro batches) when grad_accum_steps > 1.

    The pipeline and accumulation cells sum `summed_micro_losses(...)` micro losses; build the
    optimizer over `network_with_loss.trainable_params()` and give the train step
    `nn.PipelineGradReducer(optimizer.parameters, opt_shard=parallel_cfg.optimizer_shard)`.
    """
    from mindspore.parallel.nn import GradAccumulation

    network = network_with_loss
    if parallel_cfg.micro_batch_interleave_num > 1:
        network = InterleavedMean(network, parallel_cfg.micro_batch_interleave_num)
    if parallel_cfg.pipeline_stage > 1:
        return nn.PipelineCell(network, parallel_cfg.micro_batch_num)
    if grad_accum_steps > 1:
        return GradAccumulation(network, grad_accum_steps)
    return network


@dataclasses.dataclass(frozen=True)
class Parallelized:
    """A loss network set up for its layout (`parallelize`).

    `net` is what the step calls and the optimizer's parameters come from; it sums `micro_batches`
    micro losses per call (the step divides loss and gradients by it); `needs_grad_reducer`: the
    step must hand the accumulated gradients over through `nn.PipelineGradReducer`.
    """

    net: nn.Cell
    micro_batches: int = 1
    needs_grad_reducer: bool = False


def parallelize(loss_net: nn.Cell, parallel_cfg: ParallelConfig, *, grad_accum_steps: int = 1,
                forward_only: bool = False) -> Parallelized:
    """Set up the built loss network `loss_net` for the layout `parallel_cfg`, after
    `set_parallel_context` (the trainer's `setup_parallel`): the one call every tool makes.

    Semi-auto layouts (`needs_semi_auto`): strategies, pipeline stages, recompute and ZeRO opt-outs
    (`configure_model`), then, unless `forward_only` (scoring: no backward, no wrapper), the
    interleave, pipeline or one-graph accumulation wrapper (`wrap_for_pipeline`), which sums
    `summed_micro_losses(parallel_cfg, grad_accum_steps)` micro losses and then needs the reducer.
    Other layouts (data parallel, stand-alone): only `parallel.recompute` applies; the net is
    returned itself and the step accumulates on its own.

    The cell class is chosen before construction, so a caller whose wrapper will sum micro losses
    (`needs_semi_auto` and `summed_micro_losses(...) > 1`) builds `loss_net` as `LazyInlineWithLoss`.
    """
    if not needs_semi_auto(parallel_cfg):
        apply_recompute(loss_net, parallel_cfg)
        return Parallelized(loss_net)
    configure_model(loss_net, parallel_cfg)
    if forward_only:
        return Parallelized(loss_net)
    summed = summed_micro_losses(parallel_cfg, grad_accum_steps)
    return Parallelized(wrap_for_pipeline(loss_net, parallel_cfg, grad_accum_steps), summed, summed > 1)
