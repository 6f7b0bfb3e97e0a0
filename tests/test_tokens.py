"""The token convention's record and checks (pangu_pro.tokens): shard sets and the checkpoints trained on them."""
import json

import pytest

from pangu_pro.tokens import (CONVENTION_KEY, check_shard_convention, checkpoint_convention_problem,
                              convention_problem, document_ids, prompt_ids)


def shard_set(folder, convention=None):
    """A preprocess-like folder: one (empty) shard file and a summary.json, with `convention` or without the key."""
    folder.mkdir()
    (folder / "data_00000.mindrecord").write_bytes(b"")
    summary = {"documents": 1, **({CONVENTION_KEY: convention} if convention else {})}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_documents_and_prompts_start_with_bos():
    assert document_ids([5, 6], bos_id=1, eos_id=2) == [1, 5, 6, 2]
    assert prompt_ids([5, 6], bos_id=1) == [1, 5, 6]
    assert document_ids([], 1, 2) == [1, 2] and prompt_ids([], 1) == [1]


def test_convention_problem_names_both_conventions_and_the_fix():
    assert convention_problem({CONVENTION_KEY: "llama"}, "s.json") is None
    old = convention_problem({}, "s.json")
    assert old.startswith("s.json has no 'token_convention'") and "'eos-only'" in old and "'llama'" in old
    assert "text </s> with no <s>" in old and "pangu-pro preprocess" in old
    other = convention_problem({CONVENTION_KEY: "chatml"}, "s.json")
    assert "records token_convention = 'chatml'" in other


def test_shard_sets_are_checked_by_folder_or_by_file(tmp_path):
    new, old = shard_set(tmp_path / "new", "llama"), shard_set(tmp_path / "old")
    bare = tmp_path / "bare.mindrecord"
    bare.write_bytes(b"")
    check_shard_convention([new, new / "data_00000.mindrecord", bare])  # no record next to bare: passes
    for files in ([new, old], [old / "data_00000.mindrecord"]):
        with pytest.raises(ValueError, match=r"old/summary.json has no 'token_convention'"):
            check_shard_convention(files)


def test_a_checkpoint_trained_on_old_shards_is_named(tmp_path):
    old, new = shard_set(tmp_path / "old"), shard_set(tmp_path / "new", "llama")
    step = tmp_path / "run" / "checkpoints" / "step_00000010"
    step.mkdir(parents=True)
    (step / "model.safetensors").write_bytes(b"")
    (step / "state.json").write_text(json.dumps({"step": 10, "config": {"data": {"train_files": [str(old)]}}}))
    for where in (step, step / "model.safetensors"):
        problem = checkpoint_convention_problem(where)
        assert problem.startswith(f"{where} was trained on old data: {old / 'summary.json'} has no")
        assert "'eos-only'" in problem and "'llama'" in problem and "Retrain" in problem
    (step / "state.json").write_text(json.dumps({"step": 10, "config": {"data": {"train_files": [str(new)]}}}))
    assert checkpoint_convention_problem(step) is None
    assert checkpoint_convention_problem(tmp_path / "imported.safetensors") is None  # no state.json: not judged
