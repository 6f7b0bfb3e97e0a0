"""Conversion to and from Hugging Face format (issue 7): logits, greedy decoding, round trips, errors."""
import json
import os
import shutil

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mindspore import Tensor  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from pangu_pro.cli import main  # noqa: E402
from pangu_pro.config import Config, ModelConfig, load_config, save_config  # noqa: E402
from pangu_pro.convert.from_hf import import_from_hf  # noqa: E402
from pangu_pro.convert.names import expected_shapes, to_hf_name  # noqa: E402
from pangu_pro.convert.to_hf import HF_INDEX, MODELING_FILES, export_to_hf, parse_size  # noqa: E402
from pangu_pro.model.generation import Generator, SamplingConfig  # noqa: E402
from pangu_pro.model.weights import build_model, save_weights  # noqa: E402

pytestmark = pytest.mark.hf

BASE = dict(vocab_size=256, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=160, seq_length=64,
            rope_theta=10000.0, rms_norm_eps=1e-5, siaf=False, aug_shortcut=False, aug_shortcut_ratio=8,
            init_std=0.1)
CASES = {
    "llama": dict(),
    "pangu": dict(siaf=True, aug_shortcut=True),
    "pangu_gqa": dict(siaf=True, aug_shortcut=True, num_kv_heads=2, siaf_terms=3),
    "small_vocab_tied_gqa": dict(vocab_size=300, tie_word_embeddings=True, num_kv_heads=1, rope_theta=5e5),
}


def tiny_config(**changes) -> ModelConfig:
    cfg = ModelConfig(**{**BASE, **changes})
    cfg.validate()
    return cfg


def make_checkpoint(cfg: ModelConfig, folder, seed: int = 0):
    """A random model whose PanGu-pi modules matter (nonzero SIAF terms and shortcut `up`), saved to disk."""
    model = build_model(cfg, seed=seed)
    rng = np.random.default_rng(seed)
    for param in model.trainable_params():
        if param.name.endswith(("siaf.scale", "siaf.bias", "aug_shortcut.up.weight", "norm.weight")):
            value = param.asnumpy()
            noise = rng.normal(0, 0.3, value.shape).astype(np.float32)
            param.set_data(Tensor(value + noise))
    weights = folder / "ckpt" / "model.safetensors"
    save_weights(model, weights)
    config = folder / "model.yaml"
    save_config(Config(model=cfg), config)
    return model, weights, config


def hf_logits(out_dir, ids, trust=False):
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out_dir), trust_remote_code=trust,
                                                              dtype=torch.float32).eval()
    with torch.no_grad():
        return model, model(torch.tensor(ids, dtype=torch.long)).logits.numpy()


def without_unused(cfg: ModelConfig) -> ModelConfig:
    """`cfg` with the settings of switched-off modules at their defaults (a LLaMA config has none)."""
    import dataclasses

    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    changes = {} if cfg.siaf else {"siaf_terms": defaults["siaf_terms"]}
    if not cfg.aug_shortcut:
        changes["aug_shortcut_ratio"] = defaults["aug_shortcut_ratio"]
    return dataclasses.replace(cfg, **changes)


def until_eos(tokens, eos):
    tokens = list(tokens)
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


@pytest.mark.parametrize("case", list(CASES))
def test_export_matches_logits_generation_and_round_trip(tmp_path, case):
    cfg = tiny_config(**CASES[case])
    model, weights, config = make_checkpoint(cfg, tmp_path, seed=len(case))
    assert expected_shapes(cfg) == {p.name: tuple(p.shape) for p in model.trainable_params()}
    pangu = cfg.siaf or cfg.aug_shortcut
    out = tmp_path / "hf"
    shard = "24KB" if case == "pangu" else "5GB"
    summary = export_to_hf(weights.parent, cfg, out, max_shard_size=shard, progress=False)

    data = json.loads((out / "config.json").read_text())
    assert data["architectures"] == (["PanGuPiForCausalLM"] if pangu else ["LlamaForCausalLM"])
    assert data["model_type"] == ("pangu_pi" if pangu else "llama")
    assert ("auto_map" in data) == pangu
    assert all((out / name).is_file() == pangu for name in MODELING_FILES)
    assert data["max_position_embeddings"] == 64 and data["rope_theta"] == cfg.rope_theta
    assert data["num_key_value_heads"] == cfg.kv_heads and data["tie_word_embeddings"] == cfg.tie_word_embeddings
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == cfg.eos_token_id
    if case == "pangu":
        index = json.loads((out / HF_INDEX).read_text())
        assert len(summary["files"]) > 1 and sorted(set(index["weight_map"].values())) == summary["files"]
        assert not (out / "model.safetensors").exists()
    else:
        assert summary["files"] == ["model.safetensors"] and not (out / HF_INDEX).exists()

    rng = np.random.default_rng(1)
    ids = rng.integers(0, cfg.vocab_size, (2, 24))
    ours = model(Tensor(ids.astype(np.int32))).asnumpy()
    hf_model, theirs = hf_logits(out, ids, trust=pangu)
    assert type(hf_model).__name__ == ("PanGuPiForCausalLM" if pangu else "LlamaForCausalLM")
    assert np.abs(ours - theirs).max() <= 1e-4

    # greedy decoding with a KV cache agrees, including a left-padded batch
    prompts = [list(ids[0, :5]), list(ids[1, :9])]
    sampling = SamplingConfig(max_new_tokens=10, eos_token_id=cfg.eos_token_id)
    expected = Generator(model, max_length=64).generate(prompts, sampling)
    width = max(len(p) for p in prompts)
    padded = torch.tensor([[cfg.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        generated = hf_model.generate(input_ids=padded, attention_mask=mask, max_new_tokens=10, do_sample=False)
    for row, tokens in enumerate(expected):
        assert until_eos(generated[row, width:].tolist(), cfg.eos_token_id) == until_eos(tokens, cfg.eos_token_id)

    # and back: bit-exact weights, same model config
    back = tmp_path / "back"
    import_from_hf(out, back, progress=False)
    original, converted = load_file(str(weights)), load_file(str(back / "model.safetensors"))
    assert sorted(original) == sorted(converted)
    assert all(np.array_equal(original[name], converted[name]) for name in original)
    assert load_config(back / "config.yaml").model == without_unused(cfg)


def test_bf16_export_rounds_like_torch(tmp_path):
    cfg = tiny_config(siaf=True, aug_shortcut=True)
    rng = np.random.default_rng(0)
    tensors = {name: rng.normal(0, 1, shape).astype(np.float32) for name, shape in expected_shapes(cfg).items()}
    tensors["model.norm.weight"][:3] = [1.00390625, 1.01171875, -2.00390625]  # exact ties: round to even
    save_file(tensors, str(tmp_path / "w.safetensors"))
    export_to_hf(tmp_path / "w.safetensors", cfg, tmp_path / "hf", dtype="bf16", progress=False)
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"
    from safetensors.torch import load_file as load_torch

    stored = load_torch(str(tmp_path / "hf" / "model.safetensors"))
    for name, value in tensors.items():
        assert stored[to_hf_name(name)].dtype == torch.bfloat16
        assert torch.equal(stored[to_hf_name(name)], torch.from_numpy(value).to(torch.bfloat16)), name


def test_transformers_llama_converts_in(tmp_path):
    config = transformers.LlamaConfig(vocab_size=320, hidden_size=96, intermediate_size=192, num_hidden_layers=2,
                                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=48,
                                      rms_norm_eps=1e-6, rope_theta=500000.0, bos_token_id=1, eos_token_id=2,
                                      initializer_range=0.1)
    torch.manual_seed(0)
    reference = transformers.LlamaForCausalLM(config).eval()
    reference.save_pretrained(str(tmp_path / "hf"), safe_serialization=True)
    assert main(["convert", "from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ckpt"), "--quiet"]) == 0
    cfg = load_config(tmp_path / "ckpt" / "config.yaml").model
    assert (cfg.rms_norm_eps, cfg.rope_theta, cfg.kv_heads, cfg.seq_length) == (1e-6, 500000.0, 2, 48)
    assert not cfg.siaf and not cfg.aug_shortcut and not cfg.tie_word_embeddings
    model = build_model(cfg, weights=tmp_path / "ckpt")
    ids = np.random.default_rng(2).integers(0, 320, (2, 20))
    with torch.no_grad():
        theirs = reference(torch.tensor(ids)).logits.numpy()
    assert np.abs(model(Tensor(ids.astype(np.int32))).asnumpy() - theirs).max() <= 1e-4


def test_bf16_llama_imports_exactly(tmp_path):
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    reference = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    reference.save_pretrained(str(tmp_path / "hf"), safe_serialization=True)
    import_from_hf(tmp_path / "hf", tmp_path / "ckpt", progress=False)
    converted = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    assert "lm_head.weight" not in converted
    state = reference.state_dict()
    assert torch.equal(torch.from_numpy(converted["model.layers.0.feed_forward.w2.weight"]), state["model.layers.0.mlp.down_proj.weight"].float())
    assert torch.equal(torch.from_numpy(converted["model.embed_tokens.weight"]),
                       state["model.embed_tokens.weight"].float())


LINES = ["The quick brown fox jumps over the lazy dog.", "def convert(x):  return x * 2  # twice",
         "Tiny language models need compact tokenizers.", "数据 and ünïcödé text, 12345 numbers!"] * 30


def train_spm(folder, model_type="bpe", vocab_size=400):
    spm = pytest.importorskip("sentencepiece")
    text = folder / "corpus.txt"
    text.write_text("\n".join(LINES), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(folder / "spm"), vocab_size=vocab_size,
                                   model_type=model_type, byte_fallback=True, normalization_rule_name="identity",
                                   remove_extra_whitespaces=False, split_digits=True, num_threads=1,
                                   minloglevel=2)
    return folder / "spm.model", spm.SentencePieceProcessor(model_file=str(folder / "spm.model"))


def export_with_tokenizer(tmp_path, sp, spm_path, **changes):
    """A random plain-LLaMA checkpoint sized for `sp`, exported with `spm_path`; returns the exit code."""
    cfg = tiny_config(vocab_size=sp.get_piece_size(), **changes)
    rng = np.random.default_rng(0)
    save_file({n: rng.normal(0, 0.1, s).astype(np.float32) for n, s in expected_shapes(cfg).items()},
              str(tmp_path / "w.safetensors"))
    save_config(Config(model=cfg), tmp_path / "model.yaml")
    return main(["convert", "to-hf", "--checkpoint", str(tmp_path / "w.safetensors"), "--config",
                 str(tmp_path / "model.yaml"), "--tokenizer", str(spm_path), "--out", str(tmp_path / "hf"), "--quiet"])


def test_tokenizer_files_give_sentencepiece_ids(tmp_path):
    spm_path, sp = train_spm(tmp_path)
    assert export_with_tokenizer(tmp_path, sp, spm_path) == 0
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    samples = LINES[:4] + ["  leading spaces", "unseen wörds: ŝ ∑ 🙂", "fox\ndog", "x  y   z"]
    for sample in samples:
        assert tokenizer(sample, add_special_tokens=False)["input_ids"] == sp.encode(sample), sample
        assert tokenizer(sample)["input_ids"] == [sp.bos_id()] + sp.encode(sample), sample  # <s> text
    # special tokens are the model's own pieces, the pad token is config.json's pad_token_id
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (hf_config["bos_token_id"], hf_config["eos_token_id"])
    assert tokenizer.pad_token_id == hf_config["pad_token_id"] == 0
    assert [tokenizer.unk_token, tokenizer.bos_token, tokenizer.eos_token] == \
        [sp.id_to_piece(sp.unk_id()), sp.id_to_piece(sp.bos_id()), sp.id_to_piece(sp.eos_id())]


def test_export_pads_a_batch_and_batched_greedy_generation_equals_each_prompt(tmp_path):
    spm_path, sp = train_spm(tmp_path)
    assert export_with_tokenizer(tmp_path, sp, spm_path, init_std=0.5) == 0
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).eval()
    prompts = ["The quick brown fox jumps over", "Tiny"]
    batch = tokenizer(prompts, padding=True, return_tensors="pt")
    lengths = [1 + len(sp.encode(p)) for p in prompts]  # <s> first
    assert tokenizer.padding_side == "left" and batch["input_ids"].shape[1] == max(lengths)
    assert batch["attention_mask"].sum(1).tolist() == lengths
    settings = dict(max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        together = model.generate(**batch, **settings)[:, batch["input_ids"].shape[1]:]
        for row, prompt in enumerate(prompts):
            alone = tokenizer(prompt, return_tensors="pt")
            single = model.generate(**alone, **settings)[0, alone["input_ids"].shape[1]:]
            assert together[row].tolist() == single.tolist(), prompt


def test_export_refuses_a_tokenizer_that_does_not_fit_the_model(tmp_path):
    spm_path, sp = train_spm(tmp_path)
    cfg = tiny_config(vocab_size=sp.get_piece_size() + 8)  # e.g. a compact model shipped with the big tokenizer
    save_file({n: np.zeros(s, np.float32) for n, s in expected_shapes(cfg).items()}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match=f"{spm_path} has {sp.get_piece_size()} pieces, but big.yaml says "
                                         f"vocab_size = {cfg.vocab_size}"):
        export_to_hf(tmp_path / "w.safetensors", cfg, tmp_path / "hf", tokenizer=spm_path, progress=False,
                     config_source="big.yaml")
    assert not (tmp_path / "hf").exists()  # refused before anything is written
    import dataclasses

    for key, match in (("bos_token_id", "bos id is 1, but m.yaml says bos_token_id = 2"),
                       ("eos_token_id", "eos id is 2, but m.yaml says eos_token_id = 1")):
        swapped = dataclasses.replace(cfg, vocab_size=sp.get_piece_size(), **{key: 3 - getattr(cfg, key)})
        save_file({n: np.zeros(s, np.float32) for n, s in expected_shapes(swapped).items()},
                  str(tmp_path / "w.safetensors"))
        with pytest.raises(ValueError, match=match):
            export_to_hf(tmp_path / "w.safetensors", swapped, tmp_path / "hf", tokenizer=spm_path, progress=False,
                         config_source="m.yaml")
    # a weights file that records another tokenizer's digest (a remapped checkpoint) is refused too
    fitting = dataclasses.replace(cfg, vocab_size=sp.get_piece_size())
    save_file({n: np.zeros(s, np.float32) for n, s in expected_shapes(fitting).items()},
              str(tmp_path / "w.safetensors"), metadata={"tokenizer_sha256": "0" * 64})
    with pytest.raises(ValueError, match="is not the tokenizer .*w.safetensors records"):
        export_to_hf(tmp_path / "w.safetensors", fitting, tmp_path / "hf", tokenizer=spm_path, progress=False)


def test_unigram_export_is_refused_with_the_reason(tmp_path):
    from pangu_pro.tokenizer.hf import write_hf_tokenizer

    spm_path, _ = train_spm(tmp_path, model_type="unigram", vocab_size=312)
    with pytest.raises(ValueError, match="not a BPE model; .*unigram conversion segments some lines differently"):
        write_hf_tokenizer(spm_path, tmp_path / "hf")


# ---------------------------------------------------------------- inputs from distributed runs

def random_weights(cfg, seed):
    rng = np.random.default_rng(seed)
    return {name: rng.normal(0, 1, shape).astype(np.float32) for name, shape in expected_shapes(cfg).items()}


def test_data_parallel_run_takes_rank_0(tmp_path):
    cfg = tiny_config()
    ranks = [random_weights(cfg, seed) for seed in (0, 1)]
    for rank, tensors in enumerate(ranks):
        (tmp_path / "run" / f"rank_{rank}").mkdir(parents=True)
        save_file(tensors, str(tmp_path / "run" / f"rank_{rank}" / "step_10.safetensors"))
    export_to_hf(tmp_path / "run", cfg, tmp_path / "hf", progress=False)
    stored = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert all(np.array_equal(stored[to_hf_name(n)], v) for n, v in ranks[0].items())


def test_data_parallel_run_directory_exports_its_newest_checkpoint(tmp_path):
    cfg = tiny_config()
    for step, seed in ((2, 0), (4, 1)):
        folder = tmp_path / "run" / "checkpoints" / f"step_{step:08d}"
        folder.mkdir(parents=True)
        save_file(random_weights(cfg, seed), str(folder / "model.safetensors"))
        (folder / "state.json").write_text(json.dumps({"step": step}))
    export_to_hf(tmp_path / "run", cfg, tmp_path / "hf", progress=False)
    stored = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert all(np.array_equal(stored[to_hf_name(n)], v) for n, v in random_weights(cfg, 1).items())
    record = json.loads((tmp_path / "hf" / "pangu_pro_export.json").read_text())  # what made the export
    newest = tmp_path / "run" / "checkpoints" / "step_00000004" / "model.safetensors"
    assert record["checkpoint"] == str((tmp_path / "run").resolve()) and record["dtype"] == "float32"
    assert record["weights"]["path"] == str(newest.resolve()) and record["weights"]["bytes"] == newest.stat().st_size
    assert record["tokenizer"] is None and record["token_convention"] == "llama"


def test_trainer_rank_step_folders_take_the_newest_common_step(tmp_path):
    cfg = tiny_config()
    run = tmp_path / "run"
    for rank in range(2):
        for step, seed in ((10, 0), (20, 1), (30, 2)):
            if step == 30 and rank == 1:
                continue  # rank 1 died before writing step 30: step 20 is the newest complete one
            folder = run / "checkpoints" / f"rank_{rank}" / f"step_{step:08d}"
            folder.mkdir(parents=True)
            save_file(random_weights(cfg, seed + 10 * rank), str(folder / "model.safetensors"))
    export_to_hf(run, cfg, tmp_path / "hf", progress=False)
    stored = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert all(np.array_equal(stored[to_hf_name(n)], v) for n, v in random_weights(cfg, 1).items())


def write_strategy(path, layouts):
    from pangu_pro.model.distributed_ckpt import ParamLayout, write_strategy_file

    write_strategy_file({name: ParamLayout(tuple(devices), tuple(tensor_map)) for name, (devices, tensor_map)
                         in layouts.items()}, path)


def test_sliced_run_is_merged(tmp_path):
    cfg = tiny_config()
    full = random_weights(cfg, 0)
    column, row = "model.layers.0.attention.wq.weight", "model.layers.1.feed_forward.w2.weight"
    layouts = {name: ((2,), (-1,) * len(shape)) for name, shape in expected_shapes(cfg).items()}
    layouts[column] = ((2,), (0, -1))  # split along the output axis over 2 devices
    layouts[row] = ((2,), (-1, 0))  # split along the input axis
    run = tmp_path / "run"  # laid out as training writes it
    (run / "strategy").mkdir(parents=True)
    for rank in range(2):
        write_strategy(run / "strategy" / f"strategy_rank_{rank}.ckpt", layouts)
        tensors = dict(full)
        tensors[column] = np.ascontiguousarray(np.split(full[column], 2, axis=0)[rank])
        tensors[row] = np.ascontiguousarray(np.split(full[row], 2, axis=1)[rank])
        (run / "checkpoints" / f"rank_{rank}").mkdir(parents=True)
        save_file(tensors, str(run / "checkpoints" / f"rank_{rank}" / "model.safetensors"))
    export_to_hf(run, cfg, tmp_path / "hf", progress=False)
    stored = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert all(np.array_equal(stored[to_hf_name(n)], v) for n, v in full.items())

    # a strategy that slices nothing (pure data parallel) reads rank 0 without merging
    for rank in range(2):
        write_strategy(run / "strategy" / f"strategy_rank_{rank}.ckpt",
                       {n: ((2,), (-1,) * len(s)) for n, s in expected_shapes(cfg).items()})
    with pytest.raises(ValueError, match=f"tensor {column} has shape \\(32, 64\\)"):
        export_to_hf(run / "checkpoints", cfg, tmp_path / "hf2", progress=False)


def test_run_directory_exports_like_its_merged_checkpoint(tmp_path, semi_auto):
    """`to-hf` straight from a pp 2 x mp 2 x ZeRO run directory (merged on the fly) gives the same files
    and logits as `convert merge` then `to-hf` of the merged checkpoint, and those of the full tensors."""
    from pangu_pro.train.merge import merge_run
    from tests.test_parallel_ckpt import write_sliced_run

    cfg = tiny_config(siaf=True, aug_shortcut=False)
    full = write_sliced_run(tmp_path / "run", cfg)
    assert main(["convert", "merge", str(tmp_path / "run"), "--out", str(tmp_path / "merged")]) == 0
    export_to_hf(tmp_path / "run", cfg, tmp_path / "hf_run", progress=False)
    export_to_hf(tmp_path / "merged", cfg, tmp_path / "hf_merged", progress=False)
    from_run, from_merged = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("hf_run", "hf_merged"))
    assert sorted(from_run) == sorted(from_merged)
    assert all(np.array_equal(from_run[n], from_merged[n]) for n in from_run)
    assert all(np.array_equal(from_run[to_hf_name(n)], full[n]) for n in expected_shapes(cfg))
    ids = np.random.default_rng(3).integers(0, cfg.vocab_size, (2, 12))
    np.testing.assert_array_equal(hf_logits(tmp_path / "hf_run", ids, trust=True)[1],
                                  hf_logits(tmp_path / "hf_merged", ids, trust=True)[1])
    assert not list(tmp_path.glob("pangu-pro-merge-*"))


# ---------------------------------------------------------------- errors

def llama_export(tmp_path):
    cfg = tiny_config()
    save_file(random_weights(cfg, 0), str(tmp_path / "w.safetensors"))
    export_to_hf(tmp_path / "w.safetensors", cfg, tmp_path / "hf", progress=False)
    return cfg, tmp_path / "hf"


def test_pickle_only_folder_is_refused(tmp_path):
    _, hf = llama_export(tmp_path)
    (hf / "model.safetensors").unlink()
    (hf / "pytorch_model.bin").write_bytes(b"\x80\x04 not to be unpickled")
    with pytest.raises(ValueError, match=r"(?s)only pickle weights \(pytorch_model.bin\).*never unpickles.*"
                                         r"save_pretrained\('NEW_DIR', safe_serialization=True\)") as err:
        import_from_hf(hf, tmp_path / "out", progress=False)
    assert "re-save" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    cfg, hf = llama_export(tmp_path)
    tensors = load_file(str(hf / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(hf / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing tensor model\.layers\.1\.mlp\.up_proj\.weight "):
        import_from_hf(hf, tmp_path / "out", progress=False)
    tensors["model.layers.1.mlp.up_proj.weight"] = np.zeros((160, 64), np.float32)
    tensors["model.layers.2.mlp.up_proj.weight"] = np.zeros((160, 64), np.float32)
    save_file(tensors, str(hf / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"unexpected tensor model\.layers\.2\.mlp\.up_proj\.weight"):
        import_from_hf(hf, tmp_path / "out", progress=False)
    del tensors["model.layers.2.mlp.up_proj.weight"]
    tensors["model.norm.weight"] = np.ones(65, np.float32)
    save_file(tensors, str(hf / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"tensor model\.norm\.weight has shape \[65\], config\.json implies \[64\]"):
        import_from_hf(hf, tmp_path / "out", progress=False)

    ours = random_weights(cfg, 0)
    del ours["model.layers.0.attention.wk.weight"]
    save_file(ours, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match=r"missing tensor model\.layers\.0\.attention\.wk\.weight"):
        export_to_hf(tmp_path / "bad.safetensors", cfg, tmp_path / "hf2", progress=False)
    with pytest.raises(ValueError, match=r"tensor model\.layers\.0\.feed_forward\.w1\.weight has shape \(160, 64\)"):
        export_to_hf(tmp_path / "w.safetensors", tiny_config(intermediate_size=128), tmp_path / "hf3", progress=False)
    with pytest.raises(ValueError, match=r"unexpected tensor lm_head\.weight"):
        export_to_hf(tmp_path / "w.safetensors", tiny_config(tie_word_embeddings=True), tmp_path / "hf4",
                     progress=False)


@pytest.mark.parametrize("key,value,message", [
    ("architectures", ["GPT2LMHeadModel"], r"architectures: unsupported architecture \['GPT2LMHeadModel'\]"),
    ("rope_scaling", {"rope_type": "linear", "factor": 2.0}, r"rope_scaling: .* not supported"),
    ("attention_bias", True, r"attention_bias: biases are not supported"),
    ("mlp_bias", True, r"mlp_bias: biases are not supported"),
    ("head_dim", 32, r"head_dim: 32 differs from hidden_size / num_attention_heads"),
    ("hidden_act", "gelu", r"hidden_act: 'gelu' is not supported"),
])
def test_unsupported_configs_are_refused(tmp_path, key, value, message):
    _, hf = llama_export(tmp_path)
    data = json.loads((hf / "config.json").read_text())
    data[key] = value
    (hf / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        import_from_hf(hf, tmp_path / "out", progress=False)


def test_bad_folders_and_indexes(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        import_from_hf(tmp_path, tmp_path / "out", progress=False)
    _, hf = llama_export(tmp_path)
    shutil.copyfile(hf / "model.safetensors", tmp_path / "outside.safetensors")
    (hf / HF_INDEX).write_text(json.dumps({"weight_map": {"model.norm.weight": "../outside.safetensors"}}))
    with pytest.raises(ValueError, match=r"tensor model\.norm\.weight: file '\.\./outside\.safetensors' is not"):
        import_from_hf(hf, tmp_path / "out", progress=False)
    (hf / HF_INDEX).unlink()
    (hf / "model.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(ValueError, match="not a safetensors file"):
        import_from_hf(hf, tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="not empty; pass --overwrite"):
        export_to_hf(tmp_path / "w.safetensors", tiny_config(), hf, progress=False)
    assert main(["convert", "to-hf", "--checkpoint", str(tmp_path / "nowhere"), "--config",
                 str(tmp_path / "none.yaml"), "--out", str(tmp_path / "x")]) == 2


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("24KB") == 24000 and parse_size("2MiB") == 2 * 2**20
    assert parse_size("4096") == 4096
    with pytest.raises(ValueError, match="expected a size"):
        parse_size("5 parsecs")
