"""A SentencePiece model as plain data: pieces, scores and types read from its protobuf.

The selection logic in `pangu_pro.tokenizer.select` works on a `Vocab` (pure Python data), so it can
be tested without a trained model; `read_vocab` builds one from a `.model` file, and
`write_compact_model` writes the pruned model back through sentencepiece's own protobuf.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

# sentencepiece_model.proto, ModelProto.SentencePiece.Type
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# ModelProto.TrainerSpec.ModelType
UNIGRAM, BPE = 1, 2
SPACE = "\u2581"  # "▁", SentencePiece's whitespace symbol


@dataclass(frozen=True)
class Vocab:
    """What the pruning needs to know about a SentencePiece model."""

    pieces: tuple[str, ...]
    scores: tuple[float, ...]
    types: tuple[int, ...]
    model_type: str  # "bpe" or "unigram"

    def __post_init__(self) -> None:
        if not (len(self.pieces) == len(self.scores) == len(self.types)):
            raise ValueError("pieces, scores and types must have the same length")
        if self.model_type not in ("bpe", "unigram"):
            raise ValueError(f"model_type must be 'bpe' or 'unigram', got {self.model_type!r}")

    def __len__(self) -> int:
        return len(self.pieces)


def read_model_proto(path: str | Path):
    """Parse a SentencePiece `.model` file into a ModelProto; errors name the file."""
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: SentencePiece model not found")
    proto = model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as err:  # protobuf raises DecodeError and others
        raise ValueError(f"{path}: not a SentencePiece model ({err})") from None
    if not proto.pieces:
        raise ValueError(f"{path}: SentencePiece model has no pieces")
    return proto


def vocab_from_proto(proto, source: str = "") -> Vocab:
    model_type = {BPE: "bpe", UNIGRAM: "unigram"}.get(proto.trainer_spec.model_type)
    if model_type is None:
        raise ValueError(f"{source or 'model'}: model type {proto.trainer_spec.model_type} is not supported "
                         "(only BPE and unigram models can be compressed)")
    return Vocab(pieces=tuple(p.piece for p in proto.pieces), scores=tuple(p.score for p in proto.pieces),
                 types=tuple(p.type for p in proto.pieces), model_type=model_type)


def read_vocab(path: str | Path) -> Vocab:
    """The `Vocab` of the SentencePiece model at `path`."""
    return vocab_from_proto(read_model_proto(path), str(path))


def compact_model_bytes(proto, new2old: Sequence[int]) -> bytes:
    """Serialize a copy of `proto` keeping only the pieces `new2old` (increasing old ids), in order.

    Scores are kept, so BPE merges happen in the same order; the trainer spec's vocabulary size and
    special ids are updated (an id that is not kept becomes -1, i.e. disabled).
    """
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    new2old = [int(i) for i in new2old]
    if any(b <= a for a, b in zip(new2old, new2old[1:])):
        raise ValueError("new2old must be strictly increasing")
    old2new = {old: new for new, old in enumerate(new2old)}
    compact = model_pb2.ModelProto()
    compact.CopyFrom(proto)
    del compact.pieces[:]
    for old in new2old:
        compact.pieces.add().CopyFrom(proto.pieces[old])
    spec = compact.trainer_spec
    spec.vocab_size = len(new2old)
    for name in ("unk_id", "bos_id", "eos_id", "pad_id"):
        old = getattr(spec, name)
        setattr(spec, name, old2new.get(old, -1) if old >= 0 else old)
    return compact.SerializeToString()


def old2new_array(new2old: np.ndarray, old_size: int) -> np.ndarray:
    """The inverse map: old id -> new id, -1 where the old id was dropped."""
    old2new = np.full(old_size, -1, dtype=np.int64)
    old2new[np.asarray(new2old, dtype=np.int64)] = np.arange(len(new2old), dtype=np.int64)
    return old2new
