"""`pangu-pro inherit` end to end on a tiny teacher: every criterion writes a loadable student;
learned masks reach their targets, resume exactly, and the CLI checks fail before compute."""
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from mindspore import Tensor

from pangu_pro.cli import main
from pangu_pro.config import load_config
from pangu_pro.inherit.config import load_inherit_config
from pangu_pro.model.params import count_parameters
from pangu_pro.model.weights import build_model, save_weights
from pangu_pro.tensors import load_tensors

TEACHER = {"vocab_size": 64, "hidden_size": 32, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2,
           "intermediate_size": 48, "seq_length": 16, "aug_shortcut_ratio": 8}
STUDENT = {"vocab_size": 64, "hidden_size": 16, "num_layers": 3, "num_heads": 2, "num_kv_heads": 1,
           "intermediate_size": 24, "seq_length": 16, "aug_shortcut_ratio": 8}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from pangu_pro.data.preprocess import ShardWriter

    root = tmp_path_factory.mktemp("inherit")
    rng = np.random.default_rng(0)
    # a learnable stream: each token mostly follows from the previous one
    rows = np.zeros((400, 17), np.int32)
    rows[:, 0] = rng.integers(3, 64, 400)
    for j in range(1, 17):
        rows[:, j] = np.where(rng.random(400) < 0.8, (rows[:, j - 1] * 7 + 3) % 61 + 3, rng.integers(3, 64, 400))
    data = root / "data"
    data.mkdir()
    writer = ShardWriter(data, 200)
    writer.write(rows)
    writer.close()
    teacher = build_model(load_config_from(TEACHER, root / "teacher.yaml").model, seed=0)
    save_weights(teacher, root / "teacher.safetensors")
    load_config_from(STUDENT, root / "student.yaml", train={"steps": 777, "warmup_steps": 7, "lr": 5e-4})
    return root


def load_config_from(model: dict, path: Path, **sections):
    path.write_text(yaml.safe_dump({"model": model, **sections}))
    return load_config(path)


def write_inherit(root: Path, name: str, **inherit):
    section = {"teacher_config": str(root / "teacher.yaml"), "teacher_checkpoint": str(root / "teacher.safetensors"),
               "target_config": str(root / "student.yaml"), "batch_size": 4, "calibration_batches": 2,
               "steps": 12, "log_every": 4, "checkpoint_every": 6, "lr_mask": 0.5, "lr_lambda": 0.5,
               "output_dir": str(root / name), **inherit}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"data": {"train_files": [str(root / "data")], "seed": 7},
                                    "inherit": section}))
    return path


def student_of(out: Path):
    cfg = load_config(out / "student" / "config.yaml").model
    model = build_model(cfg, out / "student")
    return cfg, model


@pytest.mark.parametrize("criterion", ["random", "l1", "l2", "taylor"])
def test_heuristic_criteria_write_a_loadable_student(setup, criterion):
    path = write_inherit(setup, criterion, criterion=criterion)
    assert main(["inherit", str(path), "--no-progress"]) == 0
    out = setup / criterion
    cfg, model = student_of(out)
    # the student's config.yaml is the target preset's (steps included), starting from the student, with the
    # official schedule for training on from a pruned checkpoint (inherit.student_schedule: official)
    train = load_config(out / "student" / "config.yaml").train
    assert (train.steps, train.warmup_steps, train.warmup_fraction, train.lr, train.min_lr_ratio) == \
        (777, 0, 0.03, 1e-4, 0.1)
    assert Path(train.init_weights) == out / "student" / "model.safetensors"
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.intermediate_size) == (16, 3, 2, 24)
    # the student's model section is the target preset's (AugShortcut bottleneck 2 of the teacher's 4 units),
    # so the preset itself loads the student
    preset = load_config(setup / "student.yaml").model
    assert cfg == preset and cfg.aug_shortcut_dim == 2
    build_model(preset, out / "student")
    assert [len(b) for b in json.loads((out / "student" / "selection.json").read_text())["bottleneck"]] == [2, 2, 2]
    summary = json.loads((out / "inherit.json").read_text())
    assert summary["student_parameters"] == count_parameters(cfg).total
    assert summary["teacher_dtype"] == "float32"  # auto on the CPU (bf16 storage is the Ascend default)
    assert summary["kept_layers"][0] == 0 and summary["kept_layers"][-1] == 3
    logits = model(Tensor(np.arange(8, dtype=np.int32)[None])).asnumpy()
    assert np.isfinite(logits).all()


def test_learned_masks_reach_targets_and_resume_exactly(setup, capsys):
    path = write_inherit(setup, "learned", criterion="learned", layer_selection="learned", steps=120,
                         checkpoint_every=60, keep_checkpoints=5, lr_weights=1e-3, lr_mask=0.3,
                         lr_lambda=2.0, log_every=10)
    assert main(["inherit", str(path), "--no-progress", "--force"]) == 0
    out = setup / "learned"
    summary = json.loads((out / "inherit.json").read_text())
    # the constraint pulled each type toward its target sparsity: heads 0.5, neurons 0.5, hidden 0.5, layers 0.5
    for name, s in summary["sparsity"].items():
        assert abs(s - 0.5) < 0.1, (name, s)
    assert set(summary["sparsity"]) == {"heads", "neurons", "hidden", "layers", "bottleneck"}
    records = [json.loads(line) for line in (out / "masks.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(10, 121, 10))
    assert records[0]["target_heads"] < records[-1]["target_heads"] == pytest.approx(0.5)
    full, _ = load_tensors(out / "student" / "model.safetensors")
    # resume from step 60: the same student, bit for bit
    import shutil
    for step_dir in sorted((out / "masks").iterdir()):
        if step_dir.name > "step_00000060":
            shutil.rmtree(step_dir)
    assert main(["inherit", str(path), "--no-progress", "--resume", "--force"]) == 0
    again, _ = load_tensors(out / "student" / "model.safetensors")
    assert sorted(again) == sorted(full)
    for name, value in full.items():  # bit for bit
        assert np.array_equal(again[name], value), name
    resumed = [json.loads(line) for line in (out / "masks.jsonl").read_text().splitlines()]
    assert resumed == records
    # a fresh run refuses to overwrite the checkpoints
    assert main(["inherit", str(path), "--no-progress"]) == 2
    assert "already holds mask checkpoints" in capsys.readouterr().err


def test_per_layer_constraint_frozen_teacher_checkpoints_and_convergence(setup, capsys, monkeypatch):
    """Target 50%: every layer's heads, neurons and bottleneck units end within 0.1 of it (the constraint
    pulls each layer, not the average); layer_sparsity is logged per layer; a frozen teacher is not
    checkpointed; the convergence report is printed and an unconverged run is refused without --force;
    every progress line shows the values of its own step."""
    import re

    path = write_inherit(setup, "perlayer", criterion="learned", layer_selection="cosine", steps=150,
                         checkpoint_every=150, lr_weights=0, lr_mask=0.3, lr_lambda=2.0, log_every=10)
    monkeypatch.setenv("PANGU_PRO_PROGRESS", "lines")
    assert main(["inherit", str(path), "--force"]) == 0
    out = setup / "perlayer"
    records = [json.loads(line) for line in (out / "masks.jsonl").read_text().splitlines()]
    printed = capsys.readouterr()
    shown = {int(m.group(1)): m.group(2) for m in re.finditer(r"masks (\d+)/150 step \S+ \| loss ([0-9.]+)",
                                                               printed.out + printed.err)}
    assert len(shown) == 15 and shown == {r["step"]: f"{r['loss']:.3f}" for r in records}
    assert "mask convergence" in printed.out + printed.err
    last = records[-1]
    assert set(last["layer_sparsity"]) == {"heads", "neurons", "hidden", "bottleneck"}
    assert len(last["layer_sparsity"]["neurons"]) == 3  # the kept layers
    for name, values in last["layer_sparsity"].items():
        for s in values:
            assert abs(s - 0.5) < 0.1, (name, values)
    summary = json.loads((out / "inherit.json").read_text())
    assert summary["convergence"]["spread"]["neurons"]["target"] == pytest.approx(0.5)
    assert summary["losses"]["student"] == pytest.approx(summary["losses"]["masked_teacher_selected"], rel=1e-4)
    saved, _ = load_tensors(out / "masks" / "step_00000150" / "model.safetensors")
    assert sorted(saved) == ["bottleneck.log_alpha", "heads.log_alpha", "hidden.log_alpha", "lagrangian.lambda1",
                             "lagrangian.lambda2", "neurons.log_alpha"]
    # a run that cannot converge (4 steps) is refused without --force, naming the way out
    short = write_inherit(setup, "short", criterion="learned", steps=4, checkpoint_every=4, lr_weights=0)
    assert main(["inherit", str(short), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "did not converge" in err and "--force" in err
    assert not (setup / "short" / "student").exists()


def test_bad_target_fails_before_compute_naming_the_field(setup, capsys):
    wide = dict(STUDENT, intermediate_size=96)
    load_config_from(wide, setup / "wide_target.yaml")
    path = write_inherit(setup, "wide", target_config=str(setup / "wide_target.yaml"))
    assert main(["inherit", str(path), "--check"]) == 2
    err = capsys.readouterr().err
    assert "model.intermediate_size" in err and "wider than the teacher" in err
    assert not (setup / "wide").exists()
    path = write_inherit(setup, "nodata", criterion="taylor")
    cfg = yaml.safe_load(path.read_text())
    cfg["data"]["train_files"] = []
    path.write_text(yaml.safe_dump(cfg))
    assert main(["inherit", str(path)]) == 2
    assert "data.train_files" in capsys.readouterr().err
    ok = write_inherit(setup, "ok")
    assert main(["inherit", str(ok), "--check"]) == 0
    assert "aug_shortcut_ratio 8" in capsys.readouterr().out  # the target's: bottleneck 2 of the teacher's 4


def test_inherit_config_sections(setup):
    config = load_inherit_config(write_inherit(setup, "cfg"), ["inherit.criterion=l2"])
    assert config.inherit.criterion == "l2" and config.model.hidden_size == 32
    from pangu_pro.configtools import ConfigError
    with pytest.raises(ConfigError, match="inherit.criterion"):
        load_inherit_config(write_inherit(setup, "cfg"), ["inherit.criterion=magic"])
    with pytest.raises(ConfigError, match="inherit.lr_lambda"):
        load_inherit_config(write_inherit(setup, "cfg"), ["inherit.lr_lambda=-1"])


@pytest.mark.parametrize("name", ["1b_pro", "1_5b_pro"])
def test_real_inheritance_configs_give_the_preset_student(name):
    """The 7B -> 1B / 1.5B Pro configs pass every check given a 48k id map (no compute), and the student's
    model config is the preset's model section (AugShortcut bottleneck shrunk to ratio 32), so
    configs/pangu_1b_pro.yaml / pangu_1_5b_pro.yaml load the student directly."""
    import dataclasses

    from pangu_pro.inherit.materialize import student_config
    from pangu_pro.inherit.plan import plan_student

    config = load_inherit_config(f"configs/inherit_7b_to_{name}.yaml")
    assert config.model.hidden_size == 4096 and config.inherit.criterion == "learned"
    assert config.inherit.aug_bottleneck == "preset"
    preset = load_config(f"configs/pangu_{name}.yaml")
    assert Path(config.inherit.target_config).resolve() == Path(f"configs/pangu_{name}.yaml").resolve()
    new2old = np.arange(48000) * 2  # keeps ids 0 (pad) and 2 (eos) but not 1 (bos)
    from pangu_pro.configtools import ConfigError
    with pytest.raises(ConfigError, match="bos_token_id"):
        plan_student(config.model, preset.model, new2old)
    plan = plan_student(config.model, preset.model, np.arange(48000), aug_bottleneck=config.inherit.aug_bottleneck)
    assert plan.student == preset.model
    assert (plan.student.aug_shortcut_ratio, plan.student.aug_shortcut_dim) == (32, preset.model.hidden_size // 32)
    assert plan.pruned_types() == ["heads", "neurons", "hidden", "layers", "bottleneck"]
    written = student_config(plan, config.inherit.target_config, Path("student/model.safetensors"))
    assert config.inherit.student_schedule == "official"  # #25: the repo's schedule from a pruned checkpoint
    assert written.model == preset.model and written.train == dataclasses.replace(
        preset.train, init_weights="student/model.safetensors", lr=1e-4, warmup_steps=0, warmup_fraction=0.03,
        min_lr_ratio=0.1)
    kept = student_config(plan, config.inherit.target_config, Path("student/model.safetensors"), "preset")
    assert kept.train == dataclasses.replace(preset.train, init_weights="student/model.safetensors")
    assert count_parameters(plan.student).total == count_parameters(preset.model).total
