"""CLI commands of the inherit stage: `pangu-pro inherit CONFIG` (docs/inherit.md)."""
from __future__ import annotations

from pangu_pro.cli import add_config_overrides

RESUME_AUTO = "auto"


def register(subparsers) -> None:
    p = subparsers.add_parser("inherit", help="derive a student checkpoint from a teacher (docs/inherit.md)",
                              description="Score the teacher's heads, FFN neurons, hidden channels and layers "
                              "(random, l1, l2, taylor or learned hard-concrete masks), keep the top-k per layer "
                              "and write the student's weights and config. Override any key with "
                              "section.key=value.")
    p.add_argument("config", help="inheritance YAML (model or inherit.teacher_config, data, inherit sections)")
    add_config_overrides(p)
    p.add_argument("--resume", nargs="?", const=RESUME_AUTO, default=None, metavar="DIR",
                   help="continue mask learning from a checkpoint folder (default: the newest under "
                   "OUTPUT_DIR/masks)")
    p.add_argument("--check", action="store_true", help="only check the config against the target and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_inherit)


def _inherit(args) -> int:
    from pangu_pro.inherit.config import load_inherit_config
    from pangu_pro.inherit.run import check, run_inherit
    from pangu_pro.model.params import count_parameters

    config = load_inherit_config(args.config, args.overrides)
    if args.check:
        plan = check(config)
        print(f"ok: teacher {count_parameters(plan.teacher).total:,} -> student "
              f"{count_parameters(plan.student).total:,} parameters (aug_shortcut_ratio "
              f"{plan.student.aug_shortcut_ratio}, vocab {plan.student.vocab_size})")
        return 0
    run_inherit(config, resume=args.resume, progress=not args.no_progress)
    return 0
