"""Tensor + pipeline + sequence parallel on real NPUs (skipped elsewhere).

Run on one 8-NPU Ascend node, from the repository root:

    PANGU_PRO_DEVICE=ascend python -m pytest -m ascend tests/test_parallel_ascend.py

It launches tests/parallel_ascend_worker.py with msrun on 8 workers (logs in the test's tmp dir,
`worker_*.log`), then merges the per-rank checkpoints with the strategy files on the host.
"""
from __future__ import annotations

import glob
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("parallel_ascend_worker.py")


@pytest.mark.ascend
@pytest.mark.distributed
def test_dp2_mp2_pp2_trains_and_checkpoints_merge(tmp_path):
    from pangu_pro.model.distributed_ckpt import merge_rank_checkpoints, merge_strategies

    cmd = ["msrun", "--worker_num=8", "--local_worker_num=8", "--master_port=8129", f"--log_dir={tmp_path}",
           "--join=True", str(WORKER), str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(WORKER.parents[1])}
    result = subprocess.run(cmd, env=env, timeout=1800)
    assert result.returncode == 0, f"msrun failed; see {tmp_path}/worker_*.log"
    strategy = merge_strategies(sorted(glob.glob(str(tmp_path / "strategy" / "*.ckpt"))))
    files = [tmp_path / "checkpoints" / f"rank_{r}" / "step_3.safetensors" for r in range(8)]
    merged = merge_rank_checkpoints(files, strategy)
    assert merged["model.layers.0.attention.wq.weight"].shape == (128, 128)
    assert merged["lm_head.weight"].shape == (512, 128)
    assert all(np.isfinite(v).all() for v in merged.values())
