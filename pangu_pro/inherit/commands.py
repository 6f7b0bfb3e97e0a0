"""CLI commands of the inherit stage: `pangu-pro inherit CONFIG` (docs/inherit.md)."""
from __future__ import annotations

import sys

from pangu_pro.overrides import add_config_overrides

RESUME_AUTO = "auto"


def register(subparsers) -> None:
    from pangu_pro.inherit import plan_command

    plan_command.register(subparsers)  # `plan` reads training and inheritance configs alike
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
    p.add_argument("--check", action="store_true", help="only check the config against the target and the data, "
                   "print the mask-learning memory plan per device, and exit (2 if it does not fit)")
    p.add_argument("--device-memory-gib", type=float, default=64.0,
                   help="memory of one device for the --check plan (Ascend 910B: 64)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--force", action="store_true",
                   help="write the student even if the learned masks did not converge (docs/inherit.md)")
    p.set_defaults(func=_inherit)


def _inherit(args) -> int:
    from pangu_pro.inherit.config import load_inherit_config
    from pangu_pro.inherit.run import check, run_inherit
    from pangu_pro.model.params import count_parameters
    from pangu_pro.provenance import check_output_folder

    config = load_inherit_config(args.config, args.overrides)
    if args.check:
        from pangu_pro.inherit.plan import format_mask_plan

        plan = check(config)
        if config.inherit.criterion == "learned":
            text, fits = format_mask_plan(config, args.device_memory_gib)
            print(text)
            if not fits:
                print(f"pangu-pro inherit: error: {args.config}: the mask-learning plan does not fit a "
                      f"{args.device_memory_gib:g} GiB device: lower inherit.batch_size (raise "
                      f"inherit.grad_accum_steps), set parallel.recompute, or freeze the teacher (lr_weights 0)",
                      file=sys.stderr)
                return 2
        print(f"ok: teacher {count_parameters(plan.teacher).total:,} -> student "
              f"{count_parameters(plan.student).total:,} parameters (aug_shortcut_ratio "
              f"{plan.student.aug_shortcut_ratio}, vocab {plan.student.vocab_size})")
        return 0
    check_output_folder(config.inherit.output_dir, "inherit.output_dir")
    run_inherit(config, resume=args.resume, progress=not args.no_progress, force=args.force)
    return 0
