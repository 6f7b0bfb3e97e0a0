"""Evaluation through a real PanGuPi model in graph mode: bucketed scoring equals the unpadded forward,
a bounded number of compiled graphs, the `pangu-pro eval` command end to end on a model whose
answers are known by construction, and the same log-likelihoods through the exported HF model."""
import json

import numpy as np
import pytest

from pangu_pro.config import ModelConfig
from pangu_pro.eval import harness, scoring, tasks
from pangu_pro.eval.backends import MindSporeBackend

CFG = ModelConfig(vocab_size=512, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, seq_length=64,
                  aug_shortcut_ratio=16)
ZEROED = ("attention.wo.weight", "feed_forward.w2.weight", "aug_shortcut.up.weight")
CORPUS = ["what colour is the apple red", "what colour is the sky blue", "what colour is the grass green",
          "the quick brown fox jumps over the lazy dog", "Based on the previous text, provide a brief single summary",
          "Document the colour of things", "a blue sky and green grass"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    import sentencepiece as spm

    from pangu_pro.tokenizer.train import train_tokenizer

    root = tmp_path_factory.mktemp("spm")
    (root / "corpus.txt").write_text("\n".join(CORPUS * 20) + "\n", encoding="utf-8")
    path = train_tokenizer([root / "corpus.txt"], root / "tok.model", 400, num_threads=1)
    return path, spm.SentencePieceProcessor(model_file=str(path))


def bigram_weights(pairs, alpha=3.0, zero_layers=True, seed=0):
    """Weights of CFG whose next-token logits follow `pairs` (a -> b): lm_head row b is alpha times the
    direction of embedding a, so after token a the logit of b is alpha * sqrt(hidden) = 24, others ~ N(0, 3).
    With `zero_layers` every residual branch is off and the model is exactly that bigram table."""
    from pangu_pro.model.weights import build_model, model_state

    sources = {}
    for a, b in pairs:
        assert sources.setdefault(a, b) == b, f"token {a} is asked to predict both {sources[a]} and {b}"
    state = model_state(build_model(CFG, seed=seed))
    rng = np.random.default_rng(seed)
    embed = rng.normal(size=(CFG.vocab_size, CFG.hidden_size)).astype(np.float32)
    head = np.zeros((CFG.vocab_size, CFG.hidden_size), np.float32)
    for a, b in pairs:
        head[b] += alpha * embed[a] / np.linalg.norm(embed[a])
    state["model.embed_tokens.weight"] = embed
    state["lm_head.weight"] = head
    for name in state:
        if zero_layers and name.endswith(ZEROED):
            state[name] = np.zeros_like(state[name])
        elif not zero_layers and name.endswith(("weight",)) and "norm" not in name and "embed" not in name \
                and name != "lm_head.weight":
            state[name] = rng.normal(scale=0.1, size=state[name].shape).astype(np.float32)
    return state


def chain(tok, context, continuation):
    """Pairs making `continuation` follow `context` token by token."""
    ctx = tok.encode(context)
    whole = tok.encode(context + continuation)
    cont = whole[len(whole) - scoring.split_continuation(ctx, whole):]
    ids = [whole[len(whole) - len(cont) - 1]] + cont
    return list(zip(ids[:-1], ids[1:]))


def model_with(state):
    from pangu_pro.model.weights import build_model, load_state

    model = build_model(CFG, seed=0)
    load_state(model, state)
    model.set_train(False)
    return model


def test_bucketed_scores_equal_unpadded_forward_and_compile_once_per_bucket():
    from pangu_pro.model.weights import build_model, model_state
    from tests import numpy_reference

    model = build_model(CFG, seed=3)
    backend = MindSporeBackend(model, batch_size=2)
    rng = np.random.default_rng(1)

    def requests(lengths):
        return [scoring.Request(tuple(rng.integers(3, CFG.vocab_size, size=n)), 2) for n in lengths]

    first = requests([5, 12, 30, 65, 40])  # 4, 11, 29, 64, 39 predicted positions -> buckets 64, 32, 16
    scores = scoring.score_requests(backend, first)
    assert backend.compiled_graphs == 3
    weights = model_state(model)
    for request, score in zip(first, scores):
        ids = np.asarray(request.tokens, np.int32)[None]
        logits = numpy_reference.forward(weights, CFG, ids[:, :-1]).astype(np.float64)[0]  # unpadded
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        direct = logp[np.arange(len(request.tokens) - 1), ids[0, 1:]]
        assert score.total == pytest.approx(direct.sum(), abs=2e-4)
        assert score.continuation == pytest.approx(direct[-2:].sum(), abs=2e-4)
    scoring.score_requests(backend, requests([3, 17, 33, 50, 64, 2, 9]))  # new lengths, same buckets
    assert backend.compiled_graphs == 3


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


PIQA = [("what colour is the apple", "red", "blue", 0), ("what colour is the sky", "green", "blue", 1),
        ("what colour is the grass", "green", "red", 0),
        ("what colour is the apple", "blue", "red", 0)]  # gold 0 is "blue": the model says "red", wrong by construction


def constructed_pairs(tok):
    pairs = []
    for goal, sol1, sol2, gold in PIQA[:3]:
        pairs += chain(tok, goal, " " + (sol1, sol2)[gold])
    prompt = tasks.xsum_item({"dialogue": "the lazy dog", "summary": ""})[0]
    summary = chain(tok, prompt, " quick brown fox")
    return pairs, summary + [(summary[-1][1], CFG.eos_token_id)]


@pytest.mark.slow
def test_eval_command_end_to_end(tmp_path, tokenizer):
    from mindspore.mindrecord import FileWriter

    from pangu_pro import cli
    from pangu_pro.tensors import save_tensors

    tok_path, tok = tokenizer
    pairs, summary_pairs = constructed_pairs(tok)
    save_tensors(tmp_path / "w.safetensors", bigram_weights(pairs + summary_pairs))
    config = tmp_path / "tiny.yaml"
    config.write_text("model:\n" + "".join(f"  {k}: {v}\n" for k, v in {
        "vocab_size": CFG.vocab_size, "hidden_size": CFG.hidden_size, "num_layers": CFG.num_layers,
        "num_heads": CFG.num_heads, "intermediate_size": CFG.intermediate_size, "seq_length": CFG.seq_length,
        "aug_shortcut_ratio": CFG.aug_shortcut_ratio}.items()))
    data = tmp_path / "data"
    write_jsonl(data / "piqa/dev.jsonl", [{"goal": g, "sol1": a, "sol2": b} for g, a, b, _ in PIQA])
    (data / "piqa/dev-labels.lst").write_text("".join(f"{gold}\n" for *_, gold in PIQA))
    write_jsonl(data / "Xsum/dev.jsonl", [{"dialogue": "the lazy dog", "summary": "quick brown fox"},
                                          {"dialogue": "the lazy dog", "summary": "a brown dog"}])
    held = tmp_path / "held.txt"
    held.write_text("what colour is the apple red\nthe quick brown fox\n", encoding="utf-8")
    rows = np.random.default_rng(0).integers(3, 300, size=(3, 17)).astype(np.int32)
    writer = FileWriter(str(tmp_path / "held.mindrecord"), shard_num=1, overwrite=True)
    writer.add_schema({"input_ids": {"type": "int32", "shape": [-1]}}, "packed")
    writer.write_raw_data([{"input_ids": r} for r in rows])
    writer.commit()

    out = tmp_path / "results.json"
    code = cli.main(["eval", str(config), "--checkpoint", str(tmp_path / "w.safetensors"), "--tokenizer", str(tok_path),
                     "--tasks", "piqa,xsum", "--data-dir", str(data), "--batch-size", "4", "--max-new-tokens", "8",
                     "--ppl-text", str(held), "--ppl-data", str(tmp_path / "held.mindrecord"), "--details",
                     "--paper-row", "PanGu-π-1B Pro", "--out", str(out), "--no-progress"])
    assert code == 0
    result = json.loads(out.read_text())
    piqa = result["tasks"]["piqa"]
    assert (piqa["correct"], piqa["total"], piqa["accuracy"]) == (3, 4, 75.0)
    assert [item["prediction"] for item in piqa["items"]] == [0, 1, 0, 1]
    xsum = result["tasks"]["xsum"]
    assert [item["prediction"] for item in xsum["items"]] == ["quick brown fox", "quick brown fox"]
    # pair 2: [quick brown fox] vs [a brown dog]: R1 1/3, R2 0, RL 1/3
    assert xsum["rouge1"] == pytest.approx(100 * (1 + 1 / 3) / 2)
    assert xsum["rouge2"] == pytest.approx(50.0)
    assert result["average"] == pytest.approx((75.0 + xsum["rouge1"]) / 2)
    assert 1 <= result["compiled_graphs"] <= 2  # all piqa requests are short: buckets 16 (and 32 at most)
    assert "| ours | – | – | – | – | – | – | 75.00 | – | 66.67 | – |" in result["table"]
    assert result["table"].splitlines()[3].startswith("| PanGu-π-1B Pro (paper) |")
    text = result["perplexity"]["text"]
    assert text["tokens"] == len(tok.encode("what colour is the apple red")) + len(tok.encode("the quick brown fox")) + 3
    assert 1.0 < text["perplexity"] < CFG.vocab_size * 50
    # the MindRecord perplexity (the trainer's loss path) equals the scoring cell's mean NLL on those rows
    backend = MindSporeBackend(model_with(bigram_weights(pairs + summary_pairs)), batch_size=3)
    logprobs = backend.token_logprobs(rows[:, :-1], rows[:, 1:])
    assert result["perplexity"]["mindrecord"]["loss"] == pytest.approx(-logprobs.mean(), rel=1e-5)


def test_eval_command_errors(tmp_path, capsys):
    from pangu_pro import cli

    assert cli.main(["eval", "configs/tiny_cpu.yaml", "--checkpoint", "x"]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    assert cli.main(["eval", "configs/tiny_cpu.yaml", "--checkpoint", "x", "--tasks", "nope"]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err


@pytest.mark.hf
def test_hf_export_gives_same_loglikelihoods(tmp_path, tokenizer):
    try:
        from pangu_pro.convert.to_hf import export_to_hf
    except ImportError as err:
        pytest.skip(f"the HF converter (pangu_pro.convert.to_hf.export_to_hf) is not there yet: {err}")
    pytest.importorskip("transformers")
    from pangu_pro.eval.backends import HFBackend
    from pangu_pro.tensors import save_tensors

    _, tok = tokenizer
    pairs, _ = constructed_pairs(tok)
    state = bigram_weights(pairs, zero_layers=False, seed=1)  # every branch live: attention, FFN+SIAF, shortcut
    save_tensors(tmp_path / "w.safetensors", state)
    export_to_hf(tmp_path / "w.safetensors", CFG, tmp_path / "hf", progress=False)
    items = [tasks.piqa_item({"goal": g, "sol1": a, "sol2": b}, gold) for g, a, b, gold in PIQA]
    items.append(tasks.Example("what colour is the grass", (" green and blue", " red", " a brown dog"), 0))
    groups = [tasks.Group("piqa", "", items, items, shots_from_items=True)]
    ours = harness.evaluate_choice(groups, MindSporeBackend(model_with(state), 4), tok, shots=1, details=True)
    theirs = harness.evaluate_choice(groups, HFBackend(tmp_path / "hf", 4, max_length=CFG.seq_length + 1), tok,
                                     shots=1, details=True)
    for a, b in zip(ours["items"], theirs["items"]):
        np.testing.assert_allclose(a["loglik"], b["loglik"], atol=2e-4, rtol=1e-5)
        assert a["prediction"] == b["prediction"]
    assert ours["accuracy"] == theirs["accuracy"]
