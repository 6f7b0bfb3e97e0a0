"""The `parallel:` section: validation (each error names its key), stage split, memory plan, presets."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from pangu_pro.config import (Config, ConfigError, ParallelConfig, check_layout,
                              config_from_dict, load_config)
from pangu_pro.model.params import count_parameters
from pangu_pro.model.plan import format_plan, memory_plan, stage_tensors

ROOT = Path(__file__).resolve().parents[1]
MODEL = {"vocab_size": 256, "hidden_size": 64, "num_layers": 4, "num_heads": 8, "num_kv_heads": 4,
         "intermediate_size": 128, "seq_length": 32, "aug_shortcut_ratio": 8}


def build(parallel: dict, **model) -> Config:
    return config_from_dict({"model": {**MODEL, **model}, "parallel": parallel})


@pytest.mark.parametrize("parallel,model,key,words", [
    ({"model_parallel": 4}, {"num_heads": 6, "num_kv_heads": None, "hidden_size": 96},
     "parallel.model_parallel", "num_heads 6"),
    ({"model_parallel": 8}, {}, "parallel.model_parallel", "num_kv_heads 4"),
    ({"pipeline_stage": 8, "micro_batch_num": 8}, {}, "parallel.pipeline_stage", "num_layers is 4"),
    ({"pipeline_stage": 4, "micro_batch_num": 2}, {}, "parallel.micro_batch_num", "2 micro batches cannot fill 4"),
    ({"model_parallel": 2, "vocab_parallel": True}, {"vocab_size": 255, "eos_token_id": 2},
     "parallel.vocab_parallel", "vocab_size 255"),
    ({"pipeline_stage": 2, "micro_batch_num": 2, "pipeline_offset": [1, 0]}, {}, "parallel.pipeline_offset",
     "must sum to 0"),
    ({"pipeline_stage": 2, "micro_batch_num": 2, "pipeline_offset": [2, -2]}, {}, "parallel.pipeline_offset",
     "[4, 0]"),
    ({"pipeline_stage": 2, "micro_batch_num": 2, "pipeline_offset": [0]}, {}, "parallel.pipeline_offset",
     "one entry per pipeline stage"),
    ({"sequence_parallel": True}, {}, "parallel.sequence_parallel", "model_parallel, which is 1"),
    ({"pipeline_stage": 2, "micro_batch_num": 2}, {"tie_word_embeddings": True}, "parallel.pipeline_stage",
     "tie_word_embeddings"),
    ({"pipeline_stage": 2, "micro_batch_num": 2, "micro_batch_interleave_num": 2}, {},
     "parallel.micro_batch_interleave_num", "cannot be combined with pipeline_stage 2"),
    ({"recompute": "some"}, {}, "parallel.recompute", "expected one of"),
    ({"data_parallel": 4, "optimizer_shard": True, "optimizer_weight_shard_size": 3}, {},
     "parallel.optimizer_weight_shard_size", "divisor > 1 of data_parallel 4"),
    ({"data_parallel": 2, "micro_batch_interleave_num": 3}, {}, "parallel.micro_batch_interleave_num",
     "does not divide train.batch_size 8"),
])
def test_bad_layouts_name_the_key(parallel, model, key, words):
    with pytest.raises(ConfigError) as err:
        build(parallel, **model)
    assert err.value.key == key
    assert words in err.value.message


def test_device_count_must_equal_dp_mp_pp():
    config = build({"data_parallel": 2, "model_parallel": 2, "pipeline_stage": 2, "micro_batch_num": 2})
    check_layout(config, 8)
    with pytest.raises(ConfigError) as err:
        check_layout(config, 16)
    assert err.value.key == "parallel"
    assert "data_parallel 2 x model_parallel 2 x pipeline_stage 2 = 8, but the run has 16 devices" in str(err.value)


def test_errors_from_a_file_name_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: {vocab_size: 256, hidden_size: 64, num_layers: 4, num_heads: 8, num_kv_heads: 4, "
                    "intermediate_size: 128}\nparallel: {model_parallel: 8}\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: parallel.model_parallel: 8 does not divide "
                                                    "model.num_kv_heads 4")):
        load_config(path)


@pytest.mark.parametrize("layers,pp,offset,counts", [
    (21, 2, [], [11, 10]), (22, 4, [], [6, 5, 6, 5]), (29, 2, [], [15, 14]), (21, 3, [-1, 0, 1], [6, 7, 8]),
    (4, 4, [], [1, 1, 1, 1]), (7, 1, [], [7]),
])
def test_stage_layers(layers, pp, offset, counts):
    parallel = ParallelConfig(pipeline_stage=pp, micro_batch_num=pp, pipeline_offset=offset)
    assert parallel.stage_layers(layers) == counts
    stages = parallel.layer_stages(layers)
    assert [stages.count(s) for s in range(pp)] == counts
    if not offset:  # the even split is layer_id // (layers / pp)
        assert stages == [int(i // (layers / pp)) for i in range(layers)]


def test_plan_matches_a_hand_computation_for_1b_pro():
    """1B Pro (h 1792, 21 layers, 14 heads, ffn 4864, vocab 48000, bf16, flash and fused kernels) on
    dp 2 x mp 2 x pp 2 with 4 micro batches of 1 x 2048 tokens and ZeRO (64 KB threshold)."""
    config = load_config(ROOT / "configs" / "pangu_1b_pro.yaml",
                         ["parallel.data_parallel=2", "parallel.model_parallel=2", "parallel.pipeline_stage=2",
                          "parallel.micro_batch_num=4", "parallel.optimizer_shard=true", "train.batch_size=1"])
    s0, s1 = memory_plan(config)
    assert (s0.layers, s1.layers) == (11, 10)
    # per layer on one device: wq wk wv wo 4 x 1792*1792/2, w1 w3 w2 3 x 4864*1792/2, SIAF 2 x 2*4864/2,
    # AugShortcut 2 x 56*1792 (whole), two norms 2 x 1792
    layer = 4 * 1_605_632 + 3 * 4_358_144 + 2 * 4_864 + 2 * 100_352 + 2 * 1_792
    assert layer == 19_710_976
    assert s0.parameters == 48_000 * 1_792 + 11 * layer == 302_836_736
    assert s1.parameters == 10 * layer + 1_792 + 48_000 * 1_792 == 283_127_552
    # ZeRO halves the weights >= 64 KB: all but SIAF (19,456 B) and the norms
    sharded_per_layer = 4 * 1_605_632 + 3 * 4_358_144 + 2 * 100_352
    whole_per_layer = 2 * 4_864 + 2 * 1_792
    weights0 = 4 * 86_016_000 / 2 + 11 * (4 * sharded_per_layer / 2 + 4 * whole_per_layer)
    assert s0.weights == weights0 == 605_966_336
    assert s0.optimizer == 2 * weights0
    assert s0.gradients == 4 * 302_836_736
    # activations per token per layer: stream 2*(4*1792 + 2*1792) + 2*2*56 = 21,728;
    # attention (4*(1792+1792) + 3*2*1792 + 2*1792 + 8*14) / 2 = 14,392; ffn (4+2)*2*4864 / 2 = 29,184
    per_token = 21_728 + 14_392 + 29_184
    assert s0.micro_batches_in_flight == 2 and s1.micro_batches_in_flight == 1
    assert s0.activations["none"] == 11 * 2 * 2048 * per_token == 2_942_337_024
    selective = 21_728 + 14_392 + 3 * 2 * 4_864 / 2
    assert s0.activations["selective"] == 11 * 2 * 2048 * selective == 2_284_879_872
    assert s0.activations["full"] == 11 * 2 * 2048 * 4 * 1792 + 2048 * per_token == 456_704_000
    head = 2048 * (4 * 1792 + 2 * 1792 / 2 + 12 * 48_000 / 2)  # fp32 logits, log-softmax, logits gradient
    assert s1.activations["none"] == 10 * 1 * 2048 * per_token + head == 1_945_600_000
    # weight copies kept for the backward pass: bf16 copies (2 B) of every matmul-read slice (all of a
    # layer but its norms), the embedding's fp32 all-gathered copy (4 B, ZeRO-split); the head's bf16 copy
    copies_per_layer = 2 * (4 * 1_605_632 + 3 * 4_358_144 + 2 * 4_864 + 2 * 100_352)
    assert s0.weight_copies == 4 * 86_016_000 + 11 * copies_per_layer == 777_626_624
    assert s1.weight_copies == 2 * 86_016_000 + 10 * copies_per_layer
    # 4 micro batches per update: nn.PipelineGradReducer's fp32 accu_grads, whole (gradient_accumulation_shard off)
    assert (s0.accumulation, s1.accumulation) == (4 * 302_836_736, 4 * 283_127_552)
    assert s0.total("none") == weights0 + 2 * weights0 + 2 * 4 * 302_836_736 + 777_626_624 + 2_942_337_024


def test_plan_counts_the_gradient_accumulation_buffer(monkeypatch):
    """The 1B Pro preset (dp 8, ZeRO, 64 accumulation steps) keeps PipelineGradReducer's fp32 accu_grads:
    4 B x 995,604,736 parameters = 3.71 GiB, whole since gradient_accumulation_shard is off; split over dp 8
    like the weights when it is on; none with one micro batch per update; the data-parallel path's own
    accumulators (no ZeRO) are whole too."""
    from pangu_pro.model import plan

    preset = load_config(ROOT / "configs" / "pangu_1b_pro.yaml")
    (s,) = memory_plan(preset)
    assert s.parameters == 995_604_736 and s.accumulation == 3_982_418_944
    assert s.total("none") == s.weights + s.gradients + s.optimizer + s.weight_copies + 3_982_418_944 + \
        s.activations["none"]
    text = format_plan(preset)
    assert ("accum: fp32 gradient accumulation buffer (nn.PipelineGradReducer accu_grads, 64 micro batches per "
            "update), 4 B per parameter, whole: gradient_accumulation_shard is off") in text
    assert re.search(r"^\s+0\s+21\s+995,604,736(\s+\d+\.\d\d){4}\s+3\.71\s", text, re.M), text
    (one,) = memory_plan(load_config(ROOT / "configs" / "pangu_1b_pro.yaml", ["train.grad_accum_steps=1"]))
    assert one.accumulation == 0 and "accum: no gradient accumulation buffer" in format_plan(
        load_config(ROOT / "configs" / "pangu_1b_pro.yaml", ["train.grad_accum_steps=1"]))
    (dp,) = memory_plan(load_config(ROOT / "configs" / "pangu_1b_pro.yaml", ["parallel.optimizer_shard=false"]))
    assert dp.accumulation == 3_982_418_944
    monkeypatch.setattr(plan, "GRADIENT_ACCUMULATION_SHARD", True)
    (sharded,) = memory_plan(preset)
    # ZeRO splits every tensor of >= 64 KB over 8: all but the 21 x 2 norms, the final norm, SIAF (2 x 2 x 4864 x 4 B)
    whole = 21 * 2 * 1792 + 1792 + 21 * 2 * 2 * 4864
    assert sharded.accumulation == 4 * (995_604_736 - whole) / 8 + 4 * whole == sharded.weights


def test_plan_counts_sequence_parallel_gathers_and_fp32_weights_without_copies():
    """Sequence parallel stores each layer's two all-gathered norm outputs (2cH per token, whole
    sequence); an fp32 model without ZeRO matmuls its parameters directly (no copies)."""
    base = ["parallel.data_parallel=2", "parallel.model_parallel=2", "train.batch_size=1"]
    plain = load_config(ROOT / "configs" / "pangu_1b_pro.yaml", base)
    sp = load_config(ROOT / "configs" / "pangu_1b_pro.yaml", base + ["parallel.sequence_parallel=true"])
    (a,), (b,) = memory_plan(plain), memory_plan(sp)
    stream = 2 * (4 * 1792 + 2 * 1792) + 2 * 2 * 56
    assert b.activations["none"] - a.activations["none"] == pytest.approx(
        21 * 2048 * (2 * 2 * 1792 - stream / 2) + 2048 * (4 * 1792 / 2 - 4 * 1792))
    fp32 = load_config(ROOT / "configs" / "pangu_1b_pro.yaml",
                       base + ["model.compute_dtype=float32", "parallel.optimizer_shard=false"])
    assert memory_plan(fp32)[0].weight_copies == 0
    zero_fp32 = load_config(ROOT / "configs" / "pangu_1b_pro.yaml",
                            base + ["model.compute_dtype=float32", "parallel.optimizer_shard=true"])
    assert memory_plan(zero_fp32)[0].weight_copies == pytest.approx(4 * (memory_plan(zero_fp32)[0].parameters
                                                                         - 2 * 21 * 1792 - 1792 - 21 * 2 * 2 * 4864 / 2))


def test_plan_parameters_add_up_to_the_model():
    """Summed over stages with one model-parallel rank, the slices are exactly count_parameters."""
    for name in ("pangu_1b_pro", "pangu_1_5b_pro", "pangu_7b"):
        config = load_config(ROOT / "configs" / f"{name}.yaml",
                             ["parallel.pipeline_stage=3", "parallel.micro_batch_num=3"])
        total = sum(s.parameters for s in memory_plan(config))
        assert total == count_parameters(config.model).total
    tp = load_config(ROOT / "configs" / "pangu_1b_pro.yaml", ["parallel.model_parallel=2", "parallel.vocab_parallel=true"])
    whole = count_parameters(tp.model)
    replicated = whole.aug_shortcut + whole.norms
    assert sum(t.elements for t in stage_tensors(tp.model, tp.parallel, 0)) == (whole.total - replicated) / 2 + replicated


# pangu_7b_masks_* are inheritance configs (mask learning, data parallel only): tests/test_inherit_plan.py
PRESETS = sorted(p for p in (ROOT / "configs" / "parallel").glob("*.yaml") if not p.stem.startswith("pangu_7b_masks"))


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_parallel_presets_are_valid_for_their_device_count(path):
    config = load_config(path)
    devices = int(re.search(r"_(\d+)dev$", path.stem).group(1))
    check_layout(config, devices)
    worst = max(s.total(config.parallel.recompute) for s in memory_plan(config))
    assert worst < 0.85 * 64 * 1024 ** 3, "preset must fit a 64 GB Ascend 910B per the plan"
    assert "fits" in format_plan(config).splitlines()[-1]


def test_presets_cover_1b_and_1_5b_on_8_16_64_and_the_7b_teacher():
    names = {p.stem for p in PRESETS}
    for model in ("pangu_1b_pro", "pangu_1_5b_pro"):
        assert {f"{model}_{n}dev" for n in (8, 16, 64)} <= names
    assert (ROOT / "configs" / "parallel" / "pangu_7b_masks_16dev.yaml").is_file()


def test_plan_command(capsys):
    from pangu_pro.inherit import plan_command

    parser = argparse.ArgumentParser()
    plan_command.register(parser.add_subparsers())
    path = str(ROOT / "configs" / "parallel" / "pangu_1b_pro_8dev.yaml")
    args = parser.parse_args(["plan", path, "--devices", "8"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "data_parallel 8 x model_parallel 1 x pipeline_stage 1 = 8 devices" in out
    assert re.search(r"^\s+0\s+21\s+995,604,736", out, re.M)
    args = parser.parse_args(["plan", path, "--devices", "16"])
    with pytest.raises(ConfigError, match="pangu_1b_pro_8dev.yaml: parallel: .* but the run has 16 devices"):
        args.func(args)
    args = parser.parse_args(["plan", path, "--devices", "16", "--set", "parallel.data_parallel=16"])
    assert args.func(args) == 0


def test_plan_measure_compiles_a_step_and_says_what_the_cpu_reports(tmp_path, capsys):
    from pangu_pro.inherit import plan_command
    from pangu_pro.train.memory_probe import Measurement

    path = tmp_path / "tiny.yaml"
    path.write_text("model: {vocab_size: 256, hidden_size: 64, num_layers: 2, num_heads: 4, intermediate_size: 128,"
                    " seq_length: 32, aug_shortcut_ratio: 8}\n"
                    f"train: {{batch_size: 2, grad_accum_steps: 2, output_dir: {tmp_path / 'run'}}}\n")
    parser = argparse.ArgumentParser()
    plan_command.register(parser.add_subparsers())
    args = parser.parse_args(["plan", str(path), "--measure"])
    assert args.func(args) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    estimate = memory_plan(load_config(path))[0].total("none") / 1024 ** 3
    assert line.startswith(f"rank 0 (stage 0) on CPU: plan estimate {estimate:.3f} GiB; measured: none")
    assert "max_memory_allocated() is 0" in line and re.search(r"process peak RSS \d+\.\d{3} GiB", line)
    ascend = Measurement("Ascend", 3, 1, 40 * 1024 ** 3, 46 * 1024 ** 3, 1.0).describe()
    assert ascend == ("rank 3 (stage 1) on Ascend: plan estimate 40.000 GiB; measured device peak 46.000 GiB "
                      "(1.15x the estimate)")
