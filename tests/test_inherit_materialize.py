"""Masked teacher == materialised student; exact per-layer counts; bad targets fail naming the field."""
import dataclasses

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from pangu_pro.config import ModelConfig
from pangu_pro.configtools import ConfigError
from pangu_pro.inherit.hardconcrete import MASK_TYPES, UnitArrays
from pangu_pro.inherit.materialize import fold_values, head_mask_from_groups, materialize, select_units
from pangu_pro.inherit.plan import plan_student
from pangu_pro.model.params import count_parameters
from pangu_pro.model.weights import build_model, load_state, model_state

TEACHER = ModelConfig(vocab_size=48, hidden_size=32, num_layers=4, num_heads=4, num_kv_heads=2,
                      intermediate_size=40, seq_length=16, aug_shortcut_ratio=8, siaf=True, aug_shortcut=True)
TARGET = ModelConfig(vocab_size=30, hidden_size=16, num_layers=3, num_heads=2, num_kv_heads=1,
                     intermediate_size=24, seq_length=16, aug_shortcut_ratio=8)  # bottleneck 2 of the teacher's 4
NEW2OLD = np.concatenate([[0, 1, 2], np.arange(5, 32)])  # 30 ids, pad/bos/eos kept


def random_teacher(cfg, seed=0):
    """A teacher whose every tensor is random (SIAF and the zero-initialised AugShortcut up included)."""
    model = build_model(cfg, seed=seed)
    rng = np.random.default_rng(seed)
    tensors = {k: (rng.standard_normal(v.shape) * (0.3 if v.ndim > 1 else 0.2) + (1.0 if v.ndim == 1 else 0.0))
               .astype(np.float32) for k, v in model_state(model).items()}
    load_state(model, tensors)
    return model, tensors


def masked_logits(model, cfg, ids, masks: UnitArrays):
    groups = cfg.num_heads // cfg.kv_heads
    out = model(Tensor(ids), Tensor(head_mask_from_groups(masks.heads, groups).astype(np.float32)),
                Tensor(masks.neurons.astype(np.float32)), Tensor(masks.hidden.astype(np.float32)),
                Tensor(masks.layers.astype(np.float32)), Tensor(masks.bottleneck.astype(np.float32)))
    return out.asnumpy()


@pytest.mark.parametrize("vocab_map", [None, NEW2OLD])
def test_masked_teacher_equals_student(vocab_map):
    target = TARGET if vocab_map is not None else dataclasses.replace(TARGET, vocab_size=TEACHER.vocab_size)
    plan = plan_student(TEACHER, target, vocab_map)
    teacher, tensors = random_teacher(TEACHER)
    rng = np.random.default_rng(1)
    scores = UnitArrays.full(TEACHER, 0.0).map(lambda a: rng.random(a.shape))
    sel = select_units(plan, scores)
    values = UnitArrays.full(TEACHER, 0.0).map(lambda a: rng.uniform(0.3, 1.0, a.shape))  # learned-mask values
    student_tensors = materialize(tensors, plan, sel, values)
    student = build_model(plan.student)
    load_state(student, student_tensors)  # strict: every name and shape of the student

    folded = fold_values(tensors, TEACHER, values)
    load_state(teacher, folded)
    ids_new = rng.integers(0, plan.student.vocab_size, (2, 9)).astype(np.int32)
    ids_old = ids_new if vocab_map is None else vocab_map[ids_new].astype(np.int32)
    expected = masked_logits(teacher, TEACHER, ids_old, sel.binary_masks(TEACHER))
    if vocab_map is not None:
        expected = expected[..., vocab_map]
    got = student(Tensor(ids_new)).asnumpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert np.abs(expected).max() > 0.1  # not a trivial comparison
    # a different selection gives different logits (the test can fail)
    other = dataclasses.replace(sel, hidden=np.sort(np.setdiff1d(np.arange(32), sel.hidden)[:16]))
    assert not np.allclose(masked_logits(teacher, TEACHER, ids_old, other.binary_masks(TEACHER))[..., :5],
                           expected[..., :5], atol=1e-3)
    # the bottleneck mask matters too: other kept bottleneck units, other logits
    other = dataclasses.replace(sel, bottleneck=np.sort(np.stack([np.setdiff1d(np.arange(4), b) for b in sel.bottleneck])))
    assert not np.allclose(masked_logits(teacher, TEACHER, ids_old, other.binary_masks(TEACHER))[..., :5],
                           expected[..., :5], atol=1e-3)


def test_masks_of_ones_leave_the_teacher_unchanged():
    teacher, _ = random_teacher(TEACHER, seed=2)
    ids = np.random.default_rng(0).integers(0, 48, (2, 7)).astype(np.int32)
    np.testing.assert_allclose(masked_logits(teacher, TEACHER, ids, UnitArrays.full(TEACHER)),
                               teacher(Tensor(ids)).asnumpy(), rtol=1e-5, atol=1e-5)


def test_every_student_layer_has_exactly_the_target_counts():
    plan = plan_student(TEACHER, TARGET, NEW2OLD)
    _, tensors = random_teacher(TEACHER, seed=3)
    rng = np.random.default_rng(4)
    scores = UnitArrays.full(TEACHER, 0.0).map(lambda a: rng.random(a.shape))
    scores.heads[:] = 1.0  # ties everywhere: still exactly k per layer
    sel = select_units(plan, scores)
    assert sel.layers[0] == 0 and sel.layers[-1] == TEACHER.num_layers - 1
    out = materialize(tensors, plan, sel)
    s = plan.student
    for i in range(s.num_layers):
        assert sel.groups[i].size == s.kv_heads and len(set(sel.groups[i])) == s.kv_heads
        assert sel.neurons[i].size == s.intermediate_size and len(set(sel.neurons[i])) == s.intermediate_size
        assert out[f"model.layers.{i}.attention.wq.weight"].shape == (s.num_heads * s.head_dim, s.hidden_size)
        assert out[f"model.layers.{i}.attention.wk.weight"].shape == (s.kv_heads * s.head_dim, s.hidden_size)
        assert out[f"model.layers.{i}.feed_forward.w2.weight"].shape == (s.hidden_size, s.intermediate_size)
        assert out[f"model.layers.{i}.feed_forward.siaf.scale"].shape == (2, s.intermediate_size)
        assert sel.bottleneck[i].size == 2 and len(set(sel.bottleneck[i])) == 2
        assert out[f"model.layers.{i}.aug_shortcut.down.weight"].shape == (2, s.hidden_size)
        assert out[f"model.layers.{i}.aug_shortcut.up.weight"].shape == (s.hidden_size, 2)
    assert sum(v.size for v in out.values()) == count_parameters(s).total
    assert s == TARGET  # the target's own config: ratio 8, bottleneck 2 of the teacher's 4


def test_teacher_bottleneck_mode_keeps_it_whole():
    """inherit.aug_bottleneck: teacher — the student keeps all 4 bottleneck units; its ratio becomes 16 / 4."""
    plan = plan_student(TEACHER, TARGET, NEW2OLD, aug_bottleneck="teacher")
    assert (plan.student.aug_shortcut_ratio, plan.student.aug_shortcut_dim) == (4, TEACHER.aug_shortcut_dim)
    assert "bottleneck" not in plan.pruned_types()
    _, tensors = random_teacher(TEACHER, seed=3)
    sel = select_units(plan, UnitArrays.full(TEACHER, 1.0))
    out = materialize(tensors, plan, sel)
    assert sum(v.size for v in out.values()) == count_parameters(plan.student).total
    assert plan_student(TEACHER, TARGET, NEW2OLD).pruned_types() == ["heads", "neurons", "hidden", "layers",
                                                                    "bottleneck"]


@pytest.mark.parametrize("change,field", [
    ({"hidden_size": 64, "num_heads": 8, "num_kv_heads": 4}, "model.hidden_size"),
    ({"intermediate_size": 41}, "model.intermediate_size"),
    ({"num_layers": 5}, "model.num_layers"),
    ({"hidden_size": 24, "num_heads": 2, "num_kv_heads": 1}, "model.num_heads"),  # head_dim 12 != 8
    ({"hidden_size": 24, "num_heads": 3, "num_kv_heads": 3}, "model.num_heads"),  # 3 heads: not whole groups of 2
    ({"num_kv_heads": 2}, "model.num_kv_heads"),  # 2 heads in 2 groups: groups of 1 != 2
    ({"siaf": False}, "model.siaf"),
    ({"hidden_size": 8, "num_heads": 1, "num_kv_heads": None, "aug_shortcut_ratio": 1}, "model.num_heads"),
    ({"vocab_size": 31}, "model.vocab_size"),
    ({"aug_shortcut_ratio": 2}, "model.aug_shortcut_ratio"),  # bottleneck 8 > the teacher's 4
    ({"aug_shortcut_ratio": 5}, "model.aug_shortcut_ratio"),  # 16 / 5
])
def test_bad_targets_fail_naming_the_field(change, field):
    target = dataclasses.replace(TARGET, **change)
    with pytest.raises(ConfigError) as err:
        plan_student(TEACHER, target, NEW2OLD, source="student.yaml")
    assert err.value.key == field, str(err.value)
    assert "student.yaml" in str(err.value)


def test_vocabulary_change_needs_a_map():
    with pytest.raises(ConfigError, match="vocab_map"):
        plan_student(TEACHER, TARGET, None)
    with pytest.raises(ConfigError, match="inherit.vocab_map"):
        plan_student(TEACHER, TARGET, np.arange(3, 33))  # drops pad/bos/eos


def test_mask_cells_compute_the_numpy_formulas():
    """The graph's hard-concrete masks equal pangu_pro.inherit.hardconcrete on the same noise."""
    from pangu_pro.inherit import hardconcrete as hc
    from pangu_pro.inherit.cells import InheritMasks

    names = MASK_TYPES
    masks = InheritMasks(TEACHER, list(names), init_keep=0.7)
    rng = np.random.default_rng(5)
    for cell in masks.cells_in_order():
        cell.log_alpha.set_data(Tensor(rng.uniform(-6, 6, cell.shape).astype(np.float32)))
    noise = masks.noise(seed=3, step=7)
    assert np.array_equal(noise, masks.noise(seed=3, step=7)) and not np.array_equal(noise, masks.noise(3, 8))
    head, neuron, hidden, layer, bottleneck = (t.asnumpy() for t in masks(Tensor(noise)))
    la = {name: getattr(masks, name).log_alpha.asnumpy() for name in names}
    sizes = np.cumsum([0] + [la[n].size for n in names])
    u = {n: noise[sizes[i]:sizes[i + 1]].reshape(la[n].shape) for i, n in enumerate(names)}
    want_groups = hc.sample_mask(la["heads"], u["heads"])
    np.testing.assert_allclose(head, head_mask_from_groups(want_groups, 2), atol=1e-5)
    np.testing.assert_allclose(neuron, hc.sample_mask(la["neurons"], u["neurons"]), atol=1e-5)
    np.testing.assert_allclose(hidden, hc.sample_mask(la["hidden"], u["hidden"]), atol=1e-5)
    np.testing.assert_allclose(layer, np.concatenate([[1], hc.sample_mask(la["layers"], u["layers"]), [1]]), atol=1e-5)
    np.testing.assert_allclose(bottleneck, hc.sample_mask(la["bottleneck"], u["bottleneck"]), atol=1e-5)
    assert 0 < (hidden == 0).sum() < hidden.size  # the sample is hard: some zeros, not all
    head, neuron, hidden, layer, bottleneck = (t.asnumpy() for t in masks())  # noise-free
    np.testing.assert_allclose(hidden, hc.deterministic_mask(la["hidden"]), atol=1e-5)
    np.testing.assert_allclose(bottleneck, hc.deterministic_mask(la["bottleneck"]), atol=1e-5)
    want = [hc.expected_sparsity(hc.counted_keep(la[n])) for n in names]
    targets, l1 = np.array([0.3, 0.5, 0.2, 0.4, 0.5]), np.array([0.5, -1.0, 2.0, 0.1, 0.7])
    l2 = np.array([3.0, 1.0, 0.5, 2.0, 1.5])
    penalty, means = masks.penalty(Tensor(targets, ms.float32), Tensor(l1, ms.float32), Tensor(l2, ms.float32))
    np.testing.assert_allclose(means.asnumpy(), want, atol=1e-5)
    want_penalty = sum(hc.layer_constraint(hc.counted_keep(la[n]), targets[i], l1[i], l2[i])
                       for i, n in enumerate(names))
    np.testing.assert_allclose(float(penalty.asnumpy()), want_penalty, rtol=1e-5)
    assert masks.noise(3, 7, rank=1).tolist() != noise.tolist()  # every rank draws its own masks


def test_soft_masks_restricted_to_the_selection_equal_the_folded_student():
    """The masked teacher with soft mask values on the kept units (weights untouched) computes what the
    student with those values folded in computes: RMSNorm over the live hidden channels agrees."""
    plan = plan_student(TEACHER, dataclasses.replace(TARGET, vocab_size=TEACHER.vocab_size))
    teacher, tensors = random_teacher(TEACHER, seed=3)
    rng = np.random.default_rng(4)
    sel = select_units(plan, UnitArrays.full(TEACHER, 0.0).map(lambda a: rng.random(a.shape)))
    values = UnitArrays.full(TEACHER, 0.0).map(lambda a: rng.uniform(0.2, 1.0, a.shape))
    binary = sel.binary_masks(TEACHER)
    soft = UnitArrays(*(getattr(values, n) * getattr(binary, n) for n in MASK_TYPES))
    student = build_model(plan.student)
    load_state(student, materialize(tensors, plan, sel, values))
    ids = rng.integers(0, TEACHER.vocab_size, (2, 9)).astype(np.int32)
    np.testing.assert_allclose(student(Tensor(ids)).asnumpy(), masked_logits(teacher, TEACHER, ids, soft),
                               rtol=1e-4, atol=1e-4)


def test_masks_past_the_target_leave_no_dead_unit():
    """Masks that pruned past the target (top-k must keep units whose noise-free mask is 0): every kept
    unit's folded value is positive, no student row or column is all zeros, and the student equals the
    masked teacher (0/1 selection, values folded)."""
    from pangu_pro.inherit import hardconcrete as hc

    plan = plan_student(TEACHER, dataclasses.replace(TARGET, vocab_size=TEACHER.vocab_size))
    teacher, tensors = random_teacher(TEACHER, seed=5)
    rng = np.random.default_rng(6)
    # keep probability <= 1/2 for 80% of every type: far past the 50% target
    log_alpha = UnitArrays.full(TEACHER, 0.0).map(
        lambda a: np.where(rng.random(a.shape) < 0.8, rng.uniform(-4, -1.7, a.shape), rng.uniform(0.5, 4, a.shape)))
    assert (hc.deterministic_mask(log_alpha.neurons) == 0).mean() > 0.6
    sel = select_units(plan, log_alpha)
    values = log_alpha.map(hc.fold_value)
    binary = sel.binary_masks(TEACHER)
    for name in ("heads", "neurons", "hidden", "bottleneck"):
        kept = getattr(binary, name) > 0
        assert (getattr(values, name)[kept] > 0).all(), name
    student_tensors = materialize(tensors, plan, sel, values)
    for name, w in student_tensors.items():
        if w.ndim == 2 and "aug_shortcut.up" not in name:
            assert (np.abs(w).sum(0) > 0).all() and (np.abs(w).sum(1) > 0).all(), name
    student = build_model(plan.student)
    load_state(student, student_tensors)
    load_state(teacher, fold_values(tensors, TEACHER, values))
    ids = rng.integers(0, TEACHER.vocab_size, (2, 9)).astype(np.int32)
    np.testing.assert_allclose(student(Tensor(ids)).asnumpy(), masked_logits(teacher, TEACHER, ids, binary),
                               rtol=1e-4, atol=1e-4)


def test_taylor_forms_bound_each_other():
    """sum_abs (sum of |w dL/dw| over everything a unit owns) >= abs_sum (|dL/dm| = |sum of w dL/dw| over the
    weights the mask scales: a head's wo columns, a neuron's w2 column), by the triangle inequality."""
    from pangu_pro.inherit.criteria import taylor_scores

    teacher, _ = random_teacher(TEACHER, seed=7)
    rng = np.random.default_rng(8)
    batches = [rng.integers(0, TEACHER.vocab_size, (2, 9)).astype(np.int32) for _ in range(2)]
    abs_sum = taylor_scores(teacher, TEACHER, batches, form="abs_sum")
    sum_abs = taylor_scores(teacher, TEACHER, batches, form="sum_abs")
    for name in ("heads", "neurons", "bottleneck"):
        a, b = getattr(abs_sum, name), getattr(sum_abs, name)
        assert (b >= a * (1 - 1e-4)).all(), name
        assert (b > a * 1.01).any(), name


def test_bfloat16_teacher_storage_computes_the_rounded_weights():
    """The Ascend branch (frozen teacher, matmul weights stored in bf16) run on the CPU: the same logits as
    an fp32 teacher whose matmul weights are rounded to bf16, and its state reads back the float32 values
    it was loaded with (the student is materialised from them, not from their bf16 rounding)."""
    import mindspore as ms
    from mindspore import ops

    from pangu_pro.inherit.run import store_teacher, teacher_state
    from pangu_pro.model.layers import Linear

    teacher, tensors = random_teacher(TEACHER, seed=9)
    store_teacher(teacher, "bfloat16", say=lambda *_: None)
    linear = {f"{name}.weight" for name, cell in teacher.cells_and_names() if isinstance(cell, Linear)}
    assert linear and all(p.dtype == ms.bfloat16 for p in teacher.trainable_params() if p.name in linear)
    rounded = {k: (ops.cast(ops.cast(Tensor(v), ms.bfloat16), ms.float32).asnumpy() if k in linear else v)
               for k, v in tensors.items()}
    reference = build_model(TEACHER)
    load_state(reference, rounded)
    state = teacher_state(teacher)
    assert all(state[k].dtype == np.float32 and np.array_equal(state[k], tensors[k]) for k in tensors)
    ids = Tensor(np.arange(9, dtype=np.int32)[None] % TEACHER.vocab_size)
    np.testing.assert_allclose(teacher(ids).asnumpy(), reference(ids).asnumpy(), rtol=1e-5, atol=1e-5)
    assert not np.allclose(rounded["model.layers.0.attention.wq.weight"], tensors["model.layers.0.attention.wq.weight"])
