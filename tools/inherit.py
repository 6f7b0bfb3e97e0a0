#!/usr/bin/env python
"""Thin wrapper: `python tools/inherit.py CONFIG [key=value ...] [--resume [DIR]]` == `pangu-pro inherit ...`.

Data parallel on the CPU (or Ascend), one process per worker:
    msrun --worker_num=2 --local_worker_num=2 --master_port=8129 --log_dir=output/msrun_inherit \
          --join=True tools/inherit.py configs/inherit_tiny_cpu.yaml --no-progress
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pangu_pro.cli import main  # noqa: E402

if __name__ == "__main__":
    if os.environ.get("PANGU_PRO_LOG_DIR"):  # started by scripts/run_distribute.sh: rank -> pid for its summary
        from pangu_pro.launch import record_worker
        record_worker(os.environ["PANGU_PRO_LOG_DIR"])
    sys.exit(main(["inherit", *sys.argv[1:]]))
