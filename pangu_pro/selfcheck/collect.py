"""The self-check's files: a finished run's results collected for the comparison (metrics, final
weights and optimizer state, rank digests; an inherit run's masks, report and student), and the inputs
every case starts from (the synthetic corpus, the initial weights).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from pangu_pro.selfcheck.compare import RANK_NOISE, RANK_WEIGHTS, rank_digests

def metrics_of(run: Path) -> tuple[dict, dict, list]:
    """(loss, grad_norm) by step (as strings, JSON keys) and the skipped steps from a run's metrics.jsonl."""
    loss, norm, skipped = {}, {}, []
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the run wrote no metrics (see its logs)")
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("type") == "train":
            loss[str(record["step"])] = record["loss"]
            norm[str(record["step"])] = record["grad_norm"]
            if record.get("skipped"):
                skipped.append(int(record["step"]))
    return loss, norm, skipped


def final_weights(run: Path, work: Path) -> Path:
    """The run's final weights file: merged first when the run saved per-rank slices."""
    from pangu_pro.train.checkpoint import latest_checkpoint

    if (run / "checkpoints").is_dir() and any(p.name.startswith("rank_") for p in (run / "checkpoints").iterdir()):
        from pangu_pro.train.merge import merge_run

        merge_run(run, work, overwrite=True)
        return work / "model.safetensors"
    latest = latest_checkpoint(run / "checkpoints")
    if latest is None:
        raise FileNotFoundError(f"{run}: no checkpoint")
    return latest / "model.safetensors"


def collect(run: str | Path, name: str, init: Optional[str], out: str | Path) -> dict:
    from pangu_pro.tensors import load_tensors

    run, out = Path(run), Path(out)
    loss, norm, skipped = metrics_of(run)
    weights = final_weights(run, out.parent / f"{name}_merged")
    moments = weights.parent / "optimizer.safetensors"
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in sorted((run / "logs").glob("worker_*.log"))]
    result = {"name": name, "run": str(run), "loss": loss, "grad_norm": norm, "weights": str(weights.resolve()),
              "moments": str(moments.resolve()) if moments.is_file() else None, "skipped": skipped,
              "first_step": min((int(s) for s in loss), default=1), "digests": rank_digests(texts, RANK_WEIGHTS)}
    if init:
        start, end = load_tensors(init)[0], load_tensors(weights)[0]
        result["weight_update"] = max(float(np.abs(end[n].astype(np.float64) - start[n]).max()) for n in start)
    out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


def collect_inherit(run: str | Path, name: str, workers: int, out: str | Path) -> dict:
    """An inherit run's masked-teacher loss per mask step (masks.jsonl), its inherit.json (loss report,
    teacher dtype), the per-rank digests from its worker logs (RUN/logs) and whether the student loads."""
    from pangu_pro.config import load_config
    from pangu_pro.io import read_json
    from pangu_pro.tensors import load_tensors
    from pangu_pro.model.weights import build_model

    run, out = Path(run), Path(out)
    path = run / "masks.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the run wrote no mask metrics (see its logs)")
    loss = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("type") == "masks":
            loss[str(record["step"])] = record["loss"]
    summary = read_json(run / "inherit.json")
    problems = []
    student = Path(summary["student"])
    try:
        build_model(load_config(student / "config.yaml").model, student)  # shapes checked against the config
        bad = [k for k, v in load_tensors(student / "model.safetensors")[0].items() if not np.isfinite(v).all()]
        if bad:
            problems.append(f"student weights not finite: {bad[:3]}")
    except Exception as err:  # noqa: BLE001 - reported as the case's failure
        problems.append(f"student {student} does not load: {err}")
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in sorted((run / "logs").glob("worker_*.log"))]
    result = {"name": name, "run": str(run), "workers": workers, "loss": loss, "losses": summary.get("losses"),
              "teacher_dtype": summary.get("teacher_dtype"), "student_problems": problems,
              "digests": rank_digests(texts), "noise_digests": rank_digests(texts, RANK_NOISE)}
    out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


# ---------------------------------------------------------------- inputs: data, initial weights

def write_data(out: str | Path, vocab: int, seq: int, samples: int, seed: int = 0) -> Path:
    """A learnable synthetic corpus (arithmetic progressions mod vocab) as one MindRecord shard."""
    from mindspore.mindrecord import FileWriter

    rng = np.random.default_rng(seed)
    rows = (rng.integers(0, vocab, (samples, 1)) + rng.integers(1, 4, (samples, 1)) * np.arange(seq + 1)) % vocab
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = FileWriter(str(path), shard_num=1, overwrite=True)
    writer.add_schema({"input_ids": {"type": "int32", "shape": [-1]}}, "tokens")
    writer.write_raw_data([{"input_ids": row.astype(np.int32)} for row in rows])
    writer.commit()
    return path


def write_init(config_path: str, out: str | Path, seed: int = 0) -> Path:
    from pangu_pro.config import load_config
    from pangu_pro.model.weights import build_model, save_weights

    model = build_model(load_config(config_path).model, seed=seed)
    save_weights(model, out)
    return Path(out)
