"""CLI commands of the data stage: `corpus builtin` and `preprocess`."""
from __future__ import annotations

import argparse


def _corpus(args: argparse.Namespace) -> int:
    from pangu_pro.data.corpus import corpus_command

    return corpus_command(args)


def _preprocess(args: argparse.Namespace) -> int:
    from pangu_pro.data.preprocess import preprocess_command

    return preprocess_command(args)


def register(subparsers) -> None:
    """Add `corpus builtin` and `preprocess` (modules load on use, so `--help` stays fast)."""
    corpus = subparsers.add_parser("corpus", help="build a text corpus",
                                   description="Build a text corpus (one document per line).")
    kinds = corpus.add_subparsers(dest="kind", metavar="KIND", required=True)
    builtin = kinds.add_parser(
        "builtin", help="offline English corpus from the Python standard library",
        description="Write OUT/train.txt, OUT/heldout.txt (one document per line) and OUT/manifest.json "
                    "from the docstrings, comments and pydoc topics of this Python's standard library. "
                    "Deterministic for a given Python version.")
    builtin.add_argument("out", metavar="OUT", help="output folder")
    builtin.add_argument("--size-mb", type=float, default=6.0,
                         help="stop when train.txt reaches this many MB (default 6; the standard library "
                              "may hold less, then all of it is written)")
    builtin.add_argument("--quiet", action="store_true", help="no progress bar")
    builtin.set_defaults(func=_corpus)

    pre = subparsers.add_parser(
        "preprocess", help="tokenize text into packed MindRecord shards",
        description="Tokenize documents (text: one per line; .jsonl/.ndjson/.json: one JSON object per line; "
                    "folders: searched recursively) with SentencePiece, append EOS to each, pack into samples "
                    "of seq_length + 1 tokens and write MindRecord shards plus DIR/summary.json.")
    pre.add_argument("inputs", nargs="+", metavar="INPUT", help="text / JSON-lines files or folders")
    pre.add_argument("--tokenizer", required=True, metavar="SPM.model", help="SentencePiece model")
    pre.add_argument("--seq-length", type=int, required=True, metavar="S",
                     help="model sequence length; samples hold S + 1 tokens")
    pre.add_argument("--out", required=True, metavar="DIR", help="output folder (must be empty or absent)")
    pre.add_argument("--shard-size", type=int, default=8192, metavar="N", help="samples per shard (default 8192)")
    pre.add_argument("--workers", type=int, default=None, metavar="K",
                     help="tokenizer processes (default: all cores)")
    pre.add_argument("--text-field", default="text", help="JSON field holding the document (default: text)")
    pre.add_argument("--overwrite", action="store_true", help="replace a previous output in DIR")
    pre.add_argument("--quiet", action="store_true", help="no progress bar")
    pre.set_defaults(func=_preprocess)
