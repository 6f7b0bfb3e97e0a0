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
from pangu_pro.io import load_tensors
from pangu_pro.model.params import count_parameters
from pangu_pro.model.weights import build_model, save_weights

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
    # the student's config.yaml is the target preset's, training schedule included, starting from the student
    train = load_config(out / "student" / "config.yaml").train
    assert (train.steps, train.warmup_steps, train.lr) == (777, 7, 5e-4)
    assert Path(train.init_weights) == out / "student" / "model.safetensors"
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.intermediate_size) == (16, 3, 2, 24)
    assert cfg.aug_shortcut_dim == 4  # the teacher's bottleneck, whole
    summary = json.loads((out / "inherit.json").read_text())
    assert summary["student_parameters"] == count_parameters(cfg).total
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
    assert set(summary["sparsity"]) == {"heads", "neurons", "hidden", "layers"}
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


def test_per_layer_constraint_frozen_teacher_checkpoints_and_convergence(setup, capsys):
    """Target 50%: every layer's heads and neurons end within 0.1 of it (the constraint pulls each layer,
    not the average); layer_sparsity is logged per layer; a frozen teacher is not checkpointed; the
    convergence report is printed and an unconverged run is refused without --force."""
    path = write_inherit(setup, "perlayer", criterion="learned", layer_selection="cosine", steps=150,
                         checkpoint_every=150, lr_weights=0, lr_mask=0.3, lr_lambda=2.0, log_every=10)
    assert main(["inherit", str(path), "--no-progress", "--force"]) == 0
    out = setup / "perlayer"
    last = [json.loads(line) for line in (out / "masks.jsonl").read_text().splitlines()][-1]
    assert set(last["layer_sparsity"]) == {"heads", "neurons", "hidden"}
    assert len(last["layer_sparsity"]["neurons"]) == 3  # the kept layers
    for name, values in last["layer_sparsity"].items():
        for s in values:
            assert abs(s - 0.5) < 0.1, (name, values)
    assert "mask convergence" in capsys.readouterr().out
    summary = json.loads((out / "inherit.json").read_text())
    assert summary["convergence"]["spread"]["neurons"]["target"] == pytest.approx(0.5)
    assert summary["losses"]["student"] == pytest.approx(summary["losses"]["masked_teacher_selected"], rel=1e-4)
    saved, _ = load_tensors(out / "masks" / "step_00000150" / "model.safetensors")
    assert sorted(saved) == ["heads.log_alpha", "hidden.log_alpha", "lagrangian.lambda1", "lagrangian.lambda2",
                             "neurons.log_alpha"]
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
    assert "aug_shortcut_ratio 4" in capsys.readouterr().out


def test_inherit_config_sections(setup):
    config = load_inherit_config(write_inherit(setup, "cfg"), ["inherit.criterion=l2"])
    assert config.inherit.criterion == "l2" and config.model.hidden_size == 32
    from pangu_pro.configtools import ConfigError
    with pytest.raises(ConfigError, match="inherit.criterion"):
        load_inherit_config(write_inherit(setup, "cfg"), ["inherit.criterion=magic"])
    with pytest.raises(ConfigError, match="inherit.lr_lambda"):
        load_inherit_config(write_inherit(setup, "cfg"), ["inherit.lr_lambda=-1"])


@pytest.mark.parametrize("name,hidden,ratio", [("1b_pro", 1792, 14), ("1_5b_pro", 2048, 16)])
def test_real_inheritance_configs_plan(name, hidden, ratio):
    """The 7B -> 1B / 1.5B Pro configs pass every check given a 48k id map (no compute)."""
    from pangu_pro.inherit.plan import plan_student

    config = load_inherit_config(f"configs/inherit_7b_to_{name}.yaml")
    assert config.model.hidden_size == 4096 and config.inherit.criterion == "learned"
    target = load_config(config.inherit.target_config).model
    new2old = np.arange(48000) * 2  # keeps ids 0 (pad) and 2 (eos) but not 1 (bos)
    from pangu_pro.configtools import ConfigError
    with pytest.raises(ConfigError, match="bos_token_id"):
        plan_student(config.model, target, new2old)
    plan = plan_student(config.model, target, np.arange(48000))
    s = plan.student
    assert (s.hidden_size, s.aug_shortcut_ratio, s.aug_shortcut_dim, s.head_dim) == (hidden, ratio, 128, 128)
    assert plan.pruned_types() == ["heads", "neurons", "hidden", "layers"]
    extra = 2 * s.num_layers * hidden * (128 - hidden // 32)  # the whole 128-wide AugShortcut bottleneck
    assert count_parameters(s).total == count_parameters(target).total + extra
