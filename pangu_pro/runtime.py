"""Process-wide MindSpore set-up: graph mode on the device named by PANGU_PRO_DEVICE (CPU by default)."""
from __future__ import annotations

import os

import mindspore as ms

from pangu_pro.compile_log import COMPILE_LOG_ENV, log_compiles_at_exit

DEVICE_ENV = "PANGU_PRO_DEVICE"


# Why there is no GPU target (docs/ascend.md, "GPUs"): say it before MindSpore fails somewhere deeper.
GPU_REFUSAL = (f"{DEVICE_ENV}=gpu: not supported. MindSpore 2.9's wheel still carries a GPU plugin (built for "
               "CUDA 11.1 / 11.6 with cuDNN >= 7.6, mindspore/lib/plugin/gpu11.6), but its install pages list "
               "Ascend and CPU builds only, and pangu-pro's Ascend kernels (flash attention, fused RoPE / RmsNorm, "
               "bf16) and its tensor/pipeline/ZeRO layouts are untested there. Train on Ascend "
               f"({DEVICE_ENV}=ascend) or, for small runs, on the CPU ({DEVICE_ENV}=cpu)")


def device_target() -> str:
    """'CPU' or 'Ascend', from the PANGU_PRO_DEVICE environment variable ('gpu' is refused: GPU_REFUSAL)."""
    name = os.environ.get(DEVICE_ENV, "CPU").strip().lower()
    targets = {"cpu": "CPU", "ascend": "Ascend", "npu": "Ascend"}
    if name in ("gpu", "cuda"):
        raise ValueError(GPU_REFUSAL)
    if name not in targets:
        raise ValueError(f"{DEVICE_ENV}={name!r}: expected 'cpu' or 'ascend'")
    return targets[name]


def init_mindspore(seed: int | None = None) -> str:
    """Graph mode on the configured device; returns the device target."""
    os.environ.setdefault("GLOG_v", "3")
    target = device_target()
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device(target, int(os.environ.get("DEVICE_ID", "0")) if target == "Ascend" else None)
    if seed is not None:
        ms.set_seed(seed)
    if os.environ.get(COMPILE_LOG_ENV):
        log_compiles_at_exit(os.environ[COMPILE_LOG_ENV])
    return target




def apply_device_config(device_cfg, target: str | None = None) -> dict:
    """Apply the config's `device:` section on Ascend: `jit_config` jit_level through set_context and
    the memory pool cap through `mindspore.runtime.set_memory(max_size=...)` (the replacement of the
    deprecated `max_device_memory` context key). Nothing on the CPU. Returns what was applied."""
    target = target or device_target()
    applied = {}
    if target != "Ascend":
        return applied
    if device_cfg.jit_level is not None:
        applied["jit_config"] = {"jit_level": device_cfg.jit_level}
        ms.set_context(jit_config=applied["jit_config"])
    if device_cfg.max_device_memory_gb is not None:
        applied["max_size"] = f"{device_cfg.max_device_memory_gb:g}GB"
        ms.runtime.set_memory(max_size=applied["max_size"])
    return applied


def adapt_to_device(cfg, target: str | None = None, announce=print):
    """The model config as it can run on `target`.

    The CPU has no bf16 kernels and none of the fused Ascend kernels (mindspore-notes), so there the
    model computes in fp32 with the pure-op fallbacks; the numbers are the same up to rounding. Each
    change is announced, never made silently.
    """
    import dataclasses

    target = target or device_target()
    if target != "CPU":
        return cfg
    changes = {}
    if cfg.compute_dtype != "float32":
        changes["compute_dtype"] = "float32"
    if cfg.use_flash_attention:
        changes["use_flash_attention"] = False
    if cfg.use_fused_kernels:
        changes["use_fused_kernels"] = False
    if changes and announce is not None:
        announce(f"note: on the CPU the model runs with {', '.join(f'{k}={v}' for k, v in changes.items())} "
                 "(no bf16 or fused Ascend kernels there)")
    return dataclasses.replace(cfg, **changes) if changes else cfg
