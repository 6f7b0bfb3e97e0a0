"""Multi-round training benchmark: at equal compute, does a second round on a hard half beat one
longer round, and a second round on a uniform half, where a single pass forgets its early parts?

Set-up (paper-notes §6, scaled to two CPU cores):
  * a corpus ordered by **source**: `--parts` parts, each the prose of one family of standard-library
    modules (`PART_FAMILIES`: the language reference, mail/web, GUI, concurrency), so the parts differ
    in vocabulary and style; documents are cut into pieces of at most `PIECE_BYTES` bytes and every
    `--holdout-every`-th piece of a part is that part's held-out text;
  * a SentencePiece tokenizer trained on the training text; samples of `--seq` + 1 tokens; every part
    is cut to the same number of samples, a whole number S of batches, so part p ends at step p·S;
  * round 1: one pass over the training samples **in corpus order** (data.shuffle off), N = P·S steps,
    warm-up 5% then a cosine to `--min-lr-ratio` of the peak (1 = constant: the late parts are read
    at the full rate, the regime where a single pass forgets most);
  * **forgetting** is measured, not assumed: round 1 saves a checkpoint at every part boundary, and
    part p's held-out loss right after it was read (step p·S) is compared with its loss at the end
    of round 1 (step N), per seed;
  * arms at **equal compute** (1.5 N steps each), all with the same model seed:
      long_round   one round of 1.5 N steps (same schedule shape), reading the corpus order on
                   (parts 1 .. P, then the first half again);
      hard_50      round 1, then round 2 (0.5 N steps) on 50% of the scoring units drawn with
                   p ∝ exp(loss) (the paper's rule; one unit = one training batch);
      uniform_50   the same round 1, then round 2 on a uniform 50% draw (temperature 1e9).
    Round 2 uses the official continued-training schedule's shape at our scale: peak lr / 3 (their
    1e-4 after 3e-4), 3% warm-up, floor 10% of its peak. `one_round` (round 1 alone, N steps) is
    reported for reference; it costs a third less.
  * `--seeds` seeds; each seed changes the model initialisation and the selection draw, and gets its
    own round 1. Reported: the forgetting of each part, held-out loss per part and overall (mean ±
    sample standard deviation over seeds), the parts the two draws picked, and the paired differences
    between arms (same seed).

Run: `pangu-pro bench rounds [--seeds 0 1 2] [--out benchmarks/results]` or `python -m
pangu_pro.bench.rounds`; `--round1-only` trains and measures round 1 alone (is there forgetting to
undo?) before spending the compute of the arms. Re-running with the same `--work` skips every finished
run (rounds resume from their state files), so seeds can run one after another in separate processes.
Writes OUT/multi_round.json, OUT/multi_round.md and, with matplotlib, OUT/multi_round.png (`--render
JSON [JSON ...]` redraws the table and figure from results files, merging runs of other seeds).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from pangu_pro.io import read_json

PIECE_BYTES = 2000  # documents are cut into pieces of at most this size (language-reference topics are long)
PART_FAMILIES = {  # top-level standard-library modules whose prose forms each part, in training order
    "language reference": ("pydoc_data",),
    "mail and web": ("email", "http", "urllib", "xmlrpc", "wsgiref", "html", "mailbox", "smtplib", "imaplib"),
    "GUI": ("tkinter", "idlelib", "turtle", "turtledemo"),
    "concurrency": ("asyncio", "multiprocessing", "concurrent", "threading", "subprocess", "selectors"),
}
ARMS = ("one_round", "long_round", "hard_50", "uniform_50")
ROUND1_WARMUP = 0.05


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--part-kb", type=float, default=150.0, help="text per part (training + held-out), KB "
                        "(default 150)")
    parser.add_argument("--parts", type=int, default=len(PART_FAMILIES), choices=range(2, len(PART_FAMILIES) + 1),
                        help=f"source parts, in the order of PART_FAMILIES (default {len(PART_FAMILIES)})")
    parser.add_argument("--holdout-every", type=int, default=10,
                        help="every N-th piece of a part is held out (default 10)")
    parser.add_argument("--vocab", type=int, default=1000, help="tokenizer vocabulary (default 1000)")
    parser.add_argument("--seq", type=int, default=64, help="sequence length (default 64)")
    parser.add_argument("--hidden", type=int, default=128, help="model width (default 128)")
    parser.add_argument("--layers", type=int, default=2, help="model depth (default 2)")
    parser.add_argument("--batch-size", type=int, default=4, help="samples per training step (default 4)")
    parser.add_argument("--lr", type=float, default=3e-3, help="round-1 peak learning rate (default 3e-3)")
    parser.add_argument("--min-lr-ratio", type=float, default=1.0,
                        help="round-1 (and long-round) cosine floor as a fraction of the peak; 1 = constant "
                             "after the warm-up (default 1)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="model and selection seeds")
    parser.add_argument("--round1-only", action="store_true",
                        help="only train round 1 and measure its forgetting (a cheap pilot of the set-up)")
    parser.add_argument("--work", default=None, help="working folder, reused to resume (default: a temporary one)")
    parser.add_argument("--out", default="benchmarks/results", help="where multi_round.json / .md / .png go")
    parser.add_argument("--render", nargs="+", default=None, metavar="JSON",
                        help="only redraw the table and figure from results files (several: runs of other seeds "
                             "with the same set-up, merged)")


def source_parts(parts: int, part_bytes: int) -> list[tuple[str, list[str]]]:
    """[(part name, documents)]: the prose of each family of PART_FAMILIES, up to `part_bytes` each,
    normalised and de-duplicated like the built-in corpus."""
    import hashlib

    from pangu_pro.data.corpus import CorpusStats, file_documents, is_prose, normalise, stdlib_files, stdlib_root

    root, stats, seen = stdlib_root(), CorpusStats(), set()
    files = stdlib_files(root)
    out = []
    for name, families in list(PART_FAMILIES.items())[:parts]:
        docs, size = [], 0
        for path in files:
            if path.relative_to(root).parts[0].removesuffix(".py") not in families:
                continue
            for _, raw in file_documents(path, root, stats):
                text = normalise(raw)
                key = hashlib.sha1(text.encode()).digest()
                if not is_prose(text) or key in seen or size >= part_bytes:
                    continue
                seen.add(key)
                for piece in pieces(text):
                    docs.append(piece)
                    size += len(piece.encode()) + 1
        if size < part_bytes // 2:
            raise RuntimeError(f"part {name!r}: only {size} bytes of prose in {families}; lower --part-kb")
        out.append((name, docs))
    return out


def pieces(text: str) -> list[str]:
    """`text` cut at spaces into pieces of at most ~PIECE_BYTES bytes."""
    out, current = [], []
    size = 0
    for word in text.split(" "):
        if current and size + len(word) + 1 > PIECE_BYTES:
            out.append(" ".join(current))
            current, size = [], 0
        current.append(word)
        size += len(word) + 1
    if current:
        out.append(" ".join(current))
    return out


def split_parts(parts: list[tuple[str, list[str]]], work: Path, holdout_every: int) -> tuple[list[Path], list[Path]]:
    """work/text/train_partP.txt and heldout_partP.txt: every `holdout_every`-th piece of a part held out."""
    train_files, heldout_files = [], []
    (work / "text").mkdir(parents=True, exist_ok=True)
    for p, (_, docs) in enumerate(parts):
        for kind, keep, files in (("train", False, train_files), ("heldout", True, heldout_files)):
            chosen = [d for i, d in enumerate(docs) if (i % holdout_every == holdout_every - 1) == keep]
            path = work / "text" / f"{kind}_part{p + 1}.txt"
            path.write_text("\n".join(chosen) + "\n", encoding="utf-8")
            files.append(path)
    return train_files, heldout_files


def equal_part_samples(counts: list[int], batch_size: int) -> int:
    """Samples kept of every part: the smallest part's count in whole batches (at least one batch)."""
    keep = min(counts) // batch_size * batch_size
    if keep < batch_size:
        raise ValueError(f"a part has {min(counts)} samples, fewer than one batch of {batch_size}; "
                         "raise --part-kb or lower --batch-size")
    return keep


def part_of_samples(indices: np.ndarray, part_samples: int, parts: int) -> list[float]:
    """Fraction of the sample `indices` (into the part-ordered training data) that lie in each part."""
    counts = np.bincount(np.asarray(indices) // part_samples, minlength=parts)[:parts]
    return (counts / max(1, len(indices))).tolist()


def prepare(args, work: Path) -> dict:
    """Corpus parts, tokenizer and MindRecord data under `work` (reused when work/prepared.json exists):
    work/data/train holds the first `part_samples` samples of every part, in part order."""
    import mindspore.mindrecord  # noqa: F401  (before sentencepiece's protobuf, or MindRecord's descriptors fail)

    record = work / "prepared.json"
    if record.is_file():
        data = read_json(record)
        return {**data, "train": Path(data["train"]), "heldout": [Path(p) for p in data["heldout"]]}

    from pangu_pro.data.dataset import count_samples, read_samples
    from pangu_pro.data.preprocess import ShardWriter, preprocess
    from pangu_pro.tokenizer.train import train_tokenizer

    parts = source_parts(args.parts, int(args.part_kb * 1000))
    train_txt, heldout_txt = split_parts(parts, work, args.holdout_every)
    spm = train_tokenizer(train_txt, work / "spm.model", args.vocab, num_threads=2)
    rows = []
    for i, path in enumerate(train_txt):
        out = work / "data" / f"train_part{i + 1}"
        preprocess([path], spm, args.seq, out, workers=1, progress=False, overwrite=True)
        rows.append(read_samples(out))
    keep = equal_part_samples([len(r) for r in rows], args.batch_size)
    train = work / "data" / "train"
    train.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(train, shard_size=keep * len(rows))
    for r in rows:
        writer.write(r[:keep])
    writer.close()
    data = {"train": train, "heldout": [], "part_names": [name for name, _ in parts], "part_samples": keep,
            "part_samples_available": [len(r) for r in rows]}
    for i, path in enumerate(heldout_txt):
        out = work / "data" / f"heldout_part{i + 1}"
        preprocess([path], spm, args.seq, out, workers=1, progress=False, overwrite=True)
        data["heldout"].append(out)
    data["heldout_samples_per_part"] = [count_samples(p) for p in data["heldout"]]
    data["train_samples"] = count_samples(train)
    record.write_text(json.dumps({**data, "train": str(data["train"]), "heldout": [str(p) for p in data["heldout"]]},
                                 indent=2), encoding="utf-8")
    return data


def base_config(args, data: dict, out: Path, seed: int, steps: int, multi_round: dict | None = None):
    """The bench model and round-1 schedule for `steps` steps, a checkpoint at every part boundary."""
    from pangu_pro.config import config_from_dict

    part_steps = data["part_samples"] // args.batch_size
    return config_from_dict({
        "model": {"vocab_size": args.vocab, "hidden_size": args.hidden, "num_layers": args.layers,
                  "num_heads": max(2, args.hidden // 64), "num_kv_heads": 1,
                  "intermediate_size": round(args.hidden * 8 / 3 / 8) * 8,
                  "seq_length": args.seq, "aug_shortcut_ratio": 16},
        "data": {"train_files": [str(data["train"])], "eval_files": [], "shuffle": False},
        "train": {"batch_size": args.batch_size, "steps": steps, "lr": args.lr, "warmup_fraction": ROUND1_WARMUP,
                  "min_lr_ratio": args.min_lr_ratio, "output_dir": str(out), "log_every": 10, "seed": 1234 + seed,
                  "save_every": part_steps, "keep_last": 4 * args.parts},
        "multi_round": None if multi_round is None else {
            "rounds": 2, "rate": 0.5, "unit": "batch", "seed": seed, "score_unit_tokens": args.batch_size * args.seq,
            "round_schedule": "official", "round_lr": args.lr / 3, "round_warmup_fraction": 0.03,
            "round_min_lr_ratio": 0.1, **multi_round},
    }, "bench")


def train_once(config) -> Path:
    """Train `config` (multi_round None) unless its final checkpoint exists; its final checkpoint."""
    from pangu_pro.rounds import driver
    from pangu_pro.train.checkpoint import CHECKPOINTS, checkpoint_name, latest_checkpoint
    from pangu_pro.train.trainer import train

    out = Path(config.train.output_dir)
    if not (out / CHECKPOINTS / checkpoint_name(config.train.steps)).is_dir():
        resume = "auto" if latest_checkpoint(out / CHECKPOINTS) is not None else None
        train(config, resume, progress=False, announce=lambda *_: None)
    return driver.final_checkpoint(out, config.train.steps)


def adopt_round_one(train_out: Path, config, score: dict | None = None) -> None:
    """Start `config`'s multi-round state with a finished round 1 trained elsewhere (same model, data
    and round-1 schedule) in `train_out`, and optionally its `score` record, so round 2 starts from
    the same weights (and draws from the same scores). Round 1's train folder is linked, since round 2
    reads its checkpoint there; held-out evaluation is the benchmark's own."""
    from pangu_pro.rounds import driver
    from pangu_pro.train.checkpoint import read_state

    root = Path(config.train.output_dir)
    link = driver.round_dir(root, 1) / "train"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(train_out.resolve(), target_is_directory=True)
    state = driver.RoundsState(root / driver.STATE_NAME, driver.config_fingerprint(config))
    ckpt = driver.final_checkpoint(link, config.train.steps)
    records = {"train": {"checkpoint": str(ckpt), "steps": config.train.steps,
                         "final_train_loss": read_state(ckpt).get("loss"), "index_file": None},
               "eval": {"heldout_loss": None, "note": "evaluated by the benchmark"}}
    if score is not None:
        records["score"] = score
    for stage, info in records.items():
        if not state.done(1, stage):
            state.record(1, stage, info)


class PartEvaluator:
    """Held-out loss of each part for any checkpoint of the bench model (one network, compiled once)."""

    def __init__(self, config, heldout: list[Path]):
        from pangu_pro.train.evaluate import CheckpointEvaluator

        self.evaluate = CheckpointEvaluator(config.model)
        self.heldout, self.batch_size = heldout, config.train.batch_size

    def __call__(self, checkpoint) -> dict:
        """{"parts": [loss of part p], "overall": sample-weighted mean (every packed sample counts the
        same number of tokens)}."""
        results = [self.evaluate(checkpoint, [p], self.batch_size) for p in self.heldout]
        overall = sum(r["loss"] * r["samples"] for r in results) / sum(r["samples"] for r in results)
        return {"parts": [r["loss"] for r in results], "overall": overall}


def forgetting(curve: list[list[float]]) -> list[float]:
    """Per part p (all but the last): held-out loss of p at the end of round 1 minus right after p was
    read. `curve[c][p]` = loss of part p at the checkpoint closing part c."""
    return [curve[-1][p] - curve[p][p] for p in range(len(curve) - 1)]


def run(args) -> int:
    if args.render:
        return render_files(merge_results([read_json(p) for p in args.render]), Path(args.out))
    from pangu_pro.rounds import driver
    from pangu_pro.train.checkpoint import CHECKPOINTS, checkpoint_name

    began = time.perf_counter()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_rounds_"))
    data = prepare(args, work)
    part_steps = data["part_samples"] // args.batch_size
    n_steps = part_steps * args.parts  # one pass, in corpus order
    quiet = dict(runner=driver.StageRunner(1, progress=False, run_cli=args.run_cli), announce=lambda *_: None)
    arms = {arm: [] for arm in (ARMS[:1] if args.round1_only else ARMS)}
    evaluate = None
    for seed in args.seeds:  # arms interleaved per seed: the machine's load hits them alike
        started = time.perf_counter()
        round1 = base_config(args, data, work / f"seed{seed}_round1", seed, n_steps)
        final = train_once(round1)
        evaluate = evaluate or PartEvaluator(round1, data["heldout"])
        ckpts = Path(round1.train.output_dir) / CHECKPOINTS
        curve = [evaluate(ckpts / checkpoint_name(part_steps * (p + 1)))["parts"] for p in range(args.parts - 1)]
        end = evaluate(final)
        curve.append(end["parts"])
        arms["one_round"].append({"seed": seed, "steps": n_steps, "seconds": time.perf_counter() - started,
                                  "curve": curve, "forgetting": forgetting(curve), **end})
        if args.round1_only:
            print(f"seed {seed}: forgetting per part {[round(f, 3) for f in forgetting(curve)]}; held-out loss "
                  f"per part after each part {[[round(x, 3) for x in row] for row in curve]}", flush=True)
            continue
        score = None
        for arm, temperature in (("hard_50", 1.0), ("uniform_50", 1e9)):
            cfg = base_config(args, data, work / f"seed{seed}_{arm}", seed, n_steps, {"temperature": temperature})
            adopt_round_one(Path(round1.train.output_dir), cfg, score)
            started = time.perf_counter()
            summary = driver.run_rounds(cfg, **quiet)
            rows = summary["rounds"]
            state = driver.RoundsState(Path(summary["root"]) / driver.STATE_NAME, driver.config_fingerprint(cfg))
            score = score or state.done(1, "score")
            arms["one_round"][-1]["round1_mean_score"] = rows[0]["mean_score"]
            arms[arm].append({
                "seed": seed, "steps": rows[0]["steps"] + rows[1]["steps"], "round2_steps": rows[1]["steps"],
                "selected_fraction": rows[0]["selected_fraction"], "mean_score_selected": rows[0]["mean_score_selected"],
                "selected_per_part": part_of_samples(np.load(rows[0]["selection"]), data["part_samples"], args.parts),
                "seconds": time.perf_counter() - started, **evaluate(rows[1]["checkpoint"])})
        long_steps = n_steps + arms["hard_50"][-1]["round2_steps"]
        cfg = base_config(args, data, work / f"seed{seed}_long_round", seed, long_steps)
        started = time.perf_counter()
        ckpt = train_once(cfg)
        arms["long_round"].append({"seed": seed, "steps": long_steps, "seconds": time.perf_counter() - started,
                                   **evaluate(ckpt)})
        print(f"seed {seed} done after {time.perf_counter() - began:.0f} s: forgetting per part "
              f"{[round(f, 3) for f in forgetting(curve)]}", flush=True)
    results = {
        "setup": {"part_kb": args.part_kb, "parts": args.parts, "part_names": data["part_names"],
                  "part_families": {n: list(PART_FAMILIES[n]) for n in data["part_names"]},
                  "vocab": args.vocab, "seq": args.seq, "batch_size": args.batch_size, "lr": args.lr,
                  "min_lr_ratio": args.min_lr_ratio, "round1_warmup_fraction": ROUND1_WARMUP,
                  "round2_lr": args.lr / 3, "train_samples": data["train_samples"], "part_samples": data["part_samples"],
                  "part_steps": part_steps, "round1_steps": n_steps, "round1_only": args.round1_only,
                  "model": dataclasses.asdict(base_config(args, data, work / "unused", 0, n_steps).model),
                  "heldout_samples_per_part": data["heldout_samples_per_part"], "holdout_every": args.holdout_every,
                  "seeds": args.seeds, "machine": f"{platform.machine()}, {platform.python_version()}"},
        "arms": arms, "seconds": time.perf_counter() - began}
    return render_files(results, Path(args.out))


def merge_results(runs: list[dict]) -> dict:
    """Results of several runs with the same set-up (other seeds) as one: arms and seeds concatenated,
    `seconds` summed (the wall time of all the runs)."""
    merged = json.loads(json.dumps(runs[0]))
    for run in runs[1:]:
        differ = {k for k in run["setup"] if k not in ("seeds", "machine") and run["setup"][k] != merged["setup"][k]}
        if differ:
            raise ValueError(f"cannot merge results of different set-ups (they differ in {sorted(differ)})")
        for arm, rows in run["arms"].items():
            merged["arms"][arm] += rows
        merged["setup"]["seeds"] += run["setup"]["seeds"]
        merged["seconds"] += run["seconds"]
    if len(set(merged["setup"]["seeds"])) != len(merged["setup"]["seeds"]):
        raise ValueError(f"a seed appears twice in the merged results: {merged['setup']['seeds']}")
    return merged


def render_files(results: dict, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    (out / "multi_round.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    try:
        draw_figure(results, out / "multi_round.png")
        results_png = True
    except ImportError:
        results_png = False
    text = render(results, figure=results_png)
    (out / "multi_round.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


def mean_std(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, s


def paired(results: dict, a: str, b: str, key=lambda r: r["overall"]) -> tuple[float, float, int]:
    """Mean ± std over seeds of (arm a − arm b) with the same seed, and how many seeds a is lower."""
    by_seed = {r["seed"]: key(r) for r in results["arms"][b]}
    diffs = [key(r) - by_seed[r["seed"]] for r in results["arms"][a] if r["seed"] in by_seed]
    m, s = mean_std(diffs)
    return m, s, sum(d < 0 for d in diffs)


def ms(values: list[float], sign: str = "") -> str:
    return "{:{}.3f} ± {:.3f}".format(mean_std(values)[0], sign, mean_std(values)[1])


def render(results: dict, figure: bool = True) -> str:
    setup = results["setup"]
    parts, seeds = setup["parts"], setup["seeds"]
    one = results["arms"]["one_round"]
    n = len(one)
    lines = ["# Multi-round training at equal compute on a source-ordered corpus", "",
             f"Round 1: one pass over {setup['parts']} parts of {setup['part_samples']} samples of {setup['seq']} "
             f"tokens, in part order ({setup['round1_steps']} steps of {setup['batch_size']}, part p ends at step "
             f"p·{setup['part_steps']}; lr {setup['lr']:g}, {setup['round1_warmup_fraction']:.0%} warm-up, cosine "
             f"floor {setup['min_lr_ratio']:g} of the peak). Model: {setup['model']['num_layers']} layers, "
             f"width {setup['model']['hidden_size']}, vocabulary {setup['vocab']}. Mean ± sample standard "
             f"deviation over seeds {seeds} (each seed: its own initialisation, round 1 and draw).", "",
             "## Forgetting within round 1", "",
             "Held-out loss of each part right after the part was read and at the end of round 1; the rise is "
             "the forgetting (paired per seed).", "",
             "| part | right after it was read | end of round 1 | rise | seeds with a rise |", "|---|---|---|---|---|"]
    for p in range(parts - 1):
        after = [r["curve"][p][p] for r in one]
        end = [r["curve"][-1][p] for r in one]
        rise = [r["forgetting"][p] for r in one]
        lines.append(f"| {p + 1}: {setup['part_names'][p]} | {ms(after)} | {ms(end)} | {ms(rise, '+')} "
                     f"| {sum(x > 0 for x in rise)}/{n} |")
    if set(results["arms"]) == {"one_round"}:
        lines += ["", f"Round 1 only (`--round1-only`); wall time {results['seconds']:.0f} s."]
        return "\n".join(lines + (["", "![forgetting and held-out loss](multi_round.png)"] if figure else [])) + "\n"

    head = " | ".join(f"part {p + 1}" for p in range(parts))
    lines += ["", "## Arms", "",
              f"Every arm but `one_round` costs 1.5× round 1. Held-out loss per part (part 1 = read first) and "
              "overall:", "", f"| arm | steps | {head} | overall |", "|---|---|" + "---|" * parts + "---|"]
    for arm, runs in results["arms"].items():
        cells = " | ".join(ms([r["parts"][p] for r in runs]) for p in range(parts))
        lines.append(f"| {arm} | {runs[0]['steps']} | {cells} | {ms([r['overall'] for r in runs])} |")
    lines += ["", "Share of the round-2 samples drawn from each part:", "",
              f"| arm | {head} |", "|---|" + "---|" * parts]
    for arm in ("hard_50", "uniform_50"):
        runs = results["arms"][arm]
        lines.append(f"| {arm} | " + " | ".join(ms([r["selected_per_part"][p] for r in runs])
                                                 for p in range(parts)) + " |")
    lines += ["", "Paired differences (same seed; negative = first arm lower), held-out loss:", ""]
    for a, b in (("hard_50", "uniform_50"), ("hard_50", "long_round"), ("uniform_50", "long_round")):
        m, sd, wins = paired(results, a, b)
        first = paired(results, a, b, key=lambda r: r["parts"][0])
        lines.append(f"- {a} − {b}: overall {m:+.3f} ± {sd:.3f} ({a} lower in {wins}/{n} seeds); part 1 "
                     f"{first[0]:+.3f} ± {first[1]:.3f} ({first[2]}/{n})")
    lines += ["", "Mean unit loss of the round-1 model on the training set {:.3f}; mean of the units drawn by hard_50 "
              "{:.3f}, by uniform_50 {:.3f}.".format(
                  mean_std([r["round1_mean_score"] for r in one])[0],
                  mean_std([r["mean_score_selected"] for r in results["arms"]["hard_50"]])[0],
                  mean_std([r["mean_score_selected"] for r in results["arms"]["uniform_50"]])[0]),
              f"Wall time {results['seconds']:.0f} s summed over the processes that wrote these results (a resumed "
              "run counts only its own part), on a shared 2-core machine at nice 19."]
    if figure:
        lines += ["", "![forgetting and held-out loss per part](multi_round.png)"]
    return "\n".join(lines) + "\n"


def draw_figure(results: dict, path: Path) -> None:
    """Left: held-out loss of each part at every part boundary of round 1 (the forgetting). Right:
    held-out loss per part and overall of every arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    setup = results["setup"]
    parts = setup["parts"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [2, 3]})
    one = results["arms"]["one_round"]
    steps = [setup["part_steps"] * (c + 1) for c in range(parts)]
    for p in range(parts):
        stats = [mean_std([r["curve"][c][p] for r in one]) for c in range(parts)]
        left.errorbar(steps, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=3,
                      label=f"part {p + 1}: {setup['part_names'][p]}")
    left.set_xticks(steps, [f"{s}\n(end of {c + 1})" for c, s in enumerate(steps)])
    left.set_xlabel("round-1 step (end of part)")
    left.set_ylabel("held-out loss (nats/token)")
    left.set_title("round 1: held-out loss of each part")
    left.legend(fontsize=8)
    labels = [f"part {p + 1}" for p in range(parts)] + ["overall"]
    width = 0.8 / len(results["arms"])
    for i, (arm, runs) in enumerate(results["arms"].items()):
        stats = [mean_std([r["parts"][p] for r in runs]) for p in range(parts)]
        stats.append(mean_std([r["overall"] for r in runs]))
        xs = [x + (i - (len(results["arms"]) - 1) / 2) * width for x in range(parts + 1)]
        right.bar(xs, [m for m, _ in stats], width, yerr=[s for _, s in stats], capsize=3,
                  label=f"{arm} ({runs[0]['steps']} steps)")
    low = min(min(r["parts"]) for runs in results["arms"].values() for r in runs)
    high = max(max(r["parts"]) for runs in results["arms"].values() for r in runs)
    right.set_ylim(low - 0.15 * (high - low) - 0.05, high + 0.1 * (high - low) + 0.05)
    right.set_xticks(range(parts + 1), labels)
    right.set_xlabel("held-out part (in training order)")
    seeds = len(setup["seeds"])
    right.set_title(f"arms at equal compute, mean ± sd over {seeds} seed{'s' if seeds > 1 else ''}")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
