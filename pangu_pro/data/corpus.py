"""A built-in English corpus made offline from the Python standard library.

Every machine that runs Python has a few MB of English prose in its standard library: docstrings,
comments and the language reference that `pydoc` ships (``pydoc_data/topics.py``). This module turns
that text into a small, reproducible pretraining corpus, so that the whole pipeline can run without a
download.

Output format (``OUT/train.txt``, ``OUT/heldout.txt``): UTF-8, **one document per line**, every run of
whitespace inside a document collapsed to one space, ``\\n`` after each document. This is the format
`pangu-pro preprocess` and SentencePiece's trainer read directly.

Documents are, in this order for each ``.py`` file of the standard library (files in sorted path
order; folders named ``test``/``tests``/``idle_test`` and ``site-packages`` skipped):
  * each module, class and function docstring (found with `ast`);
  * each block of comments on consecutive lines (found with `tokenize`);
  * for ``pydoc_data/topics.py`` also each topic of the language reference.
A document is kept when it reads like prose (`is_prose`) and its text was not seen before (exact
de-duplication after whitespace normalisation). About 2% of documents, chosen by a hash of their
text, go to ``heldout.txt``. The same Python build gives byte-identical files; `manifest.json`
records the version, the counts and each file's sha256.
"""
from __future__ import annotations

import ast
import hashlib
import io
import platform
import re
import sys
import sysconfig
import tokenize
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from pangu_pro.io import atomic_path, atomic_write_json

SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "__pycache__"})
HELDOUT_PER_MILLE = 20  # ~2% of documents go to heldout.txt
MIN_WORDS = 4
MIN_LETTER_FRACTION = 0.6  # of the non-space characters; rejects rulers and commented-out code
_WHITESPACE = re.compile(r"\s+")
# Comments that are directives, not prose.
_DIRECTIVE = re.compile(r"^(!|\s*-\*-|\s*(type:|noqa|pragma|pylint:|fmt:))")


@dataclass
class CorpusStats:
    """What `build_builtin_corpus` read and kept."""

    files_scanned: int = 0
    files_unparsable: list[str] = field(default_factory=list)
    candidates: int = 0  # documents found before filtering
    not_prose: int = 0
    duplicates: int = 0
    by_source: dict[str, int] = field(default_factory=lambda: {"docstring": 0, "comment": 0, "pydoc_topic": 0})


def stdlib_root() -> Path:
    """The folder of the running interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path) -> list[Path]:
    """The standard library's .py files in sorted path order, without test folders and site-packages."""
    return [p for p in sorted(root.rglob("*.py"))
            if not SKIP_DIRS.intersection(p.relative_to(root).parts[:-1])]


def normalise(text: str) -> str:
    """Collapse every whitespace run (newlines included) to one space, so one document is one line."""
    return _WHITESPACE.sub(" ", text).strip()


def is_prose(text: str) -> bool:
    """True for text that reads like English: enough words, mostly letters."""
    if len(text.split(" ")) < MIN_WORDS:
        return False
    visible = text.replace(" ", "")
    letters = sum(c.isalpha() for c in visible)
    return letters >= MIN_LETTER_FRACTION * len(visible)


def docstrings(tree: ast.AST) -> Iterator[str]:
    """Docstrings of the module, classes and functions of `tree`, in source order."""
    nodes = [n for n in ast.walk(tree)
             if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    nodes.sort(key=lambda n: getattr(n, "lineno", 0))  # ast.walk is breadth-first
    for node in nodes:
        doc = ast.get_docstring(node, clean=True)
        if doc:
            yield doc


def comment_blocks(source: bytes) -> Iterator[str]:
    """Comments on consecutive lines joined into blocks, without the `#` marks and directives."""
    block: list[str] = []
    last_line = -2
    for tok in tokenize.tokenize(io.BytesIO(source).readline):
        if tok.type != tokenize.COMMENT:
            continue
        text = tok.string.lstrip("#").strip()
        if _DIRECTIVE.match(tok.string[1:]):
            continue
        line = tok.start[0]
        if line != last_line + 1 and block:
            yield " ".join(block)
            block = []
        if text:
            block.append(text)
        last_line = line
    if block:
        yield " ".join(block)


def pydoc_topics(tree: ast.AST) -> Iterator[str]:
    """The language-reference topics stored as `topics = {...}` in pydoc_data/topics.py."""
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
                and any(isinstance(t, ast.Name) and t.id == "topics" for t in node.targets)):
            for value in node.value.values:
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    yield value.value


def file_documents(path: Path, root: Path, stats: CorpusStats) -> Iterator[tuple[str, str]]:
    """(source kind, raw text) of every candidate document in one stdlib file."""
    source = path.read_bytes()
    try:
        tree = ast.parse(source, filename=str(path))
        comments = list(comment_blocks(source))
    except (SyntaxError, ValueError, tokenize.TokenError):  # a file for another Python version
        stats.files_unparsable.append(path.relative_to(root).as_posix())
        return
    for doc in docstrings(tree):
        yield "docstring", doc
    for comment in comments:
        yield "comment", comment
    if path.relative_to(root).as_posix() == "pydoc_data/topics.py":
        for topic in pydoc_topics(tree):
            yield "pydoc_topic", topic


def is_heldout(text: str) -> bool:
    """The deterministic document-level split: ~2% of documents by the sha256 of their text."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 1000 < HELDOUT_PER_MILLE


def iter_corpus(root: Path, stats: CorpusStats, progress: bool = False) -> Iterator[str]:
    """Every kept (normalised, de-duplicated, prose) document of the stdlib below `root`, in order."""
    from pangu_pro.progress import progress_bar

    seen: set[bytes] = set()
    files = stdlib_files(root)
    for path in progress_bar(files, desc="stdlib files", unit="file", disable=not progress):
        stats.files_scanned += 1
        for kind, raw in file_documents(path, root, stats):
            stats.candidates += 1
            text = normalise(raw)
            if not is_prose(text):
                stats.not_prose += 1
                continue
            key = hashlib.sha1(text.encode("utf-8")).digest()
            if key in seen:
                stats.duplicates += 1
                continue
            seen.add(key)
            stats.by_source[kind] += 1
            yield text


def split_documents(docs: Iterable[str], train_bytes: int) -> tuple[list[str], list[str], bool]:
    """Split `docs` into (train, heldout) until train holds `train_bytes`; third value: input ran out."""
    train: list[str] = []
    heldout: list[str] = []
    size = 0
    for doc in docs:
        if size >= train_bytes:
            return train, heldout, False
        if is_heldout(doc):
            heldout.append(doc)
        else:
            train.append(doc)
            size += len(doc.encode("utf-8")) + 1
    return train, heldout, True


def _write_lines(path: Path, docs: list[str]) -> dict:
    """Write one document per line atomically; return its manifest entry."""
    data = "".join(f"{doc}\n" for doc in docs).encode("utf-8")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return {"documents": len(docs), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def build_builtin_corpus(out: str | Path, size_mb: float = 6.0, progress: bool = True) -> dict:
    """Write OUT/train.txt, OUT/heldout.txt and OUT/manifest.json; return the manifest.

    Train stops at the first document that brings it to `size_mb` MB (10^6 bytes); when the standard
    library holds less, everything is written and the manifest says ``"exhausted": true``.
    """
    if size_mb <= 0:
        raise ValueError(f"--size-mb must be positive, got {size_mb}")
    out = Path(out)
    root = stdlib_root()
    stats = CorpusStats()
    train, heldout, exhausted = split_documents(iter_corpus(root, stats, progress), int(size_mb * 1e6))
    files = {"train.txt": _write_lines(out / "train.txt", train),
             "heldout.txt": _write_lines(out / "heldout.txt", heldout)}
    manifest = {
        "format": "UTF-8 text, one document per line, whitespace collapsed to single spaces",
        "source": "Python standard library: docstrings (ast), comment blocks (tokenize), pydoc topics",
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "size_mb_requested": size_mb,
        "exhausted": exhausted,
        "heldout_per_mille": HELDOUT_PER_MILLE,
        "files_scanned": stats.files_scanned,
        "files_unparsable": stats.files_unparsable,
        "candidates": stats.candidates,
        "dropped_not_prose": stats.not_prose,
        "dropped_duplicates": stats.duplicates,
        "documents_by_source": stats.by_source,
        "files": files,
    }
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def corpus_command(args) -> int:
    """`pangu-pro corpus builtin OUT [--size-mb N]`."""
    manifest = build_builtin_corpus(args.out, args.size_mb, progress=not args.quiet)
    for name, entry in manifest["files"].items():
        print(f"{Path(args.out) / name}: {entry['documents']} documents, {entry['bytes'] / 1e6:.2f} MB")
    if manifest["exhausted"]:
        print(f"note: the standard library of Python {manifest['python_version']} holds less than "
              f"{args.size_mb} MB of prose; wrote all of it", file=sys.stderr)
    return 0
