"""`python -m pangu_pro.selfcheck <command>`: the self-check's command line (the commands: the package doc)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from pangu_pro import selfcheck
from pangu_pro.selfcheck.cases import SEQ, case_verdicts, list_lines, plan_lines
from pangu_pro.selfcheck.collect import collect, collect_inherit, write_data, write_init
from pangu_pro.selfcheck.compare import check_inherit, compare_files, compare_score_files, compare_teacher_dtypes
from pangu_pro.selfcheck.kernels import kernels_check
from pangu_pro.selfcheck.logits import logits_check


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pangu_pro.selfcheck",
                                     description=selfcheck.__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("data")
    p.add_argument("out")
    p.add_argument("--vocab", type=int, required=True)
    p.add_argument("--seq", type=int, required=True)
    p.add_argument("--samples", type=int, default=256)
    p = commands.add_parser("init")
    p.add_argument("config")
    p.add_argument("out")
    p = commands.add_parser("collect")
    p.add_argument("run")
    p.add_argument("--name", required=True)
    p.add_argument("--init")
    p.add_argument("--out", required=True)
    for name, nargs in (("compare", "+"), ("inherit", "*")):  # a reference, then the runs against it
        p = commands.add_parser(name)
        p.add_argument("reference")
        p.add_argument("results", nargs=nargs)
    p = commands.add_parser("scores")
    p.add_argument("reference")
    p.add_argument("result")
    p.add_argument("--name", required=True)
    p = commands.add_parser("collect-inherit")
    p.add_argument("run")
    p.add_argument("--name", required=True)
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--out", required=True)
    p = commands.add_parser("teacher-dtype")
    p.add_argument("fp32")
    p.add_argument("bf16")
    p = commands.add_parser("cases", help="the case table: --list (one line per case) or the plan the script runs")
    p.add_argument("--device", choices=sorted(SEQ), required=True)
    p.add_argument("--out", help="the check's output folder (plan: resume paths)")
    p.add_argument("--list", action="store_true")
    p.add_argument("--seq", action="store_true", help="print the sequence length of the device's cases")
    p = commands.add_parser("verdicts", help="every collected case against its reference")
    p.add_argument("--device", choices=sorted(SEQ), required=True)
    p.add_argument("--out", required=True)
    p = commands.add_parser("kernels")
    p.add_argument("config")
    p.add_argument("--init", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--seq", type=int, required=True)
    p = commands.add_parser("logits")
    p.add_argument("config")
    p.add_argument("checkpoint")
    p.add_argument("hf_dir")
    args = parser.parse_args(argv)
    from pangu_pro.io import read_json

    root = Path(__file__).resolve().parents[2]
    if args.command == "cases":
        if args.seq:
            print(SEQ[args.device])
        elif args.list:
            print("\n".join(list_lines(args.device, root)))
        else:
            print("\n".join(plan_lines(args.device, root, Path(args.out or "."))))
        return 0
    if args.command == "verdicts":
        note, verdicts = case_verdicts(args.device, root, Path(args.out))
        print(note)
    elif args.command == "kernels":
        verdicts = [kernels_check(args.config, args.init, args.data, args.seq)]
    elif args.command == "data":
        print(write_data(args.out, args.vocab, args.seq, args.samples))
    elif args.command == "init":
        print(write_init(args.config, args.out))
    elif args.command == "collect":
        result = collect(args.run, args.name, args.init, args.out)
        print(f"{args.name}: {len(result['loss'])} steps, weights {result['weights']}")
    elif args.command == "compare":
        verdicts = compare_files(args.reference, args.results)
    elif args.command == "collect-inherit":
        result = collect_inherit(args.run, args.name, args.workers, args.out)
        print(f"{args.name}: {len(result['loss'])} mask steps, {len(result['digests'])} rank digests")
    elif args.command == "inherit":
        reference = read_json(args.reference)
        verdicts = [check_inherit(reference)] + [check_inherit(read_json(p), reference) for p in args.results]
    elif args.command == "teacher-dtype":
        verdicts = [compare_teacher_dtypes(read_json(args.fp32), read_json(args.bf16))]
    elif args.command == "scores":
        verdicts = [compare_score_files(args.reference, args.result, args.name)]
    else:
        verdicts = [logits_check(args.config, args.checkpoint, args.hf_dir)]
    if args.command not in ("data", "init", "collect", "collect-inherit"):
        for verdict in verdicts:
            print(verdict.line())
        return 0 if all(v.passed for v in verdicts) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
