"""`pangu-pro plan CONFIG --devices N`: check a layout and print its memory per device.

A training config gets the model's memory plan (`model.plan`, and `--measure` the trainer's memory
probe), an inheritance config the mask-learning plan (`inherit.plan`): the command lives with the
highest stage it reads, and `inherit.commands.register` adds it.
"""
from __future__ import annotations


def run_plan(args) -> int:
    from pangu_pro.config import check_layout, load_config
    from pangu_pro.configtools import read_yaml
    from pangu_pro.model.plan import format_plan

    if "inherit" in read_yaml(args.config):  # an inheritance config: the mask-learning plan (docs/inherit.md)
        from pangu_pro.inherit.plan import run_mask_plan
        return run_mask_plan(args.config, args.overrides, args.device_memory_gib)
    config = load_config(args.config, args.overrides)
    devices = args.devices if args.devices is not None else config.parallel.device_num
    try:
        check_layout(config, devices)
    except Exception as err:  # ConfigError: name the file as load_config does
        raise err.within(source=args.config) if hasattr(err, "within") else err
    print(format_plan(config, args.device_memory_gib))
    if args.measure:
        from pangu_pro.train.memory_probe import measure_step_memory
        print(measure_step_memory(config).describe())
    return 0


def register(subparsers) -> None:
    from pangu_pro.overrides import add_config_overrides

    parser = subparsers.add_parser(
        "plan", help="check a parallel layout and estimate memory per device",
        description="Validate the config's parallel section against N devices and print weights, "
                    "gradients, optimizer state and activations (no/selective/full recompute) per "
                    "device of each pipeline stage. Formulas: docs/parallel.md.")
    parser.add_argument("config", help="YAML config with model, parallel and train sections")
    parser.add_argument("--devices", type=int, default=None,
                        help="device count of the run (default: data_parallel x model_parallel x pipeline_stage)")
    add_config_overrides(parser)
    parser.add_argument("--device-memory-gib", type=float, default=64.0,
                        help="memory of one device in GiB (Ascend 910B: 64, 910A: 32)")
    parser.add_argument("--measure", action="store_true",
                        help="also compile and run one training step on this device and print the framework's "
                             "peak device memory beside the estimate (multi-device layouts: launch with msrun; "
                             "the CPU backend reports no device memory)")
    parser.set_defaults(func=run_plan)
