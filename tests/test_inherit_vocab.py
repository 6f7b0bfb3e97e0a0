"""Inheritance with a compact tokenizer, end to end: the teacher reads the compact data through the id
map (its embedding and head rows gathered by `new2old`), and `inherit --check` refuses data made with
another tokenizer or holding ids the model it feeds does not have, naming both files."""
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from mindspore import Tensor

from pangu_pro.cli import main
from pangu_pro.config import load_config
from pangu_pro.inherit.hardconcrete import MASK_TYPES, UnitArrays
from pangu_pro.inherit.materialize import fold_values, head_mask_from_groups
from pangu_pro.model.weights import build_model, load_state, model_state, save_weights

TEACHER = {"vocab_size": 64, "hidden_size": 32, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2,
           "intermediate_size": 48, "seq_length": 16, "aug_shortcut_ratio": 8}
STUDENT = {"vocab_size": 40, "hidden_size": 16, "num_layers": 3, "num_heads": 2, "num_kv_heads": 1,
           "intermediate_size": 24, "seq_length": 16, "aug_shortcut_ratio": 8}
# 40 of the teacher's 64 ids (pad 0, bos 1, eos 2 kept): compact id i is teacher id NEW2OLD[i]
NEW2OLD = np.concatenate([[0, 1, 2], np.arange(27, 64)]).astype(np.int64)
COMPACT_SHA = "c0" * 32


def write_data(folder: Path, rows: np.ndarray, tokenizer_sha: str, vocab: int, summary: bool = True,
               convention: str | None = "llama"):
    """A preprocess folder: shards plus (`summary`) the summary.json naming the tokenizer that made them
    and (unless `convention` is None, as before it was recorded) the token convention."""
    from pangu_pro.data.preprocess import ShardWriter

    folder.mkdir()
    writer = ShardWriter(folder, 200)
    writer.write(rows)
    writer.close()
    if summary:
        (folder / "summary.json").write_text(json.dumps({
            "tokenizer": {"path": f"tok/{tokenizer_sha[:4]}.model", "sha256": tokenizer_sha, "vocab_size": vocab,
                          "eos_id": 2}, "seq_length": rows.shape[1] - 1, "samples": len(rows),
            **({"token_convention": convention} if convention else {})}))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("inherit_vocab")
    rng = np.random.default_rng(0)
    rows = np.zeros((240, 17), np.int64)  # compact ids, a learnable stream
    rows[:, 0] = rng.integers(3, 40, 240)
    for j in range(1, 17):
        rows[:, j] = np.where(rng.random(240) < 0.8, (rows[:, j - 1] * 7 + 3) % 37 + 3, rng.integers(3, 40, 240))
    write_data(root / "compact", rows.astype(np.int32), COMPACT_SHA, 40)
    big = rows.copy()
    big[:, ::3] = 50  # ids the compact vocabulary does not have
    write_data(root / "big", big.astype(np.int32), "b1" * 32, 64)
    write_data(root / "unlabelled", big.astype(np.int32), "", 64, summary=False)
    write_data(root / "no_bos", rows.astype(np.int32), COMPACT_SHA, 40, convention=None)
    np.save(root / "compact.new2old.npy", NEW2OLD)
    (root / "compact.new2old.json").write_text(json.dumps({
        "source_sha256": "b1" * 32, "compact_sha256": COMPACT_SHA, "compact_tokenizer": "tok/compact.model",
        "source_tokenizer": "tok/big.model", "old_vocab_size": 64, "new_vocab_size": 40,
        "new2old": NEW2OLD.tolist()}))
    for name, model in (("teacher", TEACHER), ("student", STUDENT)):
        (root / f"{name}.yaml").write_text(yaml.safe_dump({"model": model}))
    teacher = build_model(load_config(root / "teacher.yaml").model, seed=0)
    rng = np.random.default_rng(1)  # every tensor random (the AugShortcut's up projection starts at zero)
    load_state(teacher, {k: (rng.standard_normal(v.shape) * (0.3 if v.ndim > 1 else 0.2)
                             + (1.0 if v.ndim == 1 else 0.0)).astype(np.float32)
                         for k, v in model_state(teacher).items()})
    save_weights(teacher, root / "teacher.safetensors")
    return root


def write_inherit(root: Path, name: str, data: str, **inherit):
    section = {"teacher_config": str(root / "teacher.yaml"), "teacher_checkpoint": str(root / "teacher.safetensors"),
               "target_config": str(root / "student.yaml"), "vocab_map": str(root / "compact.new2old.npy"),
               "batch_size": 4, "calibration_batches": 2, "steps": 40, "log_every": 10, "checkpoint_every": 40,
               "lr_mask": 0.5, "lr_lambda": 2.0, "output_dir": str(root / name), **inherit}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"data": {"train_files": [str(root / data)], "seed": 7}, "inherit": section}))
    return path


def test_check_refuses_data_of_another_tokenizer_naming_both_files(setup, capsys):
    assert main(["inherit", str(write_inherit(setup, "ok", "compact")), "--check"]) == 0
    capsys.readouterr()
    assert main(["inherit", str(write_inherit(setup, "bad", "big")), "--check"]) == 2
    err = capsys.readouterr().err
    assert str(setup / "big" / "summary.json") in err and "compact.new2old" in err
    # without the map's .json beside it, the data's tokenizer size gives the mismatch away ...
    bare = setup / "bare.new2old.npy"
    np.save(bare, NEW2OLD)
    assert main(["inherit", str(write_inherit(setup, "bare", "big", vocab_map=str(bare))), "--check"]) == 2
    err = capsys.readouterr().err
    assert "has 64 pieces" in err and str(setup / "big" / "summary.json") in err and str(bare) in err
    # ... and without a summary.json, the maximum id
    assert main(["inherit", str(write_inherit(setup, "raw", "unlabelled", vocab_map=str(bare))), "--check"]) == 2
    err = capsys.readouterr().err
    assert "maximum id 50" in err and str(setup / "unlabelled") in err and str(bare) in err


def test_check_refuses_data_of_the_old_token_convention(setup, capsys):
    assert main(["inherit", str(write_inherit(setup, "old", "no_bos")), "--check"]) == 2
    err = capsys.readouterr().err
    assert str(setup / "no_bos" / "summary.json") in err and "no 'token_convention'" in err
    assert "'eos-only'" in err and "'llama'" in err and "pangu-pro preprocess" in err


@pytest.mark.slow
def test_compact_vocabulary_end_to_end(setup):
    """Layer scores and masks are computed on the teacher's own ids; the student on compact ids computes
    the masked teacher's logits on the corresponding teacher ids."""
    from pangu_pro.inherit.criteria import cosine_layer_scores
    from pangu_pro.inherit.run import calibration_batches
    from pangu_pro.inherit.config import load_inherit_config

    path = write_inherit(setup, "e2e", "compact", criterion="learned", layer_selection="cosine")
    assert main(["inherit", str(path), "--no-progress", "--force"]) == 0
    out = setup / "e2e"
    summary = json.loads((out / "inherit.json").read_text())
    # cosine scores of the big-vocabulary teacher on the teacher's ids of the same batches
    teacher_cfg = load_config(setup / "teacher.yaml").model
    teacher = build_model(teacher_cfg, setup / "teacher.safetensors")
    batches = calibration_batches(load_inherit_config(path))
    expected = cosine_layer_scores(teacher, [NEW2OLD[b] for b in batches])
    np.testing.assert_allclose(summary["layer_scores"], expected, rtol=1e-5, atol=1e-6)
    # the student on compact ids == the teacher (mask values folded, the selection's 0/1 masks) on teacher ids
    masks = np.load(out / "masks_final.npz")
    values = UnitArrays(*(masks[f"values_{k}"] for k in MASK_TYPES))
    keep = UnitArrays(*(masks[f"selected_{k}"] for k in MASK_TYPES))
    load_state(teacher, fold_values(model_state(teacher), teacher_cfg, values))
    ids = np.asarray(batches[0][:, :16], np.int32)
    groups = teacher_cfg.num_heads // teacher_cfg.kv_heads
    t_logits = teacher(Tensor(NEW2OLD[ids].astype(np.int32)),
                       Tensor(head_mask_from_groups(keep.heads, groups).astype(np.float32)),
                       Tensor(keep.neurons.astype(np.float32)), Tensor(keep.hidden.astype(np.float32)),
                       Tensor(keep.layers.astype(np.float32)),
                       Tensor(keep.bottleneck.astype(np.float32))).asnumpy()[..., NEW2OLD]
    s_cfg = load_config(out / "student" / "config.yaml").model
    assert s_cfg.vocab_size == 40
    student = build_model(s_cfg, out / "student")
    np.testing.assert_allclose(student(Tensor(ids)).asnumpy(), t_logits, rtol=1e-4, atol=1e-4)
