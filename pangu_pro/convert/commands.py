"""CLI commands of the convert stage: `convert to-hf`, `convert from-hf` and `convert merge`."""
from __future__ import annotations

import argparse
import json

from pangu_pro.overrides import add_config_overrides


def _to_hf(args: argparse.Namespace) -> int:
    from pangu_pro.config import load_config
    from pangu_pro.convert.to_hf import export_to_hf
    from pangu_pro.provenance import check_tokenizer_for_checkpoint

    cfg = load_config(args.config, args.overrides).model
    if args.tokenizer:
        check_tokenizer_for_checkpoint(args.tokenizer, args.checkpoint)
    summary = export_to_hf(args.checkpoint, cfg, args.out, tokenizer=args.tokenizer, dtype=args.dtype,
                           max_shard_size=args.max_shard_size, overwrite=args.overwrite, progress=not args.quiet,
                           config_source=args.config)
    print(json.dumps(summary, indent=2))
    return 0


def _from_hf(args: argparse.Namespace) -> int:
    from pangu_pro.convert.from_hf import import_from_hf

    print(json.dumps(import_from_hf(args.folder, args.out, progress=not args.quiet), indent=2))
    return 0


def _merge(args: argparse.Namespace) -> int:
    from pangu_pro.train.merge import merge_run

    print(json.dumps(merge_run(args.run, args.out, step=args.step, overwrite=args.overwrite), indent=2))
    return 0


def register(subparsers) -> None:
    """Add `convert to-hf`, `from-hf` and `merge` (modules load on use, so `--help` stays fast)."""
    convert = subparsers.add_parser("convert", help="convert checkpoints to and from Hugging Face format",
                                    description="Convert checkpoints to and from Hugging Face format.")
    kinds = convert.add_subparsers(dest="direction", metavar="DIRECTION", required=True)

    to_hf = kinds.add_parser(
        "to-hf", help="checkpoint -> Hugging Face folder",
        description="Write config.json, generation_config.json, safetensors weights (sharded past "
                    "--max-shard-size, with model.safetensors.index.json) and tokenizer files. With siaf and "
                    "aug_shortcut off the folder is a plain LlamaForCausalLM; otherwise it carries "
                    "modeling_pangu_pi.py and loads with trust_remote_code=True.")
    to_hf.add_argument("--checkpoint", required=True, metavar="C",
                       help="weights file, checkpoint folder (model.safetensors) or distributed run (rank_*/)")
    to_hf.add_argument("--config", required=True, metavar="Y", help="pangu-pro config YAML (its model section)")
    to_hf.add_argument("--tokenizer", metavar="T.model", help="SentencePiece model to ship (optional)")
    to_hf.add_argument("--out", required=True, metavar="DIR", help="output folder (empty or absent)")
    to_hf.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="weights dtype (default fp32)")
    to_hf.add_argument("--max-shard-size", default="5GB", metavar="SIZE", help="largest shard (default 5GB)")
    to_hf.add_argument("--overwrite", action="store_true", help="replace an earlier export in DIR")
    to_hf.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_overrides(to_hf)
    to_hf.set_defaults(func=_to_hf)

    from_hf = kinds.add_parser(
        "from-hf", help="Hugging Face folder -> checkpoint",
        description="Convert a LlamaForCausalLM folder or a PanGu-pi export into a checkpoint folder "
                    "(model.safetensors + config.yaml). Reads config.json and safetensors only; never runs "
                    "code from the folder and never unpickles.")
    from_hf.add_argument("folder", metavar="DIR", help="Hugging Face model folder")
    from_hf.add_argument("--out", required=True, metavar="C", help="output checkpoint folder")
    from_hf.add_argument("--quiet", action="store_true", help="no progress bar")
    from_hf.set_defaults(func=_from_hf)

    merge = kinds.add_parser(
        "merge", help="distributed run -> one whole checkpoint",
        description="Put the per-rank checkpoints of a distributed run (data, tensor or pipeline parallel, "
                    "ZeRO, any mix) together into one checkpoint folder (model.safetensors, "
                    "optimizer.safetensors, state.json) with MindSpore's strategy-based "
                    "transform_checkpoints. The result resumes on any layout and exports with to-hf.")
    merge.add_argument("run", metavar="RUN_DIR", help="training output folder (or its checkpoints/ folder)")
    merge.add_argument("--out", required=True, metavar="DIR", help="output checkpoint folder (empty or absent)")
    merge.add_argument("--step", type=int, metavar="N", help="which step (default: the newest every rank finished)")
    merge.add_argument("--overwrite", action="store_true", help="replace DIR")
    merge.set_defaults(func=_merge)
