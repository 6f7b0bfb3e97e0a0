#!/usr/bin/env python
"""Thin wrapper: `python tools/train.py CONFIG [key=value ...] [--resume [DIR]]` == `pangu-pro train ...`.

msrun launches this file (scripts/run_distribute.sh), one process per worker.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pangu_pro.train.preemption import catch_early  # noqa: E402

catch_early()  # a stop signal before the trainer starts is kept for it (the launcher may send one any time)

from pangu_pro.cli import main  # noqa: E402

if __name__ == "__main__":
    if os.environ.get("PANGU_PRO_LOG_DIR"):  # started by scripts/run_distribute.sh: rank -> pid for its summary
        from pangu_pro.launch import record_worker
        record_worker(os.environ["PANGU_PRO_LOG_DIR"])
    sys.exit(main(["train", *sys.argv[1:]]))
