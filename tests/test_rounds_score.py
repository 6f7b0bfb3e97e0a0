"""`pangu-pro score`: per-sample losses, exact batch scores, resume, refusal of foreign parts, NaN,
and 2 data-parallel msrun workers equal to one process."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pangu_pro.config import config_from_dict, save_config
from pangu_pro.configtools import ConfigError
from pangu_pro.rounds import scoring
from pangu_pro.rounds.scoring import load_scores, merge_parts, per_sample_loss_cell, score
from tests.support import free_port

SEQ, VOCAB, N, BATCH = 16, 64, 18, 4  # 18 samples: batches of 4, the last one short (2)
REPO = Path(__file__).resolve().parents[1]


def write_data(path: Path, n: int = N, seed: int = 0) -> Path:
    """n rows of SEQ + 1 tokens, half of them repetitive (easy), half random (hard)."""
    from mindspore.mindrecord import FileWriter

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        row = np.resize(rng.integers(3, VOCAB, 2 + i % 4), SEQ + 1) if i % 2 else rng.integers(3, VOCAB, SEQ + 1)
        rows.append({"input_ids": row.astype(np.int32)})
    writer = FileWriter(str(path), shard_num=1, overwrite=True)
    writer.add_schema({"input_ids": {"type": "int32", "shape": [-1]}}, "tokens")
    writer.write_raw_data(rows)
    writer.commit()
    return path


def tiny_config(data: Path, out: Path, **train):
    return config_from_dict({
        "model": {"vocab_size": VOCAB, "hidden_size": 32, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1,
                  "intermediate_size": 64, "seq_length": SEQ, "aug_shortcut_ratio": 8},
        "data": {"train_files": [str(data)], "eval_files": [str(data)]},
        "train": {"batch_size": BATCH, "steps": 4, "lr": 0.01, "warmup_steps": 1, "output_dir": str(out), **train},
    }, "test")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from pangu_pro.model.weights import build_model, save_weights

    root = tmp_path_factory.mktemp("score")
    data = write_data(root / "data.mindrecord")
    config = tiny_config(data, root / "run")
    save_weights(build_model(config.model, seed=3), root / "w.safetensors")
    return root, data, config, root / "w.safetensors"


def reference(config, weights, data):
    """Unit scores by PanGuPiWithLoss on each batch of BATCH samples of round 1's first-pass order (the
    config shuffles: `epoch_order` with data.seed), sample scores by PanGuPiWithLoss on each row."""
    import mindspore as ms

    from pangu_pro.data.dataset import epoch_order, read_samples
    from pangu_pro.model.pangu_pi import PanGuPiWithLoss
    from pangu_pro.model.weights import build_model

    net = PanGuPiWithLoss(build_model(config.model, weights=weights))
    rows = read_samples(data)
    assert config.data.shuffle
    order = epoch_order(len(rows), shuffle=True, seed=config.data.seed)
    batches = [float(net(ms.Tensor(rows[order[i:i + BATCH]])).asnumpy()) for i in range(0, len(rows), BATCH)]
    samples = [float(net(ms.Tensor(rows[i:i + 1])).asnumpy()) for i in range(len(rows))]
    return np.array(batches), np.array(samples)


@pytest.fixture(scope="module")
def expected(setup):
    _, data, config, weights = setup
    return reference(config, weights, data)


def test_per_sample_cell_matches_the_training_loss_row_by_row(setup):
    import mindspore as ms

    from pangu_pro.model.pangu_pi import PanGuPiWithLoss
    from pangu_pro.model.weights import build_model

    _, _, config, weights = setup
    model = build_model(config.model, weights=weights)
    ids = np.random.default_rng(1).integers(3, VOCAB, (3, SEQ + 1)).astype(np.int32)
    ids[1, SEQ] = config.model.ignore_index  # a label that never counts (inputs must stay token ids)
    mask = np.ones_like(ids)
    mask[2, :5] = 0
    sums, counts = (x.asnumpy() for x in per_sample_loss_cell(model)(ms.Tensor(ids), ms.Tensor(mask)))
    np.testing.assert_array_equal(counts, [SEQ, SEQ - 1, SEQ - 4])
    loss = PanGuPiWithLoss(model)
    for i in range(3):
        row = float(loss(ms.Tensor(ids[i:i + 1]), ms.Tensor(mask[i:i + 1])).asnumpy())
        assert sums[i] / counts[i] == pytest.approx(row, rel=1e-5)
    batch = float(loss(ms.Tensor(ids), ms.Tensor(mask)).asnumpy())
    assert sums.sum() / counts.sum() == pytest.approx(batch, rel=1e-5)
    # the cell wraps the model: same parameters, names unchanged
    assert [p.name for p in per_sample_loss_cell(model).trainable_params()] == \
        [p.name for p in model.trainable_params()]


class Counting:
    """Wraps the scoring cell: counts calls, and raises after `stop_after` of them."""

    def __init__(self, net, stop_after=None):
        self.net, self.stop_after, self.calls = net, stop_after, 0

    def set_train(self, mode):
        self.net.set_train(mode)

    def __call__(self, *args):
        if self.stop_after is not None and self.calls == self.stop_after:
            raise KeyboardInterrupt("simulated kill")
        self.calls += 1
        return self.net(*args)


def test_scores_are_exact_and_scoring_resumes(setup, expected, monkeypatch):
    root, data, config, weights = setup
    out = root / "resume" / "scores.npz"
    made = []

    def interrupted(network):
        made.append(Counting(per_sample_loss_cell(network), 3))
        return made[-1]

    real = scoring.per_sample_loss_cell
    monkeypatch.setattr(scoring, "per_sample_loss_cell", interrupted)
    with pytest.raises(KeyboardInterrupt):
        score(config, weights, out=out, unit_samples=BATCH, flush_every=1, progress=False, announce=None)
    part = scoring.load_part(scoring.part_path(out, 0, 1))
    np.testing.assert_array_equal(part["unit_ids"], [0, 1, 2])
    assert not part["complete"] and not out.exists()

    with pytest.raises(ValueError, match="partial scores of another run \\(unit_size"):
        score(config, weights, out=out, unit_samples=2 * BATCH, progress=False, announce=None)

    def counted(network):
        made.append(Counting(real(network)))
        return made[-1]

    monkeypatch.setattr(scoring, "per_sample_loss_cell", counted)
    summary = score(config, weights, out=out, unit_samples=BATCH, flush_every=1, progress=False, announce=None)
    assert made[-1].calls == 2  # only units 3 and 4 were scored again
    got = load_scores(out)
    np.testing.assert_allclose(got["unit_loss"], expected[0], rtol=1e-5)
    np.testing.assert_allclose(got["sample_loss"], expected[1], rtol=1e-5)
    assert got["unit_size"] == BATCH and got["num_samples"] == N and summary["num_units"] == 5
    assert not scoring.parts_dir(out).exists()  # parts are removed once merged
    calls = len(made)
    score(config, weights, out=out, unit_samples=BATCH, progress=False, announce=None)  # finished: nothing to do
    assert len(made) == calls


def test_non_finite_scores_fail_clearly(setup, tmp_path):
    from pangu_pro.tensors import load_tensors, save_tensors

    _, _, config, weights = setup
    tensors, meta = load_tensors(weights)
    tensors["lm_head.weight"] = np.full_like(tensors["lm_head.weight"], np.nan)
    save_tensors(tmp_path / "nan.safetensors", tensors, meta)
    from pangu_pro.data.dataset import epoch_order

    first = epoch_order(N, shuffle=True, seed=config.data.seed)[:BATCH].tolist()  # unit 0: round 1's first batch
    with pytest.raises(ValueError, match=f"non-finite loss on unit 0 \\(samples {re.escape(str(first))}\\)"):
        score(config, tmp_path / "nan.safetensors", out=tmp_path / "s.npz", unit_samples=BATCH, progress=False,
              announce=None)


def test_merge_needs_every_unit_once():
    part = {"unit_ids": np.array([0, 2]), "unit_loss": np.array([1.0, 3.0]),
            "sample_loss": np.array([1.0, 1.0, 3.0])}
    other = {"unit_ids": np.array([1]), "unit_loss": np.array([2.0]), "sample_loss": np.array([2.0, 2.0])}
    units, samples = merge_parts([part, other], 3, 2, 5)
    np.testing.assert_array_equal(units, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(samples, [1.0, 1.0, 2.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="unit 1 was scored 0 times"):
        merge_parts([part], 3, 2, 5)
    with pytest.raises(ValueError, match="unit 0 was scored 2 times"):
        merge_parts([part, part, other], 3, 2, 5)


def test_a_part_with_a_repeated_unit_id_is_refused(tmp_path):
    """A corrupt part repeating an id (with the sample count of its ids) used to merge silently with
    misaligned losses; merging and the waiting rank's check both refuse it."""
    repeated = {"unit_ids": np.array([0, 0]), "unit_loss": np.array([1.0, 3.0]),
                "sample_loss": np.array([1.0, 1.0, 3.0, 3.0]), "path": "rank000-of002.npz"}
    other = {"unit_ids": np.array([1, 2]), "unit_loss": np.array([2.0, 4.0]), "sample_loss": np.array([2.0, 2.0, 4.0])}
    with pytest.raises(ValueError, match="rank000-of002.npz: unit 0 appears more than once"):
        merge_parts([repeated, other], 3, 2, 5)
    meta = {"num_samples": 5, "unit_size": 2, "scorers": 2}
    path = tmp_path / "rank000-of002.npz"
    scoring.save_part(path, meta, np.array([0, 0]), np.array([1.0, 3.0]), np.array([1.0, 1.0, 3.0, 3.0]), True)
    with pytest.raises(ValueError, match="unit 0 appears more than once"):
        scoring.wait_for_part(path, meta, scoring.rank_units(3, 0, 2), timeout=1)
    # the right ids but a sample count that does not fit them: refused as well
    scoring.save_part(path, meta, np.array([0, 2]), np.array([1.0, 3.0]), np.array([1.0, 1.0, 3.0, 3.0]), True)
    with pytest.raises(ValueError, match="4 sample losses for units of 3 samples"):
        scoring.wait_for_part(path, meta, scoring.rank_units(3, 0, 2), timeout=1)
    # a complete part that stops early is refused, not merged with missing units
    scoring.save_part(path, meta, np.array([0]), np.array([1.0]), np.array([1.0, 1.0]), True)
    with pytest.raises(ValueError, match="not this rank's units"):
        scoring.wait_for_part(path, meta, scoring.rank_units(3, 0, 2), timeout=1)


def test_units_of_k_batches_are_exact(setup, expected, tmp_path):
    """unit = 2 batches of 4: unit loss = token mean over its 8 samples of round 1's first-pass order
    (every row counts SEQ tokens)."""
    from pangu_pro.data.dataset import epoch_order

    _, _, config, weights = setup
    got = load_scores(Path(score(config, weights, out=tmp_path / "s.npz", unit_samples=2 * BATCH,
                                 progress=False, announce=None)["scores"]))
    samples = expected[1][epoch_order(N, shuffle=True, seed=config.data.seed)]
    want = [samples[i:i + 2 * BATCH].mean() for i in range(0, N, 2 * BATCH)]
    assert got["unit_size"] == 2 * BATCH and got["unit_loss"].size == 3  # 18 samples: 8 + 8 + 2
    np.testing.assert_allclose(got["unit_loss"], want, rtol=1e-5)
    np.testing.assert_allclose(got["sample_loss"], expected[1], rtol=1e-5)  # by sample id
    assert got["meta"]["unit_order"] == {"shuffle": True, "seed": config.data.seed}
    with pytest.raises(ValueError, match="must be a positive multiple of the rows"):
        score(config, weights, out=tmp_path / "t.npz", unit_samples=6, progress=False, announce=None)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_data_parallel_workers_score_like_one_process(setup, expected, tmp_path):
    root, data, config, weights = setup
    cfg_path = tmp_path / "config.yaml"
    save_config(config, cfg_path)
    out = tmp_path / "dp" / "scores.npz"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    cmd = [str(Path(sys.executable).parent / "msrun"), "--worker_num=2", "--local_worker_num=2",
           f"--master_port={free_port()}", f"--log_dir={tmp_path / 'logs'}", "--join=True",
           "python", "-m", "pangu_pro.cli", "score", str(cfg_path), "--checkpoint", str(weights), "--out", str(out),
           "--unit-samples", str(BATCH), "--flush-every", "1", "--no-progress"]
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    logs = "".join(p.read_text(errors="replace")[-2000:] for p in sorted((tmp_path / "logs").glob("worker_*.log")))
    assert done.returncode == 0, logs
    got = load_scores(out)
    assert got["meta"]["scorers"] == 2
    np.testing.assert_allclose(got["unit_loss"], expected[0], rtol=1e-5)
    np.testing.assert_allclose(got["sample_loss"], expected[1], rtol=1e-5)
    single = tmp_path / "single.npz"
    score(config, weights, out=single, unit_samples=BATCH, progress=False, announce=None)
    np.testing.assert_allclose(got["unit_loss"], load_scores(single)["unit_loss"], rtol=1e-6)
    np.testing.assert_allclose(got["sample_loss"], load_scores(single)["sample_loss"], rtol=1e-6)


def test_semi_auto_scoring_builds_with_the_layouts_strategies(semi_auto):
    """Under the (patched, 8-device) semi-auto context the scorer builds through the trainer's
    builder and `parallelize`: every primitive carries the same strategy as the training network of
    that layout (dp 2, mp 4), and the per-row sum runs replicated so each rank holds every row's loss."""
    import dataclasses

    from pangu_pro.config import ParallelConfig
    from pangu_pro.train.trainer import Parallel, build_training
    from tests.test_parallel_layout import MHA, UNSHARDED, expected_layout, read_strategies

    parallel = ParallelConfig(data_parallel=2, model_parallel=4)
    config = dataclasses.replace(tiny_config(Path("unused"), Path("unused")), model=MHA, parallel=parallel)
    par = Parallel(rank=0, world=8, semi_auto=True, replicas=2, num_shards=1, shard_id=0, read_factor=2)
    found = read_strategies(scoring.scoring_network(config, par))
    training = read_strategies(build_training(config, par)[1])
    expected = expected_layout(MHA, 2, 4, False, False)
    sharded = {k: v for k, v in found.items() if k.rsplit(".", 1)[-1] not in UNSHARDED | {"row_sum"}}
    assert sharded == expected
    assert {k: found[k] for k in training} == training
    assert found["loss.row_sum"] == ((1, 1),)
    # outside semi-auto the same builder attaches nothing
    plain = read_strategies(scoring.scoring_network(config, Parallel()))
    assert all(v is None for v in plain.values())
    piped = dataclasses.replace(config, parallel=dataclasses.replace(parallel, pipeline_stage=2, micro_batch_num=2))
    with pytest.raises(ConfigError, match="pipeline_stage: is 2: scoring runs no pipeline forward"):
        scoring.scoring_network(piped, par)
