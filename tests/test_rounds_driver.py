"""Multi-round driver: round 2 reads exactly the selected batches; stages resume from the state file;
a round starts from the previous weights with a fresh optimizer; a changed config is refused."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from pangu_pro.config import MultiRoundConfig, config_from_dict
from pangu_pro.configtools import ConfigError, to_mapping
from pangu_pro.rounds import driver, sampling
from pangu_pro.rounds.scoring import save_scores
from pangu_pro.rounds.selection import select_from_scores, write_selection
from pangu_pro.tensors import save_tensors
from tests.test_rounds_score import BATCH, N, write_data


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_data(tmp_path_factory.mktemp("drv") / "data.mindrecord", n=N, seed=4)


def rounds_config(data: Path, out: Path, **multi_round):
    return config_from_dict({
        "model": {"vocab_size": 64, "hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64,
                  "seq_length": 16, "aug_shortcut_ratio": 8},
        "data": {"train_files": [str(data)], "eval_files": [str(data)]},
        "train": {"batch_size": BATCH, "steps": 6, "lr": 0.01, "warmup_steps": 4, "output_dir": str(out)},
        "multi_round": {"rounds": 2, "rate": 0.5, "seed": 1, "score_unit_tokens": BATCH * 16,
                        "round_schedule": "round1", **multi_round},
    }, "test")


def test_round_two_reads_exactly_the_selected_batches(data, tmp_path):
    from pangu_pro.data.dataset import create_dataset, read_samples

    rows = read_samples(data)
    batch_loss = np.arange(5, dtype=float)  # 18 samples -> batches 0..4, the last of 2 samples
    save_scores(tmp_path / "s.npz", batch_loss, np.repeat(batch_loss, BATCH)[:N], BATCH, {})
    scores = {"unit_loss": batch_loss, "sample_loss": np.repeat(batch_loss, BATCH)[:N], "unit_size": BATCH,
              "num_samples": N}
    samples, units, _ = select_from_scores(scores, 0.8, seed=2)  # 4 of 5 batches
    index = write_selection(tmp_path / "sel.npy", samples, units, {})
    assert units[-1] == 4 and 4 in sampling.select(batch_loss, 0.8, seed=2)[:-1]  # the short batch moved last
    dataset = create_dataset(data, BATCH, indices=index, shuffle=True, seed=9)  # shuffle is ignored
    got = [b[0] for b in dataset.create_tuple_iterator(num_epochs=1, output_numpy=True)]
    assert len(got) == 3  # 4 batches selected; the short one (2 samples) is the dropped remainder
    for batch, unit in zip(got, units):  # every training batch is exactly one selected batch, in order
        np.testing.assert_array_equal(batch, rows[unit * BATCH:(unit + 1) * BATCH])
    np.testing.assert_array_equal(np.load(index), np.concatenate([np.arange(u * BATCH, min(u * BATCH + BATCH, N))
                                                         for u in units]))
    # two data-parallel ranks: step t reads selected batches 2t and 2t+1 together
    order = [u for u in units if u != 4][:2]
    ranks = [next(create_dataset(data, BATCH, indices=sampling.unit_samples(np.array(order), "batch", BATCH, N),
                                 rank=r, world=2).create_tuple_iterator(num_epochs=1, output_numpy=True))[0]
             for r in (0, 1)]
    step = np.sort(np.concatenate(ranks), axis=0)
    np.testing.assert_array_equal(step, np.sort(np.concatenate([rows[u * BATCH:(u + 1) * BATCH] for u in order]),
                                                axis=0))


def test_an_index_that_does_not_fit_fails(data, tmp_path):
    from pangu_pro.data.dataset import create_dataset

    np.save(tmp_path / "bad.npy", np.array([0, 1, N]))
    with pytest.raises(ValueError, match=f"index {N} at position 2 is outside the data's {N} samples"):
        create_dataset(data, 2, indices=tmp_path / "bad.npy")


class FakeRunner(driver.StageRunner):
    """Stands in for the trainer and the scorer: writes checkpoints and scores as they would."""

    def __init__(self, fail=None):
        super().__init__(1)
        self.calls, self.fail = [], fail

    def train(self, config_path, resume, log_dir):
        from pangu_pro.config import load_config

        cfg = load_config(config_path)
        self.calls.append(("train", str(config_path), resume))
        ckpt = Path(cfg.train.output_dir) / "checkpoints" / f"step_{cfg.train.steps:08d}"
        ckpt.mkdir(parents=True)
        save_tensors(ckpt / "model.safetensors", {"w": np.full(2, float(len(self.calls)), np.float32)})
        save_tensors(ckpt / "optimizer.safetensors", {"adam_step": np.array([cfg.train.steps], np.int32),
                                                      "adam_m.w": np.ones(2, np.float32)})
        (ckpt / "state.json").write_text(json.dumps({"step": cfg.train.steps, "loss": 1.5}))

    def score(self, config_path, checkpoint, out, batch_size, flush_every, log_dir):
        self.calls.append(("score", str(checkpoint)))
        if self.fail == "score":
            self.fail = None
            raise RuntimeError("killed while scoring")
        losses = np.linspace(1.0, 3.0, 5)
        save_scores(out, losses, np.repeat(losses, batch_size)[:N], batch_size, {"checkpoint": str(checkpoint)})

    def evaluate(self, config, checkpoint):
        self.calls.append(("eval", str(checkpoint)))
        return {"loss": 2.0, "perplexity": float(np.exp(2.0)), "samples": N}


def test_driver_runs_the_stages_in_order_and_resumes(data, tmp_path):
    config = rounds_config(data, tmp_path / "run")
    runner = FakeRunner(fail="score")
    with pytest.raises(RuntimeError, match="killed while scoring"):
        driver.run_rounds(config, runner=runner, announce=lambda *_: None)
    assert [c[0] for c in runner.calls] == ["train", "eval", "score"]
    state = json.loads((tmp_path / "run" / driver.STATE_NAME).read_text())
    assert sorted(state["rounds"]["1"]) == ["eval", "train"]

    summary = driver.run_rounds(config, runner=runner, announce=lambda *_: None)  # continues at score
    assert [c[0] for c in runner.calls] == ["train", "eval", "score", "score", "train", "eval"]
    assert runner.calls[-2][2] is False  # round 2 starts fresh, from train.init_weights
    r1, r2 = tmp_path / "run" / "round_1", tmp_path / "run" / "round_2"
    sel = np.load(r1 / "selection.npy")
    report = json.loads((r1 / "selection.json").read_text())
    np.testing.assert_array_equal(sel, sampling.unit_samples(np.array(report["units"]), "batch", BATCH, N))
    assert report["seed"] == 2 and report["units_selected"] == 3  # seed + round, round(0.5 * 5)
    from pangu_pro.config import load_config

    cfg2 = load_config(r2 / "config.yaml")
    assert cfg2.data.index_file == str(r1 / "selection.npy")
    assert (cfg2.train.steps, cfg2.train.warmup_steps, cfg2.train.output_dir) == (3, 3, str(r2 / "train"))
    assert cfg2.multi_round is None
    assert cfg2.train.init_weights == str(r1 / "train" / "checkpoints" / "step_00000006")  # round 1's final
    rows = summary["rounds"]
    assert [r["steps"] for r in rows] == [6, 3] and rows[0]["train_samples"] == N
    assert rows[1]["train_samples"] == sel.size and rows[0]["selected_fraction"] == sel.size / N
    assert rows[0]["mean_score"] == pytest.approx(2.0) and rows[1]["heldout_loss"] == 2.0
    assert "| 2 | 3 |" in (tmp_path / "run" / "rounds_summary.md").read_text()

    calls = len(runner.calls)
    driver.run_rounds(config, runner=runner, announce=lambda *_: None)  # all done: nothing runs
    assert len(runner.calls) == calls
    more = dataclasses.replace(config, multi_round=dataclasses.replace(config.multi_round, rounds=3))
    driver.run_rounds(more, runner=runner, announce=lambda *_: None)  # a third round may be added
    assert [c[0] for c in runner.calls[calls:]] == ["score", "train", "eval"]
    changed = dataclasses.replace(config, multi_round=dataclasses.replace(config.multi_round, rate=0.25))
    with pytest.raises(ValueError, match="started with a different config"):
        driver.run_rounds(changed, runner=runner, announce=lambda *_: None)


def test_later_rounds_follow_the_chosen_schedule(data, tmp_path):
    official = driver.round_config(rounds_config(data, tmp_path, round_schedule="official", round_steps=100), 2,
                                   tmp_path).train
    assert (official.lr, official.warmup_fraction, official.warmup_steps, official.min_lr_ratio) == \
        (1e-4, 0.03, 0, 0.1)  # RethinkTinyLM's continued training: 1e-4, 3% warm-up, floor 1e-5
    ours = driver.round_config(rounds_config(data, tmp_path, round_steps=3), 2, tmp_path).train
    assert (ours.lr, ours.warmup_steps, ours.warmup_fraction, ours.min_lr_ratio) == (0.01, 3, None, 0.1)
    fraction = driver.round_config(rounds_config(data, tmp_path, round_steps=40, round_warmup_fraction=0.1,
                                                 round_lr=5e-3, round_min_lr_ratio=0.2), 2, tmp_path).train
    assert (fraction.lr, fraction.warmup_steps, fraction.warmup_fraction, fraction.min_lr_ratio) == \
        (5e-3, 0, 0.1, 0.2)
    assert MultiRoundConfig().round_schedule == "official"
    with pytest.raises(ConfigError, match="set either round_warmup_steps or round_warmup_fraction"):
        rounds_config(data, tmp_path, round_warmup_steps=2, round_warmup_fraction=0.1)


def test_a_unit_larger_than_the_data_is_refused_before_training(data, tmp_path):
    config = rounds_config(data, tmp_path / "run", score_unit_tokens=10 ** 6)
    with pytest.raises(ConfigError, match="score_unit_tokens: .* nothing to select from"):
        driver.run_rounds(config, runner=FakeRunner(), announce=lambda *_: None)


def test_multi_round_section_round_trips(data, tmp_path):
    config = rounds_config(data, tmp_path, unit="sample", temperature=0.5)
    again = config_from_dict(to_mapping(config), "again")
    assert again.multi_round == config.multi_round and again.multi_round.unit == "sample"


@pytest.mark.slow
def test_two_rounds_end_to_end(data, tmp_path, monkeypatch):
    """The real trainer and scorer, in process: 2 rounds of a tiny model. Held-out evaluation builds
    one network for both rounds, and each round's loss is that of its own weights."""
    from pangu_pro.train import evaluate

    built = []
    monkeypatch.setattr(evaluate.CheckpointEvaluator, "__init__",
                        lambda self, cfg, init=evaluate.CheckpointEvaluator.__init__: built.append(1) or init(self, cfg))
    config = rounds_config(data, tmp_path / "run", round_steps=2)
    # one epoch at most: the loader's SubsetSampler refuses more indices than the data holds
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, steps=4, warmup_steps=1))
    from pangu_pro.cli import main

    summary = driver.run_rounds(config, runner=driver.StageRunner(1, progress=False, run_cli=main),
                                announce=lambda *_: None)
    rows = summary["rounds"]
    assert [r["steps"] for r in rows] == [4, 2]
    assert all(np.isfinite(r["heldout_loss"]) for r in rows) and np.isfinite(rows[0]["mean_score"])
    assert len(built) == 1 and rows[0]["heldout_loss"] != rows[1]["heldout_loss"]
    fresh = evaluate.perplexity(config, rows[1]["checkpoint"], config.data.eval_files)  # its own network
    assert rows[1]["heldout_loss"] == pytest.approx(fresh["loss"], rel=1e-6)
    metrics = [json.loads(line) for line in
               (tmp_path / "run" / "round_2" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if m["type"] == "train"] == [1, 2]
    assert Path(rows[1]["checkpoint"]).name == "step_00000002"


class SlicedRunner(FakeRunner):
    """The trainer under semi-auto parallel: every rank of a pp 2 x mp 2 x ZeRO layout saves only its
    slices (checkpoints/rank_<r>/step_N) beside its strategy file, as `write_sliced_run` emulates."""

    def __init__(self, model_cfg):
        super().__init__()
        self.model_cfg, self.full = model_cfg, {}

    def train(self, config_path, resume, log_dir):
        from pangu_pro.config import load_config
        from tests.test_parallel_ckpt import write_sliced_run

        cfg = load_config(config_path)
        self.calls.append(("train", str(config_path), resume, cfg.train.init_weights))
        self.full[cfg.train.output_dir] = write_sliced_run(Path(cfg.train.output_dir), self.model_cfg,
                                                           step=cfg.train.steps)

    def score(self, config_path, checkpoint, out, unit_samples, flush_every, log_dir):
        self.calls.append(("score", str(checkpoint)))
        losses = np.linspace(1.0, 3.0, sampling.num_units(N, unit_samples))
        save_scores(out, losses, np.repeat(losses, unit_samples)[:N], unit_samples, {})


def test_semi_auto_rounds_score_and_continue_from_the_merged_weights(data, tmp_path, semi_auto):
    """Under semi-auto parallel no rank holds the whole model: the driver merges the ranks' slices
    (MindSpore's transform_checkpoints) once per round into checkpoints/merged/step_N, and scoring,
    held-out evaluation and the next round's init_weights all load exactly the full tensors."""
    from pangu_pro.tensors import load_tensors

    config = config_from_dict({**to_mapping(rounds_config(data, tmp_path / "run")),
                               "parallel": {"data_parallel": 2, "model_parallel": 2, "pipeline_stage": 2,
                                            "micro_batch_num": 2, "optimizer_shard": True}}, "test")
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, aug_shortcut=False))
    runner = SlicedRunner(config.model)
    driver.run_rounds(config, runner=runner, announce=lambda *_: None)
    r1 = tmp_path / "run" / "round_1" / "train"
    merged = r1 / "checkpoints" / "merged" / "step_00000006"
    assert [c[0] for c in runner.calls] == ["train", "eval", "score", "train", "eval"]
    assert runner.calls[1][1] == runner.calls[2][1] == str(merged)  # eval and score read the merged weights
    assert runner.calls[3][3] == str(merged)  # round 2 starts from them
    weights, _ = load_tensors(merged / "model.safetensors")
    full = runner.full[str(r1)]
    assert sorted(weights) == sorted(n for n in full if not n.startswith(("adam_", "adam_step")))
    assert all(np.array_equal(weights[n], full[n]) for n in weights)
    r2_final = tmp_path / "run" / "round_2" / "train" / "checkpoints" / "merged" / "step_00000003"
    assert json.loads((tmp_path / "run" / driver.STATE_NAME).read_text())["rounds"]["2"]["train"]["checkpoint"] \
        == str(r2_final)
