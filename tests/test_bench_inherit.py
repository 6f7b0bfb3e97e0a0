"""`pangu-pro bench inherit`: its statistics and table (pure functions) and its per-student resume."""
import json

import pytest


def test_bench_helpers(tmp_path):
    from pangu_pro.bench.inherit import BYTE_OFFSET, byte_rows, format_table, merge_results, paired_difference

    (tmp_path / "t.txt").write_text("ab\ncd\n", encoding="utf-8")
    rows = byte_rows(tmp_path / "t.txt", 2)
    assert rows.tolist() == [[ord("a") + BYTE_OFFSET, ord("b") + BYTE_OFFSET, 2],
                             [ord("c") + BYTE_OFFSET, ord("d") + BYTE_OFFSET, 2]]

    def run(seed, l1, l2):
        student = lambda k: {"loss_0": k, "loss_k": k, "derive_seconds": 1.0}  # noqa: E731
        return {"seed": seed, "teacher_heldout_loss": 2.0,
                "students": {"random init": student(5.0), "l1": student(l1), "l2": student(l2)}}

    setup = {"teacher": "t", "student": "s", "data": "d", "teacher_steps": 1, "mask_steps": 2, "lr_mask": 0.1,
             "lr_lambda": 0.3, "data_budget_sequences": 8, "continue_steps": 3}
    result = {"setup": setup, "teacher_parameters": 10, "student_parameters": 5, "seconds": 1.0,
              "runs": [run(1, 3.0, 3.5), run(2, 3.1, 3.4)]}
    merged = merge_results([result, {**result, "runs": [run(3, 2.9, 3.6)]}])
    assert [r["seed"] for r in merged["runs"]] == [1, 2, 3]
    with pytest.raises(ValueError, match="seed appears twice"):
        merge_results([result, result])
    with pytest.raises(ValueError, match="mask_steps"):
        merge_results([result, {**result, "setup": {**setup, "mask_steps": 5}, "runs": [run(3, 1, 1)]}])
    d = paired_difference(merged["runs"], "l1", "l2", "loss_k")  # -0.5, -0.3, -0.7: consistent
    assert d["mean"] == pytest.approx(-0.5) and d["sd"] == pytest.approx(0.2) and d["exceeds_noise"]
    assert d["a_lower"] == 3
    noisy = [run(1, 3.0, 3.5), run(2, 3.6, 3.1), run(3, 3.0, 3.2)]  # signs disagree
    assert not paired_difference(noisy, "l1", "l2", "loss_k")["exceeds_noise"]
    text = format_table(merged)
    assert "**-0.500 ± 0.200**" in text and "l1 − l2 -0.500" in text
    assert "no difference exceeds seed noise" not in text.split("after 3 steps:")[-1]
    assert "no difference exceeds seed noise" in format_table({**merged, "runs": noisy})


@pytest.mark.slow
def test_bench_keeps_each_student_and_redoes_only_a_removed_one(tmp_path, monkeypatch):
    """A re-run of `bench inherit` keeps every finished student (arm_<name>.json) and derives again only
    the one whose file was removed; the kept entries come back unchanged."""
    import argparse

    from pangu_pro.bench import inherit as bench
    from pangu_pro.data.corpus import build_builtin_corpus
    from pangu_pro.runtime import init_mindspore

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--teacher-steps", "2", "--mask-steps", "2", "--steps", "2", "--batch-size", "2",
                              "--eval-batches", "1", "--seq", "16", "--criteria", "l1"])
    # what is tested is the bookkeeping, not the shapes or the criterion: 3- and 2-layer models and L1 (no
    # mask learning) compile a fraction of the graphs
    teacher, student = bench.teacher_model, bench.student_model
    monkeypatch.setattr(bench, "teacher_model", lambda seq: {**teacher(seq), "num_layers": 3})
    monkeypatch.setattr(bench, "student_model", lambda seq: {**student(seq), "num_layers": 2})
    init_mindspore(1)
    corpus = tmp_path / "corpus"
    build_builtin_corpus(corpus, 0.05, progress=False)
    work = tmp_path / "seed_1"
    first = bench.run_seed(args, 1, corpus, work)
    assert sorted(first["students"]) == ["l1", "random init"]
    assert sorted(p.name for p in work.glob("arm_*.json")) == ["arm_l1.json", "arm_random_init.json"]
    derived = []
    real = bench.continue_pretraining
    monkeypatch.setattr(bench, "continue_pretraining", lambda *a: derived.append(1) or real(*a))
    (work / "result.json").unlink()
    (work / "arm_l1.json").unlink()
    again = bench.run_seed(args, 1, corpus, work)
    assert len(derived) == 1  # only the L1 student trained again
    kept = json.loads(json.dumps(first["students"]))  # as stored (tuples become lists)
    assert again["students"]["random init"] == kept["random init"]
    assert again["students"]["l1"]["kept_layers"] == kept["l1"]["kept_layers"]  # derived again, the same way
