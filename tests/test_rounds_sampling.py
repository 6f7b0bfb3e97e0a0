"""Multi-round sampling math (pure numpy): softmax draws without replacement, determinism, units."""
from __future__ import annotations

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest

from pangu_pro.cli import main as cli_main
from pangu_pro.config import MultiRoundConfig
from pangu_pro.configtools import ConfigError, from_mapping
from pangu_pro.rounds import sampling
from pangu_pro.rounds.scoring import rank_units, save_scores
from pangu_pro.rounds.selection import select_from_scores

SCORES = np.array([0.0, 0.4, 1.0, 1.5, 2.2, 3.0])  # losses: p ranges from 2% to 41%
DRAWS = 6000
CHI2_BOUND = 30.0  # chi-square, 5 degrees of freedom: P(X > 30) ≈ 1.5e-5 for a correct sampler


def chi_square(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def exact_inclusion(scores: np.ndarray, k: int) -> np.ndarray:
    """P(unit i is among k sequential softmax draws without replacement), by enumerating all sequences."""
    w = np.exp(scores - scores.max())
    incl = np.zeros(scores.size)
    for seq in itertools.permutations(range(scores.size), k):
        p, left = 1.0, w.sum()
        for i in seq:
            p *= w[i] / left
            left -= w[i]
        incl[list(seq)] += p
    return incl


def sequential_reference(scores: np.ndarray, k: int, draws: int, seed: int = 99) -> np.ndarray:
    """Monte-Carlo inclusion counts of the textbook procedure: draw one by softmax, remove it, repeat."""
    rng = np.random.default_rng(seed)
    w = np.exp(scores - scores.max())
    counts = np.zeros(scores.size)
    for _ in range(draws):
        alive = np.ones(scores.size, bool)
        for _ in range(k):
            p = np.where(alive, w, 0.0)
            i = rng.choice(scores.size, p=p / p.sum())
            alive[i] = False
            counts[i] += 1
    return counts


def inclusion_statistic(a: np.ndarray, b: np.ndarray, n_a: int, n_b: int) -> float:
    """Sum over units of squared two-proportion z-scores (about chi-square with n-1 dof when equal)."""
    pa, pb = a / n_a, b / n_b
    pooled = (a + b) / (n_a + n_b)
    var = pooled * (1 - pooled) * (1 / n_a + 1 / n_b)
    return float(((pa - pb) ** 2 / np.maximum(var, 1e-12)).sum())


@pytest.fixture(scope="module")
def gumbel_draws():
    return np.stack([sampling.gumbel_top_k(SCORES, 3, seed=s) for s in range(DRAWS)])


def test_softmax_is_stable_and_exact():
    probs = sampling.softmax_probabilities(SCORES)
    np.testing.assert_allclose(probs, np.exp(SCORES) / np.exp(SCORES).sum(), rtol=1e-12)
    huge = sampling.softmax_probabilities(SCORES + 1e4)  # exp(1e4) overflows; shifting must not
    np.testing.assert_allclose(huge, probs, rtol=1e-12)
    np.testing.assert_allclose(sampling.softmax_probabilities(SCORES, 2.0), probs ** 0.5 / (probs ** 0.5).sum())
    assert sampling.gumbel_top_k(np.array([1e6, 1e6 + 50.0, -1e6]), 1, seed=0)[0] == 1  # no overflow


def test_first_draw_frequencies_match_softmax(gumbel_draws):
    probs = sampling.softmax_probabilities(SCORES)
    counts = np.bincount(gumbel_draws[:, 0], minlength=SCORES.size)
    assert chi_square(counts, probs) < CHI2_BOUND
    # The bound has power: a uniform draw and an argmax fail it by far.
    uniform = np.bincount(np.random.default_rng(0).integers(0, SCORES.size, DRAWS), minlength=SCORES.size)
    assert chi_square(uniform, probs) > 20 * CHI2_BOUND
    argmax = np.bincount(np.full(DRAWS, SCORES.argmax()), minlength=SCORES.size)
    assert chi_square(argmax, probs) > 20 * CHI2_BOUND
    # k = 1 draws the same first unit as k = 3 (the draw order is the sequential order).
    assert all(sampling.gumbel_top_k(SCORES, 1, seed=s)[0] == gumbel_draws[s, 0] for s in range(50))


def test_inclusion_frequencies_match_sequential_sampling(gumbel_draws):
    k = gumbel_draws.shape[1]
    exact = exact_inclusion(SCORES, k)
    assert exact.sum() == pytest.approx(k)
    reference = sequential_reference(SCORES, k, DRAWS)
    ours = np.bincount(gumbel_draws.ravel(), minlength=SCORES.size).astype(float)
    # the Monte-Carlo reference itself agrees with the enumeration ...
    np.testing.assert_allclose(reference / DRAWS, exact, atol=0.03)
    # ... and so does the Gumbel top-k draw.
    assert inclusion_statistic(ours, reference, DRAWS, DRAWS) < CHI2_BOUND
    np.testing.assert_allclose(ours / DRAWS, exact, atol=0.03)
    # Broken samplers fail the same bound: uniform without replacement, top-k by score.
    rng = np.random.default_rng(1)
    uniform = np.bincount(np.concatenate([rng.permutation(SCORES.size)[:k] for _ in range(DRAWS)]),
                          minlength=SCORES.size).astype(float)
    assert inclusion_statistic(uniform, reference, DRAWS, DRAWS) > 5 * CHI2_BOUND
    top = np.zeros(SCORES.size)
    top[np.argsort(-SCORES)[:k]] = DRAWS
    assert inclusion_statistic(top, reference, DRAWS, DRAWS) > 5 * CHI2_BOUND


def test_no_duplicates_count_and_seed_determinism():
    scores = np.random.default_rng(5).normal(3.0, 0.7, 101)
    a = sampling.select(scores, 0.5, seed=7)
    assert a.size == 51 and np.unique(a).size == 51 and a.min() >= 0 and a.max() < 101  # 50.5 rounds up
    np.testing.assert_array_equal(a, sampling.select(scores, 0.5, seed=7))
    assert not np.array_equal(a, sampling.select(scores, 0.5, seed=8))
    everything = sampling.select(scores, 1.0, seed=3)
    np.testing.assert_array_equal(np.sort(everything), np.arange(101))
    # orders are arrangements of one draw
    drawn = sampling.gumbel_top_k(scores, 51, seed=7)
    np.testing.assert_array_equal(sampling.select(scores, 0.5, seed=7, order="draw"), drawn)
    np.testing.assert_array_equal(sampling.select(scores, 0.5, seed=7, order="corpus"), np.sort(drawn))
    np.testing.assert_array_equal(np.sort(a), np.sort(drawn))
    assert not np.array_equal(a, drawn)  # the shuffle moved something


RANK_SCRIPT = """
import random, sys, numpy as np
np.random.seed(int(sys.argv[1])); random.seed(sys.argv[1]); np.random.rand(int(sys.argv[1]))  # rank-local state
from pangu_pro.rounds import sampling
scores = np.random.default_rng(11).normal(4.0, 1.0, 64)
print(sampling.select(scores, 0.5, seed=5, temperature=0.7).tolist())
"""


def test_ranks_compute_the_same_selection():
    """Two processes with different global RNG states and hash seeds get the same selection."""
    outs = []
    for rank in (0, 1):
        env = {"PYTHONHASHSEED": str(rank + 1), "PATH": ""}
        done = subprocess.run([sys.executable, "-c", RANK_SCRIPT, str(rank + 3)], capture_output=True, text=True,
                              env=env, check=True)
        outs.append(json.loads(done.stdout))
    assert outs[0] == outs[1] and len(outs[0]) == 32 and len(set(outs[0])) == 32
    here = sampling.select(np.random.default_rng(11).normal(4.0, 1.0, 64), 0.5, seed=5, temperature=0.7)
    assert outs[0] == here.tolist()


def test_num_selected_and_clear_errors():
    assert [sampling.num_selected(10, r) for r in (0.01, 0.25, 0.5, 1.0)] == [1, 3, 5, 10]
    for rate in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="rate must lie in"):
            sampling.num_selected(10, rate)
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match="non-finite value.*index 2"):
            sampling.select([1.0, 2.0, bad, 3.0], 0.5)
    with pytest.raises(ValueError, match="temperature"):
        sampling.softmax_probabilities([1.0, 2.0], 0.0)
    with pytest.raises(ValueError, match="cannot draw 4 of 3"):
        sampling.gumbel_top_k([1.0, 2.0, 3.0], 4)


def test_units_expand_to_samples():
    np.testing.assert_array_equal(sampling.unit_samples(np.array([2, 0]), "batch", 4, 10), [8, 9, 0, 1, 2, 3])
    np.testing.assert_array_equal(sampling.unit_samples(np.array([5, 1]), "sample", 4, 10), [5, 1])
    assert sampling.num_units(10, 4) == 3
    with pytest.raises(ValueError, match="batch index 3 is outside the data's 3 batch units"):
        sampling.unit_samples(np.array([3]), "batch", 4, 10)
    with pytest.raises(ValueError, match="sample index 10 is outside"):
        sampling.unit_samples(np.array([10]), "sample", 4, 10)


@pytest.mark.parametrize("n,global_batch,k", [(100, 4, 1), (100, 4, 3), (97, 8, 2), (5, 4, 4)])
def test_units_of_k_training_batches_partition_the_samples(n, global_batch, k):
    """With unit = k global batches, every sample is in exactly one unit, each unit is k consecutive
    training batches of the unshuffled pass, and the scorers of any world score each unit once."""
    seq = 16
    size = sampling.unit_size(k * global_batch * seq, global_batch, seq)
    assert size == k * global_batch
    assert sampling.unit_size(int((k + 0.4) * global_batch * seq), global_batch, seq) == size  # rounded
    assert sampling.unit_size(1, global_batch, seq) == global_batch  # at least one batch
    units = sampling.num_units(n, size)
    owner = np.concatenate([np.full(len(sampling.unit_samples(np.array([u]), "batch", size, n)), u)
                            for u in range(units)])
    np.testing.assert_array_equal(sampling.unit_samples(np.arange(units), "batch", size, n), np.arange(n))
    batch_of_sample = np.arange(n) // global_batch  # training step t reads samples [t*G, (t+1)*G)
    np.testing.assert_array_equal(owner, batch_of_sample // k)  # unit u = training batches u*k .. u*k+k-1
    for world in (1, 2, 3):
        ids = np.concatenate([rank_units(units, r, world) for r in range(world)])
        np.testing.assert_array_equal(np.sort(ids), np.arange(units))


def test_multi_round_config_validation():
    cfg = from_mapping(MultiRoundConfig, {"rounds": 3, "rate": 0.25, "unit": "sample", "temperature": 2})
    assert (cfg.rounds, cfg.rate, cfg.unit, cfg.temperature) == (3, 0.25, "sample", 2.0)
    for key, value, match in [("rate", 0, "rate: must lie in"), ("rate", 1.5, "rate: must lie in"),
                              ("temperature", 0, "temperature"), ("unit", "token", "unit: expected one of"),
                              ("rounds", 0, "rounds"), ("score_unit_tokens", 0, "score_unit_tokens"),
                              ("round_schedule", "theirs", "round_schedule"),
                              ("round_warmup_fraction", 1.5, "round_warmup_fraction")]:
        with pytest.raises(ConfigError, match=match):
            from_mapping(MultiRoundConfig, {key: value})


def test_select_cli_writes_the_index_and_fails_clearly(tmp_path, capsys):
    batch_loss = np.array([1.0, 5.0, 2.0, 4.0, 3.0])
    sample_loss = np.repeat(batch_loss, 4)[:18]
    save_scores(tmp_path / "s.npz", batch_loss, sample_loss, 4, {"checkpoint": "x"})
    out = tmp_path / "sel.npy"
    assert cli_main(["select", "--scores", str(tmp_path / "s.npz"), "--rate", "0.6", "--seed", "3",
                     "--out", str(out)]) == 0
    index = np.load(out)
    report = json.loads(out.with_suffix(".json").read_text())
    units = np.array(report["units"])
    assert units.size == 3 and np.unique(units).size == 3
    np.testing.assert_array_equal(index, sampling.unit_samples(units, "batch", 4, 18))
    scores = {"unit_loss": batch_loss, "sample_loss": sample_loss, "unit_size": 4, "num_samples": 18}
    np.testing.assert_array_equal(index, select_from_scores(scores, 0.6, seed=3)[0])
    assert report["samples_selected"] == index.size and report["selected_fraction"] == index.size / 18
    assert cli_main(["select", "--scores", str(tmp_path / "s.npz"), "--rate", "1.5", "--seed", "3"]) == 2
    assert "rate must lie in (0, 1]" in capsys.readouterr().err
    save_scores(tmp_path / "nan.npz", np.array([1.0, np.nan, 2.0, 1.0, 1.0]), sample_loss, 4, {})
    assert cli_main(["select", "--scores", str(tmp_path / "nan.npz"), "--rate", "0.5", "--seed", "3"]) == 2
    assert "non-finite value(s) (NaN/inf), the first at index 1" in capsys.readouterr().err


def optimizer_step_sets(num_samples: int, batch: int, world: int, accum: int, **order) -> list[frozenset]:
    """The samples of each optimizer step of a data-parallel run (`sample_order` per rank; a step is
    `accum` micro-batches of `batch` rows on each of `world` ranks), as sets of sample ids."""
    from pangu_pro.data.dataset import sample_order

    per_rank = [sample_order(num_samples, batch, rank=r, world=world, **order) for r in range(world)]
    rows = accum * batch
    steps = min(len(p) for p in per_rank) // rows
    return [frozenset(np.concatenate([p[t * rows:(t + 1) * rows] for p in per_rank]).tolist()) for t in range(steps)]


@pytest.mark.parametrize("shuffle", [True, False])
def test_round_two_steps_are_round_one_steps(shuffle):
    """#25: with round 1 shuffled, every optimizer step of round 2 reads exactly the samples of one
    optimizer step of round 1 (2 ranks x 2 micro-batches of 3 rows = 12 samples a step; units of 2
    steps). Units cut from corpus order failed this: round 2 read contiguous corpus slices."""
    from pangu_pro.rounds.scoring import unit_order

    n, batch, world, accum, seed = 101, 3, 2, 2, 7
    unit = 2 * batch * world * accum
    round_one = optimizer_step_sets(n, batch, world, accum, shuffle=shuffle, seed=seed)
    units = sampling.num_units(n, unit)
    unit_loss = np.random.default_rng(0).normal(size=units)
    scores = {"unit_loss": unit_loss, "sample_loss": np.zeros(n), "unit_size": unit, "num_samples": n,
              "meta": {"unit_order": {"shuffle": shuffle, "seed": seed}}}
    index, chosen, _ = select_from_scores(scores, 0.5, seed=3)
    round_two = optimizer_step_sets(n, batch, world, accum, indices=index)
    assert len(round_two) == 2 * int((chosen != units - 1).sum())  # every whole unit fills two steps
    assert set(round_two) <= set(round_one)
    # unit u is round 1's steps 2u and 2u + 1, read in the unit order the selection chose
    expected = [round_one[2 * u + i] for u in chosen if u != units - 1 for i in (0, 1)]
    assert round_two == expected
    order = unit_order(scores["meta"], n)
    assert sorted(order.tolist()) == list(range(n)) and (shuffle or order.tolist() == list(range(n)))


def test_the_temperature_sets_the_drawn_sets_distribution():
    """#25: at T = 2 the drawn pairs follow sequential softmax(l / 2) draws without replacement,
    P({i, j}) = p_i p_j / (1 - p_i) + p_j p_i / (1 - p_j); the same draws at T = 1 would be far off."""
    scores, temperature, trials = np.array([0.0, 1.0, 2.0, 3.0]), 2.0, 20000
    counts = {}
    for seed in range(trials):
        pair = frozenset(sampling.gumbel_top_k(scores, 2, temperature, seed).tolist())
        counts[pair] = counts.get(pair, 0) + 1

    def pair_probabilities(t):
        p = sampling.softmax_probabilities(scores, t)
        return {frozenset((i, j)): p[i] * p[j] / (1 - p[i]) + p[j] * p[i] / (1 - p[j])
                for i in range(4) for j in range(i + 1, 4)}

    want, untempered = pair_probabilities(temperature), pair_probabilities(1.0)
    assert sum(want.values()) == pytest.approx(1.0)
    for pair, p in want.items():
        observed = counts.get(pair, 0) / trials
        assert abs(observed - p) < 5 * np.sqrt(p * (1 - p) / trials), (sorted(pair), observed, p)
    assert max(abs(counts.get(pair, 0) / trials - p) for pair, p in untempered.items()) > 0.05
