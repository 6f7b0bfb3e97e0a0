"""The mask-learning memory plan of the shipped 7B configs, against a hand sum; `pangu-pro plan` prints it
from the config alone (no teacher weights, no data) and refuses a layout that does not fit."""
import pytest

from pangu_pro.cli import main
from pangu_pro.inherit.config import load_inherit_config
from pangu_pro.inherit.plan import mask_plan

GIB = 1024 ** 3


@pytest.mark.parametrize("name", ["1b_pro", "1_5b_pro"])
def test_7b_mask_plan_fits_a_64gb_device_by_a_hand_sum(name):
    config = load_inherit_config(f"configs/inherit_7b_to_{name}.yaml")
    plan = mask_plan(config)
    # PanGu-pi-7B: 29 layers, H 4096, 32 heads of 128, F 11008, V 100883, SIAF 2 terms, AugShortcut 128, bf16
    params = 6_727_240_704
    weights = 2 * params  # frozen, bf16
    masks = 16 * (29 * (32 + 11008 + 128) + 4096 + 27)  # groups, neurons, bottleneck units per layer; hidden; gates
    H, F, V, c = 4096, 11008, 100883, 2
    layer_none = (2 * (4 * H + c * H) + 2 * c * 128) + (4 * (H + H) + 3 * c * H + c * H + 8 * 32) + (4 + 2) * c * F
    mask_none = c * H + c * F + 8 * H
    head = 4 * H + c * H + 8 * V + 4 * V  # norm, head input, logits and softmax, fp32 logits gradient
    activations = 2048 * (29 * 4 * H + head + layer_none + mask_none)  # full recompute, micro batch 1
    assert plan.total == pytest.approx(weights + masks + activations, rel=1e-12)
    assert plan.total < 0.85 * 64 * GIB
    assert plan.global_batch == 64 and plan.tokens_per_step * plan.steps == 3200 * 64 * 2048


def test_plan_command_prints_the_inheritance_plan_and_refuses_what_does_not_fit(capsys):
    assert main(["plan", "configs/inherit_7b_to_1b_pro.yaml"]) == 0
    out = capsys.readouterr().out
    assert "teacher weights" in out and "activations" in out and "per device: 16.39" in out
    assert "time on  8 NPUs" in out and "time on 64 NPUs" in out
    # training the teacher's fp32 weights at micro batch 4 without recompute: 161 GiB, refused
    assert main(["plan", "configs/inherit_7b_to_1b_pro.yaml", "--set", "inherit.lr_weights=1e-4",
                 "--set", "inherit.batch_size=4", "--set", "parallel.recompute=none"]) == 2
    assert "does NOT fit" in capsys.readouterr().out
    assert main(["plan", "configs/inherit_7b_to_1b_pro.yaml", "--set", "parallel.model_parallel=8"]) == 2
    assert "data parallel only" in capsys.readouterr().err
    # ZeRO would put the mask step under semi-auto parallel (sharding.parallelize): refused as well
    assert main(["plan", "configs/inherit_7b_to_1b_pro.yaml", "--set", "parallel.optimizer_shard=true"]) == 2
    assert "optimizer_shard true" in capsys.readouterr().err
    assert main(["inherit", "configs/inherit_tiny_cpu.yaml", "parallel.optimizer_shard=true"]) == 2  # the run itself
    assert "parallel: mask learning is data parallel only" in capsys.readouterr().err


@pytest.mark.parametrize("devices", [16, 64])
def test_7b_mask_layouts_keep_the_global_batch_and_fit(devices):
    config = load_inherit_config(f"configs/parallel/pangu_7b_masks_{devices}dev.yaml")
    plan = mask_plan(config)
    assert plan.devices == devices and plan.global_batch == 64
    assert plan.total == pytest.approx(mask_plan(load_inherit_config("configs/inherit_7b_to_1b_pro.yaml")).total)
    assert plan.total < 0.85 * 64 * GIB
