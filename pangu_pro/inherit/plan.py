"""The student's shape, checked against the teacher before any compute.

`plan_student(teacher, target, new2old)` returns the student's ModelConfig and how many units of each
kind every layer keeps, or raises a ConfigError naming the target's field at fault: a student wider
than the teacher, a head count that does not keep whole query groups, a head_dim mismatch, a PanGu-pi
switch the teacher does not have, a vocabulary that needs (or does not fit) the id map.

The AugShortcut bottleneck (`inherit.aug_bottleneck`): `preset` (default) gives the student the target
preset's bottleneck (hidden / aug_shortcut_ratio: 56 for 1B Pro, of the 7B teacher's 128), its units
chosen per layer by the run's criterion like FFN neurons, so the student's config is the preset's;
`teacher` inherits the teacher's whole bottleneck and the student's `aug_shortcut_ratio` becomes
``student hidden / teacher bottleneck`` (14 for 1B Pro: 1792 / 128).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import numpy as np

from pangu_pro.config import ModelConfig
from pangu_pro.configtools import ConfigError
from pangu_pro.inherit.hardconcrete import UnitArrays, bottleneck_width


@dataclass(frozen=True)
class StudentPlan:
    teacher: ModelConfig
    student: ModelConfig
    new2old: Optional[np.ndarray]  # student id -> teacher id, or None (same vocabulary)

    @property
    def groups(self) -> int:
        """Query heads per key/value head (the same in teacher and student)."""
        return self.teacher.num_heads // self.teacher.kv_heads

    def counts(self) -> dict[str, tuple[int, int]]:
        """Mask type -> (student units, teacher units): per layer for heads (key/value groups), neurons
        and bottleneck units; in all for hidden channels and layers."""
        t, s = self.teacher, self.student
        return {"heads": (s.kv_heads, t.kv_heads), "neurons": (s.intermediate_size, t.intermediate_size),
                "hidden": (s.hidden_size, t.hidden_size), "layers": (s.num_layers, t.num_layers),
                "bottleneck": (bottleneck_width(s), bottleneck_width(t))}

    def targets(self) -> UnitArrays:
        """Target sparsity per mask type (fraction of the teacher's units that go)."""
        return UnitArrays(**{name: np.float64(1 - a / b if b else 0.0) for name, (a, b) in self.counts().items()})

    def pruned_types(self) -> list[str]:
        """Mask types whose count shrinks (the others need no mask), in `MASK_TYPES` order."""
        return [name for name, (a, b) in self.counts().items() if a < b]


def _fail(field: str, message: str, source: str) -> ConfigError:
    return ConfigError(f"model.{field}", message, source)


def plan_student(teacher: ModelConfig, target: ModelConfig, new2old: Optional[np.ndarray] = None,
                 source: str = "target config", aug_bottleneck: str = "preset") -> StudentPlan:
    """Check `target` against `teacher` and return the student's config (errors name the field).

    `aug_bottleneck`: "preset" keeps the target's AugShortcut bottleneck (pruned from the teacher's),
    "teacher" inherits the teacher's whole (module doc)."""
    for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size"):
        if getattr(target, name) > getattr(teacher, name):
            raise _fail(name, f"student {name} {getattr(target, name)} is wider than the teacher's "
                        f"{getattr(teacher, name)}", source)
    if target.head_dim != teacher.head_dim:
        raise _fail("num_heads", f"head_dim mismatch: student {target.hidden_size}/{target.num_heads} = "
                    f"{target.head_dim}, teacher {teacher.hidden_size}/{teacher.num_heads} = {teacher.head_dim}; "
                    f"heads are inherited whole, so head_dim must be equal", source)
    groups = teacher.num_heads // teacher.kv_heads
    if target.num_heads % groups:
        raise _fail("num_heads", f"{target.num_heads} heads are not whole query groups: the teacher has "
                    f"{groups} query heads per key/value head", source)
    if target.kv_heads * groups != target.num_heads:
        raise _fail("num_kv_heads", f"student has {target.num_heads} heads and {target.kv_heads} key/value "
                    f"heads; pruning whole groups of the teacher ({groups} query heads each) needs "
                    f"num_kv_heads = {target.num_heads // groups}", source)
    if target.num_layers < min(2, teacher.num_layers):
        raise _fail("num_layers", "the first and the last teacher layers are always kept: need at least 2",
                    source)
    for name in ("siaf", "aug_shortcut", "tie_word_embeddings"):
        if getattr(target, name) != getattr(teacher, name):
            raise _fail(name, f"student has {name} = {getattr(target, name)}, teacher {getattr(teacher, name)}: "
                        f"weights can only be inherited between equal architectures", source)
    if target.siaf and target.siaf_terms != teacher.siaf_terms:
        raise _fail("siaf_terms", f"student {target.siaf_terms}, teacher {teacher.siaf_terms}", source)
    changes = {}
    if teacher.aug_shortcut and aug_bottleneck == "teacher":
        bottleneck = teacher.aug_shortcut_dim
        if target.hidden_size % bottleneck:
            raise _fail("hidden_size", f"the AugShortcut bottleneck ({bottleneck}) is inherited whole "
                        f"(inherit.aug_bottleneck: teacher), so the student hidden size {target.hidden_size} must "
                        f"be a multiple of it", source)
        changes["aug_shortcut_ratio"] = target.hidden_size // bottleneck
    elif teacher.aug_shortcut:
        if target.hidden_size % target.aug_shortcut_ratio:
            raise _fail("aug_shortcut_ratio", f"hidden_size {target.hidden_size} is not divisible by "
                        f"aug_shortcut_ratio {target.aug_shortcut_ratio}", source)
        if target.aug_shortcut_dim > teacher.aug_shortcut_dim:
            raise _fail("aug_shortcut_ratio", f"the student's AugShortcut bottleneck {target.hidden_size} / "
                        f"{target.aug_shortcut_ratio} = {target.aug_shortcut_dim} is wider than the teacher's "
                        f"{teacher.aug_shortcut_dim}: raise the ratio, or set inherit.aug_bottleneck: teacher "
                        f"(the teacher's whole bottleneck)", source)
    if new2old is None:
        if target.vocab_size != teacher.vocab_size:
            raise _fail("vocab_size", f"student vocabulary {target.vocab_size} differs from the teacher's "
                        f"{teacher.vocab_size}: set inherit.vocab_map (a new2old id map)", source)
    else:
        new2old = np.asarray(new2old, dtype=np.int64)
        if new2old.ndim != 1 or new2old.size == 0 or new2old.min() < 0 or new2old.max() >= teacher.vocab_size:
            raise ConfigError("inherit.vocab_map", f"ids must lie in the teacher's vocabulary "
                              f"[0, {teacher.vocab_size})", source)
        if target.vocab_size != new2old.size:
            raise _fail("vocab_size", f"student vocabulary {target.vocab_size} differs from the id map's "
                        f"{new2old.size} entries (inherit.vocab_map)", source)
        old2new = {int(old): new for new, old in enumerate(new2old)}
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            old = getattr(teacher, name)
            if old not in old2new:
                raise ConfigError("inherit.vocab_map", f"the teacher's {name} {old} is not kept by the id map",
                                  source)
            changes[name] = old2new[old]
    if new2old is None:
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            changes[name] = getattr(teacher, name)
    # the student inherits the teacher's numerics of RoPE and the norm
    changes.update(rope_theta=teacher.rope_theta, rms_norm_eps=teacher.rms_norm_eps)
    student = dataclasses.replace(target, **changes)
    try:
        student.validate()
    except ConfigError as err:
        raise err.within("model", source) from None
    return StudentPlan(teacher=teacher, student=student, new2old=new2old)


# ----------------------------------------------------------------------------------------------
# Memory and time of mask learning per device (`inherit --check`, `pangu-pro plan INHERIT_CONFIG`)
#
# Mask learning runs data parallel only (`learn.MaskTrainStep`: a full teacher replica per device,
# gradients averaged over the ranks). Per device, in bytes, with P the teacher's parameters, M the
# mask units, c the compute dtype's bytes, b the micro batch (inherit.batch_size) and S seq_length:
#
#   teacher weights   P x w             w = 2 (bf16, frozen on Ascend: inherit.teacher_dtype) or 4
#   weight training   P x (4 + 8)       gradients and AdamW moments, only when lr_weights > 0
#   masks             M x (4 + 4 + 8)   log_alpha, its gradient, AdamW moments (negligible)
#   activations       b S x (L x (layer + mask products) + head)
#                     layer, head: `pangu_pro.model.plan` (recompute mode of the parallel section);
#                     mask products per layer and token: `mask_bytes_per_token`
#
# Workspace and fragmentation are not counted: the layout must leave 15% of the device free, as
# `pangu-pro plan` asks of training layouts.


@dataclass(frozen=True)
class MaskPlan:
    terms: tuple  # ((name, bytes), ...)
    devices: int
    global_batch: int  # sequences per mask step
    tokens_per_step: int
    steps: int
    flops_per_step: float

    @property
    def total(self) -> float:
        return float(sum(v for _, v in self.terms))


def mask_unit_count(m: ModelConfig) -> int:
    """Hard-concrete units at most: key/value groups, neurons and bottleneck units per layer, hidden
    channels, layer gates."""
    return (m.num_layers * (m.kv_heads + m.intermediate_size + bottleneck_width(m)) + m.hidden_size
            + max(m.num_layers - 2, 0))


def teacher_bytes_per_parameter(config) -> int:
    return 2 if teacher_dtype(config) == "bfloat16" else 4


def teacher_dtype(config, device: Optional[str] = None) -> str:
    """bfloat16 for a frozen teacher on Ascend (`inherit.teacher_dtype: auto`), else as configured."""
    ic = config.inherit
    if ic.teacher_dtype != "auto":
        return ic.teacher_dtype
    on_ascend = config.model.compute_dtype != "float32" if device is None else device == "Ascend"
    return "bfloat16" if (ic.lr_weights == 0 and on_ascend) else "float32"


def mask_bytes_per_token(m: ModelConfig, mode: str) -> float:
    """What the mask multiplications of one layer store per token for the backward pass: the attention
    output before the head mask (cH), the FFN product before the neuron mask (cF), both residual
    branches before the hidden mask and layer gate (2 x 4H, fp32). Full recompute stores none."""
    if mode == "full":
        return 0.0
    c = {"float32": 4, "bfloat16": 2, "float16": 2}[m.compute_dtype]
    return c * m.hidden_size + c * m.intermediate_size + 8 * m.hidden_size


def check_data_parallel(config) -> None:
    """Mask learning replicates the frozen teacher: data parallel only (a ZeRO layout would put the mask
    step under semi-auto parallel, tensor or pipeline parallel would slice the teacher)."""
    p = config.parallel
    if p.model_parallel != 1 or p.pipeline_stage != 1 or p.optimizer_shard:
        raise ConfigError("parallel", "mask learning is data parallel only (model_parallel 1, pipeline_stage 1, "
                          f"optimizer_shard false), got model_parallel {p.model_parallel}, pipeline_stage "
                          f"{p.pipeline_stage}, optimizer_shard {str(p.optimizer_shard).lower()}: the frozen "
                          "teacher is replicated (docs/inherit.md)", config.source or None)


def mask_plan(config) -> MaskPlan:
    """The per-device memory terms and the step arithmetic of `config`'s mask learning."""
    from pangu_pro.model.params import count_parameters
    from pangu_pro.model.plan import activation_bytes_per_token, head_bytes_per_token
    from pangu_pro.train.metrics import train_flops_per_token

    m, p, ic = config.model, config.parallel, config.inherit
    check_data_parallel(config)
    total = count_parameters(m).total
    terms = [("teacher weights", float(total * teacher_bytes_per_parameter(config)))]
    if ic.lr_weights > 0:
        terms.append(("teacher gradients + AdamW", float(total * 12)))
    units = mask_unit_count(m)  # an upper bound: only the pruned types are learned
    terms.append(("masks (log_alpha, grad, AdamW)", float(units * 16)))
    tokens = ic.batch_size * m.seq_length
    per_layer = activation_bytes_per_token(m, p, p.recompute) + mask_bytes_per_token(m, p.recompute)
    act = tokens * (m.num_layers * per_layer + head_bytes_per_token(m, p))
    if p.recompute == "full":
        act += tokens * (activation_bytes_per_token(m, p, "none") + mask_bytes_per_token(m, "none"))
    terms.append((f"activations (micro batch {ic.batch_size} x {m.seq_length}, recompute {p.recompute})", act))
    devices = p.data_parallel
    global_batch = ic.batch_size * ic.grad_accum_steps * devices
    seq_tokens = global_batch * m.seq_length
    # forward + backward through the teacher: 3x the forward; frozen weights skip the weight gradients (2/3
    # of the backward), which the trainer's 6N-per-token formula would count
    flops = train_flops_per_token(m, m.seq_length) * seq_tokens * (1.0 if ic.lr_weights > 0 else 2.0 / 3.0)
    return MaskPlan(tuple(terms), devices, global_batch, seq_tokens, ic.steps, flops)


def format_mask_plan(config, device_memory_gib: float = 64.0, mfu: float = 0.4,
                     peak_tflops: float = 280.0, devices=(8, 16, 64)) -> tuple[str, bool]:
    """(the plan as text, whether it fits in 85% of `device_memory_gib`)."""
    from pangu_pro.model.plan import GIB

    plan = mask_plan(config)
    ic = config.inherit
    lines = [f"mask learning: data parallel {plan.devices}, teacher {teacher_dtype(config)} "
             f"({'frozen' if ic.lr_weights == 0 else 'trained'}), micro batch {ic.batch_size} x accumulation "
             f"{ic.grad_accum_steps} x {plan.devices} ranks = global batch {plan.global_batch} sequences "
             f"({plan.tokens_per_step:,} tokens) per step, {plan.steps} steps = "
             f"{plan.tokens_per_step * plan.steps / 1e9:.2f}B tokens"]
    for name, value in plan.terms:
        lines.append(f"  {name:<58}{value / GIB:>9.2f} GiB")
    need = plan.total / GIB
    fits = need <= 0.85 * device_memory_gib
    lines.append(f"per device: {need:.2f} GiB of {device_memory_gib:g} GiB -> "
                 f"{'fits' if fits else 'does NOT fit'} (keeping 15% for workspace and communication buffers)")
    total_flops = plan.flops_per_step * plan.steps
    for n in devices:
        hours = total_flops / (n * peak_tflops * 1e12 * mfu) / 3600
        lines.append(f"  time on {n:>2} NPUs at {mfu:.0%} of {peak_tflops:g} TFLOP/s: {hours:.1f} h "
                     f"({total_flops:.3g} FLOP)")
    return "\n".join(lines), fits


def run_mask_plan(path: str, overrides: list, device_memory_gib: float) -> int:
    """`pangu-pro plan INHERIT_CONFIG`: the mask-learning plan without the teacher's weights or the data."""
    from pangu_pro.inherit.config import load_inherit_config

    config = load_inherit_config(path, overrides)
    text, fits = format_mask_plan(config, device_memory_gib)
    print(text)
    return 0 if fits else 2
