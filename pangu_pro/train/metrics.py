"""Throughput arithmetic and the metrics.jsonl log.

Training FLOPs per token (stated, as in the PaLM paper's MFU):

    6 * N_matmul  +  12 * L * S * H * D_h
    N_matmul  = weights used in matmuls: attention q/k/v/o, the FFN's three matrices, the augmented
                shortcut's two, and the LM head (the embedding lookup and the elementwise SIAF/norm
                parameters do no matmul); 6 = 2 (multiply-add) * 3 (forward + two backward matmuls)
    attention = QK^T and PV, 2 * 2 * S * H * D_h per token and layer forward, times 3 for training,
                over the full S x S square (the causal half is not discounted).

MFU = achieved FLOP/s / (peak FLOP/s per device * devices). The peak is train.peak_flops when the config
declares one; otherwise on Ascend the vendor figure below, and on the CPU the fp32 matmul peak of this
machine, measured once (`matmul_peak`, a few seconds) and cached in ~/.cache/pangu-pro/peak_flops.json
(`pangu-pro bench train` re-measures and keeps the higher value). CPU workers on one machine share its
cores, so each one's peak is the machine's divided by their number.
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Optional

from pangu_pro.config import ModelConfig
from pangu_pro.io import atomic_write_text, read_json

# Declared peak FLOP/s per device when train.peak_flops is not set (the CPU's is measured instead).
DEFAULT_PEAK_FLOPS = {
    "Ascend": 280e12,  # Ascend 910B-class, fp16/bf16 dense (vendor figure, rounded down); set train.peak_flops
}
PEAK_CACHE_NAME = "peak_flops.json"

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


def matmul_peak(n: int = 1024, chain: int = 8, repeats: int = 5) -> dict:
    """Best fp32 FLOP/s of a compiled chain of [n, n] matmuls (MindSpore, current device)."""
    import numpy as np
    from mindspore import Tensor, nn, ops

    class Chain(nn.Cell):
        def __init__(self):
            super().__init__()
            self.matmul = ops.MatMul()

        def construct(self, a, b):
            for _ in range(chain):
                a = self.matmul(a, b) * 0.03
            return a

    rng = np.random.default_rng(0)
    a = Tensor(rng.standard_normal((n, n)).astype(np.float32))
    b = Tensor((rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32))
    net = Chain()
    net(a, b).asnumpy()
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        net(a, b).asnumpy()
        best = min(best, time.perf_counter() - began)
    return {"n": n, "matmuls": chain, "flops_per_s": 2 * n ** 3 * chain / best, "dtype": "float32"}


def peak_cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pangu-pro" / PEAK_CACHE_NAME


def machine_key() -> str:
    """What the matmul peak depends on: host, CPU model, core count, MindSpore version."""
    import mindspore

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo", encoding="utf-8")
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{platform.node()} | {cpu} | {os.cpu_count()} cpus | mindspore {mindspore.__version__}"


def record_cpu_peak(measured: dict) -> float:
    """Keep the higher of `measured` and the cached peak of this machine; returns the kept FLOP/s."""
    path = peak_cache_path()
    try:
        cache = read_json(path)
    except (OSError, ValueError):
        cache = {}
    key = machine_key()
    old = cache.get(key, {})
    load = os.getloadavg()[0]
    if measured["flops_per_s"] > old.get("flops_per_s", 0.0):
        cache[key] = {**measured, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      "load_average": load}  # the load this value was measured under
    else:  # the higher value stays; the quietest load it was checked under is what counts
        cache[key] = {**old, "load_average": min(load, old.get("load_average", load))}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(cache, indent=2) + "\n")
    return cache[key]["flops_per_s"]


def cpu_peak_flops(announce=None) -> float:
    """This machine's fp32 matmul peak: from the cache, else measured now and cached. A cached value
    measured while other jobs loaded the cores is measured again once the machine is quieter."""
    try:
        cached = read_json(peak_cache_path()).get(machine_key())
    except (OSError, ValueError):
        cached = None
    if cached:
        was_loaded = cached.get("load_average", 0.0) > (os.cpu_count() or 1)
        if not (was_loaded and os.getloadavg()[0] < cached["load_average"] / 2):
            return float(cached["flops_per_s"])
    peak = record_cpu_peak(matmul_peak())
    if announce is not None:
        announce(f"fp32 matmul peak of this machine: {peak / 1e9:.1f} GFLOP/s, measured once for MFU "
                 f"(cached in {peak_cache_path()})")
    return peak


def device_peak_flops(device: str, declared: Optional[float], workers: int = 1, announce=None) -> float:
    """Peak FLOP/s of one worker's device for MFU (module doc)."""
    if declared is not None:
        return declared
    if device in DEFAULT_PEAK_FLOPS:
        return DEFAULT_PEAK_FLOPS[device]
    return cpu_peak_flops(announce) / max(1, workers)


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
        if not self.path.is_file():  # resumed into a new output folder (e.g. under another layout): nothing to drop
            return
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
