"""Multi-round training benchmark: at equal compute, does a second round on a hard half beat one
longer round, and a second round on a uniform half, where a single pass forgets its early parts?

Set-up (paper-notes §6, scaled to two CPU cores):
  * a corpus ordered by **source**: `--parts` parts, each the prose of one family of standard-library
    modules (`PART_FAMILIES`: the language reference, mail/web, GUI, concurrency), `--part-kb` KB
    each, so the parts differ in vocabulary and style; documents are cut into pieces of at most
    `PIECE_BYTES` bytes and every `HOLDOUT_EVERY`-th piece of a part is that part's held-out text;
  * a SentencePiece tokenizer trained on the training text; samples of `--seq` + 1 tokens;
  * round 1: one pass over the training samples **in corpus order** (data.shuffle off), N steps, so
    part 1 is the longest ago when round 1 ends;
  * arms at **equal compute** (1.5 N steps each), all with the same model seed:
      long_round   one round of 1.5 N steps (same schedule shape), reading the corpus order on
                   (parts 1 .. P, then the first half again);
      hard_50      round 1, then round 2 (0.5 N steps) on 50% of the scoring units drawn with
                   p ∝ exp(loss) (the paper's rule; one unit = one training batch, the official unit);
      uniform_50   the same round 1, then round 2 on a uniform 50% draw (temperature 1e9).
    Round 2 uses the official continued-training schedule's shape at our scale: peak lr / 3 (their
    1e-4 after 3e-4), 3% warm-up, floor 10% of its peak. `one_round` (round 1 alone, N steps) is
    reported for reference; it costs a third less.
  * `--seeds` seeds; each seed changes the model initialisation and the selection draw, and gets its
    own round 1. Reported: held-out loss per part and overall (mean ± sample standard deviation over
    seeds), and the paired differences between arms (same seed).

Run: `pangu-pro bench rounds [--part-kb 60] [--seeds 0 1 2] [--out benchmarks/results]` or
`python -m pangu_pro.bench.rounds`. Re-running with the same `--work` skips every finished run
(rounds resume from their state files). Writes OUT/multi_round.json, OUT/multi_round.md and, with
matplotlib, OUT/multi_round.png (`--render JSON [JSON ...]` redraws the table and figure from results
files, merging runs of other seeds).
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

HOLDOUT_EVERY = 20
PIECE_BYTES = 2000  # documents are cut into pieces of at most this size (language-reference topics are long)
PART_FAMILIES = {  # top-level standard-library modules whose prose forms each part, in training order
    "language reference": ("pydoc_data",),
    "mail and web": ("email", "http", "urllib", "xmlrpc", "wsgiref", "html", "mailbox", "smtplib", "imaplib"),
    "GUI": ("tkinter", "idlelib", "turtle", "turtledemo"),
    "concurrency": ("asyncio", "multiprocessing", "concurrent", "threading", "subprocess", "selectors"),
}
ARMS = ("one_round", "long_round", "hard_50", "uniform_50")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--part-kb", type=float, default=60.0, help="training text per part, KB (default 60)")
    parser.add_argument("--parts", type=int, default=len(PART_FAMILIES), choices=range(2, len(PART_FAMILIES) + 1),
                        help=f"source parts, in the order of PART_FAMILIES (default {len(PART_FAMILIES)})")
    parser.add_argument("--vocab", type=int, default=1000, help="tokenizer vocabulary (default 1000)")
    parser.add_argument("--seq", type=int, default=64, help="sequence length (default 64)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="model and selection seeds")
    parser.add_argument("--work", default=None, help="working folder (default: a temporary one)")
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


def split_parts(parts: list[tuple[str, list[str]]], work: Path) -> tuple[Path, list[Path], list[int]]:
    """work/text/train_parts.txt (training documents, part order) and one held-out file per part."""
    train_lines, heldout_files, train_docs = [], [], []
    for p, (_, docs) in enumerate(parts):
        held = [d for i, d in enumerate(docs) if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1]
        kept = [d for i, d in enumerate(docs) if i % HOLDOUT_EVERY != HOLDOUT_EVERY - 1]
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
    """Corpus parts, tokenizer and MindRecord data under `work` (reused when work/prepared.json exists)."""
    import mindspore.mindrecord  # noqa: F401  (before sentencepiece's protobuf, or MindRecord's descriptors fail)

    record = work / "prepared.json"
    if record.is_file():
        data = json.loads(record.read_text(encoding="utf-8"))
        return {**data, "train": Path(data["train"]), "heldout": [Path(p) for p in data["heldout"]]}

    from pangu_pro.data.dataset import count_samples
    from pangu_pro.data.preprocess import preprocess
    from pangu_pro.tokenizer.train import train_tokenizer

    parts = source_parts(args.parts, int(args.part_kb * 1000))
    train_txt, heldout_txt, train_docs = split_parts(parts, work)
    spm = train_tokenizer([train_txt], work / "spm.model", args.vocab, num_threads=2)
    data = {"train": work / "data" / "train", "heldout": [], "part_names": [name for name, _ in parts]}
    preprocess([train_txt], spm, args.seq, data["train"], workers=1, progress=False, overwrite=True)
    for i, path in enumerate(heldout_txt):
        out = work / "data" / f"heldout_part{i + 1}"
        preprocess([path], spm, args.seq, out, workers=1, progress=False, overwrite=True)
        data["heldout"].append(out)
    data["train_docs_per_part"] = train_docs
    data["heldout_samples_per_part"] = [count_samples(p) for p in data["heldout"]]
    data["train_samples"] = count_samples(data["train"])
    record.write_text(json.dumps({**data, "train": str(data["train"]), "heldout": [str(p) for p in data["heldout"]]},
                                 indent=2), encoding="utf-8")
    return data


def base_config(args, data: dict, out: Path, seed: int, steps: int, **multi_round):
    from pangu_pro.config import config_from_dict

    return config_from_dict({
        "model": {"vocab_size": args.vocab, "hidden_size": 128, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1,
                  "intermediate_size": 344, "seq_length": args.seq, "aug_shortcut_ratio": 16},
        "data": {"train_files": [str(data["train"])], "eval_files": [], "shuffle": False},
        "train": {"batch_size": args.batch_size, "steps": steps, "lr": args.lr, "warmup_fraction": 0.05,
                  "min_lr_ratio": 0.1, "output_dir": str(out), "log_every": 10, "seed": 1234 + seed},
        "multi_round": {"rounds": 2, "rate": 0.5, "unit": "batch", "seed": seed,
                        "score_unit_tokens": args.batch_size * args.seq, "round_schedule": "official",
                        "round_lr": args.lr / 3, "round_warmup_fraction": 0.03, "round_min_lr_ratio": 0.1,
                        **multi_round},
    }, "bench")


def adopt_round_one(source_root: Path, config) -> None:
    """Start `config`'s multi-round state with the train/eval/score records of round 1 of another run
    (same model, data and round-1 schedule): its round 2 then draws from the same scores and starts
    from the same weights (round 1's train folder is linked, since round 2 reads its checkpoint there)."""
    from pangu_pro.rounds import driver

    source = json.loads((source_root / driver.STATE_NAME).read_text(encoding="utf-8"))
    root = Path(config.train.output_dir)
    train_link = driver.round_dir(root, 1) / "train"
    if not train_link.exists():
        train_link.parent.mkdir(parents=True, exist_ok=True)
        train_link.symlink_to(driver.round_dir(source_root, 1) / "train", target_is_directory=True)
    state = driver.RoundsState(root / driver.STATE_NAME, driver.config_fingerprint(config))
    for stage in ("train", "eval", "score"):
        if not state.done(1, stage):
            state.record(1, stage, source["rounds"]["1"][stage])


def part_losses(config, checkpoint, heldout: list[Path]) -> dict:
    """Held-out loss of each part (one network for all parts) and overall (sample-weighted: every
    packed sample counts the same number of tokens)."""
    from pangu_pro.model.pangu_pi import PanGuPiWithLoss
    from pangu_pro.model.weights import build_model
    from pangu_pro.runtime import adapt_to_device, init_mindspore
    from pangu_pro.train.evaluate import eval_dataset, evaluate_loss

    init_mindspore()
    net = PanGuPiWithLoss(build_model(adapt_to_device(config.model), weights=checkpoint))
    results = [evaluate_loss(net, eval_dataset([p], config.train.batch_size)) for p in heldout]
    overall = sum(r["loss"] * r["samples"] for r in results) / sum(r["samples"] for r in results)
    return {"parts": [r["loss"] for r in results], "overall": overall}


def run(args) -> int:
    if args.render:
        return render_files(merge_results([json.loads(Path(p).read_text(encoding="utf-8")) for p in args.render]),
                            Path(args.out))
    from pangu_pro.rounds import driver
    from pangu_pro.train.checkpoint import CHECKPOINTS, checkpoint_name
    from pangu_pro.train.trainer import train

    began = time.perf_counter()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_rounds_"))
    data = prepare(args, work)
    n_steps = data["train_samples"] // args.batch_size  # one pass, in corpus order
    quiet = dict(runner=driver.StageRunner(1, progress=False), announce=lambda *_: None)
    arms = {arm: [] for arm in ARMS}
    for seed in args.seeds:  # arms interleaved per seed: the machine's load hits them alike
        shared = None
        for arm, temperature in (("hard_50", 1.0), ("uniform_50", 1e9)):
            cfg = base_config(args, data, work / f"seed{seed}_{arm}", seed, n_steps, temperature=temperature)
            if shared is not None:
                adopt_round_one(shared, cfg)
            started = time.perf_counter()
            rows = driver.run_rounds(cfg, **quiet)["rounds"]
            if shared is None:
                shared = Path(cfg.train.output_dir)
                arms["one_round"].append({"seed": seed, "steps": rows[0]["steps"],
                                          "round1_mean_score": rows[0]["mean_score"],
                                          **part_losses(cfg, rows[0]["checkpoint"], data["heldout"])})
            arms[arm].append({
                "seed": seed, "steps": rows[0]["steps"] + rows[1]["steps"], "round2_steps": rows[1]["steps"],
                "selected_fraction": rows[0]["selected_fraction"],
                "mean_score_selected": rows[0]["mean_score_selected"], "seconds": time.perf_counter() - started,
                **part_losses(cfg, rows[1]["checkpoint"], data["heldout"])})
        long_steps = n_steps + arms["hard_50"][-1]["round2_steps"]
        cfg = base_config(args, data, work / f"seed{seed}_long_round", seed, long_steps)
        cfg = dataclasses.replace(cfg, multi_round=None)
        started = time.perf_counter()
        if not (Path(cfg.train.output_dir) / CHECKPOINTS / checkpoint_name(long_steps)).is_dir():  # resumable
            train(cfg, progress=False, announce=lambda *_: None)
        ckpt = driver.final_checkpoint(Path(cfg.train.output_dir), long_steps)
        arms["long_round"].append({"seed": seed, "steps": long_steps, "seconds": time.perf_counter() - started,
                                   **part_losses(cfg, ckpt, data["heldout"])})
        print(f"seed {seed} done after {time.perf_counter() - began:.0f} s", flush=True)
    results = {
        "setup": {"part_kb": args.part_kb, "parts": args.parts, "part_names": data["part_names"],
                  "part_families": {n: list(PART_FAMILIES[n]) for n in data["part_names"]},
                  "vocab": args.vocab, "seq": args.seq, "batch_size": args.batch_size, "lr": args.lr,
                  "round2_lr": args.lr / 3, "train_samples": data["train_samples"], "round1_steps": n_steps,
                  "model": dataclasses.asdict(base_config(args, data, work / "unused", 0, n_steps).model),
                  "train_docs_per_part": data["train_docs_per_part"],
                  "heldout_samples_per_part": data["heldout_samples_per_part"], "holdout_every": HOLDOUT_EVERY,
                  "seeds": args.seeds, "machine": f"{platform.machine()}, {platform.python_version()}"},
        "arms": arms, "seconds": time.perf_counter() - began}
    return render_files(results, Path(args.out))


def merge_results(runs: list[dict]) -> dict:
    """Results of several runs with the same set-up (other seeds) as one: arms and seeds concatenated;
    `seconds` is the longest run's (runs of different seeds may have run side by side)."""
    merged = json.loads(json.dumps(runs[0]))
    for run in runs[1:]:
        differ = {k for k in run["setup"] if k not in ("seeds", "machine") and run["setup"][k] != merged["setup"][k]}
        if differ:
            raise ValueError(f"cannot merge results of different set-ups (they differ in {sorted(differ)})")
        for arm, rows in run["arms"].items():
            merged["arms"][arm] += rows
        merged["setup"]["seeds"] += run["setup"]["seeds"]
        merged["seconds"] = max(merged["seconds"], run["seconds"])
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


def render(results: dict, figure: bool = True) -> str:
    setup = results["setup"]
    parts = setup["parts"]
    head = " | ".join(f"part {p + 1}: {setup['part_names'][p]}" for p in range(parts))
    lines = ["# Multi-round training at equal compute on a source-ordered corpus", "",
             f"Round 1: one pass over {setup['train_samples']} samples of {setup['seq']} tokens in part order "
             f"({setup['round1_steps']} steps of {setup['batch_size']}); every arm but `one_round` costs 1.5× that. "
             f"Held-out loss per part (part 1 = read first) and overall, mean ± standard deviation over seeds "
             f"{setup['seeds']} (each seed: its own initialisation, round 1 and draw).", "",
             f"| arm | steps | {head} | overall |", "|---|---|" + "---|" * parts + "---|"]
    for arm, runs in results["arms"].items():
        cells = " | ".join("{:.3f} ± {:.3f}".format(*mean_std([r["parts"][p] for r in runs])) for p in range(parts))
        lines.append(f"| {arm} | {runs[0]['steps']} | {cells} | "
                     "{:.3f} ± {:.3f} |".format(*mean_std([r["overall"] for r in runs])))
    n = len(results["arms"]["hard_50"])
    lines += ["", "Paired differences (same seed; negative = first arm lower), overall held-out loss:", ""]
    for a, b in (("hard_50", "uniform_50"), ("hard_50", "long_round"), ("uniform_50", "long_round")):
        m, s, wins = paired(results, a, b)
        first = paired(results, a, b, key=lambda r: r["parts"][0])
        lines.append(f"- {a} − {b}: {m:+.3f} ± {s:.3f} ({a} lower in {wins}/{n} seeds); on part 1 alone "
                     f"{first[0]:+.3f} ± {first[1]:.3f} ({first[2]}/{n})")
    one = results["arms"]["one_round"]
    gap = mean_std([r["parts"][0] - r["parts"][-1] for r in one])
    lines += ["", f"Forgetting after round 1: part 1 minus part {parts} held-out loss = {gap[0]:+.3f} ± {gap[1]:.3f} "
              "(the parts differ in difficulty too, so compare arms per part rather than parts per arm).",
              "Mean unit loss of the round-1 model on the training set {:.3f}; mean of the units drawn by hard_50 "
              "{:.3f}, by uniform_50 {:.3f}.".format(
                  mean_std([r["round1_mean_score"] for r in one])[0],
                  mean_std([r["mean_score_selected"] for r in results["arms"]["hard_50"]])[0],
                  mean_std([r["mean_score_selected"] for r in results["arms"]["uniform_50"]])[0]),
              f"Wall time {results['seconds']:.0f} s (longest run) on a shared, heavily loaded 2-core machine; the arms "
              "of a seed ran one after another in one process."]
    if figure:
        lines += ["", "![held-out loss per part](multi_round.png)"]
    return "\n".join(lines) + "\n"


def draw_figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    setup = results["setup"]
    parts = setup["parts"]
    labels = [f"part {p + 1}\n{setup['part_names'][p]}" for p in range(parts)] + ["overall"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(results["arms"])
    for i, (arm, runs) in enumerate(results["arms"].items()):
        stats = [mean_std([r["parts"][p] for r in runs]) for p in range(parts)]
        stats.append(mean_std([r["overall"] for r in runs]))
        xs = [x + (i - (len(results["arms"]) - 1) / 2) * width for x in range(parts + 1)]
        ax.bar(xs, [m for m, _ in stats], width, yerr=[s for _, s in stats], capsize=3,
               label=f"{arm} ({runs[0]['steps']} steps)")
    low = min(min(r["parts"]) for runs in results["arms"].values() for r in runs)
    high = max(max(r["parts"]) for runs in results["arms"].values() for r in runs)
    ax.set_ylim(low - 0.15 * (high - low) - 0.05, high + 0.1 * (high - low) + 0.05)
    ax.set_xticks(range(parts + 1), labels)
    ax.set_xlabel("held-out part (in training order)")
    ax.set_ylabel("held-out loss (nats/token)")
    seeds = len(setup["seeds"])
    ax.set_title(f"Multi-round training at equal compute, mean ± sd over {seeds} seed{'s' if seeds > 1 else ''}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
