"""Data stage: built-in corpus, preprocess (tokenize + pack + MindRecord) and the loader."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pangu_pro.cli import main as cli_main
from pangu_pro.config import DataConfig
from pangu_pro.configtools import ConfigError, from_mapping
from pangu_pro.data.corpus import build_builtin_corpus, is_heldout, is_prose, normalise
from pangu_pro.data.dataset import (count_samples, create_dataset, read_samples, resolve_files,
                                    sample_order)
from pangu_pro.data.preprocess import Packer, parse_line, preprocess, read_chunks

SEQ = 16  # samples of SEQ + 1 tokens


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    build_builtin_corpus(out, size_mb=0.15, progress=False)
    return out


@pytest.fixture(scope="module")
def spm_model(corpus, tmp_path_factory) -> Path:
    """A tiny BPE SentencePiece model (unk 0, bos 1, eos 2) trained on the built-in corpus."""
    import sentencepiece as spm

    prefix = tmp_path_factory.mktemp("spm") / "tiny"
    spm.SentencePieceTrainer.train(input=str(corpus / "train.txt"), model_prefix=str(prefix), vocab_size=300,
                                   model_type="bpe", character_coverage=1.0, num_threads=1, minloglevel=2)
    return prefix.with_suffix(".model")


@pytest.fixture(scope="module")
def encoder(spm_model):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(spm_model))


def expected_samples(encoder, docs: list[str], seq: int = SEQ) -> np.ndarray:
    """The packing spec written out independently: BOS + tokens + EOS per document (LLaMA's convention),
    cut into rows of seq + 1."""
    stream = [t for doc in docs for t in [encoder.bos_id()] + encoder.encode(doc) + [encoder.eos_id()]]
    rows = len(stream) // (seq + 1)
    return np.array(stream[:rows * (seq + 1)], dtype=np.int32).reshape(rows, seq + 1)


@pytest.fixture(scope="module")
def packed(corpus, spm_model, tmp_path_factory) -> Path:
    """The corpus's train.txt preprocessed into 4+ shards of 50 samples."""
    out = tmp_path_factory.mktemp("packed") / "train"
    preprocess([corpus / "train.txt"], spm_model, SEQ, out, shard_size=50, workers=1, progress=False)
    return out


# ------------------------------------------------------------------------------------ corpus

def test_builtin_corpus_is_deterministic_and_split_disjoint(corpus, tmp_path):
    again = tmp_path / "again"
    manifest = build_builtin_corpus(again, size_mb=0.15, progress=False)
    for name in ("train.txt", "heldout.txt", "manifest.json"):
        assert (again / name).read_bytes() == (corpus / name).read_bytes(), name
    train = (corpus / "train.txt").read_text(encoding="utf-8").split("\n")
    heldout = (corpus / "heldout.txt").read_text(encoding="utf-8").split("\n")
    assert train[-1] == "" and heldout[-1] == ""  # newline-terminated
    train, heldout = train[:-1], heldout[:-1]
    assert len(train) == manifest["files"]["train.txt"]["documents"]
    assert len(set(train)) == len(train) and not set(train) & set(heldout)
    assert all(not is_heldout(doc) for doc in train) and all(is_heldout(doc) for doc in heldout)
    assert 0 < len(heldout) < 0.05 * len(train)
    assert all(doc == normalise(doc) and is_prose(doc) for doc in train + heldout)
    size = manifest["files"]["train.txt"]["bytes"]
    assert 150_000 <= size < 150_000 + max(len(d.encode()) + 1 for d in train)  # stops right past the size
    assert not manifest["exhausted"]


def test_prose_filter_and_normalise():
    assert normalise("  Return the\n\n   value.\t") == "Return the value."
    assert is_prose("Return the value of x.")
    assert not is_prose("x = f(a, b)  # [1, 2]")  # mostly punctuation
    assert not is_prose("TODO: fix")  # too few words


def test_corpus_cli(tmp_path, capsys):
    assert cli_main(["corpus", "builtin", str(tmp_path / "c"), "--size-mb", "0.02", "--quiet"]) == 0
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["files"]["train.txt"]["bytes"] >= 20_000
    assert "train.txt" in capsys.readouterr().out


# ------------------------------------------------------------------------------------ preprocess

def test_packed_samples_are_the_bos_eos_joined_token_stream(corpus, packed, encoder):
    docs = (corpus / "train.txt").read_text(encoding="utf-8").splitlines()
    expected = expected_samples(encoder, docs)
    np.testing.assert_array_equal(read_samples(packed), expected)
    summary = json.loads((packed / "summary.json").read_text())
    tokens = sum(len(encoder.encode(doc)) + 2 for doc in docs)
    assert summary["documents"] == len(docs) and summary["tokens"] == tokens
    assert summary["samples"] == len(expected) == count_samples(packed)
    assert summary["dropped_tail_tokens"] == tokens - expected.size
    assert [s["samples"] for s in summary["shards"]] == [50] * (len(expected) // 50) + (
        [len(expected) % 50] if len(expected) % 50 else [])
    assert resolve_files(packed) == [str(packed / s["file"]) for s in summary["shards"]]
    assert summary["skipped_total"] == 0
    assert summary["token_convention"] == "llama" and summary["tokenizer"]["bos_id"] == encoder.bos_id()
    starts = np.flatnonzero(read_samples(packed).reshape(-1) == encoder.bos_id())
    assert starts[0] == 0 and (read_samples(packed).reshape(-1)[starts[1:] - 1] == encoder.eos_id()).all()


def test_loader_refuses_a_shard_set_of_the_old_convention(packed, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(packed, old)
    summary = json.loads((old / "summary.json").read_text())
    del summary["token_convention"]  # as written before the key existed: no BOS in the shards
    (old / "summary.json").write_text(json.dumps(summary))
    for files in (old, resolve_files(old)[:1]):  # the folder, or one of its shard files
        with pytest.raises(ValueError, match=r"summary.json has no 'token_convention'.*'eos-only'.*'llama'.*"
                                             r"pangu-pro preprocess"):
            create_dataset(files, 4, shuffle=False)
    summary["token_convention"] = "chatml"
    (old / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ValueError, match="records token_convention = 'chatml'"):
        create_dataset(old, 4, shuffle=False)
    assert create_dataset(packed, 4, shuffle=False).get_dataset_size() > 0


def test_skipped_lines_are_counted_by_reason(tmp_path, spm_model, encoder):
    jsonl = tmp_path / "in" / "b.jsonl"
    jsonl.parent.mkdir()
    jsonl.write_bytes(b"\n".join([
        b'{"text": "The first document."}',
        b"",  # 2 empty
        b'{"text": "broken',  # 3 broken JSON
        b'{"body": "no text field"}',  # 4 missing field
        b'{"text": 7}',  # 5 not a string: missing field
        b'["a list"]',  # 6 not an object: missing field
        b'{"text": "caf\xe9 latin-1"}',  # 7 undecodable
        b'{"text": "lone \\ud800 surrogate"}',  # 8 undecodable once it must be UTF-8
        b'{"text": "   "}',  # 9 empty text
        b'{"text": "Second, with\\nnewline."}',
    ]) + b"\n")
    text = tmp_path / "in" / "a.txt"
    text.write_bytes(b"Plain line one.\r\n   \n\xff\xfe bad bytes\nPlain line two.")  # no final newline
    (tmp_path / "in" / "notes.md").write_text("ignored\n")
    out = tmp_path / "out"
    summary = preprocess([tmp_path / "in"], spm_model, 4, out, workers=1, progress=False).summary
    assert summary["skipped"] == {"empty": 3, "broken_json": 1, "missing_field": 3, "undecodable_bytes": 3}
    assert summary["skipped_examples"]["broken_json"] == [f"{jsonl}:3"]
    assert summary["skipped_examples"]["undecodable_bytes"] == [f"{text}:3", f"{jsonl}:7", f"{jsonl}:8"]
    assert summary["ignored_files"] == [str(tmp_path / "in" / "notes.md")]
    docs = ["Plain line one.", "Plain line two.", "The first document.", "Second, with\nnewline."]
    assert summary["documents"] == 4
    np.testing.assert_array_equal(read_samples(out), expected_samples(encoder, docs, 4))
    assert json.loads((out / "summary.json").read_text()) == summary


def test_output_is_the_same_for_any_worker_count(tmp_path, corpus, spm_model):
    # Many more chunks than the 8 in flight, so the two workers really interleave.
    assert len(list(read_chunks([corpus / "train.txt"], 8_000))) > 12
    runs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        preprocess([corpus], spm_model, SEQ, out, shard_size=64, workers=workers, progress=False,
                   chunk_bytes=8_000)
        runs[workers] = (read_samples(out), (out / "summary.json").read_text())
    np.testing.assert_array_equal(runs[1][0], runs[2][0])
    assert runs[1][1] == runs[2][1]
    assert json.loads(runs[1][1])["ignored_files"] == [str(corpus / "manifest.json")]


def test_refuses_to_overwrite_unless_asked(tmp_path, corpus, spm_model):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    args = ["preprocess", "--tokenizer", str(spm_model), "--seq-length", "8", "--out", str(out), "--quiet",
            str(corpus / "heldout.txt")]
    assert cli_main(args) == 2  # not empty
    assert cli_main(args + ["--overwrite"]) == 2  # not a preprocess output: never deleted
    assert (out / "mine.txt").read_text() == "keep me"
    (out / "mine.txt").unlink()
    assert cli_main(args) == 0
    first = read_samples(out)
    assert cli_main(args) == 2
    assert cli_main(args + ["--overwrite", "--seq-length", "4"]) == 0
    assert read_samples(out).shape[1] == 5 and first.shape[1] == 9
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folders left


def test_packer_carries_the_remainder():
    packer = Packer(3)
    assert packer.add(np.arange(2, dtype=np.int32)).shape == (0, 3)
    np.testing.assert_array_equal(packer.add(np.arange(2, 9, dtype=np.int32)), [[0, 1, 2], [3, 4, 5], [6, 7, 8]])
    assert packer.carry.size == 0


@pytest.mark.parametrize("raw,jsonl,expected", [
    (b"hello", False, ("hello", None)),
    (b"  \t", False, (None, "empty")),
    (b'{"t": "x"}', True, (None, "missing_field")),
    (b'{"text": "x"', True, (None, "broken_json")),
    (b"\xc3\x28", False, (None, "undecodable_bytes")),
])
def test_parse_line(raw, jsonl, expected):
    assert parse_line(raw, jsonl, "text") == expected


# ------------------------------------------------------------------------------------ loader

def batches(dataset) -> np.ndarray:
    rows = [batch[0] for batch in dataset.create_tuple_iterator(output_numpy=True)]
    return np.stack(rows) if rows else np.zeros((0,))


def test_loader_shuffle_is_deterministic_by_seed(packed):
    data = read_samples(packed)
    first = batches(create_dataset(packed, 4, seed=7))
    assert first.dtype == np.int32 and first.shape == (len(data) // 4, 4, SEQ + 1)
    np.testing.assert_array_equal(first, batches(create_dataset(packed, 4, seed=7)))
    assert not np.array_equal(first, batches(create_dataset(packed, 4, seed=8)))
    order = sample_order(len(data), 4, seed=7)
    np.testing.assert_array_equal(first.reshape(-1, SEQ + 1), data[order[:first.shape[0] * 4]])
    assert sorted(order) == list(range(len(data)))  # a permutation
    two = sample_order(len(data), 4, seed=7, num_epochs=2)
    np.testing.assert_array_equal(two[:len(data)], order)  # epoch 0 unchanged; epoch 1 reshuffled
    assert sorted(two[len(data):]) == list(range(len(data))) and not np.array_equal(two[len(data):], order)
    plain = batches(create_dataset(packed, 4, shuffle=False))
    np.testing.assert_array_equal(plain.reshape(-1, SEQ + 1), data[:plain.shape[0] * 4])


def test_rank_shards_are_disjoint_and_cover(packed):
    n = count_samples(packed)
    orders = [sample_order(n, 2, seed=3, rank=r, world=3) for r in range(3)]
    assert all(len(o) == n // 3 for o in orders)
    flat = np.concatenate(orders)
    assert len(set(flat)) == len(flat) == 3 * (n // 3)
    data = read_samples(packed)
    for rank in range(3):
        got = batches(create_dataset(packed, 2, seed=3, rank=rank, world=3)).reshape(-1, SEQ + 1)
        np.testing.assert_array_equal(got, data[orders[rank][:len(got)]])


def test_resume_at_k_equals_the_tail_of_the_full_pass(packed):
    full = batches(create_dataset(packed, 3, seed=11, rank=1, world=2, num_epochs=2))
    n = count_samples(packed)
    assert len(full) == (2 * (n // 2)) // 3  # epochs concatenated, one remainder dropped at the end
    for k in (1, 5, len(full) - 1):
        np.testing.assert_array_equal(
            batches(create_dataset(packed, 3, seed=11, rank=1, world=2, num_epochs=2, skip_batches=k)), full[k:])
    with pytest.raises(ValueError, match="no batch of 3 left"):
        create_dataset(packed, 3, seed=11, rank=1, world=2, num_epochs=2, skip_batches=len(full))


def test_several_epochs_read_more_samples_than_the_data_holds(packed):
    data = read_samples(packed)
    n = len(data)
    got = batches(create_dataset(packed, 4, seed=5, num_epochs=3, skip_batches=2)).reshape(-1, SEQ + 1)
    order = sample_order(n, 4, seed=5, num_epochs=3, skip_batches=2)
    assert len(order) == 3 * n - 8 and len(got) == len(order) - len(order) % 4
    np.testing.assert_array_equal(got, data[order[:len(got)]])
    subset = np.array([3, 1, 4], dtype=np.int64)  # a subset repeated over epochs, batches straddling them
    got = batches(create_dataset(packed, 2, indices=subset, num_epochs=4)).reshape(-1, SEQ + 1)
    np.testing.assert_array_equal(got, data[np.tile(subset, 4)])


def test_subset_reads_exactly_the_given_indices(packed, tmp_path):
    data = read_samples(packed)
    index = np.array([5, 0, 17, 5, 2, 9, 30, 1], dtype=np.int64)
    path = tmp_path / "subset.npy"
    np.save(path, index)
    got = batches(create_dataset(packed, 2, indices=path, seed=99)).reshape(-1, SEQ + 1)
    np.testing.assert_array_equal(got, data[index])
    np.testing.assert_array_equal(read_samples(packed, path), data[index])
    for rank in range(2):
        got = batches(create_dataset(packed, 2, indices=index, rank=rank, world=2)).reshape(-1, SEQ + 1)
        np.testing.assert_array_equal(got, data[index[rank::2]])
    with pytest.raises(ValueError, match=r"index 100000 at position 1 is outside"):
        create_dataset(packed, 2, indices=[0, 100000])


def test_data_config_validation():
    config = from_mapping(DataConfig, {"train_files": ["d/"], "index_file": "round2.npy"})
    assert config.index_file == "round2.npy" and config.seed == 1234
    with pytest.raises(ConfigError, match=r"data\.index_file: expected a numpy \.npy"):
        from_mapping(DataConfig, {"index_file": "round2.txt"}, "data")
    with pytest.raises(ConfigError, match=r"data\.seed: must be non-negative"):
        from_mapping(DataConfig, {"seed": -1}, "data")
