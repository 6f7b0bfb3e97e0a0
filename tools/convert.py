#!/usr/bin/env python
"""Checkpoint conversion to and from Hugging Face format; same as `pangu-pro convert ...`.

    python tools/convert.py to-hf --checkpoint runs/x/ckpt --config configs/tiny_cpu.yaml --out hf/x
    python tools/convert.py from-hf hf/llama --out ckpt/llama
"""
import sys

from pangu_pro.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
