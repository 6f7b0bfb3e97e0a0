#!/usr/bin/env python
"""Thin wrapper: `python tools/train.py CONFIG [key=value ...] [--resume [DIR]]` == `pangu-pro train ...`.

msrun launches this file (scripts/run_distribute.sh), one process per worker.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pangu_pro.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
