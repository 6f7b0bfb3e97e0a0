"""remap-checkpoint: a remapped model's logits on kept tokens equal the original's gathered through new2old."""
import numpy as np
import pytest
import yaml

from pangu_pro.config import load_config
from pangu_pro.tensors import load_tensors, save_tensors
from pangu_pro.tokenizer.remap import EMBEDDING, LM_HEAD, remap_checkpoint, remap_tensors

OLD_VOCAB = 50
NEW2OLD = np.array([0, 1, 2, 5, 7, 8, 13, 21, 34, 40, 49], dtype=np.int64)


def write_config(path, **model):
    base = {"vocab_size": OLD_VOCAB, "hidden_size": 32, "num_layers": 1, "num_heads": 2,
            "intermediate_size": 64, "seq_length": 16}
    path.write_text(yaml.safe_dump({"model": {**base, **model}, "train": {"steps": 7}}))
    return path


@pytest.mark.parametrize("tie", [False, True])
def test_remapped_model_logits_equal_gathered_logits(tmp_path, tie):
    import mindspore as ms

    from pangu_pro.model import PanGuPiForCausalLM
    from pangu_pro.model.weights import load_state, model_state

    config_path = write_config(tmp_path / "old.yaml", tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2)
    config = load_config(config_path)
    ms.set_seed(0)
    old_model = PanGuPiForCausalLM(config.model)
    state = model_state(old_model)
    assert EMBEDDING in state and (LM_HEAD in state) != tie
    ckpt_dir = tmp_path / "step_7"
    save_tensors(ckpt_dir / "model.safetensors", state, {"step": "7"})

    new_config = remap_checkpoint(ckpt_dir, config_path, NEW2OLD, tmp_path / "new.safetensors",
                                  tmp_path / "new.yaml")
    assert new_config.model.vocab_size == NEW2OLD.size
    assert load_config(tmp_path / "new.yaml") == new_config
    assert new_config.train.steps == 7
    tensors, metadata = load_tensors(tmp_path / "new.safetensors")
    assert metadata == {"step": "7"} and set(tensors) == set(state)
    for name in state:
        if name not in (EMBEDDING, LM_HEAD):
            assert np.array_equal(tensors[name], state[name])

    new_model = PanGuPiForCausalLM(new_config.model)
    load_state(new_model, tensors)
    rng = np.random.default_rng(0)
    new_ids = rng.integers(0, NEW2OLD.size, (2, 9))
    old_logits = old_model(ms.Tensor(NEW2OLD[new_ids], ms.int32)).asnumpy()
    new_logits = new_model(ms.Tensor(new_ids, ms.int32)).asnumpy()
    assert new_logits.shape == (2, 9, NEW2OLD.size)
    np.testing.assert_allclose(new_logits, old_logits[..., NEW2OLD], rtol=1e-5, atol=1e-6)


def test_special_ids_are_remapped_and_must_be_kept(tmp_path):
    config_path = write_config(tmp_path / "old.yaml", pad_token_id=0, bos_token_id=5, eos_token_id=7)
    rng = np.random.default_rng(1)
    ckpt = tmp_path / "old.safetensors"
    save_tensors(ckpt, {EMBEDDING: rng.normal(size=(OLD_VOCAB, 4)).astype(np.float32),
                        LM_HEAD: rng.normal(size=(OLD_VOCAB, 4)).astype(np.float32)})
    config = remap_checkpoint(ckpt, config_path, NEW2OLD, tmp_path / "out", tmp_path / "new.yaml")
    assert (config.model.pad_token_id, config.model.bos_token_id, config.model.eos_token_id) == (0, 3, 4)
    assert (tmp_path / "out" / "model.safetensors").is_file()
    without_eos = NEW2OLD[NEW2OLD != 7]
    with pytest.raises(ValueError, match=r"old.yaml: model.eos_token_id = 7 is not kept"):
        remap_checkpoint(ckpt, config_path, without_eos, tmp_path / "x.safetensors", tmp_path / "x.yaml")


def test_remap_tensors_checks_shapes():
    table = np.zeros((OLD_VOCAB - 1, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"ckpt: model.embed_tokens.weight has shape \(49, 4\), expected \(50, d\)"):
        remap_tensors({EMBEDDING: table}, NEW2OLD, OLD_VOCAB, "ckpt")
    with pytest.raises(ValueError, match="no tensor named 'model.embed_tokens.weight'"):
        remap_tensors({}, NEW2OLD, OLD_VOCAB, "ckpt")
    table = np.arange(OLD_VOCAB * 2, dtype=np.float32).reshape(OLD_VOCAB, 2)
    assert np.array_equal(remap_tensors({EMBEDDING: table}, NEW2OLD, OLD_VOCAB)[EMBEDDING][:, 0], 2 * NEW2OLD)


def write_map_record(tmp_path, source_bytes: bytes):
    """A fake source tokenizer file and the map record `tokenizer compress` writes for it."""
    import json

    from pangu_pro.io import file_sha256

    source = tmp_path / "big.model"
    source.write_bytes(source_bytes)
    compact = tmp_path / "compact.model"
    compact.write_bytes(b"compact " + source_bytes)
    map_path = tmp_path / "compact.new2old.npy"
    np.save(map_path, NEW2OLD)
    map_path.with_suffix(".json").write_text(json.dumps({
        "source_tokenizer": str(source), "source_sha256": file_sha256(source), "compact_tokenizer": str(compact),
        "compact_sha256": file_sha256(compact), "new_vocab_size": int(NEW2OLD.size), "new2old": NEW2OLD.tolist()}))
    return source, compact, map_path


def test_remap_refuses_a_map_made_from_a_different_tokenizer(tmp_path):
    from pangu_pro.io import file_sha256

    source, compact, map_path = write_map_record(tmp_path, b"the big tokenizer")
    other = tmp_path / "other.model"
    other.write_bytes(b"a different tokenizer")
    rng = np.random.default_rng(2)
    tensors = {EMBEDDING: rng.normal(size=(OLD_VOCAB, 4)).astype(np.float32)}
    save_tensors(tmp_path / "w.safetensors", tensors)
    config_path = write_config(tmp_path / "old.yaml")
    config = yaml.safe_load(config_path.read_text())
    config["data"] = {"tokenizer": str(other)}
    config_path.write_text(yaml.safe_dump(config))

    def remap(checkpoint, out, **kwargs):
        return remap_checkpoint(checkpoint, config_path, NEW2OLD, tmp_path / f"{out}.safetensors",
                                tmp_path / f"{out}.yaml", map_path=map_path, **kwargs)

    with pytest.raises(ValueError, match=f"{map_path} was made from {source} .* not from {other} "
                                         f"\\({config_path}: data.tokenizer\\)"):
        remap(tmp_path / "w.safetensors", "new")
    with pytest.raises(ValueError, match=f"not from {other}"):
        remap(tmp_path / "w.safetensors", "new", tokenizer=other)
    assert not (tmp_path / "new.safetensors").exists()

    new_config = remap(tmp_path / "w.safetensors", "new", tokenizer=source)  # the right tokenizer
    _, metadata = load_tensors(tmp_path / "new.safetensors")
    assert metadata["tokenizer_sha256"] == file_sha256(compact) and new_config.data.tokenizer == str(compact)
    # the remapped weights record the compact tokenizer: remapping them again with the map is refused
    with pytest.raises(ValueError, match=f"not from the tokenizer {tmp_path / 'new.safetensors'} records"):
        remap(tmp_path / "new.safetensors", "twice", tokenizer=source)
    config["data"] = {}
    config_path.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match="cannot tell which tokenizer .* pass the tokenizer"):
        remap(tmp_path / "w.safetensors", "new")


def test_remap_imports_no_model_code():
    import subprocess
    import sys

    code = ("import sys, pangu_pro.tokenizer.remap; "
            "print(sorted(m for m in sys.modules if m.startswith(('pangu_pro.model', 'mindspore'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
