"""Memory per device of a layout, before a run: weights, gradients, optimizer state, activations.

Pure arithmetic on the config (nothing is built); `pangu-pro plan CONFIG --devices N` prints it.

Mixed-precision convention (ours, see docs/parallel.md): parameters are fp32 and are the master
copy; matmuls cast them to `compute_dtype` (bf16 on Ascend). Per parameter element a device holds:

    weights 4 B (fp32) + gradients 4 B (fp32) + AdamW m and v 8 B (fp32)   = 16 B

(the same 16 B as the bf16-weights/grads + fp32-master + moments convention: 2 + 2 + 4 + 8).
With `optimizer_shard` (MindSpore's parallel optimizer) the fp32 weights and the moments of every
tensor whose per-device slice is at least `optimizer_shard_threshold_kb` are split over the
`data_parallel` ranks, or `optimizer_weight_shard_size` of them (norm weights opt out); gradients
are not split.

Weight copies, kept from the forward to the backward pass (the matmul backward reads its weight):
each tensor a matmul reads (everything but the norms and the embedding) as a `compute_dtype` copy
of its whole model-parallel slice (c B per element; MindSpore gathers ZeRO-split weights after the
cast), when it is cast (c < 4) or ZeRO-split; the embedding, read in fp32, as a 4 B all-gathered
copy when ZeRO-split. An fp32 model without ZeRO reads the parameters themselves: no copies.

A device's parameter slice: attention (wq, wk, wv, wo), FFN (w1, w2, w3) and SIAF tensors divided
by model_parallel; AugShortcut and norms whole (replicated); embedding and LM head whole, or divided
by model_parallel with `vocab_parallel`; the embedding on stage 0, final norm and head on the last.

Activations stored for the backward pass, in bytes per token of one micro batch, per layer
(c = bytes of compute_dtype; H hidden, K = kv_heads*head_dim, F ffn, R AugShortcut bottleneck,
n SIAF terms, a heads, S seq_length; sp = model_parallel with sequence parallel, else 1):

    stream    = 2 * (4H + cH) + 2cR                      / sp   (fp32 norm inputs, norm outputs,
                                                                 GELU input/output of the shortcut)
    gathered  = 2cH with sequence parallel, else 0              (the two norm outputs all-gathered
                                                                 along the sequence for the column-
                                                                 parallel matmuls, kept for their
                                                                 weight gradients)
    attention = rope + 3cH + cH + core                   / mp   (q, k, v after RoPE and the GQA
                                                                 repeat; the wo input)
        rope  = 8(H + K) unfused (fp32 input and rotate_half copy of q and k), 4(H + K) fused
        core  = (4 + c) a S without flash attention (fp32 softmax output, probabilities in c),
                8a with it (fp32 softmax max and sum per head)
    ffn       = (4 + n) cF with SIAF, 4cF without        / mp   (gate, n SiLU inputs, activation,
                                                                 up, product)

recompute "selective" recomputes the scores (core becomes c a S; flash unchanged) and the FFN
activation (ffn becomes 3cF); "full" stores only each layer's fp32 input, 4H / sp, plus one layer's
unrecomputed activations while it is recomputed. The last stage also holds the head of one micro
batch: 4H / sp + cH (/ mp unless vocab_parallel) + 12V / mp (fp32 logits, log-softmax output and,
in the backward pass, the fp32 logits gradient).

Gradient accumulation buffer: when one update sums several micro batches (a pipeline's
micro_batch_num, or train.grad_accum_steps > 1 without one) the step keeps an fp32 accumulator per
parameter, 4 B per element of the device's slice: `nn.PipelineGradReducer`'s ``accu_grads``
(``parameters.clone(init="zeros")``, mindspore/nn/wrap/grad_reducer.py) under semi-auto parallel, our
own `TrainStep` accumulators on the data-parallel path. It is split like the weights only under
ZeRO with the parallel optimizer's ``gradient_accumulation_shard``, which we set to
`GRADIENT_ACCUMULATION_SHARD` (False, as MindFormers' trainer: a sharded buffer costs a
reduce-scatter of every micro batch's gradients instead of one per update); otherwise it is whole.

With 1F1B pipelining stage i keeps min(micro_batch_num, pp - i) micro batches in flight; without
pipelining one. A micro batch is train.batch_size sequences of seq_length tokens per data-parallel
rank. Framework workspace, communication buffers and fragmentation are not included: keep ~10-20%
of the device free.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pangu_pro.config import Config, ModelConfig, ParallelConfig

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
RECOMPUTE_MODES = ("none", "selective", "full")
GIB = 1024 ** 3
# `parallel_optimizer_config["gradient_accumulation_shard"]` (sharding.parallel_context_kwargs). MindSpore 2.9's
# docs give its default as True (_auto_parallel_context.py) and False (context.py); the C++ context starts False.
GRADIENT_ACCUMULATION_SHARD = False


@dataclass(frozen=True)
class TensorSlice:
    """One parameter tensor as one device holds it (before the parallel optimizer)."""

    name: str
    elements: int
    zero_eligible: bool = True  # False: opts out of the parallel optimizer (norm weights)
    cast: bool = True  # read by a matmul in compute_dtype (False: norms, the embedding gather)


def layer_tensors(m: ModelConfig, p: ParallelConfig) -> list[TensorSlice]:
    """The parameter slices of one decoder layer on one device."""
    mp, d, f = p.model_parallel, m.hidden_size, m.intermediate_size
    q, kv = m.num_heads * m.head_dim, m.kv_heads * m.head_dim
    tensors = [TensorSlice("wq", q * d // mp), TensorSlice("wk", kv * d // mp), TensorSlice("wv", kv * d // mp),
               TensorSlice("wo", d * q // mp), TensorSlice("w1", f * d // mp), TensorSlice("w3", f * d // mp),
               TensorSlice("w2", d * f // mp)]
    if m.siaf:
        tensors += [TensorSlice("siaf.scale", m.siaf_terms * f // mp), TensorSlice("siaf.bias", m.siaf_terms * f // mp)]
    if m.aug_shortcut:
        r = m.aug_shortcut_dim
        tensors += [TensorSlice("aug_shortcut.down", r * d), TensorSlice("aug_shortcut.up", d * r)]
    tensors += [TensorSlice("attention_norm", d, False, False), TensorSlice("ffn_norm", d, False, False)]
    return tensors


def stage_tensors(m: ModelConfig, p: ParallelConfig, stage: int) -> list[TensorSlice]:
    """Every parameter slice a device of pipeline stage `stage` holds."""
    vocab = m.vocab_size * m.hidden_size // (p.model_parallel if p.vocab_parallel else 1)
    last = p.pipeline_stage - 1
    tensors = []
    if stage == 0:
        tensors.append(TensorSlice("embedding", vocab, cast=False))
    tensors += layer_tensors(m, p) * p.stage_layers(m.num_layers)[stage]
    if stage == last:
        tensors.append(TensorSlice("norm", m.hidden_size, False, False))
        if not m.tie_word_embeddings:
            tensors.append(TensorSlice("lm_head", vocab))
    return tensors


def activation_bytes_per_token(m: ModelConfig, p: ParallelConfig, mode: str) -> float:
    """Bytes one decoder layer stores per token of a micro batch (module docstring), under `mode`."""
    c = BYTES[m.compute_dtype]
    h, kv, f = m.hidden_size, m.kv_heads * m.head_dim, m.intermediate_size
    mp = p.model_parallel
    sp = mp if p.sequence_parallel else 1
    if mode == "full":
        return 4 * h / sp
    r = m.aug_shortcut_dim if m.aug_shortcut else 0
    stream = 2 * (4 * h + c * h) + 2 * c * r
    gathered = 2 * c * h if p.sequence_parallel else 0
    rope = (4 if m.use_fused_kernels else 8) * (h + kv)
    if m.use_flash_attention:
        core = 8 * m.num_heads
    else:
        core = (c if mode == "selective" else 4 + c) * m.num_heads * m.seq_length
    attention = rope + 3 * c * h + c * h + core
    if mode == "selective":
        ffn = 3 * c * f
    else:
        ffn = (4 + (m.siaf_terms if m.siaf else 0)) * c * f
    return stream / sp + gathered + (attention + ffn) / mp


def head_bytes_per_token(m: ModelConfig, p: ParallelConfig) -> float:
    """Bytes the final norm, LM head and loss store per token (last stage, one micro batch)."""
    c, h, mp = BYTES[m.compute_dtype], m.hidden_size, p.model_parallel
    sp = mp if p.sequence_parallel else 1
    head_input = c * h if p.vocab_parallel else c * h / mp
    return 4 * h / sp + head_input + 12 * m.vocab_size / mp


@dataclass(frozen=True)
class StageMemory:
    stage: int
    layers: int
    parameters: int  # elements of this device's slices
    weights: float  # bytes
    gradients: float
    optimizer: float
    activations: dict = field(default_factory=dict)  # recompute mode -> bytes
    micro_batches_in_flight: int = 1
    weight_copies: float = 0.0  # compute-dtype / all-gathered weight copies (module doc)
    accumulation: float = 0.0  # fp32 gradient accumulation buffer (module doc)

    def total(self, mode: str) -> float:
        return (self.weights + self.gradients + self.optimizer + self.weight_copies + self.accumulation
                + self.activations[mode])


def summed_micro_batches(p: ParallelConfig, grad_accum_steps: int) -> int:
    """Micro batches one update sums (as `sharding.summed_micro_losses`): > 1 means an accumulation buffer."""
    return p.micro_batch_num if p.pipeline_stage > 1 else grad_accum_steps


def stage_memory(m: ModelConfig, p: ParallelConfig, batch_size: int, stage: int,
                 grad_accum_steps: int = 1) -> StageMemory:
    tensors = stage_tensors(m, p, stage)
    threshold = p.optimizer_shard_threshold_kb * 1024
    c = BYTES[m.compute_dtype]
    accumulates = summed_micro_batches(p, grad_accum_steps) > 1
    weights = optimizer = copies = accumulation = 0.0
    for t in tensors:
        zero = p.optimizer_shard and t.zero_eligible and 4 * t.elements >= threshold
        split = zero_group(p) if zero else 1
        weights += 4 * t.elements / split
        optimizer += 8 * t.elements / split
        if accumulates:
            accumulation += 4 * t.elements / (split if GRADIENT_ACCUMULATION_SHARD else 1)
        if t.cast and (c < 4 or zero):
            copies += c * t.elements
        elif zero:
            copies += 4 * t.elements
    parameters = sum(t.elements for t in tensors)
    layers = p.stage_layers(m.num_layers)[stage]
    in_flight = min(p.micro_batch_num, p.pipeline_stage - stage) if p.pipeline_stage > 1 else 1
    tokens = batch_size * m.seq_length
    head = head_bytes_per_token(m, p) * tokens if stage == p.pipeline_stage - 1 else 0.0
    activations = {}
    for mode in RECOMPUTE_MODES:
        stored = layers * in_flight * tokens * activation_bytes_per_token(m, p, mode)
        if mode == "full" and layers:
            stored += tokens * activation_bytes_per_token(m, p, "none")  # the layer being recomputed
        activations[mode] = stored + head
    return StageMemory(stage, layers, parameters, weights, 4.0 * parameters, optimizer, activations, in_flight, copies,
                       accumulation)


def zero_group(p: ParallelConfig) -> int:
    """Ranks a ZeRO-split tensor is divided over: `optimizer_weight_shard_size`, or all data_parallel."""
    return p.data_parallel if p.optimizer_weight_shard_size == -1 else p.optimizer_weight_shard_size


def memory_plan(config: Config) -> list[StageMemory]:
    """Memory of one device of every pipeline stage (devices of one stage hold the same amounts)."""
    return [stage_memory(config.model, config.parallel, config.train.batch_size, s, config.train.grad_accum_steps)
            for s in range(config.parallel.pipeline_stage)]


def accumulation_note(config: Config) -> str:
    """One line naming the accumulation buffer of this config, or saying there is none."""
    p, summed = config.parallel, summed_micro_batches(config.parallel, config.train.grad_accum_steps)
    if summed <= 1:
        return "accum: no gradient accumulation buffer (one micro batch per update)"
    owner = ("nn.PipelineGradReducer accu_grads" if p.optimizer_shard or p.model_parallel > 1 or p.pipeline_stage > 1
             else "TrainStep accumulators")
    split = ("split like the weights (gradient_accumulation_shard)" if p.optimizer_shard and GRADIENT_ACCUMULATION_SHARD
             else "whole: gradient_accumulation_shard is off" if p.optimizer_shard else "whole")
    return (f"accum: fp32 gradient accumulation buffer ({owner}, {summed} micro batches per update), "
            f"4 B per parameter, {split}")


def format_plan(config: Config, device_memory_gib: float = 64.0) -> str:
    """The plan as a plain-text table, one row per stage, with the worst stage against the device."""
    m, p = config.model, config.parallel
    stages = memory_plan(config)
    lines = [
        f"layout: data_parallel {p.data_parallel} x model_parallel {p.model_parallel} x pipeline_stage "
        f"{p.pipeline_stage} = {p.device_num} devices; micro batches {p.micro_batch_num}; "
        f"sequence_parallel {p.sequence_parallel}; vocab_parallel {p.vocab_parallel}; "
        f"optimizer_shard {p.optimizer_shard}; recompute {p.recompute}",
        f"micro batch: {config.train.batch_size} x {m.seq_length} tokens per data-parallel rank; "
        f"compute {m.compute_dtype}; flash attention {m.use_flash_attention}",
        "bytes per parameter: fp32 weights 4 + fp32 gradients 4 + fp32 AdamW moments 8 "
        "(weights and moments / data_parallel under optimizer_shard); copies: compute-dtype / "
        "all-gathered weights kept for the backward pass",
        accumulation_note(config),
        f"{'stage':>5}{'layers':>7}{'params':>14}{'weights':>10}{'grads':>10}{'optim':>10}{'copies':>10}{'accum':>10}"
        f"{'act none':>10}{'act sel':>10}{'act full':>10}{'total*':>10}   (GiB; * with recompute '{p.recompute}')",
    ]
    for s in stages:
        lines.append(f"{s.stage:>5}{s.layers:>7}{s.parameters:>14,}{s.weights / GIB:>10.2f}{s.gradients / GIB:>10.2f}"
                     f"{s.optimizer / GIB:>10.2f}{s.weight_copies / GIB:>10.2f}{s.accumulation / GIB:>10.2f}"
                     f"{s.activations['none'] / GIB:>10.2f}"
                     f"{s.activations['selective'] / GIB:>10.2f}{s.activations['full'] / GIB:>10.2f}"
                     f"{s.total(p.recompute) / GIB:>10.2f}")
    worst = max(stages, key=lambda s: s.total(p.recompute))
    need = worst.total(p.recompute) / GIB
    verdict = "fits" if need <= 0.85 * device_memory_gib else "does NOT fit"
    lines.append(f"worst stage {worst.stage}: {need:.2f} GiB of {device_memory_gib:g} GiB per device "
                 f"-> {verdict} (keeping 15% for workspace and communication buffers)")
    return "\n".join(lines)
