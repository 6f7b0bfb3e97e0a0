"""Tokenizer compression end to end on small SentencePiece models trained on a generated corpus."""
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import yaml

from pangu_pro.tokenizer.compress import compress_tokenizer, load_new2old
from pangu_pro.tokenizer.counting import (bincount_chunks, count_mindrecord, count_text, load_counts,
                                          save_counts)
from pangu_pro.tokenizer.sample_corpus import mixed_lines, write_corpus
from pangu_pro.tokenizer.train import train_tokenizer
from pangu_pro.tokenizer.vocab import NORMAL, UNUSED, read_model_proto

BIG, SMALL = 4000, 1500
MIXED = ["Hello, world! The quick brown fox jumps over the lazy dog.",
         "我们今天训练一个小模型，效率非常重要！",
         "def f(x):\n    return {'a': x ** 2}  # 注释 😀🚀",
         "  two  spaces\tand a tab; 数字 12345 and émojis ✨🌏"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    corpus = write_corpus(root / "train.txt", 20000, seed=0)
    big = train_tokenizer([corpus], root / "big.model", BIG)
    counts = count_text([corpus], big, show_progress=False)
    save_counts(root / "counts.npy", counts, big, [str(corpus)], "text")
    ours = compress_tokenizer(big, root / "counts.npy", root / "ours", vocab_size=SMALL)
    naive = compress_tokenizer(big, root / "counts.npy", root / "naive", vocab_size=SMALL, closure=False)
    held = mixed_lines(3000, seed=1)
    return {"root": root, "corpus": corpus, "big": big, "counts": counts, "ours": ours, "naive": naive,
            "held": held}


def processor(path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(path))


def preserved(work, result) -> tuple[int, int]:
    """(lines segmented identically, lines whose original tokens all survived)."""
    big, small = processor(work["big"]), processor(result.model_path)
    old2new = {int(o): n for n, o in enumerate(result.selection.new2old)}
    same = eligible = 0
    for line in work["held"]:
        ids = big.encode(line)
        if all(i in old2new for i in ids):
            eligible += 1
            same += small.encode(line) == [old2new[i] for i in ids]
    return same, eligible


def test_training_is_deterministic(work, tmp_path):
    again = train_tokenizer([work["corpus"]], tmp_path / "again.model", BIG)
    assert list(read_model_proto(again).pieces) == list(read_model_proto(work["big"]).pieces)


def test_compact_model_round_trips_and_uses_every_id(work):
    small = processor(work["ours"].model_path)
    assert small.get_piece_size() == SMALL
    for text in MIXED + work["held"][:200]:
        assert small.decode(small.encode(text)) == text
    kept_texts = [small.id_to_piece(i).replace("▁", " ") for i in range(small.get_piece_size())
                  if small.id_to_piece(i).startswith("▁") and small.IsUnknown(i) is False]
    emitted = [i for ids in small.encode(MIXED + work["held"] + kept_texts) for i in ids]
    assert max(emitted) == SMALL - 1
    assert [small.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert all(small.id_to_piece(3 + b) == f"<0x{b:02X}>" for b in range(256))


def test_segmentation_preserved_with_closure_but_not_with_naive_cut(work):
    same, eligible = preserved(work, work["ours"])
    assert eligible > 300 and same == eligible
    naive_same, naive_eligible = preserved(work, work["naive"])
    assert naive_eligible > 300 and naive_same < 0.9 * naive_eligible


def unreachable_pieces(path) -> list[str]:
    """Kept multi-character pieces whose own text does not encode to them (dummy prefix off)."""
    proto = read_model_proto(path)
    proto.normalizer_spec.add_dummy_prefix = False
    sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    return [p.piece for i, p in enumerate(proto.pieces) if p.type in (NORMAL, UNUSED) and len(p.piece) > 1
            and sp.encode(p.piece.replace("▁", " ")) != [i]]


def test_every_kept_piece_is_reachable(work):
    assert unreachable_pieces(work["big"]) == []
    assert unreachable_pieces(work["ours"].model_path) == []
    assert len(unreachable_pieces(work["naive"].model_path)) > 20


def test_counts_equal_bincount_and_dict(work):
    sp = processor(work["big"])
    lines = work["corpus"].read_text(encoding="utf-8").splitlines()
    flat = [i for ids in sp.encode(lines) for i in ids]
    assert np.array_equal(work["counts"], np.bincount(flat, minlength=BIG))
    tally = Counter(flat)
    assert {i: int(c) for i, c in enumerate(work["counts"]) if c} == dict(tally)


@pytest.mark.parametrize("workers", [1, 2])
def test_mindrecord_counts(tmp_path, workers):
    from mindspore.mindrecord import FileWriter

    rng = np.random.default_rng(workers)
    rows, paths = [], []
    for shard in range(2):
        path = tmp_path / f"s{shard}.mindrecord"
        writer = FileWriter(str(path), shard_num=1, overwrite=True)
        writer.add_schema({"input_ids": {"type": "int32", "shape": [-1]}}, "packed")
        part = [rng.integers(0, 50, int(rng.integers(1, 40))).astype(np.int32) for _ in range(30)]
        writer.write_raw_data([{"input_ids": r} for r in part])
        writer.commit()
        rows += part
        paths.append(path)
    expected = Counter(int(i) for r in rows for i in r)
    counts = count_mindrecord(paths, 60, workers=workers, show_progress=False)
    assert {i: int(c) for i, c in enumerate(counts) if c} == dict(expected)
    assert np.array_equal(counts, np.bincount(np.concatenate(rows), minlength=60))
    with pytest.raises(ValueError, match=r"s0.mindrecord: token id \d+ is outside the vocabulary \[0, 40\)"):
        count_mindrecord(paths[:1], 40, workers=1, show_progress=False)


def test_cli_counts_a_preprocess_folder(work, tmp_path):
    from pangu_pro.cli import main
    from pangu_pro.data.dataset import read_samples

    big, packed = str(work["big"]), tmp_path / "packed"
    assert main(["preprocess", "--tokenizer", big, "--seq-length", "32", "--workers", "1", "--shard-size", "50",
                 "--out", str(packed), str(work["corpus"])]) == 0
    assert len(list(packed.glob("*.mindrecord"))) > 1
    assert main(["tokenizer", "count", str(packed), "--tokenizer", big, "--out", str(tmp_path / "c.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "c.npy"), np.bincount(read_samples(packed).ravel(), minlength=BIG))
    # preprocess wrote the same counts as a by-product, in the same format (coverage/compress read it)
    by_product = load_counts(packed / "token_counts.npy", tokenizer=big)
    counted = load_counts(tmp_path / "c.npy", tokenizer=big)
    np.testing.assert_array_equal(by_product.counts, counted.counts)
    assert {k: v for k, v in by_product.info.items() if k != "sources"} == \
        {k: v for k, v in counted.info.items() if k != "sources"}
    assert sorted(map(str, by_product.info["sources"])) == sorted(map(str, counted.info["sources"]))


def test_bincount_rejects_negative_ids():
    with pytest.raises(ValueError, match="token id -1"):
        bincount_chunks([np.array([0, -1])], 4, "x")


def test_counts_sidecar_guards_tokenizer(work, tmp_path):
    info = json.loads((work["root"] / "counts.json").read_text())
    assert info["total_tokens"] == int(work["counts"].sum()) and info["vocab_size"] == BIG
    with pytest.raises(ValueError, match="counted with tokenizer"):
        load_counts(work["root"] / "counts.npy", tokenizer=work["ours"].model_path)


def test_corrupt_counts_sidecar_names_the_file(tmp_path):
    np.save(tmp_path / "c.npy", np.arange(4, dtype=np.int64))
    (tmp_path / "c.json").write_text('{"tokenizer": ', encoding="utf-8")
    with pytest.raises(ValueError, match=r"c\.json: not valid JSON"):
        load_counts(tmp_path / "c.npy")


def test_hf_tokenizer_matches_sentencepiece(work, tmp_path):
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    from pangu_pro.tokenizer.hf import write_hf_tokenizer

    out = write_hf_tokenizer(work["ours"].model_path, tmp_path / "hf")
    assert {p.name for p in out.iterdir()} >= {"tokenizer.json", "tokenizer_config.json",
                                               "special_tokens_map.json", "tokenizer.model"}
    hf = AutoTokenizer.from_pretrained(out)
    sp = processor(work["ours"].model_path)
    texts = MIXED + work["held"][:1000]
    assert [hf.encode(t) for t in texts] == [[sp.bos_id()] + sp.encode(t) for t in texts]  # <s> text
    assert hf.decode(sp.encode(MIXED[2])) == MIXED[2]


def test_unigram_compresses_by_frequency(work, tmp_path):
    uni = train_tokenizer([work["corpus"]], tmp_path / "uni.model", 2000, model_type="unigram")
    save_counts(tmp_path / "uni.npy", count_text([work["corpus"]], uni, show_progress=False), uni, [], "text")
    result = compress_tokenizer(uni, tmp_path / "uni.npy", tmp_path / "uni_small", coverage=0.8)
    small = processor(result.model_path)
    assert result.selection.coverage >= 0.8 and small.get_piece_size() == result.selection.new2old.size < 2000
    for text in MIXED:
        assert small.decode(small.encode(text)) == text


def test_cli_count_coverage_compress(work, tmp_path):
    from pangu_pro.cli import main

    big = str(work["big"])
    assert main(["tokenizer", "count", str(work["corpus"]), "--tokenizer", big, "--out",
                 str(tmp_path / "c.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "c.npy"), work["counts"])
    config = tmp_path / "m.yaml"
    config.write_text(yaml.safe_dump({"model": {"vocab_size": BIG, "hidden_size": 64, "num_layers": 2,
                                                "num_heads": 4, "intermediate_size": 128}}))
    assert main(["tokenizer", "coverage", "--tokenizer", big, "--counts", str(tmp_path / "c.npy"), "--config",
                 str(config), "--sizes", "1000", "--chosen-size", str(SMALL), "--csv", str(tmp_path / "cov.csv"),
                 "--png", str(tmp_path / "cov.png")]) == 0
    rows = (tmp_path / "cov.csv").read_text().splitlines()
    assert rows[0] == "vocab_size,coverage,coverage_top_n,vocab_params,vocab_share" and len(rows) == 3
    fields = rows[2].split(",")
    assert int(fields[0]) == SMALL and float(fields[1]) == pytest.approx(work["ours"].selection.coverage, abs=1e-6)
    assert int(fields[3]) == 2 * SMALL * 64
    from dataclasses import replace

    from pangu_pro.config import load_config
    from pangu_pro.model.params import count_parameters

    small_model = replace(load_config(config).model, vocab_size=SMALL)
    assert float(fields[4]) == pytest.approx(count_parameters(small_model).vocab_share, abs=1e-6)
    assert (tmp_path / "cov.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    prefix = tmp_path / "cmp"
    assert main(["tokenizer", "compress", "--tokenizer", big, "--counts", str(tmp_path / "c.npy"),
                 "--vocab-size", str(SMALL), "--out", str(prefix)]) == 0
    new2old = load_new2old(Path(f"{prefix}.new2old.npy"))
    assert np.array_equal(new2old, work["ours"].selection.new2old)
    assert np.array_equal(load_new2old(Path(f"{prefix}.new2old.json")), new2old)
    assert main(["tokenizer", "compress", "--tokenizer", big, "--counts", str(tmp_path / "c.npy"),
                 "--vocab-size", "100", "--out", str(prefix)]) == 2
    assert main(["tokenizer", "compress", "--tokenizer", big, "--counts", str(tmp_path / "c.npy"),
                 "--coverage", "0", "--out", str(prefix)]) == 2
