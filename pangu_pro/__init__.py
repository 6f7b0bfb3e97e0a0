"""pangu-pro: PanGu-pi Pro (arXiv 2402.02791) for MindSpore.

One sub-package per stage of the pipeline: model, data, tokenizer, inherit, train, convert, eval
(and bench for the benchmarks). `pangu_pro.cli` is the single command line over all of them.
"""
import os

# MindFormers writes its logs to ./output/log unless told otherwise; keep them out of the work tree.
os.environ.setdefault("LOG_MF_PATH", os.path.join(os.path.expanduser("~"), ".cache", "pangu-pro", "mf_log"))

__version__ = "0.1.0"
