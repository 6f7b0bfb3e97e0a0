"""Which devices pangu-pro runs on: Ascend and the CPU; PANGU_PRO_DEVICE=gpu stops at once and says why."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pangu_pro.runtime import DEVICE_ENV, GPU_REFUSAL, device_target

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_is_refused_with_the_reason(monkeypatch):
    for name in ("gpu", "GPU", "cuda"):
        monkeypatch.setenv(DEVICE_ENV, name)
        with pytest.raises(ValueError) as err:
            device_target()
        assert str(err.value) == GPU_REFUSAL
    assert "CUDA 11.1 / 11.6" in GPU_REFUSAL and "PANGU_PRO_DEVICE=ascend" in GPU_REFUSAL
    monkeypatch.setenv(DEVICE_ENV, "npu")
    assert device_target() == "Ascend"


def test_the_launchers_stop_before_anything_starts_on_gpu():
    env = {**os.environ, DEVICE_ENV: "gpu"}
    done = subprocess.run(["bash", "-c", "source scripts/device.sh && detect_device"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "GPUs are not supported" in done.stderr and "CUDA 11.1/11.6" in done.stderr


def test_the_gpu_plugin_is_the_one_the_refusal_describes():
    """The refusal's facts, read from the installed wheel: a GPU plugin built for CUDA 11.6 (and 11.1)."""
    import mindspore

    plugins = Path(mindspore.__file__).parent / "lib" / "plugin"
    assert (plugins / "libmindspore_gpu.so.11.6").exists() and (plugins / "libmindspore_gpu.so.11.1").exists()


@pytest.mark.gpu
def test_where_a_gpu_is_present_mindspore_runs_on_it():
    """Where nvidia-smi lists a GPU: whether MindSpore 2.9's CUDA 11 plugin loads and multiplies there (the
    fact that would decide lifting the refusal). pangu-pro itself still refuses the device."""
    code = ("import numpy as np, mindspore as ms; ms.set_device('GPU'); x = ms.Tensor(np.eye(4, dtype=np.float32)); "
            "assert (ms.ops.matmul(x, x).asnumpy() == np.eye(4)).all()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
