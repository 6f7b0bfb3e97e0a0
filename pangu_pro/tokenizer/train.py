"""Train the big SentencePiece tokenizer (BPE or unigram, byte fallback) that is later pruned.

Special ids follow SentencePiece's defaults, which the model config's defaults already match:
``<unk>`` = 0, ``<s>`` = 1, ``</s>`` = 2, and no separate pad piece. The model config's
``pad_token_id: 0`` therefore points at ``<unk>``; that is safe because training data is packed
(no padding positions reach the loss) and, with byte fallback, ``<unk>`` is never produced.

Normalisation is the identity, extra whitespace is kept and digits are split (LLaMA-style), so that
``decode(encode(x)) == x`` holds for code and for full-width CJK punctuation, and the Hugging Face
fast tokenizer (which has no NFKC charsmap) reproduces SentencePiece exactly.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

from pangu_pro.io import atomic_path
from pangu_pro.tokenizer.vocab import read_model_proto


def train_tokenizer(inputs: Sequence[str | Path], model_path: str | Path, vocab_size: int,
                    model_type: str = "bpe", character_coverage: float = 0.9995,
                    user_defined_symbols: Sequence[str] = (), num_threads: int | None = None,
                    input_sentence_size: int = 0, max_sentence_length: int = 16384, seed: int = 1234) -> Path:
    """Train a SentencePiece model on text files `inputs` and write `model_path` (+ `.vocab`) atomically.

    Deterministic for fixed inputs and arguments (the sampling seed is fixed); uses all cores unless
    `num_threads` is given. `input_sentence_size` > 0 samples that many lines.
    """
    import sentencepiece as spm

    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"model type must be 'bpe' or 'unigram', got {model_type!r}")
    if vocab_size <= 0:
        raise ValueError(f"vocab size must be positive, got {vocab_size}")
    if not 0.0 < character_coverage <= 1.0:
        raise ValueError(f"character coverage must lie in (0, 1], got {character_coverage}")
    files = [Path(p) for p in inputs]
    if not files:
        raise ValueError("no input text files given")
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: corpus file not found")
    model_path = Path(model_path)
    if model_path.suffix != ".model":
        raise ValueError(f"{model_path}: the output name must end in .model")
    spm.set_random_generator_seed(seed)
    with atomic_path(model_path) as tmp_model, atomic_path(model_path.with_suffix(".vocab")) as tmp_vocab:
        prefix = tmp_model.with_name(tmp_model.name + "-spm")
        try:
            spm.SentencePieceTrainer.train(
                input=[str(p) for p in files], model_prefix=str(prefix), vocab_size=vocab_size,
                model_type=model_type, character_coverage=character_coverage, byte_fallback=True,
                user_defined_symbols=list(user_defined_symbols), unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
                split_digits=True, allow_whitespace_only_pieces=True, max_sentence_length=max_sentence_length,
                input_sentence_size=input_sentence_size, shuffle_input_sentence=True,
                num_threads=num_threads or os.cpu_count() or 1, minloglevel=2)
        except RuntimeError as err:
            raise ValueError(_explain(str(err), vocab_size, character_coverage, len(user_defined_symbols),
                                      files)) from None
        proto = read_model_proto(f"{prefix}.model")
        proto.trainer_spec.model_prefix = str(model_path.with_suffix(""))  # not the temporary name
        tmp_model.write_bytes(proto.SerializeToString())
        os.remove(f"{prefix}.model")
        os.replace(f"{prefix}.vocab", tmp_vocab)
    return model_path


_TOO_SMALL = re.compile(r"smaller than required_chars\. (\d+) vs (\d+)")
_TOO_BIG = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")


def _explain(message: str, vocab_size: int, coverage: float, user_symbols: int, files: Sequence[Path]) -> str:
    """SentencePiece's internal check failures as advice naming the limits and how to meet them."""
    if match := _TOO_SMALL.search(message):
        needed = int(match.group(2))
        fixed = 3 + 256 + user_symbols  # <unk> <s> </s>, the byte-fallback pieces, user symbols
        return (f"vocab size {vocab_size} is too small for this corpus: it needs at least {needed} pieces "
                f"({fixed} special, byte-fallback and user-defined pieces + {needed - fixed} characters "
                f"covering {coverage} of the text); pass --vocab-size {needed} or more, or a lower "
                "--character-coverage to keep fewer characters")
    if match := _TOO_BIG.search(message):
        most = int(match.group(2))
        return (f"vocab size {vocab_size} is more than this corpus supports (at most {most} pieces with "
                f"{files[0]}{' …' if len(files) > 1 else ''}); pass --vocab-size {most} or less, or train on "
                "more text")
    return f"SentencePiece training failed on {', '.join(map(str, files[:3]))}: {message.splitlines()[0][:300]}"
