"""What a semi-auto checkpoint's rank slices depend on (state.json's "layout"), without MindSpore:
the trainer compares it when resuming, the launcher's pre-flight before any worker starts."""
from __future__ import annotations


def checkpoint_layout(parallel_cfg, world: int) -> dict:
    """Resuming rank slices needs the same layout (else they are merged first)."""
    p = parallel_cfg
    return {"data_parallel": p.data_parallel, "model_parallel": p.model_parallel, "pipeline_stage": p.pipeline_stage,
            "vocab_parallel": p.vocab_parallel, "optimizer_shard": p.optimizer_shard, "world": world}
