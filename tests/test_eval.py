"""Evaluation harness, without MindSpore: adapters, file layouts and errors, scoring rules on a fake
model with known logits, bucketing, ROUGE against hand-computed values, the report table."""
import csv
import json
import math

import numpy as np
import pytest

from pangu_pro.eval import harness, report, rouge, scoring, tasks
from pangu_pro.eval.scoring import Request, Score
from pangu_pro.eval.tasks import Example, Group

ALPHABET = "\0<>abcdefghijklmnopqrstuvwxyz ABCD.:\n?0123456789"


class CharTokenizer:
    """One id per character of ALPHABET (id 0 unused, 1 = BOS, 2 = EOS)."""

    def encode(self, text):
        return [ALPHABET.index(c) for c in text]

    def decode(self, ids):
        return "".join(ALPHABET[i] for i in ids)


V = len(ALPHABET)


def bigram_logits(table):
    """A fake LM: the logits at position t are table[ids[t]] (a [V, V] array)."""
    return lambda ids: table[ids]


def numpy_logprob(table, tokens):
    """Direct sum of log p(tokens[i+1] | tokens[i]) for the bigram table."""
    logp = table - np.log(np.exp(table).sum(-1, keepdims=True))
    return [float(logp[a, b]) for a, b in zip(tokens[:-1], tokens[1:])]


# ---------------------------------------------------------------------------------------------- adapters


def test_exam_adapters_build_opencompass_prompt():
    row = {"id": "0", "question": "1+1=?", "A": "1", "B": "2", "C": "3", "D": "4", "answer": "B", "explanation": ""}
    assert tasks.ceval_item(row) == Example("1+1=?\nA. 1\nB. 2\nC. 3\nD. 4\n答案: ", ("A", "B", "C", "D"), 1)
    cm = {"": "0", "Question": "Q", "A": "a", "B": "b", "C": "c", "D": "d", "Answer": "D"}
    assert tasks.cmmlu_item(cm) == Example("Q\nA. a\nB. b\nC. c\nD. d\n答案: ", ("A", "B", "C", "D"), 3)
    assert tasks.mmlu_item(["Q", "a", "b", "c", "d", "C"]) == Example("Q\nA. a\nB. b\nC. c\nD. d\nAnswer: ",
                                                                      ("A", "B", "C", "D"), 2)
    with pytest.raises(ValueError, match="f.csv:3: answer 'E' is not one of"):
        tasks.ceval_item({**row, "answer": "E"}, "f.csv:3")
    with pytest.raises(ValueError, match="missing field 'question'"):
        tasks.ceval_item({k: v for k, v in row.items() if k != "question"})
    with pytest.raises(ValueError, match="expected 6 columns"):
        tasks.mmlu_item(["Q", "a", "b"])


def test_superglue_clue_adapters():
    boolq = tasks.boolq_item({"passage": "P", "question": "is it", "label": True, "idx": 0})
    assert boolq == Example("P\nQuestion: is it?\nAnswer:", (" No", " Yes"), 1)
    assert tasks.boolq_item({"passage": "P", "question": "q?", "answer": False}).gold == 0  # original release
    assert tasks.piqa_item({"goal": "g ", "sol1": "a", "sol2": "b"}, "1\n") == Example("g", (" a", " b"), 1)
    axb = tasks.axb_item({"sentence1": "s1", "sentence2": "s2", "label": "not_entailment", "idx": 3})
    assert axb == Example("s1\ns2\nIs the sentence below entailed by the sentence above? Answer:", (" Yes", " No"), 1)
    assert tasks.eprstmt_item({"id": 1, "sentence": "好", "label": "Positive"}) == Example(
        '内容： "好"。情绪分类：', ("消极。", "积极。"), 1)
    doc = [["第一段", "第二段"], [{"question": "问?", "choice": ["甲", "乙", "丙"], "answer": "丙"},
                                  {"question": "再问", "choice": ["是", "否"], "answer": "是"}], "m1-1"]
    assert tasks.c3_items(doc) == [Example("文章：第一段第二段\n问题：问?\n答案：", ("甲", "乙", "丙"), 2),
                                   Example("文章：第一段第二段\n问题：再问\n答案：", ("是", "否"), 0)]
    assert tasks.xsum_item({"dialogue": "D", "summary": "S"}) == (
        "Document：D\nBased on the previous text, provide a brief single summary:", "S")
    assert tasks.xsum_item({"document": "D", "summary": "S"})[1] == "S"
    for bad, message in [(lambda: tasks.axb_item({"sentence1": "a", "sentence2": "b", "label": "x"}), "label 'x'"),
                         (lambda: tasks.eprstmt_item({"sentence": "a", "label": "Neutral"}), "label 'Neutral'"),
                         (lambda: tasks.piqa_item({"goal": "g", "sol1": "a", "sol2": "b"}, "2"), "label 2"),
                         (lambda: tasks.boolq_item({"passage": "p", "question": "q", "label": "maybe"}), "label 'maybe'"),
                         (lambda: tasks.c3_items([["p"], [{"question": "q", "choice": ["a"], "answer": "b"}], 0]),
                          "answer 'b' is not among")]:
        with pytest.raises(ValueError, match=message):
            bad()


# ---------------------------------------------------------------------------------------------- files and layouts


def write_csv(path, rows, header=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        if header:
            writer.writerow(header)
        writer.writerows(rows)


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def test_loaders_read_public_layouts(tmp_path):
    header = ["id", "question", "A", "B", "C", "D", "answer"]
    write_csv(tmp_path / "ceval/formal_ceval/val/law_val.csv", [[0, "q1", "a", "b", "c", "d", "A"],
                                                                [1, "q2", "a", "b", "c", "d", "C"]], header)
    write_csv(tmp_path / "ceval/formal_ceval/val/art_val.csv", [[0, "q3", "a", "b", "c", "d", "D"]], header)
    write_csv(tmp_path / "ceval/formal_ceval/dev/law_dev.csv", [[0, "dq", "a", "b", "c", "d", "B"]],
              header + ["explanation"])
    groups = tasks.TASKS["ceval"].load(tmp_path)
    assert [g.name for g in groups] == ["art", "law"]
    law = groups[1]
    assert [ex.gold for ex in law.items] == [0, 2] and [ex.gold for ex in law.shot_pool] == [1]
    assert law.header == "以下是中国关于law考试的单项选择题，请选出其中的正确答案。\n\n"
    assert tasks.build_context(law, 1, 1) == law.header + "dq\nA. a\nB. b\nC. c\nD. d\n答案: B\n\nq2\nA. a\nB. b\nC. c\nD. d\n答案: "
    tasks.check_shots(law, 1)
    with pytest.raises(FileNotFoundError, match="art_dev.csv: 1-shot prompts need this dev file"):
        tasks.check_shots(groups[0], 1)

    write_csv(tmp_path / "cmmlu/test/arts.csv", [[0, "Q", "a", "b", "c", "d", "B"]], ["", "Question", "A", "B", "C", "D", "Answer"])
    assert tasks.TASKS["cmmlu"].load(tmp_path)[0].items[0].gold == 1
    write_csv(tmp_path / "mmlu/test/anatomy_test.csv", [["Q, with comma", "a", "b", "c", "d", "D"]])
    mmlu = tasks.TASKS["mmlu"].load(tmp_path)[0]
    assert mmlu.name == "anatomy" and mmlu.items[0].context.startswith("Q, with comma\nA. a")
    assert mmlu.header == "The following are multiple choice questions (with answers) about anatomy.\n\n"

    write_jsonl(tmp_path / "piqa/dev.jsonl", [{"goal": "g1", "sol1": "x", "sol2": "y"}, {"goal": "g2", "sol1": "x", "sol2": "y"}])
    (tmp_path / "piqa/dev-labels.lst").write_text("1\n0\n")
    piqa = tasks.TASKS["piqa"].load(tmp_path)[0]
    assert [ex.gold for ex in piqa.items] == [1, 0]
    # shots from the task's own items never include the item itself
    assert tasks.build_context(piqa, 0, 1) == "g2 x\n\ng1"
    assert tasks.build_context(piqa, 1, 1) == "g1 y\n\ng2"
    (tmp_path / "piqa/dev-labels.lst").write_text("1\n")
    with pytest.raises(ValueError, match="dev-labels.lst: 1 labels for the 2 items"):
        tasks.TASKS["piqa"].load(tmp_path)

    c3 = tmp_path / "CLUE/C3/dev_0.json"
    c3.parent.mkdir(parents=True)
    c3.write_text(json.dumps([[["p"], [{"question": "q", "choice": ["a", "b"], "answer": "b"}], "d1"]]), encoding="utf-8")
    assert tasks.TASKS["c3"].load(tmp_path)[0].items == [Example("文章：p\n问题：q\n答案：", ("a", "b"), 1)]


@pytest.mark.parametrize("name, missing", [("ceval", "ceval/formal_ceval/val"), ("cmmlu", "cmmlu/test"),
                                           ("mmlu", "mmlu/test"), ("boolq", "SuperGLUE/BoolQ/val.jsonl"),
                                           ("ax-b", "SuperGLUE/AX-b/AX-b.jsonl"), ("piqa", "piqa/dev.jsonl"),
                                           ("eprstmt", "FewCLUE/eprstmt/dev_few_all.json"),
                                           ("c3", "CLUE/C3/dev_0.json"), ("xsum", "Xsum/dev.jsonl")])
def test_missing_file_names_file_and_layout(tmp_path, name, missing):
    with pytest.raises(FileNotFoundError) as err:
        tasks.TASKS[name].load(tmp_path)
    message = str(err.value)
    assert str(tmp_path / missing) in message
    assert "never downloads" in message and tasks.TASKS[name].layout in message


def test_bad_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "SuperGLUE/AX-b/AX-b.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text('{"sentence1": "a", "sentence2": "b", "label": "entailment"}\n{oops\n')
    with pytest.raises(ValueError, match=r"AX-b.jsonl:2: not a JSON line"):
        tasks.TASKS["ax-b"].load(tmp_path)
    path.write_text('{"sentence1": "a", "label": "entailment"}\n')
    with pytest.raises(ValueError, match=r"AX-b.jsonl:1: missing field 'sentence2'"):
        tasks.TASKS["ax-b"].load(tmp_path)


def test_resolve_tasks():
    assert [t.name for t in tasks.resolve_tasks("mmlu,AXB, c-eval")] == ["mmlu", "ax-b", "ceval"]
    assert len(tasks.resolve_tasks("all")) == len(tasks.TASKS)
    assert [t.name for t in tasks.resolve_tasks("agi-eval")] == ["agieval"]
    assert [t.column for t in tasks.resolve_tasks("all")] == list(report.COLUMNS)  # every paper column
    with pytest.raises(ValueError, match="unknown task 'gsm8k'"):
        tasks.resolve_tasks("gsm8k")


# ---------------------------------------------------------------------------------------------- scoring


def test_bucket_length():
    assert [scoring.bucket_length(n, 256) for n in (1, 16, 17, 33, 100, 129, 256)] == [16, 16, 32, 64, 128, 256, 256]
    assert scoring.bucket_length(150, 200) == 200
    with pytest.raises(ValueError, match="257 positions exceed the maximum length 256"):
        scoring.bucket_length(257, 256)


def test_split_continuation_and_truncation():
    assert scoring.split_continuation([5, 6, 7], [5, 6, 7, 8, 9]) == 2
    assert scoring.split_continuation([5, 6, 7], [5, 6, 10, 9]) == 2  # boundary merged: from the first difference
    assert scoring.split_continuation([5, 6], [5, 6]) == 1  # always at least one token
    tok = CharTokenizer()
    request = scoring.make_request(tok, "abcdef", "gh", bos_id=1, max_length=5)
    assert request == Request((1, *tok.encode("efgh")), 2)  # context cut from the left, BOS kept
    with pytest.raises(ValueError, match="continuation of 5 tokens does not fit"):
        scoring.make_request(tok, "a", "bcdef", bos_id=1, max_length=5)


def test_pick_rules_disagree_as_constructed():
    short = Score(continuation=-2.0, n_continuation=1, total=-12.0, n_total=4)  # mean -2, prompt -3
    long = Score(continuation=-3.0, n_continuation=3, total=-13.0, n_total=6)  # mean -1, prompt -2.17
    assert scoring.pick([short, long], "sum") == 0
    assert scoring.pick([short, long], "mean") == 1
    assert scoring.pick([short, long], "prompt") == 1
    assert scoring.pick([Score(-1.0, 1, -5.0, 5), short], "prompt") == 0  # -1 > -3
    assert scoring.pick([short, short], "sum") == 0  # ties: the first
    with pytest.raises(ValueError, match="scoring rule 'max'"):
        scoring.pick([short], "max")


def test_score_requests_equals_direct_sums_any_batching():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(V, V)) * 3
    requests = [Request(tuple(rng.integers(3, V, size=n)), k) for n, k in [(5, 2), (20, 3), (3, 1), (40, 7), (9, 9 - 1)]]
    expected = []
    for r in requests:
        logps = numpy_logprob(table, r.tokens)
        expected.append((sum(logps[-r.n_continuation:]), sum(logps)))
    for batch_size in (1, 2, 8):
        backend = scoring.FunctionBackend(bigram_logits(table), batch_size, max_length=65)
        got = scoring.score_requests(backend, requests)
        for score, (cont, total), r in zip(got, expected, requests):
            assert score.continuation == pytest.approx(cont, abs=1e-9)
            assert score.total == pytest.approx(total, abs=1e-9)
            assert (score.n_continuation, score.n_total) == (r.n_continuation, len(r.tokens) - 1)
        # every batch has exactly batch_size rows and a bucket width
        assert all(b == batch_size and w in (16, 32, 64) for b, w in backend.shapes)
    # longest first: with batch 2 the widths are 64 (40 and 20 tokens), 16, 16
    assert scoring.FunctionBackend(bigram_logits(table), 2, 65) is not None
    backend = scoring.FunctionBackend(bigram_logits(table), 2, 65)
    scoring.score_requests(backend, requests)
    assert backend.shapes == [(2, 64), (2, 16), (2, 16)]


def favouring_table(pairs, strength=8.0):
    """Bigram logits: after token a, token b gets `strength` (pairs a -> b), everything else 0."""
    table = np.zeros((V, V))
    for a, b in pairs:
        table[a, b] = strength
    return table


def test_evaluate_choice_accuracy_known_by_construction():
    tok = CharTokenizer()
    ix = ALPHABET.index
    # after ':' the model says ' ' then the letter; after 'x' it says 'a', after 'y' it says 'b'
    table = favouring_table([(ix("x"), ix("a")), (ix("y"), ix("b"))])
    items = [Example("qx", ("a", "b"), 0), Example("qy", ("a", "b"), 1), Example("qx", ("b", "a"), 1),
             Example("qy", ("a", "b"), 0)]  # the last gold disagrees with the model by construction
    group = Group("t", "", items, items, shots_from_items=True)
    backend = scoring.FunctionBackend(bigram_logits(table), 3, 65)
    for rule in scoring.SCORING_RULES:
        result = harness.evaluate_choice([group], backend, tok, rule=rule, details=True)
        assert result["correct"] == 3 and result["total"] == 4 and result["accuracy"] == 75.0
        assert [r["prediction"] for r in result["items"]] == [0, 1, 1, 1]
    favoured = result["items"][0]["loglik"][0]
    assert favoured == pytest.approx(8 - math.log(math.exp(8) + V - 1))


def test_accuracy_is_mean_over_subjects():
    tok = CharTokenizer()
    ix = ALPHABET.index
    table = favouring_table([(ix("x"), ix("a"))])
    right = Example("x", ("a", "b"), 0)
    wrong = Example("x", ("a", "b"), 1)
    groups = [Group("s1", "", [right]), Group("s2", "", [right, wrong, wrong, wrong])]
    result = harness.evaluate_choice(groups, scoring.FunctionBackend(bigram_logits(table), 4, 33), tok, rule="sum")
    assert result["subsets"]["s1"]["accuracy"] == 100.0 and result["subsets"]["s2"]["accuracy"] == 25.0
    assert result["accuracy"] == 62.5 and result["micro_accuracy"] == 40.0


def test_text_windows_predict_every_token_once():
    windows = harness.text_windows(list(range(10)), 4)
    assert [w.tokens for w in windows] == [(0, 1, 2, 3), (3, 4, 5, 6), (6, 7, 8, 9)]
    assert sum(w.n_continuation for w in windows) == 9
    assert [w.tokens for w in harness.text_windows(list(range(5)), 4)] == [(0, 1, 2, 3), (3, 4)]


def test_text_perplexity_of_a_deterministic_model(tmp_path):
    tok = CharTokenizer()
    text = tmp_path / "held.txt"
    text.write_text("ab\n\nab\n")
    ix = ALPHABET.index
    stream = [1, ix("a"), ix("b"), 2, 1, ix("a"), ix("b"), 2]
    table = np.zeros((V, V))
    for a, b in zip(stream[:-1], stream[1:]):
        table[a, b] = 50.0  # the model predicts the stream exactly (2 -> 1, 1 -> a, a -> b, b -> 2)
    result = harness.text_perplexity([text], scoring.FunctionBackend(bigram_logits(table), 2, 5), tok, 1, 2)
    assert result["tokens"] == 7 and result["windows"] == 2
    assert result["perplexity"] == pytest.approx(1.0, abs=1e-12)
    uniform = harness.text_perplexity([text], scoring.FunctionBackend(bigram_logits(np.zeros((V, V))), 2, 5), tok, 1, 2)
    assert uniform["perplexity"] == pytest.approx(V)
    with pytest.raises(FileNotFoundError, match="nope.txt: held-out text file not found"):
        harness.text_perplexity([tmp_path / "nope.txt"], None, tok, 1, 2)


def test_generation_scored_with_rouge_up_to_newline():
    tok = CharTokenizer()
    pairs = [("doc one", "a cat sat"), ("doc two", "the end")]
    outputs = {tok.encode("doc one")[-1]: "a cat sat\nmore", tok.encode("doc two")[-1]: "the"}
    seen = []

    def generate(prompts, max_new):
        seen.append([len(p) for p in prompts])
        return [tok.encode(outputs[p[-1]]) for p in prompts]

    result = harness.evaluate_generation(pairs, generate, tok, max_new_tokens=4, max_prompt_tokens=5, batch_size=4,
                                         details=True)
    assert seen == [[5, 5, 5, 5]]  # cut to 5 tokens (BOS + 4), batch padded to 4 rows
    assert [r["prediction"] for r in result["items"]] == ["a cat sat", "the"]
    # pair 2: candidate [the], reference [the, end]: R1 = F1(P 1, R 1/2) = 2/3, R2 = 0, RL = 2/3
    assert result["rouge1"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert result["rouge2"] == pytest.approx(100 * (1 + 0) / 2)
    assert result["rougeL"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert result["score"] == result["rouge1"]


# ---------------------------------------------------------------------------------------------- ROUGE


def test_rouge_hand_computed():
    c, r = "The cat sat on the mat.", "the cat lay on the mat"
    scores = rouge.rouge_scores(c, r)
    assert scores["rouge1"] == pytest.approx(5 / 6)  # the x2, cat, on, mat
    assert scores["rouge2"] == pytest.approx(3 / 5)  # the cat, on the, the mat
    assert scores["rougeL"] == pytest.approx(5 / 6)  # the cat on the mat
    zh = rouge.rouge_scores("我爱北京", "我爱上海")
    assert (zh["rouge1"], zh["rouge2"], zh["rougeL"]) == pytest.approx((0.5, 1 / 3, 0.5))
    assert rouge.rouge_scores("a b", "a b c d")["rouge1"] == pytest.approx(2 / 3)  # P 1, R 1/2
    assert rouge.rouge_scores("b a", "a b")["rougeL"] == pytest.approx(0.5)  # order matters for LCS
    assert rouge.rouge_scores("", "a")["rouge1"] == 0.0
    assert rouge.lcs_length(list("ABCBDAB"), list("BDCABA")) == 4
    assert rouge.corpus_rouge(["a b", "x"], ["a b", "y"]) == pytest.approx({"rouge1": 50.0, "rouge2": 50.0, "rougeL": 50.0})
    with pytest.raises(ValueError, match="2 candidates for 1 references"):
        rouge.corpus_rouge(["a", "b"], ["a"])


ENGLISH_PAIRS = [
    ("The cat sat on the mat.", "the cat lay on the mat"),
    ("A man was arrested after a car crashed into a shop in Leeds on Monday.",
     "Police have arrested a man after a car was driven into a shop front in Leeds."),
    ("Scotland's first minister said 2,000 jobs would be created by 2020!",
     "Two thousand jobs will be created in Scotland by 2020, the First Minister has said."),
    ("the the the cat", "the cat the cat"),  # repeated n-grams: clipped counts
    ("U.S. inflation rose 3.2% in July -- the first rise in 12 months.",
     "Inflation in the US rose to 3.2 percent in July, its first rise in a year."),
    ("don't stop-believing", "Don't stop believing"),
    ("completely different words here", "nothing in common at all"),
    ("", "an empty candidate"),
    ("word", "word"),
]


def test_rouge_equals_rouge_score_on_english():
    from rouge_score.rouge_scorer import RougeScorer  # the reference implementation (test dependency)

    reference = RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    for candidate, target in ENGLISH_PAIRS:
        assert rouge.rouge_tokens(candidate) == reference._tokenizer.tokenize(candidate)  # same tokenisation
        theirs = reference.score(target, candidate)  # score(target, prediction)
        ours = rouge.rouge_scores(candidate, target)
        for key in ("rouge1", "rouge2", "rougeL"):
            assert ours[key] == pytest.approx(theirs[key].fmeasure, abs=1e-12), (candidate, key)
    # Chinese: rouge-score's tokenizer keeps only [a-z0-9], so a Chinese pair has no tokens and scores 0;
    # ours takes every CJK character as a token (docs/eval.md, "ROUGE")
    assert reference.score("我爱上海", "我爱北京")["rouge1"].fmeasure == 0.0
    assert rouge.rouge_scores("我爱北京", "我爱上海")["rouge1"] == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------- report


def test_markdown_table_beside_paper_row():
    results = {"mmlu": {"column": "MMLU", "score": 30.0}, "boolq": {"column": "BoolQ", "score": 60.0}}
    table = report.markdown_table(results, "PanGu-π-1B Pro").splitlines()
    assert table[0] == ("| model | C-Eval | CMMLU | MMLU | AGI-Eval | BoolQ | AX-b | PIQA | EPRSTMT | XSum | C3 "
                        "| avg | avg* |")
    assert table[2] == "| ours | – | – | 30.00 | – | 60.00 | – | – | – | – | – | – | 45.00 |"
    assert table[3] == ("| PanGu-π-1B Pro (paper) | 46.50 | 46.56 | 50.38 | 41.58 | 63.43 | 53.99 | 64.96 | 74.38 "
                        "| 18.40 | 52.66 | 51.28 | 56.91 |")  # (50.38 + 63.43) / 2
    assert len(report.markdown_table(results, None).splitlines()) == 3


def test_paper_row_by_preset_shape():
    from pangu_pro.config import load_config

    assert report.paper_row_for(load_config("configs/pangu_1b_pro.yaml").model) == "PanGu-π-1B Pro"
    assert report.paper_row_for(load_config("configs/pangu_1_5b_pro.yaml").model) == "PanGu-π-1.5B Pro"
    assert report.paper_row_for(load_config("configs/pangu_1b.yaml").model) == "PanGu-π-1B"
    assert report.paper_row_for(load_config("configs/tiny_cpu.yaml").model) is None
    # the paper's averages are the mean of its ten columns, except 1.5B Pro's as paper-notes §7 copies it
    # (columns average 56.54, the row says 56.49): reported upstream, the table prints the row as given
    for name, row in report.PAPER_ROWS.items():
        mean = sum(row[c] for c in report.COLUMNS) / 10
        if name == "PanGu-π-1.5B Pro":
            assert (round(mean, 2), row["avg"]) == (56.54, 56.49)
        else:
            assert mean == pytest.approx(row["avg"], abs=0.01)


# ---------------------------------------------------------------------------------------------- AGI-Eval


class GrowingTokenizer:
    """One id per distinct character, given in order of first sight from 3 (0 unused, 1 BOS, 2 EOS)."""

    def __init__(self, seed=""):
        self.ids, self.chars = {}, {}
        for c in seed:
            self.id_of(c)

    def id_of(self, c):
        if c not in self.ids:
            self.ids[c] = len(self.ids) + 3
            self.chars[self.ids[c]] = c
        return self.ids[c]

    def encode(self, text):
        return [self.id_of(c) for c in text]

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)


def agieval_row(label, options=4, passage=None, question="q?", answer=True):
    row = {"passage": passage, "question": question, "options": [f"({l})o{l}" for l in "ABCDE"[:options]],
           "label": label, "other": None}
    if answer:  # the sat-* files have no "answer" field
        row["answer"] = None
    return row


def test_agieval_official_layout_scores_as_hand_computed(tmp_path):
    chinese_right = ["gaokao-chinese", "gaokao-english", "gaokao-geography", "gaokao-history", "gaokao-biology",
                     "gaokao-chemistry"]
    files = {name: [agieval_row("A")] for name in chinese_right}  # the model answers A in Chinese ...
    files.update({
        "gaokao-physics": [agieval_row("A"), agieval_row(["A", "C"]), agieval_row("C")],  # 1/3: A,C has two answers
        "gaokao-mathqa": [agieval_row("A"), agieval_row("AB")],  # 1/2
        "logiqa-zh": [agieval_row("D", passage="某段落。")],  # 0
        # ... and B in English
        "lsat-ar": [agieval_row("B", 5, passage="P. "), agieval_row("E", 5)],  # 1/2
        "lsat-lr": [agieval_row("B", 5)], "lsat-rc": [agieval_row("A", 5)],  # 1, 0
        "logiqa-en": [agieval_row("B")],  # 1
        "sat-math": [agieval_row("B", answer=False)], "sat-en": [agieval_row("B", passage="Text. ", answer=False)],
        "sat-en-without-passage": [agieval_row("C", answer=False)],  # 1, 1, 0
        "aqua-rat": [agieval_row("E", 5)],  # 0
    })
    assert sorted(files) == sorted(tasks.AGIEVAL_SUBSETS)
    for name, rows in files.items():
        write_jsonl(tmp_path / "AGIEval" / "data" / "v1" / f"{name}.jsonl", rows)
    tok = GrowingTokenizer("ABCDE ：")
    table = np.zeros((512, 512))
    table[tok.id_of(" "), tok.id_of("B")] = 8.0  # after "The answer is " the model says B
    table[tok.id_of("："), tok.id_of("A")] = 8.0  # after "答案是：" it says A
    backend = scoring.FunctionBackend(bigram_logits(table), 4, 512)

    result = harness.run_tasks(tasks.resolve_tasks("agieval"), tmp_path, backend, tok, progress=False)["agieval"]
    expected = {name: 100.0 for name in chinese_right + ["logiqa-en", "lsat-lr", "sat-math", "sat-en"]}
    expected.update({"gaokao-physics": 100 / 3, "gaokao-mathqa": 50.0, "logiqa-zh": 0.0, "lsat-ar": 50.0,
                     "lsat-rc": 0.0, "sat-en-without-passage": 0.0, "aqua-rat": 0.0})
    assert {k: v["accuracy"] for k, v in result["subsets"].items()} == pytest.approx(expected)
    assert result["score"] == pytest.approx(sum(expected.values()) / 17) and result["column"] == "AGI-Eval"
    assert (result["correct"], result["total"]) == (13, 21)

    groups = tasks.TASKS["agieval"].load(tmp_path)
    lsat = next(g for g in groups if g.name == "lsat-ar")
    assert lsat.items[0] == Example(
        "The following is a LSAT Analytical Reasoning question. Please select the correct answer.\n"
        "P. q?\n(A)oA\n(B)oB\n(C)oC\n(D)oD\n(E)oE\nThe answer is ", tuple("ABCDE"), 1)
    physics = next(g for g in groups if g.name == "gaokao-physics")
    assert physics.items[1].context.endswith("(D)oD\n答案是：") and physics.items[1].gold == -1
    assert tasks.build_context(physics, 2, 1).count("答案是：A\n\n") == 1  # the one single-answer other item
    with pytest.raises(ValueError, match="2 shots asked, only 1"):  # shots skip the two-answer item
        tasks.build_context(physics, 2, 2)
    assert "| ours | – | – | – | 66.67 |" in report.markdown_table({"agieval": result}, None)
    with pytest.raises(ValueError, match="lsat-rc.jsonl:1: label 'F' is not made of A, B, C, D, E"):
        write_jsonl(tmp_path / "AGIEval" / "data" / "v1" / "lsat-rc.jsonl", [agieval_row("F", 5)])
        tasks.TASKS["agieval"].load(tmp_path)
    write_jsonl(tmp_path / "AGIEval" / "data" / "v1" / "lsat-rc.jsonl", files["lsat-rc"])
    (tmp_path / "AGIEval" / "data" / "v1" / "aqua-rat.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="aqua-rat.jsonl: dataset file not found"):
        tasks.TASKS["agieval"].load(tmp_path)
