"""Throughput arithmetic and the metrics.jsonl log.

Training FLOPs per token (stated, as in the PaLM paper's MFU):

    6 * N_matmul  +  12 * L * S * H * D_h
    N_matmul  = weights used in matmuls: attention q/k/v/o, the FFN's three matrices, the augmented
                shortcut's two, and the LM head (the embedding lookup and the elementwise SIAF/norm
                parameters do no matmul); 6 = 2 (multiply-add) * 3 (forward + two backward matmuls)
    attention = QK^T and PV, 2 * 2 * S * H * D_h per token and layer forward, times 3 for training,
                over the full S x S square (the causal half is not discounted).

MFU = achieved FLOP/s / (peak FLOP/s per device * devices).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

from pangu_pro.config import ModelConfig
from pangu_pro.io import atomic_write_text

# Peak FLOP/s per device when train.peak_flops is not set.
DEFAULT_PEAK_FLOPS = {
    "CPU": 80e9,  # fp32 matmul on the project's 2-core machine (mindspore-notes; `pangu-pro bench train` re-measures)
    "Ascend": 280e12,  # Ascend 910B-class, fp16/bf16 dense (vendor figure, rounded down); set train.peak_flops
}

METRICS_NAME = "metrics.jsonl"


def matmul_params(cfg: ModelConfig) -> int:
    """Weights that take part in matmuls, per the module doc."""
    d, heads, kv, hd, f = cfg.hidden_size, cfg.num_heads, cfg.kv_heads, cfg.head_dim, cfg.intermediate_size
    per_layer = d * heads * hd * 2 + d * kv * hd * 2 + 3 * d * f
    if cfg.aug_shortcut:
        per_layer += 2 * d * cfg.aug_shortcut_dim
    return cfg.num_layers * per_layer + cfg.vocab_size * d


def train_flops_per_token(cfg: ModelConfig, seq_length: int) -> float:
    """6 * N_matmul + 12 * L * S * H * D_h (module doc)."""
    return 6.0 * matmul_params(cfg) + 12.0 * cfg.num_layers * seq_length * cfg.num_heads * cfg.head_dim


def mfu(flops_per_token: float, tokens_per_second: float, peak_flops: float, devices: int = 1) -> float:
    return flops_per_token * tokens_per_second / (peak_flops * devices)


class MetricsLog:
    """Append-only JSON lines, flushed per line. `truncate_after(step)` drops lines of steps past `step`
    (and a torn last line), used when a run resumes from an earlier checkpoint."""

    def __init__(self, path: str | Path, *, fresh: bool):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fresh:
            atomic_write_text(self.path, "")
        self._handle = None

    def truncate_after(self, step: int) -> None:
        kept = [json.dumps(r) + "\n" for r in read_metrics(self.path) if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(kept))

    def write(self, record: dict) -> None:
        if self._handle is None:
            self._handle = open(self.path, "a", encoding="utf-8")
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self._handle.write(json.dumps(clean) + "\n")
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def read_metrics(path: str | Path, kind: Optional[str] = None) -> list[dict]:
    """The records of a metrics.jsonl (a run dir or the file), optionally only of one `type`."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics file")
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line torn by a killed run
            continue
        if isinstance(record, dict) and (kind is None or record.get("type") == kind):
            records.append(record)
    return records
