"""Hugging Face tokenizer files for a SentencePiece model (for the conversion stage to ship).

`write_hf_tokenizer` converts with transformers' own Llama converter (LlamaTokenizerFast built
from the slow tokenizer) and saves tokenizer.json, tokenizer_config.json, special_tokens_map.json
and a copy of tokenizer.model, so `AutoTokenizer.from_pretrained(out_dir)` loads it.

Choices: `add_bos_token` and `add_eos_token` are False, so the Hugging Face ids equal
SentencePiece's `encode(text)` (which adds neither); callers add `<s>` themselves, as our packed
data does. `legacy=True` reproduces SentencePiece's dummy prefix exactly (our tokenizers are trained
with identity normalisation, so no charsmap is lost). `pad_token` is unset (pad id 0 is `<unk>`,
see `pangu_pro.tokenizer.train`).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path


def write_hf_tokenizer(spm_model_path: str | Path, out_dir: str | Path) -> Path:
    """Write Hugging Face tokenizer files for `spm_model_path` into `out_dir` (replacing old ones)."""
    from transformers import LlamaTokenizerFast

    from pangu_pro.tokenizer.vocab import read_model_proto

    spm_model_path = Path(spm_model_path)
    proto = read_model_proto(spm_model_path)
    if proto.normalizer_spec.precompiled_charsmap:
        raise ValueError(f"{spm_model_path}: has a normalisation charsmap ({proto.normalizer_spec.name}); the "
                         "Hugging Face Llama tokenizer ignores it, so ids would differ. Train with identity "
                         "normalisation (pangu-pro tokenizer train does).")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".hf-") as tmp:
        tokenizer = LlamaTokenizerFast(vocab_file=str(spm_model_path), from_slow=True, legacy=True,
                                       add_bos_token=False, add_eos_token=False,
                                       add_prefix_space=proto.normalizer_spec.add_dummy_prefix)
        tokenizer.save_pretrained(tmp)
        for path in Path(tmp).iterdir():
            path.replace(out_dir / path.name)
        shutil.copyfile(spm_model_path, out_dir / "tokenizer.model")
    return out_dir
