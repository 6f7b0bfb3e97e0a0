"""CLI commands of the train stage: train, perplexity, plot."""
from __future__ import annotations

import sys

from pangu_pro.overrides import add_config_overrides

RESUME_AUTO = "auto"


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model from a config (docs/training.md)",
                              description="Train (or resume training) as CONFIG says; override any key with "
                              "section.key=value.")
    p.add_argument("config", help="YAML config (model, data, train, parallel sections)")
    add_config_overrides(p)
    p.add_argument("--resume", nargs="?", const=RESUME_AUTO, default=None, metavar="DIR",
                   help="continue from a checkpoint folder or run dir (default: the newest checkpoint of "
                   "train.output_dir)")
    p.add_argument("--allow-changes", action="store_true",
                   help="with --resume: accept deliberately changed keys (lr, steps, schedule, ...) and print them; "
                   "changes that break the model or the data position (model.*, batch size, data) are refused "
                   "regardless (docs/training.md)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)

    p = subparsers.add_parser("perplexity", help="held-out loss and perplexity of a checkpoint")
    p.add_argument("config", help="YAML config (its model section must fit the checkpoint)")
    add_config_overrides(p)
    p.add_argument("--checkpoint", required=True, help="weights file or checkpoint folder")
    p.add_argument("--data", nargs="+", help="MindRecord files or preprocess folders (default: data.eval_files)")
    p.add_argument("--batch-size", type=int, default=None, help="default: train.batch_size")
    p.add_argument("--max-batches", type=int, default=None, help="stop after this many batches (default: all)")
    p.set_defaults(func=_perplexity)

    p = subparsers.add_parser("plot", help="draw a training, multi-round or inheritance run's figure to PNG")
    p.add_argument("run_dir", help="a train output dir (metrics.jsonl), a rounds output dir (round_K/train/) or "
                   "an inherit output dir (masks.jsonl)")
    p.add_argument("--out", default=None, help="PNG path (default: RUN_DIR/curves.png)")
    p.set_defaults(func=_plot)

    p = subparsers.add_parser("checkpoint", help="check checkpoints against their SHA-256 digests",
                              description="Checkpoint maintenance.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = actions.add_parser("verify", help="verify a run directory, one checkpoint folder or one weights file",
                           description="Hash every checkpoint file under PATH and compare it with the digest "
                           "written beside it (FILE.sha256). Exits 1 if any file is damaged.")
    p.add_argument("path", metavar="PATH", help="run directory, checkpoints/ folder, checkpoint folder or file")
    p.set_defaults(func=_checkpoint_verify)


def _train(args) -> int:
    from pangu_pro.config import load_config
    from pangu_pro.provenance import check_run_location
    from pangu_pro.train.checkpoint import CheckpointWriteError
    from pangu_pro.train.preemption import PREEMPTED_EXIT
    from pangu_pro.train.trainer import NonFiniteLossError, train

    config = load_config(args.config, args.overrides)
    check_run_location(args.config, config.train.output_dir,
                       any(o.split("=", 1)[0].strip() == "train.output_dir" for o in args.overrides))
    try:
        summary = train(config, resume=args.resume, progress=not args.no_progress, allow_changes=args.allow_changes)
    except NonFiniteLossError as err:
        print(f"pangu-pro train: error: {err}", file=sys.stderr)
        return 3
    except CheckpointWriteError as err:
        print(f"pangu-pro train: error: {err}", file=sys.stderr)
        return 4
    if summary.get("stopped"):
        saved = f"checkpoint {summary['checkpoint']}" if summary["checkpoint"] else "saved by rank 0"
        print(f"stopped by {summary['stopped']} after step {summary['step']}: {saved}; continue with --resume",
              file=sys.stderr)
        return PREEMPTED_EXIT
    if summary.get("steps_run"):
        saved = (f"checkpoint {summary['checkpoint']}" if summary["checkpoint"]
                 else f"rank {summary.get('rank', 0)} writes no checkpoints")
        print(f"trained to step {summary['step']}: loss {summary['loss']:.4f}; {saved}")
    return 0


def _perplexity(args) -> int:
    import json

    from pangu_pro.config import load_config
    from pangu_pro.provenance import check_checkpoint_data, check_data
    from pangu_pro.train.evaluate import perplexity

    config = load_config(args.config, args.overrides)
    data = args.data or config.data.eval_files
    if not data:
        raise ValueError("no held-out data: pass --data or set data.eval_files in the config")
    key = "--data" if args.data else "data.eval_files"
    check_data(config, data, key)
    check_checkpoint_data(data, key, args.checkpoint)
    result = perplexity(config, args.checkpoint, data, args.batch_size, args.max_batches)
    print(json.dumps(result))
    return 0


def _plot(args) -> int:
    from pathlib import Path

    from pangu_pro.train.plot import plot_run

    out = plot_run(args.run_dir, Path(args.out) if args.out else None)
    print(out)
    return 0


def _checkpoint_verify(args) -> int:
    from pangu_pro.digests import verify_tree

    results = verify_tree(args.path)
    for target, status, detail in results:
        print(f"{status:<10} {target}: {detail}")
    damaged = sum(status == "damaged" for _, status, _ in results)
    print(f"{len(results)} checked, {damaged} damaged")
    return 1 if damaged else 0
