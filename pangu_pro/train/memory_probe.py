"""`pangu-pro plan CONFIG --measure`: build the training step as `train` would, compile it, run one
step on synthetic tokens, and read the framework's own peak device memory beside the plan's estimate.

On Ascend the number is `mindspore.runtime.max_memory_allocated()` (the memory pool's peak); launch a
multi-device layout with msrun like a training run, and each rank measures its own stage. MindSpore's
CPU backend reports no device memory (that call returns 0 there), so on the CPU the probe says so
and reports the process's peak resident memory instead, which also counts Python and MindSpore.
"""
from __future__ import annotations

import dataclasses
import resource
import sys
from dataclasses import dataclass
from typing import Optional

import numpy as np

from pangu_pro.config import Config

GIB = 1024 ** 3


@dataclass
class Measurement:
    target: str
    rank: int
    stage: int
    estimate: float  # bytes, the plan's total for this rank's stage under the configured recompute
    device_peak: Optional[float]  # bytes; None when the backend reports none (CPU)
    process_peak_rss: float  # bytes

    def describe(self) -> str:
        head = f"rank {self.rank} (stage {self.stage}) on {self.target}: plan estimate {self.estimate / GIB:.3f} GiB"
        if self.device_peak is not None:
            ratio = self.device_peak / self.estimate if self.estimate else float("nan")
            return f"{head}; measured device peak {self.device_peak / GIB:.3f} GiB ({ratio:.2f}x the estimate)"
        return (f"{head}; measured: none — MindSpore's CPU backend reports no device memory "
                f"(mindspore.runtime.max_memory_allocated() is 0); process peak RSS "
                f"{self.process_peak_rss / GIB:.3f} GiB (includes Python and MindSpore itself)")


def _peak_rss() -> float:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(kib if sys.platform == "darwin" else kib * 1024)


def measure_step_memory(config: Config) -> Measurement:
    """Compile and run one training step of `config` on this process's device (see the module doc)."""
    import mindspore as ms
    from mindspore import Tensor

    from pangu_pro.model.plan import memory_plan
    from pangu_pro.runtime import adapt_to_device, apply_device_config, init_mindspore
    from pangu_pro.train.trainer import build_training, setup_parallel

    target = init_mindspore()
    apply_device_config(config.device, target)
    par = setup_parallel(config)
    config = dataclasses.replace(config, model=adapt_to_device(config.model, target, None))
    _, _, _, step_fn = build_training(config, par)
    tc, m = config.train, config.model
    rows = tc.batch_size * par.read_factor
    rng = np.random.default_rng(tc.seed)
    batches = [Tensor(rng.integers(0, m.vocab_size, (rows, m.seq_length + 1)).astype(np.int32))
               for _ in range(tc.grad_accum_steps)]
    step_fn.compile(batches)
    step_fn(batches, 0.0)
    stage = par.rank // max(1, par.world // config.parallel.pipeline_stage) if par.semi_auto else 0
    estimate = memory_plan(config)[stage].total(config.parallel.recompute)
    peak = float(ms.runtime.max_memory_allocated()) if target != "CPU" else 0.0
    return Measurement(target, par.rank, stage, estimate, peak or None, _peak_rss())
