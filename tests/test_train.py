"""Trainer: schedule, weight-decay groups, accumulation, clipping, overflow handling, checkpoints,
resume, metrics, plots and config errors. Tiny shapes (hidden 64, 2 layers, seq 32, vocab 256)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pangu_pro.config import ModelConfig, config_from_dict, load_config
from pangu_pro.configtools import ConfigError

VOCAB, SEQ = 256, 32
MODEL = {"vocab_size": VOCAB, "hidden_size": 64, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1,
         "intermediate_size": 128, "seq_length": SEQ}


def write_shard(path: Path, rows: np.ndarray) -> Path:
    from mindspore.mindrecord import FileWriter

    writer = FileWriter(str(path), shard_num=1, overwrite=True)
    writer.add_schema({"input_ids": {"type": "int32", "shape": [-1]}}, "tokens")
    writer.write_raw_data([{"input_ids": row.astype(np.int32)} for row in rows])
    writer.commit()
    return path


def make_rows(n: int, seed: int) -> np.ndarray:
    """Learnable samples: arithmetic progressions mod VOCAB."""
    rng = np.random.default_rng(seed)
    start = rng.integers(0, VOCAB, (n, 1))
    stride = rng.integers(1, 4, (n, 1))
    return ((start + stride * np.arange(SEQ + 1)) % VOCAB).astype(np.int32)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    train_rows, eval_rows = make_rows(96, 0), make_rows(12, 1)
    return {"train": str(write_shard(root / "train.mindrecord", train_rows)),
            "eval": str(write_shard(root / "eval.mindrecord", eval_rows)),
            "train_rows": train_rows, "eval_rows": eval_rows}


def make_config(data, out: Path, layers: int = 2, **train):
    settings = {"batch_size": 4, "steps": 6, "lr": 3e-3, "warmup_steps": 2, "output_dir": str(out)}
    settings.update(train)
    return config_from_dict({"model": {**MODEL, "num_layers": layers}, "train": settings,
                             "data": {"train_files": [data["train"]], "eval_files": [data["eval"]]}})


def tiny_model(seed=7, layers=1):
    """One layer for the step-level tests (each compiles its own graphs); runs use MODEL's two."""
    from pangu_pro.model.weights import build_model

    return build_model(ModelConfig(**{**MODEL, "num_layers": layers}), seed=seed)


# ---------------------------------------------------------------- schedule (pure)

def test_schedule_values_at_key_steps():
    from pangu_pro.train.schedule import lr_at

    kw = dict(lr=1e-3, total_steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(1, **kw) == pytest.approx(1e-4)
    assert lr_at(5, **kw) == pytest.approx(5e-4)
    assert lr_at(10, **kw) == pytest.approx(1e-3)  # end of warmup: the peak
    assert lr_at(60, **kw) == pytest.approx(1e-4 + 0.9e-3 * 0.5)  # half way through the decay
    assert lr_at(110, **kw) == pytest.approx(1e-4)  # the floor at the last step
    assert lr_at(35, **kw) == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 0.25)))
    values = [lr_at(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone decay
    assert lr_at(1, lr=1e-3, total_steps=5, warmup_steps=0, min_lr_ratio=0.0) == pytest.approx(
        0.5e-3 * (1 + math.cos(math.pi / 5)))
    with pytest.raises(ValueError, match="step 0"):
        lr_at(0, **kw)
    with pytest.raises(ValueError, match="step 111"):
        lr_at(111, **kw)


def test_warmup_as_a_fraction_of_the_run():
    from pangu_pro.config import TrainConfig
    from pangu_pro.configtools import ConfigError, from_mapping
    from pangu_pro.train.schedule import lr_at, warmup_steps_of

    assert warmup_steps_of(1000, warmup_fraction=0.03) == 30 and warmup_steps_of(50, warmup_fraction=0.03) == 2
    assert warmup_steps_of(17, warmup_steps=5) == 5 and warmup_steps_of(10, warmup_fraction=1.0) == 10
    # a short round with a fractional warm-up still decays: 3% of 40 steps is 1 step, the peak at step 1
    assert lr_at(1, lr=1e-4, total_steps=40, warmup_steps=warmup_steps_of(40, warmup_fraction=0.03)) == 1e-4
    assert from_mapping(TrainConfig, {"warmup_fraction": 0.05}).warmup_fraction == 0.05
    for bad, match in (({"warmup_fraction": 1.5}, "warmup_fraction: must lie in"),
                       ({"warmup_fraction": 0.1, "warmup_steps": 5}, "set either warmup_steps")):
        with pytest.raises(ConfigError, match=match):
            from_mapping(TrainConfig, bad)


def test_lr_scaling_with_batch_size():
    from pangu_pro.train.schedule import scaled_lr
    from pangu_pro.train.trainer import base_learning_rate

    assert scaled_lr(1e-3, 64, 16) == pytest.approx(2e-3)
    assert scaled_lr(1e-3, 4, 16) == pytest.approx(0.5e-3)
    cfg = config_from_dict({"model": dict(MODEL), "train": {"lr": 1e-3, "batch_size": 4, "grad_accum_steps": 2,
                                                             "lr_base_batch": 32}})
    assert base_learning_rate(cfg.train, world=4) == pytest.approx(1e-3)  # 4 * 2 * 4 = 32
    assert base_learning_rate(cfg.train, world=1) == pytest.approx(1e-3 * 0.5)  # 8 / 32 -> sqrt = 0.5
    cfg = config_from_dict({"model": dict(MODEL), "train": {"lr": 1e-3}})
    assert base_learning_rate(cfg.train, world=8) == 1e-3  # no scaling unless asked


# ---------------------------------------------------------------- optimizer groups

def test_weight_decay_exclusions():
    from pangu_pro.train.optim import build_optimizer, decays

    model = tiny_model(layers=2)
    optimizer = build_optimizer(model.trainable_params(), config_from_dict({"model": MODEL}).train)
    excluded = {p.name for p, wd in zip(optimizer.params, optimizer.weight_decays) if wd == 0.0}
    expected = {"model.norm.weight"}
    for i in range(2):
        expected |= {f"model.layers.{i}.attention_norm.weight", f"model.layers.{i}.ffn_norm.weight",
                     f"model.layers.{i}.feed_forward.siaf.scale", f"model.layers.{i}.feed_forward.siaf.bias"}
    assert excluded == expected
    assert set(optimizer.weight_decays) == {0.0, 0.1}
    assert decays("model.embed_tokens.weight", (256, 64)) and decays("lm_head.weight", (256, 64))
    assert decays("model.layers.0.aug_shortcut.up.weight", (64, 2))
    assert not decays("anything.bias", (64,))


# ---------------------------------------------------------------- the step

def test_adamw_matches_a_numpy_reference():
    """Three updates of a decayed matrix and an excluded norm gain, against the formula in optim.py."""
    import mindspore as ms
    from mindspore import Parameter, Tensor, nn

    from pangu_pro.train.optim import AdamW

    rng = np.random.default_rng(0)
    init = {"block.w.weight": rng.standard_normal((3, 4)).astype(np.float32),
            "block.norm.weight": rng.standard_normal(4).astype(np.float32)}
    params = [Parameter(Tensor(v), name=n) for n, v in init.items()]
    optimizer = AdamW(params, weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8)

    class Apply(nn.Cell):
        def __init__(self):
            super().__init__(auto_prefix=False)
            self.optimizer = optimizer

        def construct(self, grads, lr):
            return self.optimizer(grads, lr)

    apply = Apply()
    ref = {n: v.astype(np.float64) for n, v in init.items()}
    m = {n: np.zeros_like(v) for n, v in ref.items()}
    v2 = {n: np.zeros_like(v) for n, v in ref.items()}
    for t, lr in enumerate([1e-2, 5e-3, 2e-3], start=1):
        grads = {n: rng.standard_normal(x.shape).astype(np.float32) for n, x in init.items()}
        apply(tuple(Tensor(grads[n]) for n in init), Tensor(lr, ms.float32))
        for n in ref:
            wd = 0.1 if n == "block.w.weight" else 0.0
            ref[n] = ref[n] * (1 - lr * wd)
            m[n] = 0.9 * m[n] + 0.1 * grads[n]
            v2[n] = 0.95 * v2[n] + 0.05 * grads[n].astype(np.float64) ** 2
            ref[n] = ref[n] - lr * np.sqrt(1 - 0.95 ** t) / (1 - 0.9 ** t) * m[n] / (np.sqrt(v2[n]) + 1e-8)
    for p in params:
        np.testing.assert_allclose(p.asnumpy(), ref[p.name], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(optimizer.moments2[0].asnumpy(), v2["block.w.weight"], rtol=1e-5)
    assert int(optimizer.step.asnumpy()[0]) == 3



def _step(model, k=1, clip=1.0, lr_cfg=None):
    from pangu_pro.model.pangu_pi import PanGuPiWithLoss
    from pangu_pro.train.optim import build_optimizer
    from pangu_pro.train.step import TrainStep

    optimizer = build_optimizer(model.trainable_params(), config_from_dict({"model": MODEL}).train)
    return TrainStep(PanGuPiWithLoss(model), optimizer, grad_clip=clip, grad_accum_steps=k), optimizer


def _weights(model):
    return {p.name: p.asnumpy().copy() for p in model.trainable_params()}


def test_grad_accumulation_equals_one_big_batch(data):
    """4 micro steps of 2 samples == one step on the 8: same loss, norm, moments (= the gradients), weights."""
    from mindspore import Tensor

    batch = data["train_rows"][:8]
    results = {}
    for k in (1, 4):
        model = tiny_model()
        step, optimizer = _step(model, k)
        out = step([Tensor(b) for b in np.split(batch, k)], 1e-3)
        results[k] = (out, _weights(model), [m.asnumpy() for m in optimizer.moments1])
    (ref_out, ref_w, ref_m), (out, weights, moments) = results[1], results[4]
    assert out.loss == pytest.approx(ref_out.loss, abs=1e-6)
    assert out.grad_norm == pytest.approx(ref_out.grad_norm, rel=1e-5)
    for a, b in zip(moments, ref_m):  # m = (1 - beta1) * clipped mean gradient
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-9)
    # Adam's first step moves each weight by about lr = 1e-3; the two runs agree far below that
    assert max(np.abs(weights[n] - ref_w[n]).max() for n in ref_w) < 1e-5
    fresh = _weights(tiny_model())
    assert max(np.abs(weights[n] - fresh[n]).max() for n in ref_w) > 5e-4  # and it did train


def test_clipping_scales_gradients_to_the_threshold(data):
    """After one step the first moment is (1 - beta1) * g * min(1, clip / |g|); |g| is reported unclipped."""
    from mindspore import Tensor, nn, ops

    from pangu_pro.model.pangu_pi import PanGuPiWithLoss

    class Grads(nn.Cell):
        def __init__(self, net):
            super().__init__()
            self.net, self.weights = net, net.trainable_params()
            self.grad = ops.GradOperation(get_by_list=True)

        def construct(self, x):
            return self.grad(self.net, self.weights)(x)

    batch = Tensor(data["train_rows"][:4])
    model = tiny_model()
    grads = Grads(PanGuPiWithLoss(model))(batch)
    grads = [g.asnumpy() for g in grads]
    norm = float(np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads)))
    clip = 0.05
    assert norm > 4 * clip  # the threshold really clips
    model = tiny_model()
    step, optimizer = _step(model, clip=clip)
    out = step([batch], 1e-3)
    assert out.grad_norm == pytest.approx(norm, rel=1e-4)
    for g, m in zip(grads, optimizer.moments1):
        np.testing.assert_allclose(m.asnumpy(), 0.1 * g * (clip / norm), rtol=1e-4, atol=1e-9)


def test_non_finite_step_changes_nothing(data):
    """A poisoned step (infinite loss scale -> NaN gradients) reports finite=False and applies no update."""
    from mindspore import Tensor

    model = tiny_model()
    step, optimizer = _step(model)
    batch = [Tensor(data["train_rows"][:4])]
    step(batch, 1e-3)
    before = _weights(model)
    moments = [m.asnumpy().copy() for m in optimizer.moments1]
    out = step(batch, 1e-3, loss_scale=float("inf"))
    assert not out.finite
    assert all(np.array_equal(before[n], w) for n, w in _weights(model).items())
    assert all(np.array_equal(a, m.asnumpy()) for a, m in zip(moments, optimizer.moments1))
    assert int(optimizer.step.asnumpy()[0]) == 1
    assert step(batch, 1e-3).finite and int(optimizer.step.asnumpy()[0]) == 2


def test_dynamic_loss_scaler():
    from pangu_pro.train.loss_scale import OK, SKIP, STOP, LossScaler

    scaler = LossScaler("dynamic", scale=8.0, factor=2.0, window=2)
    assert [scaler.update(True), scaler.update(True)] == [OK, OK] and scaler.scale == 16.0
    assert scaler.update(False) == SKIP and scaler.scale == 8.0 and scaler.good_steps == 0
    assert [scaler.update(False) for _ in range(3)] == [SKIP, SKIP, SKIP] and scaler.scale == 1.0
    assert scaler.update(False) == STOP
    assert LossScaler("none").update(False) == STOP and LossScaler("static", 4.0).update(False) == STOP


# ---------------------------------------------------------------- checkpoints

def test_checkpoint_keep_last_and_atomicity(tmp_path, monkeypatch):
    import pangu_pro.train.checkpoint as ck
    from pangu_pro.model.weights import load_weights

    model = tiny_model()
    _, optimizer = _step(model)
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3, 4, 5):
        ck.save_checkpoint(root / ck.checkpoint_name(step), model, optimizer, {"step": step})
        ck.prune_checkpoints(root, keep_last=2)
    assert sorted(p.name for p in root.iterdir()) == ["step_00000004", "step_00000005"]
    assert sorted(p.name for p in (root / "step_00000005").iterdir()) == [
        "model.safetensors", "model.safetensors.sha256", "optimizer.safetensors", "optimizer.safetensors.sha256",
        "state.json", "state.json.sha256"]
    # model.safetensors is a plain weights file other tools read
    other = tiny_model(seed=99)
    load_weights(other, root / "step_00000005")
    assert all(np.array_equal(a, b) for a, b in zip(_weights(other).values(), _weights(model).values()))

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(ck, "atomic_write_json", crash)  # dies after the tensors, before state.json
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(root / ck.checkpoint_name(6), model, optimizer, {"step": 6})
    assert not (root / "step_00000006").exists()
    assert [s for s, _ in ck.list_checkpoints(root)] == [4, 5]
    assert ck.resolve_resume(tmp_path) == root / "step_00000005"
    leftovers = ck.clean_partial(root)
    assert [p.name.startswith(".tmp-step_00000006") for p in leftovers] == [True]
    assert sorted(p.name for p in root.iterdir()) == ["step_00000004", "step_00000005"]


def test_optimizer_state_round_trip(tmp_path, data):
    from mindspore import Tensor

    from pangu_pro.train.checkpoint import load_checkpoint, save_checkpoint

    model = tiny_model()
    step, optimizer = _step(model)
    step([Tensor(data["train_rows"][:4])], 1e-3)
    save_checkpoint(tmp_path / "c", model, optimizer, {"step": 1})
    model2 = tiny_model(seed=3)
    _, optimizer2 = _step(model2)
    assert load_checkpoint(tmp_path / "c", model2, optimizer2) == {"step": 1}
    for a, b in zip(optimizer.state_parameters(), optimizer2.state_parameters()):
        assert a.name == b.name and np.array_equal(a.asnumpy(), b.asnumpy())
    assert int(optimizer2.step.asnumpy()[0]) == 1


# ---------------------------------------------------------------- whole runs

@pytest.fixture(scope="module")
def full_run(data, tmp_path_factory):
    from pangu_pro.train.trainer import train

    out = tmp_path_factory.mktemp("full")
    config = make_config(data, out, save_every=2, keep_last=2, eval_every=3, eval_batches=2)
    summary = train(config, progress=False, announce=None)
    return config, out, summary


def test_run_outputs_and_metrics_fields(full_run):
    from pangu_pro.train.metrics import cpu_peak_flops, read_metrics, train_flops_per_token

    config, out, summary = full_run
    assert summary["step"] == 6 and summary["steps_run"] == 6
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000004", "step_00000006"]
    state = json.loads((out / "checkpoints" / "step_00000006" / "state.json").read_text())
    assert state["step"] == 6 and state["consumed_batches"] == 6 and state["tokens"] == 6 * 4 * SEQ
    assert state["config"]["model"]["hidden_size"] == 64 and state["loss_scale"]["mode"] == "none"
    train_lines = read_metrics(out, "train")
    assert [r["step"] for r in train_lines] == [1, 2, 3, 4, 5, 6]
    for r in train_lines:
        assert set(r) >= {"step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu", "tokens"}
        assert r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 and math.isfinite(r["loss"])
    r = train_lines[-1]
    peak = cpu_peak_flops()  # measured by the run (or earlier) and cached for this machine
    assert r["mfu"] == pytest.approx(train_flops_per_token(config.model, SEQ) * r["tokens_per_s"] / peak)
    assert [r["lr"] for r in train_lines[:2]] == pytest.approx([1.5e-3, 3e-3])
    assert train_lines[-1]["lr"] == pytest.approx(3e-4)
    evals = read_metrics(out, "eval")
    assert [r["step"] for r in evals] == [3, 6]
    assert all(r["eval_perplexity"] == pytest.approx(math.exp(r["eval_loss"])) for r in evals)
    assert train_lines[-1]["loss"] < train_lines[0]["loss"]


def test_resume_continues_exactly(full_run, data, tmp_path):
    """Resume the 6-step run from its step-4 checkpoint (as if it died at step 5): the losses after
    resuming equal the uninterrupted run's, and metrics.jsonl is cut back to step 4 first."""
    import shutil

    from pangu_pro.train.metrics import read_metrics
    from pangu_pro.train.trainer import train

    _, full_out, _ = full_run
    run = tmp_path / "run"
    shutil.copytree(full_out, run)
    shutil.rmtree(run / "checkpoints" / "step_00000006")
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"type": "train", "step": 7, "lo')  # a line torn by the kill
    summary = train(make_config(data, run, save_every=2, eval_every=3, eval_batches=2), resume="auto",
                    progress=False, announce=None)
    assert summary["steps_run"] == 2
    got, want = read_metrics(run, "train"), read_metrics(full_out, "train")
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in got[4:]] == pytest.approx([r["loss"] for r in want[4:]], abs=1e-6)
    assert [r["step"] for r in read_metrics(run, "eval")] == [3, 6]
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train(make_config(data, run), progress=False, announce=None)


def test_init_weights_starts_a_fresh_run_from_given_weights(full_run, data, tmp_path):
    """train.init_weights: the first step's loss is the given weights' loss on the first batch."""
    from mindspore import Tensor

    from pangu_pro.model.pangu_pi import PanGuPiWithLoss
    from pangu_pro.model.weights import load_weights
    from pangu_pro.train.metrics import read_metrics
    from pangu_pro.train.trainer import Parallel, train, train_dataset

    _, full_out, _ = full_run
    weights = full_out / "checkpoints" / "step_00000006" / "model.safetensors"
    config = make_config(data, tmp_path / "init", steps=1, warmup_steps=0)
    config.train.init_weights = str(weights)
    train(config, progress=False, announce=None)
    first = next(train_dataset(config, Parallel(), 0).create_tuple_iterator())[0]
    model = tiny_model(layers=2)
    load_weights(model, weights)
    expected = float(PanGuPiWithLoss(model)(Tensor(first.asnumpy())))
    assert read_metrics(tmp_path / "init", "train")[0]["loss"] == pytest.approx(expected, abs=1e-5)
    fresh = make_config(data, tmp_path / "fresh", steps=1, warmup_steps=0)
    train(fresh, progress=False, announce=None)
    assert abs(read_metrics(tmp_path / "fresh", "train")[0]["loss"] - expected) > 1e-2


def test_nan_stops_with_last_good_checkpoint(data, tmp_path):
    from pangu_pro.model.weights import load_weights
    from pangu_pro.train.metrics import read_metrics
    from pangu_pro.train.trainer import NonFiniteLossError, train

    config = make_config(data, tmp_path, layers=1, lr=1e30, warmup_steps=0, grad_clip=0.0, save_every=1, steps=5)
    with pytest.raises(NonFiniteLossError) as err:
        train(config, progress=False, announce=None)
    bad = err.value.step
    assert bad >= 2 and f"step {bad}: non-finite gradient norm (loss " in str(err.value)  # the loss was finite
    last = tmp_path / "checkpoints" / f"step_{bad - 1:08d}"
    assert err.value.checkpoint == last and str(last) in str(err.value)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir())[-1] == last.name  # no partial folder
    model = tiny_model()
    load_weights(model, last)  # intact and loadable
    assert read_metrics(tmp_path, "error")[0]["step"] == bad


def test_index_file_selects_the_samples(data, tmp_path):
    from pangu_pro.train.trainer import Parallel, train_dataset

    indices = np.array([5, 17, 3, 40, 41, 0, 9, 8])
    np.save(tmp_path / "subset.npy", indices)
    config = make_config(data, tmp_path, batch_size=4, steps=2)
    config.data.index_file = str(tmp_path / "subset.npy")
    batches = [b[0].asnumpy() for b in train_dataset(config, Parallel(), skip_batches=1).create_tuple_iterator()]
    np.testing.assert_array_equal(batches[0], data["train_rows"][indices[4:]])


def test_perplexity_of_a_checkpoint(full_run, data):
    from mindspore import Tensor

    from pangu_pro.model.pangu_pi import PanGuPiWithLoss
    from pangu_pro.model.weights import build_model
    from pangu_pro.train.evaluate import perplexity

    config, out, _ = full_run
    ckpt = out / "checkpoints" / "step_00000006"
    result = perplexity(config, ckpt, [data["eval"]], batch_size=5)
    assert result["samples"] == 12 and result["batches"] == 3
    loss_net = PanGuPiWithLoss(build_model(config.model, weights=ckpt))
    per_sample = [float(loss_net(Tensor(row[None])).asnumpy()) for row in data["eval_rows"]]
    assert result["loss"] == pytest.approx(np.mean(per_sample), rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))


def test_evaluation_compiles_one_shape_and_masks_the_padding(full_run, data):
    """12 held-out samples in batches of 5: the short last batch runs padded to 5 rows with a loss mask
    (one compiled graph for the pass), and the padding does not count."""
    from mindspore import Tensor

    from pangu_pro.model.pangu_pi import PanGuPiWithLoss
    from pangu_pro.model.weights import build_model
    from pangu_pro.train.evaluate import eval_dataset, evaluate_loss

    config, out, _ = full_run
    net = PanGuPiWithLoss(build_model(config.model, weights=out / "checkpoints" / "step_00000006"))
    shapes = []

    class Spy:
        def set_train(self, mode):
            net.set_train(mode)

        def __call__(self, *args):
            shapes.append([tuple(a.shape) for a in args])
            return net(*args)

    result = evaluate_loss(Spy(), eval_dataset([data["eval"]], 5))
    width = data["eval_rows"].shape[1]
    assert shapes == [[(5, width), (5, width)]] * 3 and result["samples"] == 12
    padded = np.concatenate([data["eval_rows"][10:], np.repeat(data["eval_rows"][10:11], 3, 0)])
    unpadded = float(net(Tensor(data["eval_rows"][10:])).asnumpy())
    assert float(net(Tensor(padded)).asnumpy()) != pytest.approx(unpadded, rel=1e-4)  # padding would count
    full = [float(net(Tensor(data["eval_rows"][i:i + 5])).asnumpy()) for i in (0, 5)]
    assert result["loss"] == pytest.approx((5 * full[0] + 5 * full[1] + 2 * unpadded) / 12, rel=1e-6)


# ---------------------------------------------------------------- FLOPs, plot, config

def test_cpu_peak_is_measured_once_per_machine_and_declared_peaks_win(tmp_path, monkeypatch):
    from pangu_pro.train import metrics

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(metrics.os, "getloadavg", lambda: (0.5, 0.0, 0.0))  # whatever the machine's real load
    calls = []
    monkeypatch.setattr(metrics, "matmul_peak", lambda: calls.append(1) or {"flops_per_s": 400e9})
    assert metrics.device_peak_flops("CPU", None) == 400e9
    assert metrics.device_peak_flops("CPU", None, workers=2) == 200e9  # two workers share the cores
    assert len(calls) == 1 and (tmp_path / "pangu-pro" / "peak_flops.json").is_file()
    assert metrics.record_cpu_peak({"flops_per_s": 300e9}) == 400e9  # a slower (loaded) re-measure is ignored
    assert metrics.record_cpu_peak({"flops_per_s": 500e9}) == 500e9 == metrics.cpu_peak_flops()
    monkeypatch.setattr(metrics.os, "getloadavg", lambda: (16.0, 0.0, 0.0))
    metrics.record_cpu_peak({"flops_per_s": 600e9})  # measured on a busy machine ...
    monkeypatch.setattr(metrics.os, "getloadavg", lambda: (0.5, 0.0, 0.0))
    assert metrics.cpu_peak_flops() == 600e9 and len(calls) == 2  # ... so measured again when it is quiet
    assert metrics.cpu_peak_flops() == 600e9 and len(calls) == 2  # once
    assert metrics.device_peak_flops("CPU", 1e9) == 1e9
    assert metrics.device_peak_flops("Ascend", None) == metrics.DEFAULT_PEAK_FLOPS["Ascend"]


def test_flops_formula_counts_the_matmul_weights():
    from pangu_pro.train.metrics import matmul_params, train_flops_per_token

    cfg = ModelConfig(**MODEL)
    counted = sum(int(np.prod(p.shape)) for p in tiny_model(layers=2).trainable_params()
                  if len(p.shape) == 2 and "embed_tokens" not in p.name and ".siaf." not in p.name)
    assert matmul_params(cfg) == counted
    assert train_flops_per_token(cfg, 32) == 6 * counted + 12 * 2 * 32 * 64


def test_plot_draws_the_run_it_is_given(full_run, tmp_path):
    from matplotlib.image import imread

    from pangu_pro.cli import main
    from pangu_pro.train.metrics import read_metrics
    from pangu_pro.train.plot import run_figure

    _, out, _ = full_run
    assert main(["plot", str(out), "--out", str(tmp_path / "c.png")]) == 0
    fig, kind = run_figure(out)
    assert imread(tmp_path / "c.png").shape[:2] == (round(fig.get_figheight() * fig.dpi),
                                                   round(fig.get_figwidth() * fig.dpi))
    by_step = fig.axes[0]
    assert kind == "train" and fig.get_suptitle() == f"Training run {out} (2 layers x 64, vocab 256)"
    train, evals = read_metrics(out, "train"), read_metrics(out, "eval")
    raw, smoothed, held_out = by_step.lines
    assert list(raw.get_xdata()) == [r["step"] for r in train] and list(raw.get_ydata()) == [r["loss"] for r in train]
    assert list(held_out.get_xdata()) == [r["step"] for r in evals] == [3, 6]
    assert list(held_out.get_ydata()) == [r["eval_loss"] for r in evals]


@pytest.mark.parametrize("override, key", [
    ("train.grad_accum_steps=0", "train.grad_accum_steps"),
    ("train.loss_scale=bf16", "train.loss_scale"),
    ("train.keep_last=0", "train.keep_last"),
    ("train.save_every=-1", "train.save_every"),
    ("train.beta2=1.0", "train.beta2"),
    ("train.warmup_steps=5000", "train.warmup_steps"),
    ("train.lr_base_batch=0", "train.lr_base_batch"),
    ("train.learning_rate=1", "train.learning_rate"),
])
def test_config_errors_name_the_key(tmp_path, override, key):
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({"model": MODEL}))
    with pytest.raises(ConfigError) as err:
        load_config(path, [override])
    assert err.value.key == key and str(path) in str(err.value)


def test_training_needs_data(tmp_path):
    from pangu_pro.train.trainer import train

    config = config_from_dict({"model": MODEL, "train": {"steps": 2, "output_dir": str(tmp_path)}})
    with pytest.raises(ConfigError) as err:
        train(config, progress=False, announce=None)
    assert err.value.key == "data.train_files"


def test_bench_subcommands_pass_their_options_through():
    from pangu_pro.bench.commands import BENCHMARKS, _runner
    from pangu_pro.cli import build_parser

    assert {"train", "model", "tokenizer"} <= set(BENCHMARKS)
    args = build_parser().parse_args(["bench", "train", "--steps", "3", "--skip", "pytorch", "mindformers"])
    assert args.benchmark == "train" and args.bench_args == ["--steps", "3", "--skip", "pytorch", "mindformers"]
    with pytest.raises(ValueError, match="bench 'nosuch' is not available yet"):
        _runner("bench", "nosuch", "")(args)


def test_data_parallel_training_applies_the_configured_recompute(data, tmp_path):
    """`parallel.recompute` holds on the data-parallel path too (it was silently ignored there while the
    memory plan counted it): the layers are marked, and a step computes the same loss and gradient norm."""
    import dataclasses

    from mindspore import Tensor

    from pangu_pro.train.trainer import Parallel, build_training

    batch = [Tensor(data["train_rows"][:4])]
    results = {}
    for mode in ("none", "full"):
        config = make_config(data, tmp_path / mode)
        config = dataclasses.replace(config, parallel=dataclasses.replace(config.parallel, recompute=mode))
        model, _, _, step_fn = build_training(config, Parallel())
        assert all(layer._has_config_recompute == (mode == "full") for layer in model.model.layers)
        out = step_fn(batch, lr=1e-3)
        results[mode] = (out.loss, out.grad_norm)
    assert results["full"] == pytest.approx(results["none"], rel=1e-5)
