"""The token convention: how a text becomes the ids a model reads, the same in every tool.

LLaMA's convention (``"llama"``): every document is ``<s> text </s>``, where ``text`` is
SentencePiece's ``encode`` (no BOS, no EOS). Preprocess packs documents so; evaluation requests,
perplexity windows, generation prompts and an exported ``AutoTokenizer`` (``add_bos_token: true``)
start with ``<s>``; a LLaMA teacher imported with ``convert from-hf`` was trained so too.

A shard set records its convention in ``summary.json`` under `CONVENTION_KEY`. Shard sets written
before that key existed hold ``text </s>`` with no ``<s>`` (`OLD_CONVENTION`): a model trained on
them and scored with ``<s>`` first (or the other way round) sees inputs it never saw in training.
`check_shard_convention` refuses such data, naming it and `pangu-pro preprocess` as the fix;
`checkpoint_convention_problem` finds a checkpoint trained on such data (through the shard sets its
state.json's config snapshot names), which the tools that load a checkpoint warn about.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional, Sequence

TOKEN_CONVENTION = "llama"  # <s> text </s>
OLD_CONVENTION = "eos-only"  # text </s>: shard sets without CONVENTION_KEY (written before it was recorded)
CONVENTION_KEY = "token_convention"
DESCRIPTIONS = {TOKEN_CONVENTION: "<s> text </s>, LLaMA's", OLD_CONVENTION: "text </s> with no <s>"}


def prompt_ids(text_ids: Sequence[int], bos_id: int) -> list[int]:
    """The ids of a text the model continues (a prompt, a scored context): ``<s> text``."""
    return [bos_id, *text_ids]


def document_ids(text_ids: Sequence[int], bos_id: int, eos_id: int) -> list[int]:
    """The ids of a whole document as packed for training and perplexity: ``<s> text </s>``."""
    return [bos_id, *text_ids, eos_id]


PREPROCESS_FIX = "Re-run `pangu-pro preprocess` on the source text to rewrite the shards."


def convention_problem(summary: dict, where: str, wanted: str = TOKEN_CONVENTION,
                       fix: str = PREPROCESS_FIX) -> Optional[str]:
    """Why data described by `summary` (a shard set's summary.json, at `where`) does not fit the
    convention `wanted`, or None when it does. A summary without the key is the old convention."""
    have = summary.get(CONVENTION_KEY, OLD_CONVENTION)
    if have == wanted:
        return None
    recorded = (f"records {CONVENTION_KEY} = {have!r}" if CONVENTION_KEY in summary
                else f"has no {CONVENTION_KEY!r}: written before the convention was recorded, so {have!r}")
    return (f"{where} {recorded} ({DESCRIPTIONS.get(have, 'unknown')}), but pangu-pro trains and scores "
            f"with {wanted!r} ({DESCRIPTIONS.get(wanted, 'unknown')}); a model would be scored on inputs it "
            f"never saw in training. {fix}")


def shard_summaries(files: Iterable[str | Path]) -> list[Path]:
    """The summary.json of every preprocess folder among `files` (shard files or folders), once each."""
    found: list[Path] = []
    for raw in files:
        path = Path(raw)
        summary = (path if path.is_dir() else path.parent) / "summary.json"
        if summary.is_file() and summary not in found:
            found.append(summary)
    return found


def check_shard_convention(files: Iterable[str | Path]) -> None:
    """Raise ValueError when a shard set among `files` was written under another convention.
    MindRecord files outside a preprocess folder (no summary.json) carry no record and pass."""
    from pangu_pro.io import read_json

    for summary in shard_summaries(files):
        problem = convention_problem(read_json(summary), str(summary))
        if problem:
            raise ValueError(problem)


def checkpoint_convention_problem(checkpoint: str | Path) -> Optional[str]:
    """Why the model in `checkpoint` (a training checkpoint folder or its weights file) was trained
    under another convention, or None: the shard sets its state.json's config snapshot trained on, as
    their summaries read now. Weights without a state.json (imported, inherited) are not judged."""
    from pangu_pro.io import read_json

    path = Path(checkpoint)
    state = (path if path.is_dir() else path.parent) / "state.json"
    if not state.is_file():
        return None
    files = ((read_json(state).get("config") or {}).get("data") or {}).get("train_files") or []
    for summary in shard_summaries(files):
        problem = convention_problem(read_json(summary), str(summary), fix=(
            "Retrain (or continue training) on shards re-made by `pangu-pro preprocess`."))
        if problem:
            return f"{checkpoint} was trained on old data: {problem}"
    return None
