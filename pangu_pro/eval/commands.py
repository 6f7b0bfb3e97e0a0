"""CLI of the eval stage: `pangu-pro eval CONFIG --checkpoint C ...` (docs/eval.md)."""
from __future__ import annotations

import argparse
import sys

from pangu_pro.overrides import add_config_overrides


def register(subparsers) -> None:
    from pangu_pro.eval.report import PAPER_ROWS
    from pangu_pro.eval.scoring import PAPER_SCORING, SCORING_RULES

    p = subparsers.add_parser(
        "eval", help="benchmark accuracy, ROUGE and held-out perplexity of a checkpoint (docs/eval.md)",
        description="Score a checkpoint on local benchmark files (--tasks, read from --data-dir; nothing is "
                    "downloaded) and/or held-out perplexity (--ppl-text, --ppl-data). Writes the results JSON "
                    "and prints a Markdown table beside the paper's row.")
    p.add_argument("config", help="YAML config (its model section must fit the checkpoint)")
    add_config_overrides(p)
    p.add_argument("--checkpoint", required=True, help="weights file or checkpoint folder")
    p.add_argument("--tokenizer", help="SentencePiece .model (default: data.tokenizer of the config)")
    p.add_argument("--tasks", default="", help="comma-separated: ceval,cmmlu,mmlu,agieval,boolq,ax-b,piqa,eprstmt,c3,xsum "
                   "or all")
    p.add_argument("--data-dir", default="data", help="root of the benchmark files (layout in docs/eval.md)")
    p.add_argument("--shots", type=int, default=0, help="solved examples before each question (exams: from dev/)")
    p.add_argument("--scoring", choices=SCORING_RULES, default=PAPER_SCORING,
                   help="prompt: mean log-likelihood over context+choice (OpenCompass PPL, the paper's; default); "
                        "mean: over the choice's tokens (length-normalised); sum: raw log-likelihood of the choice")
    p.add_argument("--batch-size", type=int, default=8, help="sequences scored per forward pass")
    p.add_argument("--max-length", type=int, default=None,
                   help="longest scored sequence in tokens (default: the model's seq_length + 1)")
    p.add_argument("--limit", type=int, default=None, help="at most this many items per subject/task")
    p.add_argument("--max-new-tokens", type=int, default=64, help="generation tasks (xsum)")
    p.add_argument("--ppl-text", nargs="+", default=[], metavar="FILE", help="held-out text, one document a line")
    p.add_argument("--ppl-data", nargs="+", default=[], metavar="MINDRECORD",
                   help="packed MindRecord files or preprocess folders")
    p.add_argument("--paper-row", choices=sorted(PAPER_ROWS), default=None,
                   help="paper row to print beside ours (default: the preset of the model's shape)")
    p.add_argument("--details", action="store_true", help="per-item predictions and log-likelihoods in the JSON")
    p.add_argument("--out", default=None, help="results JSON path")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_eval_command)


def run_eval_command(args: argparse.Namespace) -> int:
    import json

    from pangu_pro.config import load_config
    from pangu_pro.eval.tasks import resolve_tasks

    if not args.tasks and not args.ppl_text and not args.ppl_data:
        raise ValueError("nothing to evaluate: give --tasks, --ppl-text and/or --ppl-data")
    if args.shots < 0 or args.batch_size < 1:
        raise ValueError(f"--shots must be >= 0 and --batch-size >= 1, got {args.shots} and {args.batch_size}")
    tasks = resolve_tasks(args.tasks) if args.tasks else []
    config = load_config(args.config, args.overrides)
    summary = evaluate_checkpoint(config, args.checkpoint, tasks, args, log=lambda m: print(m, file=sys.stderr))
    print(summary["table"])
    if summary.get("perplexity"):
        print(json.dumps(summary["perplexity"]))
    if args.out:
        from pangu_pro.io import atomic_write_json

        atomic_write_json(args.out, summary)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def evaluate_checkpoint(config, checkpoint, tasks, args, log=print) -> dict:
    """Build the model once and run every requested evaluation; the dict written as results JSON."""
    from pangu_pro.eval.backends import MindSporeBackend
    from pangu_pro.eval.harness import run_tasks, text_perplexity
    from pangu_pro.eval.report import markdown_table, paper_row_for
    from pangu_pro.model.weights import build_model
    from pangu_pro.provenance import check_tokenizer_for_checkpoint
    from pangu_pro.runtime import adapt_to_device, init_mindspore
    from pangu_pro.tokens import checkpoint_convention_problem

    init_mindspore()
    model_cfg = adapt_to_device(config.model, announce=log)
    tokenizer = None
    if tasks or args.ppl_text:
        path = args.tokenizer or config.data.tokenizer
        if not path:
            raise ValueError("a tokenizer is needed: pass --tokenizer or set data.tokenizer in the config")
        import sentencepiece as spm
        from pathlib import Path

        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: tokenizer model not found")
        check_tokenizer_for_checkpoint(path, checkpoint)
        tokenizer = spm.SentencePieceProcessor(model_file=str(path))
        if tokenizer.get_piece_size() > model_cfg.vocab_size:
            raise ValueError(f"{path}: {tokenizer.get_piece_size()} pieces do not fit the model's vocab_size "
                             f"{model_cfg.vocab_size}")
    problem = checkpoint_convention_problem(checkpoint)
    if problem:
        log(f"warning: {problem}")
    model = build_model(model_cfg, weights=checkpoint)
    model.set_train(False)
    backend = MindSporeBackend(model, args.batch_size)
    if args.max_length is not None:
        if not 2 <= args.max_length <= backend.max_length:
            raise ValueError(f"--max-length {args.max_length} must lie in [2, {backend.max_length}]")
        backend.max_length = args.max_length
    progress = not args.no_progress
    summary: dict = {"config": config.source, "checkpoint": str(checkpoint), "scoring": args.scoring,
                     "shots": args.shots, "tasks": {}}
    if tasks:
        generator = None
        if any(t.kind == "generation" for t in tasks):
            from pangu_pro.model.generation import Generator, SamplingConfig

            gen = Generator(model)

            def generator(prompts, max_new_tokens):
                return gen.generate(prompts, SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0,
                                                            eos_token_id=model_cfg.eos_token_id))
        summary["tasks"] = run_tasks(tasks, args.data_dir, backend, tokenizer, args.shots, args.scoring,
                                     model_cfg.bos_token_id, generator, args.max_new_tokens, args.limit, progress,
                                     args.details)
        summary["compiled_graphs"] = backend.compiled_graphs
    perplexity = {}
    if args.ppl_text:
        perplexity["text"] = text_perplexity(args.ppl_text, backend, tokenizer, model_cfg.bos_token_id,
                                             model_cfg.eos_token_id, progress)
    if args.ppl_data:
        from pangu_pro.model.pangu_pi import PanGuPiWithLoss
        from pangu_pro.train.evaluate import eval_dataset, evaluate_loss

        perplexity["mindrecord"] = evaluate_loss(PanGuPiWithLoss(model), eval_dataset(args.ppl_data, args.batch_size))
    if perplexity:
        summary["perplexity"] = perplexity
    paper_row = args.paper_row or paper_row_for(config.model)
    summary["paper_row"] = paper_row
    summary["table"] = markdown_table(summary["tasks"], paper_row) if summary["tasks"] else ""
    if summary["tasks"]:
        scores = [r["score"] for r in summary["tasks"].values()]
        summary["average"] = sum(scores) / len(scores)
    return summary
