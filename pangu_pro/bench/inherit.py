"""`pangu-pro bench inherit`: which inheritance criterion gives the best student (paper-notes §5)?

On the built-in corpus (`pangu_pro.data.corpus`, standard-library prose) with a byte-level vocabulary
(259 ids: pad, bos, eos, 256 bytes; no tokenizer training, so the benchmark stays within minutes),
for every seed of `--seeds`:

  1. pretrain a small teacher (8 layers x 128, GQA 4/2 heads, SIAF and AugShortcut on) with the
     trainer (`pangu_pro.train.trainer.train`); the seed sets its initialisation and the data order;
  2. derive same-shape students (6 layers x 64, 2 heads, ffn 176) with `pangu-pro inherit`'s pipeline
     (`run_inherit`): random selection, L1, L2, Taylor and learned hard-concrete masks, layers by
     cosine; plus a randomly initialised student ("random init", no inheritance). **Equal data
     budgets**: every criterion that reads data sees the same `--mask-steps` x `--batch-size`
     sequences (Taylor scores and the cosine layer scores of every criterion use that many
     calibration sequences; learned masks train that many steps of one batch); L1, L2 and random use
     no data by construction. The learned masks must pass `pangu_pro.inherit.convergence` (recorded);
  3. continue pretraining every student with the trainer's AdamW / TrainStep / schedule on the same
     batches for K steps; held-out loss at 0, K/2 and K steps.

Reported over seeds: held-out loss after 0 and K steps (mean ± sample standard deviation) and the
paired differences between criteria (same seed and teacher), each marked when it exceeds seed noise
(two-sided paired t-test at 5%). Writes OUT/inherit.json and OUT/inherit.md; a finished student is
kept in WORK/seed_N/arm_<name>.json and a finished seed in WORK/seed_N/result.json, both skipped on a
re-run (delete one arm's file to redo that student alone); `--render JSON [JSON ...]` redraws the
table from results files, merging runs of other seeds.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from pangu_pro.study import stats

BYTE_OFFSET = 3  # ids 0, 1, 2 = pad, bos, eos; byte b -> b + 3
VOCAB = 256 + BYTE_OFFSET
CRITERIA = ("random", "l1", "l2", "taylor", "learned")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="benchmarks/results", help="folder for inherit.json / inherit.md")
    parser.add_argument("--work", default="runs/bench_inherit", help="scratch folder (data, teacher, students)")
    parser.add_argument("--corpus-mb", type=float, default=1.0, help="built-in corpus size")
    parser.add_argument("--seq", type=int, default=64, help="tokens per sample")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--teacher-steps", type=int, default=150)
    parser.add_argument("--mask-steps", type=int, default=400,
                        help="learned-mask steps (teacher weights frozen); also the data budget of every criterion: "
                        "MASK_STEPS x BATCH_SIZE sequences")
    parser.add_argument("--lr-mask", type=float, default=0.3, help="learning rate of the mask logits")
    parser.add_argument("--lr-lambda", type=float, default=0.3,
                        help="learning rate of the Lagrange multipliers (1.0 left the hidden-channel sparsity "
                        "swinging by +-0.03 around its target after 400 steps)")
    parser.add_argument("--steps", type=int, default=40, help="continued-pretraining steps K per student")
    parser.add_argument("--eval-batches", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3],
                        help="seeds (each: teacher initialisation, data order, mask noise, random selection)")
    parser.add_argument("--criteria", nargs="+", default=list(CRITERIA), choices=CRITERIA,
                        help="inheritance criteria to compare (default all)")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--render", nargs="+", default=None, metavar="JSON",
                        help="only redraw the table from results files (several: runs of other seeds, merged)")


def byte_rows(path: Path, seq: int) -> np.ndarray:
    """Documents as bytes + eos, concatenated and cut into rows of seq + 1 ids (int32)."""
    stream = []
    for line in path.read_text(encoding="utf-8").splitlines():
        stream.append(np.frombuffer(line.encode("utf-8"), np.uint8).astype(np.int32) + BYTE_OFFSET)
        stream.append(np.array([2], np.int32))
    ids = np.concatenate(stream)
    n = len(ids) // (seq + 1)
    return ids[: n * (seq + 1)].reshape(n, seq + 1)


def write_shards(rows: np.ndarray, folder: Path) -> Path:
    from pangu_pro.data.preprocess import ShardWriter

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*"):
        old.unlink()
    writer = ShardWriter(folder, 1 << 20)
    writer.write(rows)
    writer.close()
    return folder


def teacher_model(seq: int) -> dict:
    return {"vocab_size": VOCAB, "hidden_size": 128, "num_layers": 8, "num_heads": 4, "num_kv_heads": 2,
            "intermediate_size": 352, "seq_length": seq, "aug_shortcut_ratio": 16, "siaf": True,
            "aug_shortcut": True, "compute_dtype": "float32"}


def student_model(seq: int) -> dict:
    return {"vocab_size": VOCAB, "hidden_size": 64, "num_layers": 6, "num_heads": 2, "num_kv_heads": 1,
            "intermediate_size": 176, "seq_length": seq, "aug_shortcut_ratio": 8, "siaf": True,
            "aug_shortcut": True, "compute_dtype": "float32"}


def held_out_loss(loss_net, heldout: Path, batch_size: int) -> float:
    """The trainer's held-out loss (`evaluate_loss`) of `loss_net` (a PanGuPiWithLoss) over the held-out
    shards. Keep one loss cell per model: each new cell compiles its graph again."""
    from pangu_pro.train.evaluate import eval_dataset, evaluate_loss

    return evaluate_loss(loss_net, eval_dataset(heldout, batch_size))["loss"]


def continue_pretraining(model, rows: np.ndarray, heldout: Path, args, lr: float) -> list[tuple[int, float]]:
    """K steps of AdamW on `rows` in order; held-out loss at step 0, K/2 and K."""
    from mindspore import Tensor

    from pangu_pro.config import TrainConfig
    from pangu_pro.model.pangu_pi import PanGuPiWithLoss
    from pangu_pro.train.optim import build_optimizer
    from pangu_pro.train.schedule import lr_at
    from pangu_pro.train.step import TrainStep

    tc = TrainConfig(batch_size=args.batch_size, lr=lr, warmup_steps=max(1, args.steps // 20), steps=args.steps,
                     weight_decay=0.1, grad_clip=1.0)
    step_fn = TrainStep(PanGuPiWithLoss(model), build_optimizer(model.trainable_params(), tc), grad_clip=tc.grad_clip)
    evaluator = PanGuPiWithLoss(model)  # one cell for the three held-out passes: one compile
    every = max(1, args.steps // 2)
    curve = [(0, held_out_loss(evaluator, heldout, args.batch_size))]
    for step in range(1, args.steps + 1):
        start = ((step - 1) * args.batch_size) % (len(rows) - args.batch_size)
        batch = Tensor(rows[start:start + args.batch_size])
        step_fn([batch], lr_at(step, lr=tc.lr, total_steps=tc.steps, warmup_steps=tc.warmup_steps,
                               min_lr_ratio=tc.min_lr_ratio))
        if step % every == 0 or step == args.steps:
            curve.append((step, held_out_loss(evaluator, heldout, args.batch_size)))
    return curve


def student_name(criterion: str) -> str:
    return "random selection" if criterion == "random" else criterion


def run_seed(args, seed: int, corpus: Path, work: Path) -> dict:
    """Teacher, students and continued pretraining of one seed; the result is kept in WORK/result.json."""
    import shutil

    import mindspore as ms
    import yaml

    from pangu_pro.config import config_from_dict, load_config
    from pangu_pro.inherit.config import InheritConfig, InheritRunConfig
    from pangu_pro.inherit.run import run_inherit
    from pangu_pro.io import atomic_write_json, read_json
    from pangu_pro.model.pangu_pi import PanGuPiWithLoss
    from pangu_pro.model.weights import build_model
    from pangu_pro.train.trainer import train

    done = work / "result.json"
    if done.is_file():
        print(f"seed {seed}: kept result {done}", flush=True)
        return read_json(done)
    work.mkdir(parents=True, exist_ok=True)
    ms.set_seed(seed)
    rows = byte_rows(corpus / "train.txt", args.seq)
    heldout_rows = byte_rows(corpus / "heldout.txt", args.seq)[: args.eval_batches * args.batch_size]
    rows = rows[np.random.default_rng(seed).permutation(len(rows))]
    data = write_shards(rows, work / "data")
    heldout = write_shards(heldout_rows, work / "heldout")

    # 1. teacher
    teacher_dir = work / "teacher"
    teacher_raw = {"model": teacher_model(args.seq), "data": {"train_files": [str(data)], "seed": seed},
                   "train": {"batch_size": args.batch_size, "lr": 2e-3, "warmup_steps": args.teacher_steps // 20,
                             "steps": args.teacher_steps, "output_dir": str(teacher_dir), "log_every": 50,
                             "seed": seed}}
    teacher_cfg = config_from_dict(teacher_raw, "bench teacher")
    ckpt = teacher_dir / "checkpoints" / f"step_{args.teacher_steps:08d}"
    t0 = time.perf_counter()
    if not (ckpt / "state.json").is_file():
        shutil.rmtree(teacher_dir, ignore_errors=True)
        train(teacher_cfg, progress=False, announce=lambda *_: None)
    teacher_seconds = time.perf_counter() - t0
    teacher_loss = held_out_loss(PanGuPiWithLoss(build_model(teacher_cfg.model, ckpt)), heldout, args.batch_size)
    print(f"seed {seed}: teacher {args.teacher_steps} steps in {teacher_seconds:.0f} s, held-out loss "
          f"{teacher_loss:.3f}", flush=True)

    # 2. students, every data-reading criterion on the same number of sequences, and 3. continued
    # pretraining (rows after the teacher's share, the same order for every student). Each finished
    # student is kept in WORK/arm_<name>.json: a killed run, or a changed criterion, redoes only its own.
    target_path = work / "student.yaml"
    target_path.write_text(yaml.safe_dump({"model": student_model(args.seq)}))
    start = min(args.teacher_steps * args.batch_size, len(rows) - args.steps * args.batch_size - 1)
    cont_rows = rows[max(0, start):]
    students = {}
    for criterion in ["random init"] + list(args.criteria):
        name = student_name(criterion)
        arm = work / f"arm_{name.replace(' ', '_')}.json"
        if arm.is_file():
            students[name] = read_json(arm)
            print(f"seed {seed}: {name}: kept result {arm}", flush=True)
            continue
        summary, seconds = None, 0.0
        if criterion == "random init":
            model = build_model(config_from_dict({"model": student_model(args.seq)}, "bench student").model, seed=seed)
        else:
            out = work / f"inherit_{criterion}"
            inherit = InheritConfig(target_config=str(target_path), teacher_checkpoint=str(ckpt), criterion=criterion,
                                    layer_selection="cosine", calibration_batches=args.mask_steps,
                                    steps=args.mask_steps, batch_size=args.batch_size, lr_mask=args.lr_mask,
                                    lr_lambda=args.lr_lambda, lr_weights=0.0,
                                    log_every=max(1, args.mask_steps // 10),
                                    checkpoint_every=args.mask_steps, seed=seed, output_dir=str(out))
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            # force: the convergence report is recorded (and shown in the table) instead of stopping the benchmark
            summary = run_inherit(InheritRunConfig.of(teacher_cfg, inherit), progress=False,
                                  announce=lambda *_: None, force=True)
            seconds = time.perf_counter() - t0
            model = build_model(load_config(out / "student" / "config.yaml").model, out / "student")
            print(f"seed {seed}: derived {criterion}: layers {summary['kept_layers']} in {seconds:.0f} s"
                  + (f", converged {summary['convergence']['converged']}" if "convergence" in summary else ""),
                  flush=True)
        t0 = time.perf_counter()
        curve = continue_pretraining(model, cont_rows, heldout, args, CONTINUE_LR)
        entry = {"curve": curve, "loss_0": curve[0][1], "loss_k": curve[-1][1], "derive_seconds": seconds,
                 "train_seconds": time.perf_counter() - t0,
                 "kept_layers": None if summary is None else summary["kept_layers"]}
        if summary is not None and "convergence" in summary:
            entry.update(convergence=summary["convergence"], sparsity=summary["sparsity"],
                         losses=summary.get("losses"))
        atomic_write_json(arm, entry)
        students[name] = entry
        print(f"seed {seed}: {name}: held-out {curve[0][1]:.3f} -> {curve[-1][1]:.3f}", flush=True)
    result = {"seed": seed, "teacher_heldout_loss": teacher_loss, "teacher_seconds": teacher_seconds,
              "train_rows": len(rows), "students": students}
    atomic_write_json(done, result)
    return result


CONTINUE_LR = 1e-3


def setup_of(args) -> dict:
    return {"teacher": "8 layers x 128, 4 heads / 2 kv, ffn 352, SIAF + AugShortcut (bottleneck 8)",
            "student": "6 layers x 64, 2 heads / 1 kv, ffn 176, AugShortcut bottleneck 8 (the teacher's, kept)",
            "data": f"built-in corpus ({args.corpus_mb} MB of stdlib prose), byte-level ids, seq {args.seq}, "
                    f"batch {args.batch_size}",
            "teacher_steps": args.teacher_steps, "mask_steps": args.mask_steps, "lr_mask": args.lr_mask,
            "lr_lambda": args.lr_lambda,
            "data_budget_sequences": args.mask_steps * args.batch_size, "continue_steps": args.steps,
            "continue_lr": CONTINUE_LR, "eval_batches": args.eval_batches, "criteria": list(args.criteria)}


def merge_results(results: list[dict]) -> dict:
    """Results of several runs with the same set-up (other seeds) as one."""
    merged = json.loads(json.dumps(results[0]))
    for other in results[1:]:
        differ = sorted(k for k in other["setup"] if other["setup"][k] != merged["setup"].get(k))
        if differ:
            raise ValueError(f"cannot merge results of different set-ups (they differ in {differ})")
        merged["runs"] += other["runs"]
        merged["seconds"] = max(merged["seconds"], other["seconds"])
    seeds = [r["seed"] for r in merged["runs"]]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"a seed appears twice in the merged results: {seeds}")
    return merged


def paired_difference(runs: list[dict], a: str, b: str, key: str) -> dict:
    """a − b of `key` per seed (`study.stats.paired_difference`: mean, sd, whether it exceeds seed noise)."""
    return stats.paired_difference([r["students"][a][key] for r in runs], [r["students"][b][key] for r in runs])


def format_table(result: dict) -> str:
    setup, runs = result["setup"], result["runs"]
    k, n = setup["continue_steps"], len(runs)
    names = list(runs[0]["students"])
    inherited = [x for x in names if x != "random init"]
    seeds = [r["seed"] for r in runs]
    lines = [
        "# Parameter inheritance: which criterion gives the best student?",
        "",
        f"Teacher: {setup['teacher']} ({result['teacher_parameters']:,} parameters), pretrained "
        f"{setup['teacher_steps']} steps, held-out loss "
        "{:.3f} ± {:.3f}. ".format(*stats.mean_sd([r["teacher_heldout_loss"] for r in runs]))
        + f"Student: {setup['student']} ({result['student_parameters']:,} parameters). Data: {setup['data']}. "
        f"Seeds {seeds}: each its own teacher, data order, mask noise and random selection.",
        "",
        f"Equal data budgets: Taylor, the learned masks and the cosine layer scores (every inherited student) "
        f"each see {setup['data_budget_sequences']} sequences ({setup['mask_steps']} batches of "
        f"{setup['data_budget_sequences'] // setup['mask_steps']}); L1, L2 and random selection read no data. "
        f"Learned masks: {setup['mask_steps']} steps, lr {setup['lr_mask']}, multipliers' lr {setup['lr_lambda']}, "
        "teacher frozen, values folded.",
        "",
        f"| student | held-out loss at 0 | after {k} steps | derive time (s) |",
        "|---|---|---|---|",
    ]
    for name in names:
        cells = [stats.mean_sd([r["students"][name][key] for r in runs]) for key in ("loss_0", "loss_k", "derive_seconds")]
        lines.append(f"| {name} | {cells[0][0]:.3f} ± {cells[0][1]:.3f} | {cells[1][0]:.3f} ± {cells[1][1]:.3f} | "
                     f"{cells[2][0]:.1f} |")
    learned = [r["students"]["learned"] for r in runs if "learned" in r["students"]]
    if learned:
        conv = [s["convergence"] for s in learned]
        lines += ["", "Learned masks, convergence report per seed (tolerance {:g}): ".format(conv[0]["tolerance"])
                  + "; ".join(f"seed {r['seed']}: {'converged' if c['converged'] else 'NOT converged'}, size gap "
                              f"{c['size_gap']:+.2%}, decided {c['decided']:.1%}, "
                              + ", ".join(f"{t} per layer {v['min']:.3f}..{v['max']:.3f} (target {v['target']:.3f})"
                                          for t, v in c["spread"].items())
                              for r, c in zip(runs, conv)) + "."]
        gaps = [s["losses"] for s in learned if s.get("losses")]
        if gaps:
            lines.append(f"Masked teacher (noise-free soft masks as learned) vs student, mean loss on the first "
                         f"{gaps[0]['batches']} training batches (not held out, unlike the table): "
                         + "; ".join(f"{g['masked_teacher_soft']:.3f} vs {g['student']:.3f}" for g in gaps) + ".")
    lines += ["", f"Paired differences over {n} seeds (row − column criterion, same seed and teacher; negative: "
              f"the row is lower). **Bold**: exceeds seed noise (two-sided paired t-test, p < 0.05).", ""]
    significant = {}
    for key, label in (("loss_0", "at step 0"), ("loss_k", f"after {k} steps")):
        lines += [f"Held-out loss {label}:", "", "| | " + " | ".join(inherited[1:]) + " |",
                  "|---|" + "---|" * (len(inherited) - 1)]
        for i, a in enumerate(inherited[:-1]):
            cells = []
            for j, b in enumerate(inherited[1:], start=1):
                if j <= i:
                    cells.append("")
                    continue
                d = paired_difference(runs, a, b, key)
                text = f"{d['mean']:+.3f} ± {d['sd']:.3f}"
                if d["exceeds_noise"]:
                    significant.setdefault(key, []).append(f"{a} − {b} {d['mean']:+.3f}")
                    text = f"**{text}**"
                cells.append(text)
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
        lines.append("")
    scratch = [paired_difference(runs, x, "random init", "loss_k") for x in inherited]
    lines.append("Against random init after {} steps: ".format(k) + "; ".join(
        f"{x} {d['mean']:+.3f} ± {d['sd']:.3f}{' (exceeds noise)' if d['exceeds_noise'] else ''}"
        for x, d in zip(inherited, scratch)) + ".")
    for key, label in (("loss_0", "at step 0"), ("loss_k", f"after {k} steps")):
        found = significant.get(key)
        lines.append(f"Between inherited criteria {label}: "
                     + ("differences exceeding seed noise: " + "; ".join(found) + "; the other pairs: no difference "
                        "at this scale." if found else "no difference exceeds seed noise at this scale."))
    lines += ["", f"Wall time {result['seconds']:.0f} s for {n} seeds on a shared 2-core machine at nice 19 "
              "(the longest seed's run; students kept from an earlier run, `WORK/seed_N/arm_<name>.json`, are not "
              "timed again and show the derive time of the run that made them).", ""]
    return "\n".join(lines)


def run(args) -> int:
    from pangu_pro.data.corpus import build_builtin_corpus
    from pangu_pro.config import config_from_dict
    from pangu_pro.io import atomic_write_json, atomic_write_text, read_json
    from pangu_pro.model.params import count_parameters
    from pangu_pro.runtime import init_mindspore

    out = Path(args.out)
    if args.render:
        result = merge_results([read_json(p) for p in args.render])
    else:
        began = time.perf_counter()
        init_mindspore(args.seeds[0])
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
        corpus = work / "corpus"
        if not (corpus / "manifest.json").is_file():
            build_builtin_corpus(corpus, args.corpus_mb, progress=False)
        runs = [run_seed(args, seed, corpus, work / f"seed_{seed}") for seed in args.seeds]
        teacher = config_from_dict({"model": teacher_model(args.seq)}, "bench teacher").model
        student = config_from_dict({"model": student_model(args.seq)}, "bench student").model
        result = {"benchmark": "inherit", "setup": setup_of(args),
                  "teacher_parameters": count_parameters(teacher).total,
                  "student_parameters": count_parameters(student).total, "runs": runs,
                  "seconds": time.perf_counter() - began}
    text = format_table(result)
    print(text)
    if not args.no_write:
        atomic_write_json(out / "inherit.json", result)
        atomic_write_text(out / "inherit.md", text)
        print(f"wrote {out / 'inherit.json'} and {out / 'inherit.md'} ({result['seconds']:.0f} s)")
    return 0
