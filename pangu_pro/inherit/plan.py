"""The student's shape, checked against the teacher before any compute.

`plan_student(teacher, target, new2old)` returns the student's ModelConfig and how many units of each
kind every layer keeps, or raises a ConfigError naming the target's field at fault: a student wider
than the teacher, a head count that does not keep whole query groups, a head_dim mismatch, a PanGu-pi
switch the teacher does not have, a vocabulary that needs (or does not fit) the id map.

The AugShortcut bottleneck is inherited whole, so the student's `aug_shortcut_ratio` becomes
``student hidden / teacher bottleneck`` (14 for 1B Pro from the 7B teacher: 1792 / 128); the target
must allow it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import numpy as np

from pangu_pro.config import ModelConfig
from pangu_pro.configtools import ConfigError
from pangu_pro.inherit.hardconcrete import UnitArrays


@dataclass(frozen=True)
class StudentPlan:
    teacher: ModelConfig
    student: ModelConfig
    new2old: Optional[np.ndarray]  # student id -> teacher id, or None (same vocabulary)

    @property
    def groups(self) -> int:
        """Query heads per key/value head (the same in teacher and student)."""
        return self.teacher.num_heads // self.teacher.kv_heads

    @property
    def aug_bottleneck(self) -> int:
        return self.teacher.aug_shortcut_dim

    def targets(self) -> UnitArrays:
        """Target sparsity per mask type (fraction of the teacher's units that go)."""
        t, s = self.teacher, self.student
        return UnitArrays(heads=np.float64(1 - s.kv_heads / t.kv_heads),
                          neurons=np.float64(1 - s.intermediate_size / t.intermediate_size),
                          hidden=np.float64(1 - s.hidden_size / t.hidden_size),
                          layers=np.float64(1 - s.num_layers / t.num_layers))

    def pruned_types(self) -> list[str]:
        """Mask types whose count shrinks (the others need no mask)."""
        t, s = self.teacher, self.student
        pairs = {"heads": (s.kv_heads, t.kv_heads), "neurons": (s.intermediate_size, t.intermediate_size),
                 "hidden": (s.hidden_size, t.hidden_size), "layers": (s.num_layers, t.num_layers)}
        return [name for name, (a, b) in pairs.items() if a < b]


def _fail(field: str, message: str, source: str) -> ConfigError:
    return ConfigError(f"model.{field}", message, source)


def plan_student(teacher: ModelConfig, target: ModelConfig, new2old: Optional[np.ndarray] = None,
                 source: str = "target config") -> StudentPlan:
    """Check `target` against `teacher` and return the student's config (errors name the field)."""
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
    if teacher.aug_shortcut:
        bottleneck = teacher.aug_shortcut_dim
        if target.hidden_size % bottleneck:
            raise _fail("hidden_size", f"the AugShortcut bottleneck ({bottleneck}) is inherited whole, so the "
                        f"student hidden size {target.hidden_size} must be a multiple of it", source)
        changes["aug_shortcut_ratio"] = target.hidden_size // bottleneck
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
