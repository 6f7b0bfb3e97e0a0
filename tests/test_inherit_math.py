"""Inheritance math in isolation (pangu_pro.inherit.hardconcrete): pure numpy, no graph."""
import dataclasses

import numpy as np
import pytest

from pangu_pro.config import ModelConfig
from pangu_pro.inherit import hardconcrete as hc
from pangu_pro.inherit.hardconcrete import UnitArrays
from pangu_pro.inherit.plan import plan_student
from pangu_pro.model.params import count_parameters

TEACHER = ModelConfig(vocab_size=50, hidden_size=32, num_layers=5, num_heads=4, num_kv_heads=2,
                      intermediate_size=40, seq_length=16, aug_shortcut_ratio=8)
STUDENT = ModelConfig(vocab_size=50, hidden_size=16, num_layers=3, num_heads=2, num_kv_heads=1,
                      intermediate_size=24, seq_length=16, aug_shortcut_ratio=4)


@pytest.mark.parametrize("log_alpha", [-4.0, -1.5, 0.0, 0.7, 2.5, 4.6])
def test_keep_probability_matches_monte_carlo(log_alpha):
    rng = np.random.default_rng(0)
    u = rng.random(400_000)
    z = hc.sample_mask(np.full(u.shape, log_alpha), u)
    assert z.min() >= 0.0 and z.max() <= 1.0
    p = float(hc.keep_probability(log_alpha))
    assert abs((z > 0).mean() - p) < 4e-3
    # the closed form, written out independently
    assert p == pytest.approx(1 / (1 + np.exp(-(log_alpha - (2 / 3) * np.log(0.1 / 1.1)))), rel=1e-12)


def test_log_alpha_is_clamped_and_inverse_holds():
    assert hc.keep_probability(100.0) == pytest.approx(hc.keep_probability(4.6))
    assert hc.keep_probability(-100.0) == pytest.approx(hc.keep_probability(-4.6))
    for p in (0.1, 0.5, 0.95):
        assert hc.keep_probability(hc.log_alpha_for_keep_probability(p)) == pytest.approx(p)
    assert hc.deterministic_mask(4.6) == 1.0 and hc.deterministic_mask(-4.6) == 0.0
    assert hc.deterministic_mask(0.0) == pytest.approx(0.5)


def test_constraint_gradient_is_exact():
    s, t, l1, l2 = 0.3, 0.5, 0.7, 1.3
    ds, dl1, dl2 = hc.constraint_grads(s, t, l1, l2)
    h = 1e-6
    assert ds == pytest.approx((hc.constraint(s + h, t, l1, l2) - hc.constraint(s - h, t, l1, l2)) / (2 * h), rel=1e-6)
    assert dl1 == pytest.approx(s - t) and dl2 == pytest.approx((s - t) ** 2)


@pytest.mark.parametrize("start_keep,target", [(0.95, 0.5), (0.2, 0.3)])
def test_constraint_pushes_sparsity_toward_target_from_both_sides(start_keep, target):
    """Descent on log_alpha, ascent on the lambdas: the expected sparsity moves to the target."""
    log_alpha = np.full(64, float(hc.log_alpha_for_keep_probability(start_keep)))
    l1 = l2 = 0.0
    s0 = hc.expected_sparsity(hc.keep_probability(log_alpha))
    for _ in range(3000):
        s = hc.expected_sparsity(hc.keep_probability(log_alpha))
        ds, dl1, dl2 = hc.constraint_grads(s, target, l1, l2)
        # d s / d log_alpha_i = -(1/n) dp_i/dlog_alpha_i
        log_alpha -= 0.5 * ds * (-hc.keep_probability_grad(log_alpha) / log_alpha.size) * log_alpha.size
        l1 += 0.5 * dl1
        l2 += 0.5 * dl2
    s1 = hc.expected_sparsity(hc.keep_probability(log_alpha))
    assert abs(s0 - target) > 0.1
    assert abs(s1 - target) < 0.02
    # the first step's gradient already points the right way
    ds, _, _ = hc.constraint_grads(s0, target, 0.5 * (s0 - target), 0.5 * (s0 - target) ** 2)
    assert np.sign(ds) == np.sign(s0 - target)


def test_target_ramps_over_the_first_fifth():
    assert hc.target_sparsity(0, 100, 0.6) == 0.0
    assert hc.target_sparsity(10, 100, 0.6) == pytest.approx(0.3)
    assert hc.target_sparsity(20, 100, 0.6) == pytest.approx(0.6)
    assert hc.target_sparsity(99, 100, 0.6) == pytest.approx(0.6)


def test_expected_size_equals_student_count_at_deterministic_masks():
    plan = plan_student(TEACHER, STUDENT)
    rng = np.random.default_rng(3)
    keep = UnitArrays.full(TEACHER, 0.0)
    layers = np.array([0, 2, 4])
    keep.layers[layers] = 1.0
    for layer in range(TEACHER.num_layers):  # dropped layers may keep anything: their gate is 0
        keep.heads[layer, rng.choice(2, 1, replace=False)] = 1.0
        keep.neurons[layer, rng.choice(40, 24, replace=False)] = 1.0
    keep.hidden[rng.choice(32, 16, replace=False)] = 1.0
    keep.bottleneck[:, :] = 1.0  # the student's ratio 4 keeps all 4 of the teacher's units
    size = hc.expected_size(TEACHER, keep)
    assert size == count_parameters(plan.student).total
    # with a smaller vocabulary and tied embeddings too
    tied_t = dataclasses.replace(TEACHER, tie_word_embeddings=True)
    tied_s = dataclasses.replace(STUDENT, tie_word_embeddings=True, vocab_size=20)
    plan = plan_student(tied_t, tied_s, np.concatenate([[0, 1, 2], np.arange(5, 22)]))
    size = hc.expected_size(tied_t, keep, vocab_size=20)
    assert size == count_parameters(plan.student).total
    # a shrunk bottleneck (the target's ratio 8: 2 of 4 units per layer)
    plan = plan_student(TEACHER, dataclasses.replace(STUDENT, aug_shortcut_ratio=8))
    keep.bottleneck[:, :2] = 0.0
    assert hc.expected_size(TEACHER, keep) == count_parameters(plan.student).total
    # all ones: the teacher
    assert hc.expected_size(TEACHER, UnitArrays.full(TEACHER)) == count_parameters(TEACHER).total


def test_expected_size_is_linear_in_each_keep_probability():
    keep = UnitArrays.full(TEACHER, 0.5)
    a = hc.expected_size(TEACHER, keep)
    keep.neurons[1, 3] = 1.0
    b = hc.expected_size(TEACHER, keep)
    # one more neuron of layer 1 adds (3 d + 2 terms) * layer keep
    assert b - a == pytest.approx(0.5 * 0.5 * (3 * 16 + 2 * 2))


def test_top_k_is_exact_per_row_and_deterministic():
    scores = np.array([[0.1, 0.9, 0.9, 0.3], [1.0, 1.0, 1.0, 1.0]])
    assert hc.top_k(scores, 2).tolist() == [[1, 2], [0, 1]]
    rng = np.random.default_rng(0)
    big = rng.random((7, 50))
    kept = hc.top_k(big, 13)
    assert kept.shape == (7, 13)
    for row, idx in zip(big, kept):
        assert set(idx) == set(np.argsort(-row)[:13])
        assert list(idx) == sorted(idx)
    with pytest.raises(ValueError):
        hc.top_k(scores, 5)


def test_select_layers_keeps_first_and_last():
    scores = np.array([0.0, 5.0, 1.0, 4.0, 2.0, 0.0])
    assert hc.select_layers(scores, 4).tolist() == [0, 1, 3, 5]
    assert hc.select_layers(scores, 2).tolist() == [0, 5]
    assert hc.select_layers(scores, 6).tolist() == list(range(6))


def test_bench_helpers(tmp_path):
    from pangu_pro.bench.inherit import BYTE_OFFSET, byte_rows, format_table, merge_results, paired_difference

    (tmp_path / "t.txt").write_text("ab\ncd\n", encoding="utf-8")
    rows = byte_rows(tmp_path / "t.txt", 2)
    assert rows.tolist() == [[ord("a") + BYTE_OFFSET, ord("b") + BYTE_OFFSET, 2],
                             [ord("c") + BYTE_OFFSET, ord("d") + BYTE_OFFSET, 2]]

    def run(seed, l1, l2):
        student = lambda k: {"loss_0": k, "loss_k": k, "derive_seconds": 1.0}  # noqa: E731
        return {"seed": seed, "teacher_heldout_loss": 2.0,
                "students": {"random init": student(5.0), "l1": student(l1), "l2": student(l2)}}

    setup = {"teacher": "t", "student": "s", "data": "d", "teacher_steps": 1, "mask_steps": 2, "lr_mask": 0.1,
             "data_budget_sequences": 8, "continue_steps": 3}
    result = {"setup": setup, "teacher_parameters": 10, "student_parameters": 5, "seconds": 1.0,
              "runs": [run(1, 3.0, 3.5), run(2, 3.1, 3.4)]}
    merged = merge_results([result, {**result, "runs": [run(3, 2.9, 3.6)]}])
    assert [r["seed"] for r in merged["runs"]] == [1, 2, 3]
    with pytest.raises(ValueError, match="seed appears twice"):
        merge_results([result, result])
    with pytest.raises(ValueError, match="mask_steps"):
        merge_results([result, {**result, "setup": {**setup, "mask_steps": 5}, "runs": [run(3, 1, 1)]}])
    d = paired_difference(merged["runs"], "l1", "l2", "loss_k")  # -0.5, -0.3, -0.7: consistent
    assert d["mean"] == pytest.approx(-0.5) and d["sd"] == pytest.approx(0.2) and d["significant"]
    assert d["a_lower"] == 3
    noisy = [run(1, 3.0, 3.5), run(2, 3.6, 3.1), run(3, 3.0, 3.2)]  # signs disagree
    assert not paired_difference(noisy, "l1", "l2", "loss_k")["significant"]
    text = format_table(merged)
    assert "**-0.500 ± 0.200**" in text and "l1 − l2 -0.500" in text
    assert "no difference exceeds seed noise" not in text.split("after 3 steps:")[-1]
    assert "no difference exceeds seed noise" in format_table({**merged, "runs": noisy})
