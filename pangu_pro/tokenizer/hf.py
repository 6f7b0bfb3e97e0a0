"""Hugging Face tokenizer files for a SentencePiece model (for the conversion stage to ship).

`write_hf_tokenizer` converts with transformers' own Llama converter (LlamaTokenizerFast built
from the slow tokenizer) and saves tokenizer.json, tokenizer_config.json, special_tokens_map.json
and a copy of tokenizer.model, so `AutoTokenizer.from_pretrained(out_dir)` loads it. The fast
tokenizer is self-sufficient: tokenizer_config.json carries no key that makes transformers rebuild it
from tokenizer.model (`SLOW_REBUILD_KEYS`; that rebuild needs sentencepiece and protobuf in the
client), so a client needs transformers alone.

Checks against the model (plain values from the model config and the checkpoint, so this module
needs neither): the tokenizer's size must equal `vocab_size`, its `<s>`/`</s>` ids the config's
bos/eos ids, and its SHA-256 the digest the checkpoint records (a remapped checkpoint records its
compact tokenizer's); a mismatch is refused, naming the tokenizer file and the other source.

Choices: `add_bos_token` is True and `add_eos_token` False, so ``tok(text)`` gives ``<s>`` then
SentencePiece's `encode(text)`: the token convention of `pangu_pro.tokens` (every training document
starts with ``<s>``), which HF clients such as lm-eval expect of a LLaMA tokenizer. `legacy=True`
reproduces SentencePiece's dummy prefix exactly (our tokenizers are trained with identity normalisation,
so no charsmap is lost). Special-token names are the model's own pieces (`id_to_piece` of the
unk/bos/eos/pad ids). The pad token is the piece at the config's `pad_token_id` (default 0, `<unk>`: our
tokenizers have no pad piece, and packed data never uses `<unk>` as a target), with left padding, so
`tok(prompts, padding=True)` batches for generation and config.json's pad_token_id names the same token.

Unigram models are refused: transformers' converter gives unigram models a `tokenizers` Unigram
model whose Viterbi segmentation differs from SentencePiece's on some lines (about 1 in 600 of a
pruned model in our test), so ids would silently differ from training. Export BPE tokenizers.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Optional


def check_against_model(spm_model_path: str | Path, proto, *, source: str, vocab_size: Optional[int] = None,
                        bos_token_id: Optional[int] = None, eos_token_id: Optional[int] = None,
                        pad_token_id: Optional[int] = None, sha256: Optional[str] = None,
                        sha256_source: Optional[str] = None) -> None:
    """Refuse a tokenizer that does not fit the model: size, bos/eos ids, pad id in range, digest.
    `source` / `sha256_source` name where the model's values come from (config, checkpoint files)."""
    from pangu_pro.io import file_sha256

    size = len(proto.pieces)
    spec = proto.trainer_spec
    if vocab_size is not None and size != vocab_size:
        raise ValueError(f"{spm_model_path} has {size} pieces, but {source} says vocab_size = {vocab_size}: "
                         "this tokenizer does not belong to the model (a compact model needs its compact tokenizer)")
    for name, want, have in (("bos", bos_token_id, spec.bos_id), ("eos", eos_token_id, spec.eos_id)):
        if want is not None and want != have:
            raise ValueError(f"{spm_model_path}: {name} id is {have}, but {source} says {name}_token_id = {want}")
    if pad_token_id is not None and not 0 <= pad_token_id < size:
        raise ValueError(f"{source}: pad_token_id = {pad_token_id} is not an id of {spm_model_path} ({size} pieces)")
    if sha256 is not None:
        digest = file_sha256(spm_model_path)
        if digest != sha256:
            raise ValueError(f"{spm_model_path} (sha256 {digest[:12]}…) is not the tokenizer {sha256_source or source} "
                             f"records (sha256 {sha256[:12]}…)")


def special_tokens(proto, pad_token_id: Optional[int] = None) -> dict[str, str]:
    """The model's own special pieces by role: unk/bos/eos from the trainer spec, pad at `pad_token_id`
    (default: the spec's pad id, else the unk id)."""
    spec = proto.trainer_spec
    ids = {"unk_token": spec.unk_id, "bos_token": spec.bos_id, "eos_token": spec.eos_id}
    pad = pad_token_id if pad_token_id is not None else (spec.pad_id if spec.pad_id >= 0 else spec.unk_id)
    ids["pad_token"] = pad
    return {role: proto.pieces[i].piece for role, i in ids.items() if 0 <= i < len(proto.pieces)}


def write_hf_tokenizer(spm_model_path: str | Path, out_dir: str | Path, *, vocab_size: Optional[int] = None,
                       bos_token_id: Optional[int] = None, eos_token_id: Optional[int] = None,
                       pad_token_id: Optional[int] = None, sha256: Optional[str] = None,
                       source: str = "the model config", sha256_source: Optional[str] = None) -> Path:
    """Write Hugging Face tokenizer files for `spm_model_path` into `out_dir` (replacing old ones),
    after `check_against_model` with the given model values."""
    from transformers import LlamaTokenizerFast

    from pangu_pro.tokenizer.vocab import BPE, read_model_proto

    spm_model_path = Path(spm_model_path)
    proto = read_model_proto(spm_model_path)
    if proto.trainer_spec.model_type != BPE:
        raise ValueError(f"{spm_model_path}: not a BPE model; only BPE tokenizers are exported: transformers' "
                         "unigram conversion segments some lines differently from SentencePiece (about 1 line in "
                         "600 of a pruned unigram model), so the Hugging Face ids would not be the training ids")
    if proto.normalizer_spec.precompiled_charsmap:
        raise ValueError(f"{spm_model_path}: has a normalisation charsmap ({proto.normalizer_spec.name}); the "
                         "Hugging Face Llama tokenizer ignores it, so ids would differ. Train with identity "
                         "normalisation (pangu-pro tokenizer train does).")
    check_against_model(spm_model_path, proto, source=source, vocab_size=vocab_size, bos_token_id=bos_token_id,
                        eos_token_id=eos_token_id, pad_token_id=pad_token_id, sha256=sha256,
                        sha256_source=sha256_source)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".hf-") as tmp:
        # TOKEN_CONVENTION "llama": <s> before every text, no </s> after a prompt
        tokenizer = LlamaTokenizerFast(vocab_file=str(spm_model_path), from_slow=True, legacy=True,
                                       add_bos_token=True, add_eos_token=False, padding_side="left",
                                       add_prefix_space=proto.normalizer_spec.add_dummy_prefix,
                                       **special_tokens(proto, pad_token_id))
        tokenizer.save_pretrained(tmp)
        drop_slow_rebuild_keys(Path(tmp) / "tokenizer_config.json")
        for path in Path(tmp).iterdir():
            path.replace(out_dir / path.name)
        shutil.copyfile(spm_model_path, out_dir / "tokenizer.model")
    return out_dir


# LlamaTokenizerFast rebuilds itself from tokenizer.model (sentencepiece + protobuf in the client) whenever
# its config passes one of these, ignoring tokenizer.json; the conversion has already applied them.
SLOW_REBUILD_KEYS = ("add_prefix_space", "from_slow")


def drop_slow_rebuild_keys(config_path: Path) -> None:
    """Remove `SLOW_REBUILD_KEYS` from a saved tokenizer_config.json, so tokenizer.json alone is loaded."""
    from pangu_pro.io import atomic_write_json, read_json

    config = read_json(config_path)
    atomic_write_json(config_path, {k: v for k, v in config.items() if k not in SLOW_REBUILD_KEYS})
