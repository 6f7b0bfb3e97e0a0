"""Every artefact knows what made it, and every tool checks before it uses one (issue 30, issue 28 item 5).

One test per case of the issue; the checks run before any graph is built, so only two tests train
(one step, to see what a checkpoint records; the inheritance resume, marked slow).
The pure comparisons of `pangu_pro.provenance` are tested on hand-written records; the wiring through
the commands on tiny shards (tests/test_train.py's) with a summary.json beside them.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from pangu_pro import provenance
from pangu_pro.cli import main
from pangu_pro.config import config_from_dict
from pangu_pro.configtools import to_mapping
from pangu_pro.io import file_sha256
from pangu_pro.provenance import ProvenanceError
from pangu_pro.tokens import CONVENTION_KEY, TOKEN_CONVENTION
from tests.test_inherit_run import setup  # noqa: F401 - the fixture of the inheritance test
from tests.test_train import MODEL, SEQ, VOCAB, make_config, make_rows, write_shard


def write_tokenizer(path: Path, text: str) -> Path:
    path.write_bytes(text.encode())  # only its digest is compared
    return path


def shard_folder(root: Path, name: str, tokenizer: Path, *, seq: int = SEQ, vocab: int = VOCAB, rows: int = 24,
                 seed: int = 0) -> Path:
    """A preprocess-like output folder: one shard of `seq` + 1 tokens per sample and its summary.json."""
    folder = root / name
    folder.mkdir()
    data = make_rows(rows, seed)[:, :seq + 1] if seq <= SEQ else np.resize(make_rows(rows, seed), (rows, seq + 1))
    write_shard(folder / "data_00000.mindrecord", data)
    summary = {"tokenizer": {"path": str(tokenizer), "sha256": file_sha256(tokenizer), "vocab_size": vocab,
                             "eos_id": 2, "bos_id": 1},
               "seq_length": seq, "sample_length": seq + 1, "samples": rows, CONVENTION_KEY: TOKEN_CONVENTION}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("provenance")
    tok_a = write_tokenizer(root / "a.model", "tokenizer A")
    tok_b = write_tokenizer(root / "b.model", "tokenizer B")
    return {"root": root, "tok_a": tok_a, "tok_b": tok_b,
            "a": shard_folder(root, "data_a", tok_a),
            "a2": shard_folder(root, "data_a2", tok_a, seed=1),
            "short": shard_folder(root, "data_short", tok_a, seq=SEQ // 2),
            "big_vocab": shard_folder(root, "data_big_vocab", tok_a, vocab=VOCAB + 44)}


def config_for(data: dict, out: Path, **sections):
    mapping = {"model": dict(MODEL), "train": {"batch_size": 4, "steps": 2, "output_dir": str(out)}, "data": data}
    for section, values in sections.items():
        mapping.setdefault(section, {}).update(values)
    return config_from_dict(mapping)


def fake_checkpoint(folder: Path, **provenance_data) -> Path:
    folder.mkdir(parents=True)
    (folder / "state.json").write_text(json.dumps({"step": 2, "provenance": {"data": provenance_data}}))
    return folder


# ---------------------------------------------------------------- 1. a tokenizer other than the data's

def test_train_refuses_a_tokenizer_other_than_the_datas(shards, tmp_path):
    from pangu_pro.train.trainer import train

    config = config_for({"train_files": [str(shards["a"])], "tokenizer": str(shards["tok_b"])}, tmp_path / "run")
    with pytest.raises(ProvenanceError) as err:
        train(config, progress=False, announce=None)
    message = str(err.value)
    assert f"data.tokenizer: {shards['tok_b']}" in message and str(shards["a"] / "summary.json") in message
    assert file_sha256(shards["tok_a"])[:12] in message and file_sha256(shards["tok_b"])[:12] in message
    assert not (tmp_path / "run").exists()  # refused before anything was written
    # the data's own tokenizer passes
    provenance.check_data(config_for({"train_files": [str(shards["a"])], "tokenizer": str(shards["tok_a"])}, tmp_path))


def test_eval_and_export_refuse_a_tokenizer_other_than_the_checkpoints(shards, tmp_path, capsys):
    ckpt = fake_checkpoint(tmp_path / "step_00000002", tokenizer_sha256=file_sha256(shards["tok_a"]),
                           tokenizer_path=str(shards["tok_a"]))
    with pytest.raises(ProvenanceError, match="is not the tokenizer checkpoint"):
        provenance.check_tokenizer_for_checkpoint(shards["tok_b"], ckpt / "model.safetensors")
    provenance.check_tokenizer_for_checkpoint(shards["tok_a"], ckpt)  # the same one passes
    provenance.check_tokenizer_for_checkpoint(shards["tok_b"], tmp_path)  # nothing recorded: nothing to compare
    from pangu_pro.tensors import save_tensors  # a remapped weights file records its tokenizer in its metadata
    save_tensors(tmp_path / "remapped.safetensors", {"w": np.zeros(2, np.float32)},
                 {"tokenizer_sha256": file_sha256(shards["tok_a"])})
    with pytest.raises(ProvenanceError, match="recorded in .*remapped.safetensors"):
        provenance.check_tokenizer_for_checkpoint(shards["tok_b"], tmp_path / "remapped.safetensors")
    rc = main(["convert", "to-hf", "--checkpoint", str(ckpt), "--config", "configs/tiny_cpu.yaml", "--tokenizer",
               str(shards["tok_b"]), "--out", str(tmp_path / "hf"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and f"{shards['tok_b']} (sha256" in err and str(shards["tok_a"]) in err
    assert not (tmp_path / "hf").exists()


def test_perplexity_and_score_refuse_shards_of_another_tokenizer_than_the_checkpoints(shards, tmp_path, capsys):
    ckpt = fake_checkpoint(tmp_path / "step_00000002", tokenizer_sha256=file_sha256(shards["tok_b"]),
                           tokenizer_path=str(shards["tok_b"]))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"model": dict(MODEL)}))
    rc = main(["perplexity", str(config), "--checkpoint", str(ckpt), "--data", str(shards["a"])])
    err = capsys.readouterr().err
    assert rc == 2 and "--data: the shards were written with the tokenizer" in err
    assert str(shards["tok_a"]) in err and str(shards["tok_b"]) in err
    rc = main(["score", str(config), "--checkpoint", str(ckpt), "--data", str(shards["a"]), "--out",
               str(tmp_path / "scores.npz")])  # multi-round scoring: the same check
    assert rc == 2 and "--data: the shards were written with the tokenizer" in capsys.readouterr().err


def test_a_trained_checkpoint_records_its_datas_tokenizer_and_eval_compares(shards, tmp_path):
    from pangu_pro.io import read_json
    from pangu_pro.train.trainer import train

    config = config_for({"train_files": [str(shards["a"])], "tokenizer": str(shards["tok_a"])}, tmp_path / "run",
                        model={"num_layers": 1}, train={"steps": 1})
    ckpt = Path(train(config, progress=False, announce=None)["checkpoint"])
    recorded = read_json(ckpt / "state.json")["provenance"]["data"]
    assert recorded["tokenizer_sha256"] == file_sha256(shards["tok_a"]) and recorded["sample_length"] == SEQ + 1
    provenance.check_tokenizer_for_checkpoint(shards["tok_a"], ckpt / "model.safetensors")
    with pytest.raises(ProvenanceError, match=f"is not the tokenizer checkpoint {ckpt}"):
        provenance.check_tokenizer_for_checkpoint(shards["tok_b"], ckpt)


def test_a_checkpoint_records_the_datas_tokenizer(shards):
    record = provenance.data_record([str(shards["a"] / "data_00000.mindrecord")])
    assert record == {"tokenizer_sha256": file_sha256(shards["tok_a"]), "tokenizer_path": str(shards["tok_a"]),
                      "vocab_size": VOCAB, "sample_length": SEQ + 1}
    assert provenance.data_record(["no/such/shards"]) == {}


# ---------------------------------------------------------------- 2. resume with changed hyper-parameters

def recorded_config(**train) -> dict:
    config = to_mapping(config_for({"train_files": ["data/a"]}, Path("runs/x"), train={"batch_size": 8, **train}))
    config.pop("source")
    return config


def test_resume_config_changes_are_sorted_into_breaking_and_deliberate():
    old = recorded_config(lr=1e-4)
    new = recorded_config(lr=0.026, log_every=5)
    new["train"]["batch_size"] = 4
    new["train"]["output_dir"] = "runs/elsewhere"
    new["model"]["compute_dtype"] = "bfloat16"
    breaking, deliberate = provenance.config_changes(old, new)
    assert breaking == ["train.batch_size: 8 -> 4 (samples per micro step, batch_size x data_parallel x pipeline "
                        "micro batches: 8 -> 4)"]
    assert deliberate == ["model.compute_dtype: 'float32' -> 'bfloat16'", "train.lr: 0.0001 -> 0.026"]
    with pytest.raises(ProvenanceError, match=r"break the model or the data position: train.batch_size: 8 -> 4"):
        provenance.check_resume_config(old, new, "ck", allow_changes=True)
    del new["train"]["batch_size"]  # a key the recorded config lacks (or this one) is not compared
    with pytest.raises(ProvenanceError, match=r"train.lr: 0.0001 -> 0.026.*--allow-changes"):
        provenance.check_resume_config(old, new, "ck", allow_changes=False)
    assert provenance.check_resume_config(old, new, "ck", allow_changes=True)[-1] == "train.lr: 0.0001 -> 0.026"
    assert provenance.check_resume_config(old, old, "ck", allow_changes=False) == []
    assert provenance.check_resume_config(None, new, "ck", allow_changes=False) == []  # written before records
    # a new layout that keeps the samples per micro step (8 x 2 = 4 x 4) keeps the data position
    old["parallel"]["data_parallel"], new["parallel"]["data_parallel"] = 2, 4
    new["train"]["batch_size"] = 4
    assert provenance.config_changes(old, new)[0] == []


def test_train_resume_refuses_a_changed_batch_size_and_an_unflagged_lr(shards, tmp_path):
    from pangu_pro.train.trainer import train

    out = tmp_path / "run"
    config = config_for({"train_files": [str(shards["a"])]}, out, train={"batch_size": 8, "lr": 1e-4})
    ckpt = out / "checkpoints" / "step_00000001"
    ckpt.mkdir(parents=True)
    recorded = to_mapping(config)
    recorded.pop("source")
    (ckpt / "state.json").write_text(json.dumps({"step": 1, "consumed_batches": 1, "config": recorded}))
    for changed, match in (({"batch_size": 4}, r"train.batch_size: 8 -> 4"),
                           ({"lr": 0.026}, r"train.lr: 0.0001 -> 0.026\. Pass --allow-changes")):
        new = config_for({"train_files": [str(shards["a"])]}, out, train={"batch_size": 8, "lr": 1e-4, **changed})
        with pytest.raises(ProvenanceError, match=match):
            train(new, resume="auto", progress=False, announce=None)
    assert not (out / "config.yaml").exists()  # the run's config was not rewritten


# ---------------------------------------------------------------- 3. an index file from other data

def test_an_index_file_selected_on_other_shards_is_refused(shards, tmp_path):
    from pangu_pro.data.dataset import resolve_files
    from pangu_pro.train.trainer import Parallel, train_dataset

    index = tmp_path / "selection.npy"
    np.save(index, np.arange(8))
    other = resolve_files([str(shards["a2"])])
    meta = {"files": [str(Path(p).resolve()) for p in other], "num_samples": 24}
    (tmp_path / "selection.json").write_text(json.dumps(provenance.selection_record("scores.npz", meta)))
    config = config_for({"train_files": [str(shards["a"])], "index_file": str(index)}, tmp_path / "run")
    with pytest.raises(ProvenanceError, match=r"data.index_file: .*selection.npy \(.*selection.json\) was made on "
                                              r"other data") as err:
        train_dataset(config, Parallel(), 0)
    assert str(shards["a2"]) in str(err.value) and str(shards["a"]) in str(err.value)
    # an older selection names only its scores: the chain is followed to scores.json
    (tmp_path / "scores.json").write_text(json.dumps(meta))
    (tmp_path / "selection.json").write_text(json.dumps({"scores": str(tmp_path / "scores.npz")}))
    with pytest.raises(ProvenanceError, match="scores.json"):
        train_dataset(config, Parallel(), 0)
    # the selection's own data passes
    config = config_for({"train_files": [str(shards["a2"])], "index_file": str(index)}, tmp_path / "run")
    assert train_dataset(config, Parallel(), 0) is not None


def test_select_refuses_scores_of_other_shards(shards, tmp_path, capsys):
    from pangu_pro.data.dataset import resolve_files
    from pangu_pro.rounds.scoring import save_scores

    meta = {"files": [str(Path(p).resolve()) for p in resolve_files([str(shards["a2"])])], "num_samples": 24}
    scores = tmp_path / "scores.npz"
    save_scores(scores, np.arange(6, dtype=np.float64), np.arange(24, dtype=np.float64), 4, meta)
    assert main(["select", "--scores", str(scores), "--rate", "0.5", "--seed", "1", "--data", str(shards["a"])]) == 2
    assert f"{scores} was made on other data (1 shard(s) in {shards['a2']})" in capsys.readouterr().err
    assert main(["select", "--scores", str(scores), "--rate", "0.5", "--seed", "1", "--data", str(shards["a2"])]) == 0
    written = json.loads((tmp_path / "selection.json").read_text())
    assert (written["scores"], written["data_files"]) == (str(scores), meta["files"])  # the selection's record


# ---------------------------------------------------------------- 4. inheritance resumed with another teacher

def test_a_weights_record_tells_two_teachers_apart(tmp_path):
    from pangu_pro.tensors import save_tensors

    save_tensors(tmp_path / "a.safetensors", {"w": np.zeros(4, np.float32)})
    save_tensors(tmp_path / "b.safetensors", {"w": np.ones(4, np.float32)})
    a, b = (provenance.weights_record(tmp_path / f"{n}.safetensors") for n in "ab")
    assert a["bytes"] == b["bytes"] and a["sha256"] != b["sha256"]  # same size: the digest tells them apart
    provenance.check_same_weights(a, a, "the teacher", "masks/step_6")
    provenance.check_same_weights(None, a, "the teacher", "masks/step_6")  # nothing recorded
    with pytest.raises(ProvenanceError, match=r"masks/step_6 was made with the teacher .*a.safetensors .*but this "
                                              r"run names .*b.safetensors"):
        provenance.check_same_weights(a, b, "the teacher", "masks/step_6")


@pytest.mark.slow
def test_inherit_resume_with_another_teacher_is_refused(setup, capsys):
    from pangu_pro.io import read_json
    from pangu_pro.model.weights import build_model, save_weights
    from tests.test_inherit_run import TEACHER, load_config_from, write_inherit

    root = setup  # tests/test_inherit_run.py's tiny teacher, student preset and shards
    path = write_inherit(root, "learned", criterion="learned", steps=4, checkpoint_every=2, log_every=2)
    assert main(["inherit", str(path), "--no-progress", "--force"]) == 0
    state = read_json(root / "learned" / "masks" / "step_00000004" / "state.json")
    assert state["teacher"]["path"] == str((root / "teacher.safetensors").resolve())
    selection = read_json(root / "learned" / "student" / "selection.json")
    assert selection["teacher"] == state["teacher"]  # the student records its teacher the same way
    other = build_model(load_config_from(TEACHER, root / "teacher2.yaml").model, seed=1)
    save_weights(other, root / "teacher2.safetensors")
    capsys.readouterr()
    path = write_inherit(root, "learned", criterion="learned", steps=6, checkpoint_every=2, log_every=2,
                         teacher_checkpoint=str(root / "teacher2.safetensors"))
    assert main(["inherit", str(path), "--no-progress", "--resume", "--force"]) == 2
    err = capsys.readouterr().err
    assert "was made with the teacher" in err and "teacher2.safetensors" in err and "teacher.safetensors (" in err


# ---------------------------------------------------------------- 5. a copied run directory; 11. another cwd

def make_run_dir(folder: Path, output_dir: str) -> Path:
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": dict(MODEL), "train": {"output_dir": output_dir}}))
    return folder / "config.yaml"


def test_a_copied_run_directory_is_refused_naming_both(tmp_path, capsys):
    make_run_dir(tmp_path / "runs" / "tiny", str(tmp_path / "runs" / "tiny"))
    moved = make_run_dir(tmp_path / "runs" / "moved", str(tmp_path / "runs" / "tiny"))
    assert main(["train", str(moved), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"{moved} is the config of the run directory {moved.parent}" in err
    assert f"names {tmp_path / 'runs' / 'tiny'}" in err and f"train.output_dir={moved.parent}" in err
    provenance.check_run_location(moved, moved.parent, False)  # pointing at itself: fine
    provenance.check_run_location(moved, tmp_path / "new", True)  # output dir given on the command line: fine
    provenance.check_run_location("configs/tiny_cpu.yaml", "runs/x", False)  # not a run's config


def test_resume_from_another_working_directory_says_what_it_looked_for(tmp_path, monkeypatch, capsys):
    from pangu_pro.train.checkpoint import resolve_resume

    config = make_run_dir(tmp_path / "runs" / "tiny", "runs/tiny")  # relative, as the README's run writes it
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["train", str(config), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"names {elsewhere / 'runs' / 'tiny'} (relative to the working directory {elsewhere})" in err
    with pytest.raises(FileNotFoundError, match=f"relative to the working directory {elsewhere}"):
        resolve_resume("runs/tiny")


# ---------------------------------------------------------------- 6. preprocessing that produced nothing

@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    import sentencepiece as spm

    root = tmp_path_factory.mktemp("spm")
    text = root / "text.txt"
    text.write_text("\n".join(f"line {i} of some plain text about tokens and models" for i in range(200)))
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(root / "tiny"), vocab_size=60,
                                   model_type="bpe", num_threads=1, minloglevel=2)
    return root / "tiny.model"


def test_preprocess_that_finds_no_document_fails_naming_the_fields(spm_model, tmp_path):
    from pangu_pro.data.preprocess import preprocess

    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "content": f"text {i}"}) + "\n" for i in range(5)))
    with pytest.raises(ValueError, match=r"no documents in .*docs.jsonl \(skipped lines: missing_field 5\); "
                                         r"nothing written; --text-field is 'text' but the first lines have the "
                                         r"fields 'id', 'content'"):
        preprocess([jsonl], spm_model, 8, tmp_path / "out", workers=1, progress=False)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"no documents in .*empty.txt \(skipped lines: the input is empty\)"):
        preprocess([empty], spm_model, 8, tmp_path / "out", workers=1, progress=False)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- 7. sampling options ignored

def test_generate_refuses_sampling_options_that_greedy_decoding_ignores(capsys):
    from pangu_pro.model.commands import ignored_sampling_options

    assert ignored_sampling_options(0.0, 5, 0.9) == ["--top-k 5", "--top-p 0.9"]
    assert ignored_sampling_options(0.8, 5, 0.9) == [] and ignored_sampling_options(0.0, 0, 1.0) == []
    rc = main(["generate", "configs/tiny_cpu.yaml", "--prompt-ids", "5 6", "--temperature", "0", "--top-p", "0.9",
               "--top-k", "5", "--max-new-tokens", "2"])
    assert rc == 2
    assert "--temperature 0 decodes greedily, so --top-k 5 and --top-p 0.9 would have no effect" in \
        capsys.readouterr().err


# ---------------------------------------------------------------- 8-10. stack traces before

def test_raw_text_as_training_data_names_preprocess(tmp_path):
    from pangu_pro.train.trainer import train

    text = tmp_path / "train.txt"
    text.write_text("some raw text\n")
    with pytest.raises(ProvenanceError, match=rf"data.train_files: {text}: not MindRecord data .*pangu-pro "
                                              r"preprocess"):
        train(config_for({"train_files": [str(text)]}, tmp_path / "run"), progress=False, announce=None)


def test_shards_of_a_larger_vocabulary_are_refused_before_the_graph(shards, tmp_path):
    from pangu_pro.train.trainer import train

    config = config_for({"train_files": [str(shards["big_vocab"])]}, tmp_path / "run")
    with pytest.raises(ProvenanceError, match=rf"data_big_vocab/summary.json was written with a tokenizer of "
                                              rf"{VOCAB + 44} pieces .*model.vocab_size is {VOCAB}: token ids "
                                              r"would fall outside the embedding"):
        train(config, progress=False, announce=None)


def test_an_output_dir_that_is_a_file_is_refused(shards, tmp_path, capsys):
    from pangu_pro.train.trainer import train

    (tmp_path / "run").write_text("")
    with pytest.raises(ProvenanceError, match=rf"train.output_dir: {tmp_path / 'run'} exists and is not a folder"):
        train(config_for({"train_files": [str(shards["a"])]}, tmp_path / "run"), progress=False, announce=None)
    config = tmp_path / "rounds.yaml"  # multi-round training and inheritance say the same
    config.write_text(yaml.safe_dump({"model": dict(MODEL), "data": {"train_files": [str(shards["a"])]},
                                      "train": {"output_dir": str(tmp_path / "run")}, "multi_round": {}}))
    assert main(["rounds", str(config)]) == 2
    assert f"train.output_dir: {tmp_path / 'run'} exists and is not a folder" in capsys.readouterr().err
    assert main(["inherit", "configs/inherit_tiny_cpu.yaml", f"inherit.output_dir={tmp_path / 'run'}"]) == 2
    assert f"inherit.output_dir: {tmp_path / 'run'} exists and is not a folder" in capsys.readouterr().err


# ---------------------------------------------------------------- issue 28 item 5: shorter samples

def test_shards_packed_shorter_than_the_model_are_refused_unless_intended(shards, tmp_path):
    from pangu_pro.launch import check

    problems = provenance.data_problems([str(shards["short"])], "data.train_files", seq_length=SEQ,
                                        vocab_size=VOCAB)
    assert problems == [f"data.train_files: {shards['short'] / 'summary.json'} packs samples of {SEQ // 2 + 1} "
                        f"tokens (preprocess --seq-length {SEQ // 2}), shorter than model.seq_length {SEQ} + 1: the "
                        f"model would never see a context longer than {SEQ // 2}; re-run preprocess with "
                        f"--seq-length {SEQ}, or set data.allow_shorter_samples: true if that is intended"]
    assert provenance.data_problems([str(shards["short"])], "k", seq_length=SEQ, vocab_size=VOCAB,
                                    allow_shorter_samples=True) == []
    assert "longer than model.seq_length 8" in provenance.data_problems([str(shards["a"])], "k", seq_length=8,
                                                                        vocab_size=VOCAB)[0]
    # the launcher's pre-flight lists it
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"model": dict(MODEL), "data": {"train_files": [str(shards["short"])]}}))
    assert check(str(config), 1, "cpu", "", "train", []) == 2
    assert check(str(config), 1, "cpu", "", "train", ["data.allow_shorter_samples=true"]) == 0


def test_the_trainer_refuses_shorter_samples_of_shards_without_a_summary(tmp_path):
    from pangu_pro.train.trainer import train

    shard = write_shard(tmp_path / "short.mindrecord", make_rows(16, 0)[:, :SEQ // 2 + 1])
    config = make_config({"train": str(shard), "eval": str(shard)}, tmp_path / "run", layers=1, steps=1, warmup_steps=0)
    with pytest.raises(ProvenanceError, match=rf"hold samples of {SEQ // 2} \+ 1 tokens, shorter than "
                                              rf"model.seq_length {SEQ} \+ 1"):
        train(config, progress=False, announce=None)
    provenance.check_batch_length(SEQ // 2, SEQ, True, "f")  # intended: accepted


# ---------------------------------------------------------------- 11. unclear messages

def test_override_errors_name_the_command_line_and_the_key(capsys):
    from pangu_pro.config import load_config
    from pangu_pro.configtools import ConfigError

    tiny = "configs/tiny_cpu.yaml"
    with pytest.raises(ConfigError) as err:
        load_config(tiny, ["train.stpes=5"])
    assert str(err.value).startswith(f"command-line override 'train.stpes=5' (on {tiny}): train.stpes: unknown key")
    with pytest.raises(ConfigError, match=r"multi_round.rate: must lie in \(0, 1\], got 1.5"):
        load_config(tiny, ["multi_round.rate=1.5"])
    with pytest.raises(ConfigError) as err:  # an error of the file itself stays the file's
        load_config(tiny, ["train.steps=5"] + ["model.num_heads=3"])
    assert "command-line override 'model.num_heads=3'" in str(err.value)
    with pytest.raises(SystemExit):
        main(["train", tiny, "steps=5"])
    err = capsys.readouterr().err
    assert "override 'steps=5' names no section" in err and "write train.steps=5" in err
    with pytest.raises(SystemExit):
        main(["train", tiny, "rate=0.5"])
    assert "write multi_round.rate=0.5" in capsys.readouterr().err
