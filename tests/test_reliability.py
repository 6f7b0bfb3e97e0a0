"""Damaged and hostile inputs (issue 14): each is refused with an error naming the file and key, in
bounded time and memory, and a damaged checkpoint is never loaded silently."""
from __future__ import annotations

import json
import time
import tracemalloc
from pathlib import Path

import pytest

from pangu_pro.config import ModelConfig, load_config
from pangu_pro.configtools import ConfigError

TINY = {"vocab_size": 256, "hidden_size": 64, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1,
        "intermediate_size": 128, "seq_length": 32}
LLAMA_CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 256, "hidden_size": 64,
                "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2,
                "max_position_embeddings": 32, "rope_theta": 10000.0, "rms_norm_eps": 1e-6}


def flip_bytes(path: Path, count: int = 4) -> None:
    """Flip `count` bytes at the end of the file (tensor data, not the header)."""
    raw = bytearray(path.read_bytes())
    for i in range(1, count + 1):
        raw[-i] ^= 0xFF
    path.write_bytes(bytes(raw))


def write_yaml(path: Path, model_lines: str) -> Path:
    path.write_text("model:\n" + model_lines, encoding="utf-8")
    return path


@pytest.fixture
def checkpoint(tmp_path):
    """A run directory with checkpoints at steps 2 and 4 (model + state.json, saved as training does)."""
    from pangu_pro.model.weights import build_model
    from pangu_pro.train.checkpoint import checkpoint_name, save_checkpoint

    model = build_model(ModelConfig(**TINY), seed=3)
    root = tmp_path / "run" / "checkpoints"
    for step in (2, 4):
        save_checkpoint(root / checkpoint_name(step), model, None, {"step": step, "consumed_batches": step})
    return model, root


# ---------------------------------------------------------------- checkpoint digests

def test_flipped_bytes_are_refused_on_every_load_path(checkpoint, capsys):
    from pangu_pro.cli import main
    from pangu_pro.convert.checkpoints import open_checkpoint
    from pangu_pro.digests import DigestMismatch
    from pangu_pro.model.weights import load_weights
    from pangu_pro.train.checkpoint import load_checkpoint

    model, root = checkpoint
    damaged = root / "step_00000004"
    assert main(["checkpoint", "verify", str(root.parent)]) == 0
    assert "2 checked, 0 damaged" in capsys.readouterr().out
    flip_bytes(damaged / "model.safetensors")
    for load in (lambda: load_weights(model, damaged),  # perplexity, eval, generate, inherit, init_weights
                 lambda: load_checkpoint(damaged, model),  # resume
                 lambda: open_checkpoint(damaged)):  # convert to-hf
        with pytest.raises(DigestMismatch, match=f"{damaged / 'model.safetensors'}: SHA-256 mismatch.*"
                                                 f"checkpoint {damaged} is damaged"):
            load()
    assert main(["checkpoint", "verify", str(root.parent)]) == 1
    out = capsys.readouterr().out
    assert f"damaged    {damaged}:" in out and f"ok         {root / 'step_00000002'}" in out
    assert main(["checkpoint", "verify", str(damaged / "model.safetensors")]) == 1
    load_weights(model, root / "step_00000002")  # the older one is intact


def test_resume_falls_back_to_the_newest_intact_checkpoint(checkpoint):
    from pangu_pro.train.checkpoint import intact_resume, resolve_resume

    _, root = checkpoint
    flip_bytes(root / "step_00000004" / "state.json", 1)
    said = []
    newest = resolve_resume(root.parent)
    assert newest == root / "step_00000004"
    assert intact_resume(newest, True, said.append) == root / "step_00000002"
    assert len(said) == 1 and said[0].startswith(f"skipping checkpoint {newest}: ") and "SHA-256 mismatch" in said[0]
    with pytest.raises(ValueError, match="state.json: SHA-256 mismatch"):  # a folder named explicitly: no fallback
        intact_resume(newest, False, said.append)


def test_choosing_and_loading_a_checkpoint_hashes_each_file_once(checkpoint, monkeypatch):
    from pangu_pro import digests
    from pangu_pro.train.checkpoint import intact_resume, load_checkpoint

    model, root = checkpoint
    digests._verified.clear()  # as in a fresh process
    hashed = []
    real = digests.file_sha256
    monkeypatch.setattr(digests, "file_sha256", lambda path: hashed.append(Path(path).name) or real(path))
    folder = intact_resume(root / "step_00000004", True, print)
    load_checkpoint(folder, model)
    assert sorted(hashed) == ["model.safetensors", "state.json"]


def test_checkpoints_without_digests_load_with_a_note(checkpoint, capsys):
    from pangu_pro.cli import main
    from pangu_pro.model.weights import load_weights

    model, root = checkpoint
    old = root / "step_00000002"
    for side in old.glob("*.sha256"):
        side.unlink()
    capsys.readouterr()
    load_weights(model, old)
    load_weights(model, old)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"note: {old / 'model.safetensors'}: written without a SHA-256")
    assert main(["checkpoint", "verify", str(root)]) == 0
    assert f"unrecorded {old}" in capsys.readouterr().out


@pytest.mark.slow
def test_train_resume_skips_a_damaged_checkpoint(tmp_path):
    from tests.test_train import make_config, make_rows, write_shard
    from pangu_pro.train.trainer import train

    shard = str(write_shard(tmp_path / "train.mindrecord", make_rows(32, 0)))
    data = {"train": shard, "eval": shard}
    out = tmp_path / "run"
    train(make_config(data, out, layers=1, steps=4, save_every=2, warmup_steps=0), progress=False, announce=None)
    flip_bytes(out / "checkpoints" / "step_00000004" / "model.safetensors")
    said = []
    summary = train(make_config(data, out, layers=1, steps=6, save_every=2, warmup_steps=0), resume="auto",
                    progress=False, announce=said.append, allow_changes=True)  # train.steps 4 -> 6
    assert said[0].startswith(f"skipping checkpoint {out / 'checkpoints' / 'step_00000004'}: ")
    assert f"resuming from {out / 'checkpoints' / 'step_00000002'} at step 2" in said
    assert summary["step"] == 6


# ---------------------------------------------------------------- files named in errors

def test_damaged_state_json_is_named(checkpoint):
    from pangu_pro.train.checkpoint import read_state

    _, root = checkpoint
    state = root / "step_00000002" / "state.json"
    state.with_name("state.json.sha256").unlink(missing_ok=True)  # a checkpoint from before digests
    state.write_text('{"step": 2, "consumed\x01": 2}', encoding="utf-8")
    with pytest.raises(ValueError, match=f"{state}: not valid JSON \\(line 1 column"):
        read_state(state.parent)


def test_config_with_invalid_utf8_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"model:\n  vocab_size: 256 # caf\xe9\n")
    with pytest.raises(ConfigError, match=f"{path}: not UTF-8 text"):
        load_config(path)


# ---------------------------------------------------------------- bounded values, depth and sizes

def test_alias_bomb_under_a_typed_key_is_refused_quickly(tmp_path):
    levels = 6  # 10**7 integers if expanded (an 8 MB message)
    anchors = ["&a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [
        f"&a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels + 1)]
    path = write_yaml(tmp_path / "bomb.yaml", "  vocab_size: 256\n  hidden_size: 64\n  num_heads: 2\n"
                      f"  intermediate_size: 128\n  num_layers: [{', '.join(anchors)}]\n")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=f"{path}: model.num_layers: expected an integer, got \\[") as err:
        load_config(path)
    assert time.perf_counter() - start < 2.0
    assert len(str(err.value)) < 300


def test_deeply_nested_yaml_is_refused_cleanly(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("model: " + "[" * 20000 + "]" * 20000 + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"{path}: line 1: nested more than 64 levels deep"):
        load_config(path)


def test_model_sizes_have_upper_bounds_with_an_override(tmp_path, monkeypatch):
    path = write_yaml(tmp_path / "big.yaml", "  vocab_size: 256\n  hidden_size: 64\n  num_layers: 10000\n"
                      "  num_heads: 2\n  intermediate_size: 128\n")
    with pytest.raises(ConfigError, match=f"{path}: model.num_layers: 10000 exceeds the limit 512 .*"
                                          "PANGU_PRO_ALLOW_LARGE_MODELS=1"):
        load_config(path)
    monkeypatch.setenv("PANGU_PRO_ALLOW_LARGE_MODELS", "1")
    assert load_config(path).model.num_layers == 10000


def hf_folder(tmp_path: Path, **changes) -> Path:
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**LLAMA_CONFIG, **changes}), encoding="utf-8")
    return folder


def test_from_hf_refuses_ten_million_layers_before_allocating(tmp_path):
    from pangu_pro.convert.from_hf import import_from_hf

    folder = hf_folder(tmp_path, num_hidden_layers=10_000_000)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ValueError, match=f"{folder / 'config.json'}: num_hidden_layers: 10000000 exceeds "
                                             "the limit 512"):
            import_from_hf(folder, tmp_path / "out", progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 2.0 and peak < 16 * 2 ** 20


@pytest.mark.parametrize("key,value,message", [
    ("max_position_embeddings", "2048", "expected an integer, got '2048'"),
    ("rope_theta", "abc", "expected a number, got 'abc'"),
    ("num_attention_heads", 0, "must be positive, got 0"),
    ("tie_word_embeddings", "no", "expected true or false, got 'no'"),
])
def test_hf_config_values_are_type_checked_naming_the_key(tmp_path, key, value, message):
    from pangu_pro.convert.from_hf import import_from_hf

    folder = hf_folder(tmp_path, **{key: value})
    with pytest.raises(ValueError, match=f"{folder / 'config.json'}: {key}: {message}"):
        import_from_hf(folder, tmp_path / "out", progress=False)


def test_deeply_nested_config_json_is_refused_cleanly(tmp_path):
    from pangu_pro.convert.from_hf import import_from_hf

    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("[" * 100000 + "]" * 100000, encoding="utf-8")
    with pytest.raises(ValueError, match=f"{folder / 'config.json'}: JSON nested too deeply"):
        import_from_hf(folder, tmp_path / "out", progress=False)


# ---------------------------------------------------------------- training and tokenizer messages

@pytest.mark.parametrize("loss,grad_norm,named", [
    (8.987, float("nan"), "non-finite gradient norm (loss 8.987, gradient norm nan)"),
    (float("inf"), 1.5, "non-finite loss (loss inf, gradient norm 1.5)"),
    (float("nan"), float("nan"), "non-finite loss and gradient norm (loss nan, gradient norm nan)"),
])
def test_non_finite_stop_names_the_quantity(loss, grad_norm, named):
    from pangu_pro.train.trainer import NonFiniteLossError

    assert str(NonFiniteLossError(7, loss, grad_norm, None)).startswith(f"step 7: {named}; stopped")


def test_tokenizer_vocabulary_too_small_says_the_minimum(tmp_path, capsys):
    import re

    from pangu_pro.cli import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"{w} alpha beta gamma 数据 模型 {w}\n" for w in ("delta", "zeta", "theta") * 40),
                      encoding="utf-8")
    args = ["tokenizer", "train", str(corpus), "--out", str(tmp_path / "t.model"), "--threads", "1"]
    assert main(args + ["--vocab-size", "262"]) == 2
    err = capsys.readouterr().err
    needed = re.search(r"vocab size 262 is too small for this corpus: it needs at least (\d+) pieces", err)
    assert needed and f"pass --vocab-size {needed.group(1)} or more" in err and "Traceback" not in err
    assert main(args + ["--vocab-size", needed.group(1)]) == 0


@pytest.mark.parametrize("reader", ["rounds_state", "map_info", "new2old_json", "eval_task"])
def test_damaged_json_files_are_named(tmp_path, reader):
    """Every JSON file these modules read goes through io.read_json, so bad JSON names the file and line."""
    bad = tmp_path / "damaged.json"
    bad.write_text('{"a": 1,\n "b": }', encoding="utf-8")
    match = f"{bad}: not valid JSON \\(line 2 column"
    with pytest.raises(ValueError, match=match):
        if reader == "rounds_state":
            from pangu_pro.rounds.driver import RoundsState

            RoundsState(bad, "fingerprint")
        elif reader == "map_info":
            from pangu_pro.tokenizer.compress import load_map_info

            load_map_info(bad)
        elif reader == "new2old_json":
            from pangu_pro.tokenizer.compress import load_new2old

            load_new2old(bad)
        else:
            from pangu_pro.eval.tasks import read_json

            read_json(bad, "a JSON object")
