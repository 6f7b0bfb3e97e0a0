"""CLI commands of multi-round training: score, select, rounds (docs/multi_round.md)."""
from __future__ import annotations

from pangu_pro.overrides import add_config_overrides


def _score(args) -> int:
    from pangu_pro.rounds.scoring import score_command

    return score_command(args)


def _select(args) -> int:
    from pangu_pro.rounds.selection import select_command

    return select_command(args)


def _rounds(args) -> int:
    from pangu_pro.rounds.driver import rounds_command

    return rounds_command(args)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "score", help="per-batch and per-sample losses of a frozen model over the training set",
        description="Score every batch and sample of the training data (data.train_files, or --data) with the "
                    "weights in --checkpoint. Under msrun the ranks split the batches and rank 0 assembles the "
                    "result. Resumable: re-run the same command after an interruption.")
    p.add_argument("config", help="YAML config (its model section must fit the checkpoint)")
    add_config_overrides(p)
    p.add_argument("--checkpoint", required=True, help="weights file or checkpoint folder")
    p.add_argument("--out", default=None, metavar="SCORES.npz", help="default: TRAIN.OUTPUT_DIR/scores.npz")
    p.add_argument("--data", nargs="+", default=None, help="MindRecord files or folders (default: data.train_files)")
    p.add_argument("--unit-samples", type=int, default=None, metavar="U",
                   help="samples per scoring unit (default: multi_round.score_unit_tokens in whole global batches)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="rows per forward pass, a divisor of the unit (default: train.batch_size)")
    p.add_argument("--flush-every", type=int, default=16, metavar="N", help="save partial results every N units")
    p.add_argument("--overwrite", action="store_true", help="discard earlier (partial) scores at --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_score)

    p = subparsers.add_parser(
        "select", help="draw the next round's training subset from a scores file",
        description="Draw rate x N units without replacement with probability softmax(score / temperature) "
                    "(Gumbel top-k) and write their sample indices, in the order the next round reads them, "
                    "as a .npy index file for data.index_file.")
    p.add_argument("--scores", required=True, help="scores file written by `pangu-pro score`")
    p.add_argument("--rate", type=float, required=True, help="fraction of the units to draw, in (0, 1]")
    p.add_argument("--seed", type=int, required=True, help="the draw and the shuffle are functions of this seed")
    p.add_argument("--temperature", type=float, default=1.0, help="p ∝ exp(score / T) (default 1)")
    p.add_argument("--unit", choices=["batch", "sample"], default="batch",
                   help="what is drawn: batch = the scoring units of consecutive training batches (default), "
                        "or single samples")
    p.add_argument("--order", choices=["shuffle", "draw", "corpus"], default="shuffle",
                   help="order of the units in the index file (default: seeded shuffle)")
    p.add_argument("--out", default=None, metavar="INDEX.npy", help="default: selection.npy beside the scores")
    p.add_argument("--data", nargs="+", default=None,
                   help="check that the index fits these MindRecord files or folders")
    p.set_defaults(func=_select)

    p = subparsers.add_parser(
        "rounds", help="multi-round training: train -> score -> select -> train ... (resumable)",
        description="Run the config's multi_round schedule under train.output_dir; re-run to continue "
                    "after an interruption.")
    p.add_argument("config", help="YAML config with a multi_round section")
    add_config_overrides(p)
    p.add_argument("--workers", type=int, default=1, help="data-parallel workers for train and score (msrun)")
    p.add_argument("--master-port", type=int, default=8129, help="msrun master port (workers > 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_rounds)
