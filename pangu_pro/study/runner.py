"""Running a study's arms: every arm is an ordinary training config, trained by the trainer and scored on
held-out data; a finished arm is kept (`WORK/arms/<name>.seed<k>.json`) and never rerun while its config
is unchanged, so a killed study resumes at the first unfinished arm (the trainer resumes inside an arm).

The data: the built-in corpus (standard-library prose) as byte ids, so a held-out loss converts exactly
to bits per byte (`byte_data`). Every arm trains in this process on one device (docs/studies.md says
what is not done yet: the user's own shards, arms launched through `run_distribute.sh`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np


from pangu_pro.io import atomic_write_json, read_json


@dataclass
class Arm:
    """One training run of a study: `config` is an ordinary config mapping (model, data, train; the
    train.output_dir is set by the runner), `factors` the values the analysis reads (depth, lr rule, ...)."""

    name: str
    seed: int
    config: dict
    factors: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.name}.seed{self.seed}"


def arm_config(arm: Arm, work: Path):
    """The arm's validated Config, training into WORK/runs/<key>."""
    from pangu_pro.config import config_from_dict

    mapping = {**arm.config, "train": {**arm.config.get("train", {}), "output_dir": str(work / "runs" / arm.key)}}
    return config_from_dict(mapping, f"study arm {arm.key}")


def train_arm(config) -> tuple[Path, float]:
    """Train (or finish training) `config`; its final checkpoint and the seconds this call trained."""
    from pangu_pro.rounds.driver import final_checkpoint
    from pangu_pro.train.checkpoint import CHECKPOINTS, latest_checkpoint
    from pangu_pro.train.trainer import train

    out = Path(config.train.output_dir)
    began = time.perf_counter()
    resume = "auto" if latest_checkpoint(out / CHECKPOINTS) is not None else None
    if resume is None or read_json(latest_checkpoint(out / CHECKPOINTS) / "state.json")["step"] < config.train.steps:
        train(config, resume, progress=False, announce=lambda *_: None)
    return final_checkpoint(out, config.train.steps), time.perf_counter() - began


def median_step_ms(run: Path) -> float:
    """Median training step time of a run from its metrics.jsonl, leaving out the first logged interval
    (it holds the graph compile)."""
    import json

    from pangu_pro.train.metrics import METRICS_NAME

    times = [float(line["step_time_s"]) for line in map(json.loads, (run / METRICS_NAME).read_text().splitlines())
             if line.get("type") == "train" and "step_time_s" in line]
    times = times[1:] or times
    return 1000.0 * float(np.median(times)) if times else float("nan")


def heldout_loss(config, checkpoint: Path) -> float:
    from pangu_pro.train.evaluate import perplexity

    return float(perplexity(config, checkpoint, config.data.eval_files)["loss"])


def run_arms(arms: list[Arm], work: Path, measure: Callable[[object, Path], dict], *, progress: bool = True,
             desc: str = "arms") -> list[dict]:
    """Every arm's result: kept ones read back, the others trained, measured by `measure(config,
    checkpoint)` (a dict of numbers) and written atomically."""
    from pangu_pro.model.params import count_parameters
    from pangu_pro.progress import progress_bar

    results = []
    bar = progress_bar(total=len(arms), disable=not progress, desc=desc, unit="arm")
    try:
        for arm in arms:
            path = work / "arms" / f"{arm.key}.json"
            kept = read_json(path) if path.is_file() else None
            if kept is None or kept.get("config") != arm.config:
                config = arm_config(arm, work)
                checkpoint, seconds = train_arm(config)
                kept = {"name": arm.name, "seed": arm.seed, "factors": arm.factors, "config": arm.config,
                        "parameters": count_parameters(config.model).total, "steps": config.train.steps,
                        "train_seconds": seconds, "step_ms": median_step_ms(Path(config.train.output_dir)),
                        **measure(config, checkpoint)}
                atomic_write_json(path, kept)
            results.append(kept)
            bar.update(1)
    finally:
        bar.close()
    return results


# ------------------------------------------------------------------------------------ built-in data

def byte_data(work: Path, corpus_mb: float, seq: int, eval_rows: int) -> dict:
    """The built-in corpus as byte-id shards (train, held-out) under WORK/data, made once; returns the
    folders, the vocabulary size and the held-out target count of bytes and of tokens."""
    from pangu_pro.bench.inherit import BYTE_OFFSET, VOCAB, byte_rows, write_shards
    from pangu_pro.data.corpus import build_builtin_corpus

    record = work / "data" / "data.json"
    if record.is_file():
        return read_json(record)
    corpus = work / "corpus"
    if not (corpus / "manifest.json").is_file():
        build_builtin_corpus(corpus, corpus_mb, progress=False)
    train = byte_rows(corpus / "train.txt", seq)
    heldout = byte_rows(corpus / "heldout.txt", seq)[:eval_rows]
    targets = heldout[:, 1:]
    data = {"train": str(write_shards(train, work / "data" / "train")),
            "heldout": str(write_shards(heldout, work / "data" / "heldout")),
            "vocab": VOCAB, "train_rows": int(len(train)), "heldout_rows": int(len(heldout)),
            "heldout_tokens": int(targets.size), "heldout_bytes": int((targets >= BYTE_OFFSET).sum())}
    atomic_write_json(record, data)
    return data


def seed_spread(results: list[dict], key: str, by: str = "name") -> dict[str, tuple[float, float, int]]:
    """Per arm name (or factor `by`), mean ± sd of `key` over seeds and the number of seeds."""
    from pangu_pro.study.stats import mean_sd

    groups: dict[str, list[float]] = {}
    for r in results:
        groups.setdefault(str(r["name"] if by == "name" else r["factors"][by]), []).append(float(r[key]))
    return {name: (*mean_sd(values), len(values)) for name, values in groups.items()}


def by_seed(results: list[dict], name: str, key: str) -> dict[int, float]:
    return {int(r["seed"]): float(r[key]) for r in results if r["name"] == name}


def paired(results: list[dict], a: str, b: str, key: str) -> Optional[dict]:
    """`stats.paired_difference` of arm a − arm b over the seeds both have."""
    from pangu_pro.study.stats import paired_difference

    left, right = by_seed(results, a, key), by_seed(results, b, key)
    seeds = sorted(set(left) & set(right))
    return paired_difference([left[s] for s in seeds], [right[s] for s in seeds]) if seeds else None


def nats_to_bits_per_byte(loss: float, data: dict) -> float:
    from pangu_pro.study.stats import bits_per_byte

    return bits_per_byte(loss, data["heldout_tokens"], data["heldout_bytes"]) if math.isfinite(loss) else loss
