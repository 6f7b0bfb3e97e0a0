"""Shared test set-up: MindSpore in graph mode on the CPU, unless an Ascend device is present."""
import os

import pytest

os.environ.setdefault("GLOG_v", "3")  # MindSpore: errors only
os.environ.setdefault("LOG_MF_PATH", os.path.join(os.path.expanduser("~"), ".cache", "pangu-pro", "mf_log"))


def _on_ascend() -> bool:
    return os.environ.get("PANGU_PRO_DEVICE", "CPU").lower() == "ascend"


def pytest_configure(config):
    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("Ascend" if _on_ascend() else "CPU")


def _has_gpu() -> bool:
    import shutil
    import subprocess

    return shutil.which("nvidia-smi") is not None and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


def pytest_collection_modifyitems(config, items):
    skips = {}
    if not _on_ascend():
        skips["ascend"] = pytest.mark.skip(reason="needs an Ascend NPU (set PANGU_PRO_DEVICE=ascend on a cluster)")
    if any("gpu" in item.keywords for item in items) and not _has_gpu():
        skips["gpu"] = pytest.mark.skip(reason="needs an NVIDIA GPU (nvidia-smi -L lists none)")
    for item in items:
        for marker, skip in skips.items():
            if marker in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def semi_auto(monkeypatch):
    """A semi-auto parallel context of 8 devices without devices (mindspore-notes): the group-size
    query is patched to 8; the context is reset afterwards so other tests run stand-alone."""
    import mindspore as ms
    import mindspore.communication as comm
    import mindspore.communication.management as management

    monkeypatch.setattr(comm, "get_group_size", lambda *a, **k: 8)
    monkeypatch.setattr(management, "get_group_size", lambda *a, **k: 8)
    ms.set_auto_parallel_context(parallel_mode="semi_auto_parallel", device_num=8, full_batch=True)
    yield
    ms.reset_auto_parallel_context()
