"""A freshly trained and exported model in EleutherAI's lm-evaluation-harness (issue 29): the same
per-choice log-likelihoods and predictions as `pangu-pro eval --details`, lm-eval at its default settings
(device cpu), offline, in a client where sentencepiece and protobuf cannot be imported (`lm-eval[hf]` alone)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.hf]

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("lm_eval", reason="the lmeval extra: pip install -e .[lmeval]")

MODEL = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 160,
         "seq_length": 64, "siaf": False, "aug_shortcut": False, "compute_dtype": "float32"}
TASK = "pangu_local_piqa"
# PIQA-style items: goal, two solutions, the right one; solutions of several tokens, some unseen characters
ITEMS = [("Return the value of", "the attribute named by the string.", "a blue sky and green grass.", 0),
         ("The module provides", "a dog 🙂 over the lazy fox.", "functions for working with files.", 1),
         ("Raise an exception if", "the argument is not an integer.", "数据 and ünïcödé text.", 0),
         ("This function is called", "  twice, with two spaces first.", "when the object is deleted.", 1),
         ("The default value is", "None.", "Tiny\tlanguage models.", 0),
         ("Read the file and", "return its contents as a string.", "the quick brown fox.", 0)]

# lm-eval in a client without sentencepiece and protobuf; prints each item's per-choice log-likelihoods
CLIENT = """
import json, sys
for name in ("sentencepiece", "google", "google.protobuf"):
    sys.modules[name] = None
import lm_eval
from lm_eval.tasks import TaskManager
hf_dir, task_dir, task = sys.argv[1:4]
# defaults but the device: lm-eval's "cuda" does not exist here
results = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": hf_dir}, tasks=[task], device="cpu",
                                  task_manager=TaskManager(include_path=task_dir), log_samples=True)
samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
print(json.dumps({"loglik": [[float(r[0]) for r in s["filtered_resps"]] for s in samples],
                  "acc": results["results"][task]["acc,none"]}))
"""


def write_task(folder, data_file):
    """The lm-eval task of docs/eval.md: local JSON lines; context and choices as our PIQA loader builds them."""
    folder.mkdir()
    (folder / f"{TASK}.yaml").write_text(yaml.safe_dump({
        "task": TASK, "dataset_path": "json", "dataset_kwargs": {"data_files": {"validation": str(data_file)}},
        "validation_split": "validation", "output_type": "multiple_choice", "doc_to_text": "{{goal}}",
        "doc_to_choice": "{{[sol1, sol2]}}", "doc_to_target": "label",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}, sort_keys=False))


def test_lm_eval_gives_our_log_likelihoods_and_predictions(tmp_path):
    from pangu_pro.cli import main
    from pangu_pro.data.corpus import build_builtin_corpus
    from pangu_pro.tokenizer.train import train_tokenizer

    # train: corpus -> tokenizer -> shards (<s> text </s>) -> a few steps of a plain LLaMA model
    build_builtin_corpus(tmp_path / "corpus", size_mb=0.1, progress=False)
    tokenizer = train_tokenizer([tmp_path / "corpus" / "train.txt"], tmp_path / "tok.model", 600, num_threads=1)
    assert main(["preprocess", str(tmp_path / "corpus" / "train.txt"), "--tokenizer", str(tokenizer),
                 "--seq-length", "64", "--out", str(tmp_path / "shards"), "--workers", "1", "--quiet"]) == 0
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "model": {**MODEL, "vocab_size": 600},
        "data": {"tokenizer": str(tokenizer), "train_files": [str(tmp_path / "shards")]},
        "train": {"batch_size": 4, "steps": 30, "warmup_steps": 5, "lr": 3e-3, "save_every": 30,
                  "output_dir": str(tmp_path / "run")}}))
    assert main(["train", str(config), "--no-progress"]) == 0
    checkpoint = tmp_path / "run" / "checkpoints" / "step_00000030"
    assert main(["convert", "to-hf", "--checkpoint", str(checkpoint), "--config", str(config), "--tokenizer",
                 str(tokenizer), "--out", str(tmp_path / "hf"), "--quiet"]) == 0

    # the same items for `pangu-pro eval` (PIQA layout) and for lm-eval (one JSON-lines file with the label)
    data = tmp_path / "data"
    (data / "piqa").mkdir(parents=True)
    (data / "piqa" / "dev.jsonl").write_text("".join(
        json.dumps({"goal": g, "sol1": a, "sol2": b}) + "\n" for g, a, b, _ in ITEMS), encoding="utf-8")
    (data / "piqa" / "dev-labels.lst").write_text("".join(f"{label}\n" for *_, label in ITEMS))
    lm_data = tmp_path / "lm_piqa.jsonl"
    lm_data.write_text("".join(json.dumps({"goal": g, "sol1": a.strip(), "sol2": b.strip(), "label": label}) + "\n"
                               for g, a, b, label in ITEMS), encoding="utf-8")
    write_task(tmp_path / "tasks", lm_data)

    ours = tmp_path / "ours.json"
    assert main(["eval", str(config), "--checkpoint", str(checkpoint), "--tasks", "piqa", "--data-dir", str(data),
                 "--scoring", "sum", "--details", "--out", str(ours), "--no-progress"]) == 0
    ours = json.loads(ours.read_text())["tasks"]["piqa"]["items"]

    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf_home"), "HF_DATASETS_CACHE": str(tmp_path / "hf_datasets")}
    run = subprocess.run([sys.executable, "-c", CLIENT, str(tmp_path / "hf"), str(tmp_path / "tasks"), TASK],
                         capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-4000:]
    theirs = json.loads(run.stdout.strip().splitlines()[-1])

    assert len(theirs["loglik"]) == len(ours) == len(ITEMS)
    for item, mine, lm in zip(ITEMS, ours, theirs["loglik"]):
        np.testing.assert_allclose(lm, mine["loglik"], atol=1e-4, rtol=0, err_msg=item[0])
        assert int(np.argmax(lm)) == mine["prediction"], item[0]
    assert theirs["acc"] == pytest.approx(np.mean([m["prediction"] == m["gold"] for m in ours]))
