"""What made each artefact, and the checks that compare two artefacts before a tool combines them.

Every artefact records where it comes from, where it is made:

    shards      DIR/summary.json           tokenizer (path, SHA-256, vocabulary size), sample_length
    checkpoint  step_N/state.json          the run's config; "provenance": the data's tokenizer and
                                           sample length (`data_record`); a remapped weights file holds
                                           its tokenizer's digest in its metadata (`checkpoint_tokenizer`)
    mask ckpt   masks/step_N/state.json    "teacher": the teacher's weights (`weights_record`)
    scores      round_K/scores.json        the shard files scored and their sample count
    selection   selection.json             "scores" and "data_files" (`selection_record`)

One check per consumer compares what it is about to combine and names both sides when they
disagree: `check_data` (train, resume, pre-flight, perplexity), `check_resume_config` (train
--resume), `check_selection` (an index file against the training data), `check_tokenizer_for_checkpoint`
(eval, convert to-hf), `check_checkpoint_data` (perplexity, train.init_weights), `check_same_weights`
(inherit --resume), `check_run_location` (a copied run directory, a relative output dir from another
working directory). docs/training.md lists them.
This module imports only base modules and reads JSON; it never builds a graph, so every check runs
in well under a second before anything else does.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional

from pangu_pro.io import WEIGHTS_NAME, file_sha256, read_json

SUMMARY_NAME = "summary.json"  # written by `pangu-pro preprocess` beside its shards
MINDRECORD_SUFFIX, MINDRECORD_INDEX = ".mindrecord", ".db"  # MindSpore writes X.mindrecord and X.mindrecord.db


class ProvenanceError(ValueError):
    """Two artefacts do not belong together (or one is not what the config says); the message names both."""


# ---------------------------------------------------------------- shards

def summary_of(path: str | Path) -> tuple[Optional[Path], Optional[dict]]:
    """The preprocess summary describing a shard folder or a shard file (in the folder beside it),
    as (summary path, contents); (None, None) for shards written without one."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    summary = folder / SUMMARY_NAME
    if not summary.is_file():
        return None, None
    data = read_json(summary)
    return (summary, data) if isinstance(data, dict) else (None, None)


def not_mindrecord(path: str | Path) -> Optional[str]:
    """Why `path` (a file named as training data) is not MindRecord data, or None if it looks like it.
    (A damaged `.mindrecord` is the shard check's to name, when the dataset opens it.)"""
    path = Path(path)
    if (path.is_file() and path.suffix != MINDRECORD_SUFFIX
            and not Path(str(path) + MINDRECORD_INDEX).is_file()):
        return (f"{path}: not MindRecord data (no {path.name}{MINDRECORD_INDEX} index beside it); text or JSON "
                f"lines must be tokenized and packed first: pangu-pro preprocess {path} --tokenizer T.model "
                f"--seq-length N --out DIR, then name DIR (docs/data.md)")
    return None


def data_problems(files: Iterable[str], key: str, *, seq_length: int, vocab_size: int,
                  tokenizer: Optional[str] = None, allow_shorter_samples: bool = False) -> list[str]:
    """What keeps the shards `files` (config key `key`) from feeding a model of `seq_length` and
    `vocab_size`, or from being the data of `tokenizer`: one line per problem, naming both sides.

    Paths that do not exist are left to the loader (it names them); shards without a summary.json
    are checked where they are read (the trainer's first batch)."""
    problems = []
    tokenizer_digest = file_sha256(tokenizer) if tokenizer and Path(tokenizer).is_file() else None
    if tokenizer and tokenizer_digest is None:
        problems.append(f"data.tokenizer: {tokenizer} not found")
    seen_tokenizers: dict[str, str] = {}
    for path in files:
        reason = not_mindrecord(path)
        if reason:
            problems.append(f"{key}: {reason}")
            continue
        where, summary = summary_of(path)
        if summary is None:
            continue
        written = summary.get("tokenizer") or {}
        length = summary.get("sample_length")
        if isinstance(length, int):
            wanted = seq_length + 1
            if length > wanted:
                problems.append(f"{key}: {where} packs samples of {length} tokens (seq_length {length - 1}), longer "
                                f"than model.seq_length {seq_length} + 1: raise model.seq_length or re-run "
                                f"preprocess with --seq-length {seq_length}")
            elif length < wanted and not allow_shorter_samples:
                problems.append(f"{key}: {where} packs samples of {length} tokens (preprocess --seq-length "
                                f"{length - 1}), shorter than model.seq_length {seq_length} + 1: the model would "
                                f"never see a context longer than {length - 1}; re-run preprocess with --seq-length "
                                f"{seq_length}, or set data.allow_shorter_samples: true if that is intended")
        size = written.get("vocab_size")
        if isinstance(size, int) and size != vocab_size:
            problems.append(f"{key}: {where} was written with a tokenizer of {size} pieces "
                            f"({written.get('path')}), but model.vocab_size is {vocab_size}: "
                            + ("token ids would fall outside the embedding" if size > vocab_size else
                               "the model's vocabulary is not this tokenizer's")
                            + "; set model.vocab_size to the tokenizer's size or preprocess with the model's tokenizer")
        digest = written.get("sha256")
        if digest:
            if tokenizer_digest and digest != tokenizer_digest:
                problems.append(f"data.tokenizer: {tokenizer} (sha256 {tokenizer_digest[:12]}…) is not the tokenizer "
                                f"{where} was written with ({written.get('path')}, sha256 {digest[:12]}…)")
            for other, other_digest in seen_tokenizers.items():
                if other_digest != digest:
                    problems.append(f"{key}: {where} and {other} were written with different tokenizers "
                                    f"(sha256 {digest[:12]}… and {other_digest[:12]}…)")
                    break
            seen_tokenizers[str(where)] = digest
    return problems


def check_data(config, files: Optional[Iterable[str]] = None, key: str = "data.train_files") -> None:
    """`data_problems` for `files` (default: data.train_files) against the config's model and
    tokenizer; raises ProvenanceError listing every problem."""
    problems = data_problems(config.data.train_files if files is None else files, key,
                             seq_length=config.model.seq_length, vocab_size=config.model.vocab_size,
                             tokenizer=config.data.tokenizer,
                             allow_shorter_samples=config.data.allow_shorter_samples)
    if problems:
        raise ProvenanceError("\n  ".join(problems))


def check_batch_length(seq: int, seq_length: int, allow_shorter_samples: bool, files) -> None:
    """The trainer's own check of the samples it reads (shards without a summary.json included)."""
    if seq > seq_length:
        raise ProvenanceError(f"model.seq_length: {seq_length} is shorter than the {seq}-token samples of {files}")
    if seq < seq_length and not allow_shorter_samples:
        raise ProvenanceError(f"data.train_files: {files} hold samples of {seq} + 1 tokens, shorter than "
                              f"model.seq_length {seq_length} + 1; re-run preprocess with --seq-length {seq_length}, "
                              "or set data.allow_shorter_samples: true if that is intended")


def data_record(files: Iterable[str]) -> dict:
    """What a checkpoint records about the data it was trained on: the tokenizer the shards were
    written with (from their summary.json) and the sample length; empty values when unknown."""
    for path in files:
        _, summary = summary_of(path)
        if summary is not None:
            written = summary.get("tokenizer") or {}
            return {"tokenizer_sha256": written.get("sha256"), "tokenizer_path": written.get("path"),
                    "vocab_size": written.get("vocab_size"), "sample_length": summary.get("sample_length")}
    return {}


# ---------------------------------------------------------------- checkpoints and tokenizers

def checkpoint_state(path: str | Path) -> Optional[dict]:
    """The state.json of the checkpoint a weights file or checkpoint folder belongs to, or None."""
    path = Path(path)
    state = (path if path.is_dir() else path.parent) / "state.json"
    if not state.is_file():
        return None
    data = read_json(state)
    return data if isinstance(data, dict) else None


def checkpoint_tokenizer(checkpoint: str | Path) -> dict:
    """The tokenizer a checkpoint's token ids belong to: its state.json's record of the training data
    (`data_record`), else the `tokenizer_sha256` its weights file's metadata holds (written by
    `tokenizer remap-checkpoint`); {} when neither records one."""
    state = checkpoint_state(checkpoint) or {}
    recorded = (state.get("provenance") or {}).get("data") or {}
    if recorded.get("tokenizer_sha256"):
        return recorded
    path = Path(checkpoint)
    weights = path / WEIGHTS_NAME if path.is_dir() else path
    if weights.is_file() and weights.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(weights), framework="numpy") as handle:
                digest = (handle.metadata() or {}).get("tokenizer_sha256")
        except Exception:  # noqa: BLE001 - a damaged file is the loader's to report, naming it
            return {}
        if digest:
            return {"tokenizer_sha256": digest, "tokenizer_path": f"recorded in {weights}"}
    return {}


def check_tokenizer_for_checkpoint(tokenizer: str | Path, checkpoint: str | Path) -> None:
    """Refuse `tokenizer` when the checkpoint records that its token ids belong to another one."""
    recorded = checkpoint_tokenizer(checkpoint)
    digest = recorded.get("tokenizer_sha256")
    if not digest or not Path(tokenizer).is_file():
        return
    actual = file_sha256(tokenizer)
    if actual != digest:
        raise ProvenanceError(f"{tokenizer} (sha256 {actual[:12]}…) is not the tokenizer checkpoint {checkpoint} was "
                              f"trained with ({recorded.get('tokenizer_path')}, sha256 {digest[:12]}…): its token "
                              "ids would mean other pieces; pass the training data's tokenizer")


def check_checkpoint_data(files: Iterable[str], key: str, checkpoint: str | Path) -> None:
    """Refuse shards written with another tokenizer than the data a checkpoint was trained on."""
    recorded = checkpoint_tokenizer(checkpoint)
    ours = data_record(files)
    theirs, mine = recorded.get("tokenizer_sha256"), ours.get("tokenizer_sha256")
    if theirs and mine and theirs != mine:
        raise ProvenanceError(f"{key}: the shards were written with the tokenizer {ours.get('tokenizer_path')} (sha256 "
                              f"{mine[:12]}…), but checkpoint {checkpoint} was trained on data of "
                              f"{recorded.get('tokenizer_path')} (sha256 {theirs[:12]}…): its token ids mean other "
                              "pieces; preprocess the data with the checkpoint's tokenizer")


def weights_record(path: str | Path) -> dict:
    """Identity of a weights file without hashing gigabytes: its resolved path, size and the
    SHA-256 recorded beside it when it has one (`pangu_pro.digests`)."""
    from pangu_pro.digests import recorded

    path = Path(path)
    return {"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": recorded(path)}


def check_same_weights(recorded: Optional[dict], current: dict, what: str, where: str) -> None:
    """Refuse when `current` (a `weights_record`) is not the weights `recorded` at `where`."""
    if not recorded:
        return
    if recorded.get("sha256") and current.get("sha256"):
        same = recorded["sha256"] == current["sha256"]
    else:
        same = (recorded.get("path"), recorded.get("bytes")) == (current.get("path"), current.get("bytes"))
    if not same:
        raise ProvenanceError(f"{where} was made with {what} {recorded.get('path')} ({_ident(recorded)}), but this run "
                              f"names {current.get('path')} ({_ident(current)}); resume with the same {what}, or "
                              "start afresh in another output directory")


def _ident(record: dict) -> str:
    return f"sha256 {record['sha256'][:12]}…" if record.get("sha256") else f"{record.get('bytes')} bytes"


# ---------------------------------------------------------------- scores and selections

def selection_record(scores_path: str | Path, scores_meta: dict) -> dict:
    """What a selection records about its origin: the scores file and the data those scores cover."""
    return {"scores": str(scores_path), "data_files": list(scores_meta.get("files") or []),
            "data_samples": scores_meta.get("num_samples")}


def selection_data(index_file: str | Path) -> tuple[Optional[list[str]], str]:
    """The shard files an index file was selected from, following selection.json -> scores.json;
    (None, why) when the chain is not recorded (an index file written by hand)."""
    index = Path(index_file)
    report_path = index.with_suffix(".json")
    if not report_path.is_file():
        return None, f"{report_path} not found"
    report = read_json(report_path)
    if report.get("data_files"):
        return list(report["data_files"]), str(report_path)
    scores = report.get("scores")
    if scores:
        scores_json = Path(scores).with_suffix(".json")
        if scores_json.is_file():
            files = read_json(scores_json).get("files")
            if files:
                return list(files), f"{report_path} -> {scores_json}"
    return None, f"{report_path} names no scores"


def check_same_shards(recorded: list[str], data_files: list[str], what: str, key: str) -> None:
    """Refuse when `what` was made on other shard files (`recorded`) than `data_files` (`key`)."""
    ours = [str(Path(p).resolve()) for p in data_files]
    if [str(Path(p).resolve()) for p in recorded] != ours:
        raise ProvenanceError(f"{what} was made on other data ({_files(recorded)}) than {key} ({_files(ours)}): its "
                              "indices would pick other samples")


def check_selection(index_file: str | Path, data_files: list[str]) -> None:
    """Refuse an index file selected on other shards than `data_files` (resolved shard files)."""
    selected, via = selection_data(index_file)
    if selected is not None:
        check_same_shards(selected, data_files, f"data.index_file: {index_file} ({via})", "data.train_files")


def _files(paths: list[str]) -> str:
    folders = sorted({str(Path(p).parent) for p in paths})
    return f"{len(paths)} shard(s) in {', '.join(folders[:3])}" + (" ..." if len(folders) > 3 else "")


# ---------------------------------------------------------------- resuming a run

# keys whose change would make a checkpoint's weights or data position mean something else (and
# train.batch_size when the samples read per micro step change, `micro_step_samples`)
BREAKING = ("model.", "data.train_files", "data.index_file", "data.shuffle", "data.seed", "data.allow_shorter_samples")
# numerics and kernels of the model section: the weights still fit, the arithmetic differs
MODEL_NUMERICS = ("model.compute_dtype", "model.use_flash_attention", "model.use_fused_kernels")
# bookkeeping that may change freely (parallel layouts are checked by the trainer, which merges)
FREE = ("train.output_dir", "train.log_every", "train.save_every", "train.keep_last", "train.eval_every",
        "train.eval_batches", "train.peak_flops", "train.init_weights", "data.eval_files", "data.tokenizer",
        "device.", "parallel.", "multi_round")


def flatten(mapping: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) or key.startswith(p + ".") for p in patterns)


def micro_step_samples(config: dict) -> Optional[int]:
    """Samples all ranks read per micro step: train.batch_size x data_parallel x pipeline micro batches.
    A checkpoint's data position (consumed_batches) counts in these units, so a resume must keep it;
    the per-rank batch may change with the layout (docs/parallel.md, Resuming on another layout)."""
    try:
        p = config.get("parallel") or {}
        micro = p.get("micro_batch_num", 1) if p.get("pipeline_stage", 1) > 1 else 1
        return int(config["train"]["batch_size"]) * int(p.get("data_parallel", 1)) * int(micro)
    except (KeyError, TypeError, ValueError):
        return None


def config_changes(recorded: dict, current: dict) -> tuple[list[str], list[str]]:
    """(breaking, deliberate): the changed keys from the recorded config to the current one, as
    "key: old -> new". Keys the recorded config lacks (added to pangu-pro since) are not compared."""
    old, new = flatten(recorded), flatten(current)
    position_moves = micro_step_samples(recorded) != micro_step_samples(current)
    breaking, deliberate = [], []
    for key in sorted(set(old) & set(new)):
        if old[key] == new[key] or _matches(key, FREE):
            continue
        line = f"{key}: {old[key]!r} -> {new[key]!r}"
        if key == "train.batch_size":
            if position_moves:
                breaking.append(f"{line} (samples per micro step, batch_size x data_parallel x pipeline micro "
                                f"batches: {micro_step_samples(recorded)} -> {micro_step_samples(current)})")
            continue
        (breaking if _matches(key, BREAKING) and not _matches(key, MODEL_NUMERICS) else deliberate).append(line)
    return breaking, deliberate


def check_resume_config(recorded: Optional[dict], current: dict, checkpoint: str | Path,
                        allow_changes: bool) -> list[str]:
    """Compare the config a checkpoint recorded with the one resuming it. Refuses a change that
    breaks the model or the data position; a deliberate change (lr, steps, ...) needs `allow_changes`.
    Returns the deliberate changes accepted (for the log)."""
    if not recorded:
        return []
    breaking, deliberate = config_changes(recorded, current)
    if breaking:
        raise ProvenanceError(f"{checkpoint} was written with another config; resuming would break the model or the "
                              f"data position: {'; '.join(breaking)}. Resume with the recorded values, or start a "
                              "new run (train.init_weights) in another train.output_dir")
    if deliberate and not allow_changes:
        raise ProvenanceError(f"{checkpoint} was written with another config: {'; '.join(deliberate)}. Pass "
                              "--allow-changes to resume with the new values (the schedule continues from the "
                              "checkpoint's step with them), or resume with the recorded ones")
    return deliberate


def check_run_location(config_path: str | Path, output_dir: str | Path, output_dir_overridden: bool) -> None:
    """A config that is a run directory's own config.yaml must name that directory as its output:
    a copied run directory (`cp -r runs/a runs/b`) still names runs/a, and a relative output dir read
    from another working directory names a folder there. Refuse, saying which is which."""
    config_path = Path(config_path)
    run_dir = config_path.parent
    if (output_dir_overridden or config_path.name != "config.yaml"
            or not ((run_dir / "checkpoints").is_dir() or (run_dir / "metrics.jsonl").is_file())):
        return
    named = Path(output_dir)
    if named.resolve() == run_dir.resolve():
        return
    relative = "" if named.is_absolute() else f" (relative to the working directory {os.getcwd()})"
    raise ProvenanceError(f"{config_path} is the config of the run directory {run_dir}, but its train.output_dir "
                          f"{str(output_dir)!r} names {named.resolve()}{relative}; a copied or moved run directory, "
                          f"or another working directory? Pass train.output_dir={run_dir} to write into {run_dir}, "
                          "or run from the directory the run was started in")


def check_output_folder(path: str | Path, key: str) -> None:
    """An output folder that exists as a file cannot hold a run."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ProvenanceError(f"{key}: {path} exists and is not a folder")
