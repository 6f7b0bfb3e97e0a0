"""One token convention in every tool (issue 29): <s> text </s> in preprocess, the eval request builder,
`generate`'s prompt and the exported AutoTokenizer; the export's tokenizer loads with transformers alone."""
import json
import os
import subprocess
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest.importorskip("torch")
pytest.importorskip("transformers")

from tests.test_convert import export_with_tokenizer, train_spm  # noqa: E402

pytestmark = pytest.mark.hf

# the usual edge cases of a SentencePiece-compatible tokenizer
EDGE_CASES = ["", " ", "  leading spaces", "several    spaces inside", "trailing space ",
              "two\nlines", "\nnewline first", "ends with a newline\n", "tab\tinside", "\ttab first", "a\r\nb",
              "unseen wörds: ŝ ∑ ‽", "emoji 🙂🚀 and ⚡", "🙂", "数据 中文字符 测试", "日本語とCJK、混ぜて。",
              "def convert(x):  return x * 2  # twice", "12345 numbers!"]

# Runs with sentencepiece and protobuf unimportable, as in a client that installed transformers alone.
CLIENT = """
import json, sys
for name in ("sentencepiece", "google", "google.protobuf"):
    sys.modules[name] = None
import transformers
from transformers.utils import is_protobuf_available, is_sentencepiece_available
assert not is_sentencepiece_available() and not is_protobuf_available()
tokenizer = transformers.AutoTokenizer.from_pretrained(sys.argv[1])
samples = json.loads(sys.stdin.read())
print(json.dumps({"class": type(tokenizer).__name__, "ids": [tokenizer(s)["input_ids"] for s in samples]}))
"""


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A tiny plain-LLaMA export with a byte-fallback BPE tokenizer: (folder, SentencePiece model path, processor)."""
    folder = tmp_path_factory.mktemp("export")
    spm_path, sp = train_spm(folder)
    assert export_with_tokenizer(folder, sp, spm_path) == 0
    return folder / "hf", spm_path, sp


def test_exported_tokenizer_needs_neither_sentencepiece_nor_protobuf(export):
    hf_dir, _, sp = export
    config = json.loads((hf_dir / "tokenizer_config.json").read_text())
    assert "add_prefix_space" not in config and config["add_bos_token"] is True
    run = subprocess.run([sys.executable, "-c", CLIENT, str(hf_dir)], input=json.dumps(EDGE_CASES),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["class"] == "LlamaTokenizerFast"
    assert any(sp.id_to_piece(i).startswith("<0x") for s in EDGE_CASES for i in sp.encode(s))  # byte fallback
    for sample, ids in zip(EDGE_CASES, result["ids"]):
        assert ids == [sp.bos_id()] + sp.encode(sample), repr(sample)


def test_one_string_gives_the_same_ids_in_every_tool(export, tmp_path, monkeypatch):
    import transformers

    from pangu_pro.cli import main
    from pangu_pro.config import load_config
    from pangu_pro.data.dataset import read_samples
    from pangu_pro.data.preprocess import preprocess
    from pangu_pro.eval.scoring import make_request
    from pangu_pro.model import generation

    hf_dir, spm_path, sp = export
    text = "  The quick brown fox, 数据 🙂\tjumps."
    expected = [sp.bos_id()] + sp.encode(text)
    # preprocess: the document <s> text </s> is exactly one sample
    (tmp_path / "doc.txt").write_text(text + "\n", encoding="utf-8")
    preprocess([tmp_path / "doc.txt"], spm_path, len(expected), tmp_path / "packed", workers=1, progress=False)
    assert read_samples(tmp_path / "packed").tolist() == [expected + [sp.eos_id()]]
    # eval: a request for the text split anywhere
    request = make_request(sp, text[:9], text[9:], sp.bos_id(), max_length=64)
    assert list(request.tokens) == expected
    # generate --prompt: the ids handed to the generator
    seen = []
    monkeypatch.setattr(generation.Generator, "generate", lambda self, prompts, sampling: seen.extend(prompts) or
                        [[] for _ in prompts])
    assert main(["generate", str(hf_dir.parent / "model.yaml"), "--tokenizer", str(spm_path), "--prompt", text,
                 "--max-new-tokens", "1"]) == 0
    assert seen == [expected]
    # the exported tokenizer, as a Hugging Face client calls it
    assert transformers.AutoTokenizer.from_pretrained(str(hf_dir))(text)["input_ids"] == expected
    assert load_config(hf_dir.parent / "model.yaml").model.bos_token_id == sp.bos_id()


def test_generate_warns_about_a_checkpoint_trained_on_old_shards(export, tmp_path, monkeypatch, capsys):
    import shutil

    from pangu_pro.cli import main
    from pangu_pro.model import generation

    hf_dir, _, _ = export
    old = tmp_path / "old_shards"
    old.mkdir()
    (old / "summary.json").write_text(json.dumps({"documents": 1}))  # written before token_convention existed
    step = tmp_path / "step_00000010"
    step.mkdir()
    shutil.copyfile(hf_dir.parent / "w.safetensors", step / "model.safetensors")
    (step / "state.json").write_text(json.dumps({"step": 10, "config": {"data": {"train_files": [str(old)]}}}))
    monkeypatch.setattr(generation.Generator, "generate", lambda self, prompts, sampling: [[] for _ in prompts])
    assert main(["generate", str(hf_dir.parent / "model.yaml"), "--checkpoint", str(step), "--prompt-ids", "1 5",
                 "--max-new-tokens", "1"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {step} was trained on old data: {old / 'summary.json'} has no 'token_convention'" in err
