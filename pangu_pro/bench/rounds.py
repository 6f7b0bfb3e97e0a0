"""Multi-round training benchmark: does a second round on a hard 50% sample recover forgotten parts?

Set-up (paper-notes §6, scaled to two CPU cores):
  * the built-in corpus (`pangu-pro corpus builtin`) cut into `--parts` ordered parts (documents in
    corpus order); every `HOLDOUT_EVERY`-th document of each part is that part's held-out text;
  * a SentencePiece tokenizer trained on the training text; samples of `--seq` + 1 tokens;
  * round 1: one pass over the training samples **in corpus order** (data.shuffle off), so the
    early parts are the longest ago when training ends;
  * arms, all starting from the same round-1 weights:
      one_round     round 1 only;
      hard_50       round 2 on a 50% sample of batches drawn with p ∝ exp(loss) (the paper's rule);
      uniform_50    round 2 on a 50% sample drawn uniformly (temperature 1e9), same steps as hard_50.
    Both round-2 arms cost the same (half a pass); one_round costs a third less in total.
  * reported: held-out loss of each part and of all parts together.

Run: `pangu-pro bench rounds [--size-mb 1.0] [--out benchmarks/results]` (wired by bench/commands.py)
or `python -m pangu_pro.bench.rounds`. Writes OUT/multi_round.json and OUT/multi_round.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
import time
from pathlib import Path

HOLDOUT_EVERY = 25


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size-mb", type=float, default=1.0, help="training text taken from the built-in corpus")
    parser.add_argument("--parts", type=int, default=4, help="ordered parts of the corpus (default 4)")
    parser.add_argument("--vocab", type=int, default=1000, help="tokenizer vocabulary (default 1000)")
    parser.add_argument("--seq", type=int, default=64, help="sequence length (default 64)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="selection seeds of the round-2 arms")
    parser.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--out", default="benchmarks/results", help="where multi_round.json / .md go")


def split_parts(train_txt: Path, work: Path, parts: int) -> tuple[Path, list[Path], list[int]]:
    """train.txt -> work/train_parts.txt (training documents, corpus order) and one held-out file per part."""
    docs = train_txt.read_text(encoding="utf-8").splitlines()
    size = -(-len(docs) // parts)
    train_lines, heldout_files, train_docs = [], [], []
    for p in range(parts):
        chunk = docs[p * size:(p + 1) * size]
        held = [d for i, d in enumerate(chunk) if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1]
        kept = [d for i, d in enumerate(chunk) if i % HOLDOUT_EVERY != HOLDOUT_EVERY - 1]
        train_lines += kept
        train_docs.append(len(kept))
        path = work / "text" / f"heldout_part{p + 1}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(held) + "\n", encoding="utf-8")
        heldout_files.append(path)
    train = work / "text" / "train_parts.txt"
    train.write_text("\n".join(train_lines) + "\n", encoding="utf-8")
    return train, heldout_files, train_docs


def prepare(args, work: Path) -> dict:
    import mindspore.mindrecord  # noqa: F401  (before sentencepiece's protobuf, or MindRecord's descriptors fail)

    from pangu_pro.data.corpus import build_builtin_corpus
    from pangu_pro.data.preprocess import preprocess
    from pangu_pro.tokenizer.train import train_tokenizer

    build_builtin_corpus(work / "corpus", size_mb=args.size_mb, progress=False)
    train_txt, heldout_txt, train_docs = split_parts(work / "corpus" / "train.txt", work, args.parts)
    spm = train_tokenizer([train_txt], work / "spm.model", args.vocab, num_threads=2)
    data = {"train": work / "data" / "train", "heldout": []}
    preprocess([train_txt], spm, args.seq, data["train"], workers=1, progress=False, overwrite=True)
    for i, path in enumerate(heldout_txt):
        out = work / "data" / f"heldout_part{i + 1}"
        preprocess([path], spm, args.seq, out, workers=1, progress=False, overwrite=True)
        data["heldout"].append(out)
    data["train_docs_per_part"] = train_docs
    return data


def base_config(args, data: dict, out: Path, **multi_round):
    from pangu_pro.config import config_from_dict
    from pangu_pro.data.dataset import count_samples

    n = count_samples(data["train"])
    steps = n // args.batch_size  # one pass, in corpus order
    return config_from_dict({
        "model": {"vocab_size": args.vocab, "hidden_size": 128, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1,
                  "intermediate_size": 344, "seq_length": args.seq, "aug_shortcut_ratio": 16},
        "data": {"train_files": [str(data["train"])], "eval_files": [str(p) for p in data["heldout"]],
                 "shuffle": False},
        "train": {"batch_size": args.batch_size, "steps": steps, "lr": args.lr, "warmup_steps": max(1, steps // 20),
                  "min_lr_ratio": 0.1, "output_dir": str(out), "log_every": 10},
        "multi_round": {"rounds": 2, "rate": 0.5, "unit": "batch", **multi_round},
    }, "bench")


def adopt_round_one(source_root: Path, config) -> None:
    """Start `config`'s multi-round state with the train/eval/score records of round 1 of another run
    (same model, data and round-1 schedule): its round 2 then draws from the same scores and starts
    from the same weights."""
    from pangu_pro.rounds import driver

    source = json.loads((source_root / driver.STATE_NAME).read_text(encoding="utf-8"))
    root = Path(config.train.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    state = driver.RoundsState(root / driver.STATE_NAME, driver.config_fingerprint(config))
    for stage in ("train", "eval", "score"):
        if not state.done(1, stage):
            state.record(1, stage, source["rounds"]["1"][stage])


def part_losses(config, checkpoint, heldout: list[Path]) -> dict:
    from pangu_pro.train.evaluate import perplexity

    per_part = [perplexity(config, checkpoint, [p])["loss"] for p in heldout]
    overall = perplexity(config, checkpoint, [str(p) for p in heldout])["loss"]
    return {"parts": per_part, "overall": overall}


def run(args) -> int:
    from pangu_pro.rounds import driver

    began = time.perf_counter()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_rounds_"))
    data = prepare(args, work)
    quiet = dict(runner=driver.StageRunner(1, progress=False), announce=lambda *_: None)
    results, arms = {}, {}
    shared = None  # round 1 (train, eval, score) is the same in every arm: run it once, reuse its records
    for seed in args.seeds:
        for arm, temperature in (("hard_50", 1.0), ("uniform_50", 1e9)):
            cfg = base_config(args, data, work / f"{arm}_seed{seed}", seed=seed, temperature=temperature)
            if shared is not None:
                adopt_round_one(shared, cfg)
            started = time.perf_counter()
            summary = driver.run_rounds(cfg, **quiet)
            rows = summary["rounds"]
            if shared is None:
                shared = Path(cfg.train.output_dir)
                arms["one_round"] = [{"steps": rows[0]["steps"],
                                      **part_losses(cfg, rows[0]["checkpoint"], data["heldout"])}]
                results["round1_mean_score"] = rows[0]["mean_score"]
            arms.setdefault(arm, []).append({
                "seed": seed, "steps": rows[0]["steps"] + rows[1]["steps"], "round2_steps": rows[1]["steps"],
                "selected_fraction": rows[0]["selected_fraction"],
                "mean_score_selected": rows[0]["mean_score_selected"], "seconds": time.perf_counter() - started,
                **part_losses(cfg, rows[1]["checkpoint"], data["heldout"])})
    cfg = base_config(args, data, work / "unused")
    results.update({
        "setup": {"size_mb": args.size_mb, "parts": args.parts, "vocab": args.vocab, "seq": args.seq,
                  "batch_size": args.batch_size, "lr": args.lr, "train_samples": cfg.train.steps * args.batch_size,
                  "round1_steps": cfg.train.steps, "model": dataclasses.asdict(cfg.model),
                  "train_docs_per_part": data["train_docs_per_part"], "holdout_every": HOLDOUT_EVERY,
                  "seeds": args.seeds, "machine": f"{platform.machine()}, {platform.python_version()}"},
        "arms": arms, "seconds": time.perf_counter() - began})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "multi_round.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "multi_round.md").write_text(render(results), encoding="utf-8")
    print(render(results))
    return 0


def mean(values):
    return sum(values) / len(values)


def render(results: dict) -> str:
    parts = results["setup"]["parts"]
    head = " | ".join(f"part {p + 1}" for p in range(parts))
    lines = ["# Multi-round training on the built-in corpus", "",
             f"Round 1: one pass over {results['setup']['train_samples']} samples in corpus order "
             f"({results['setup']['round1_steps']} steps); round 2: 50% of the batches, half a pass. Held-out loss "
             f"per ordered part (part 1 = seen first) and overall; round-2 arms averaged over selection seeds "
             f"{results['setup']['seeds']}.", "",
             f"| arm | steps | {head} | overall |", "|---|---|" + "---|" * parts + "---|"]
    for arm, runs in results["arms"].items():
        cells = " | ".join(f"{mean([r['parts'][p] for r in runs]):.4f}" for p in range(parts))
        lines.append(f"| {arm} | {runs[0]['steps']} | {cells} | {mean([r['overall'] for r in runs]):.4f} |")
    lines += ["", f"Mean batch loss of the round-1 model on the training set: {results['round1_mean_score']:.4f}; "
              "mean of the batches drawn by hard_50: "
              f"{mean([r['mean_score_selected'] for r in results['arms']['hard_50']]):.4f}, by uniform_50: "
              f"{mean([r['mean_score_selected'] for r in results['arms']['uniform_50']]):.4f}.",
              f"Total time {results['seconds']:.0f} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
