"""`pangu-pro bench inherit`: which inheritance criterion gives the best student (paper-notes §5)?

On the built-in corpus (`pangu_pro.data.corpus`, standard-library prose) with a byte-level vocabulary
(259 ids: pad, bos, eos, 256 bytes; no tokenizer training, so the benchmark stays within minutes):

  1. pretrain a small teacher (8 layers x 128, GQA 4/2 heads, SIAF and AugShortcut on) with the
     trainer (`pangu_pro.train.trainer.train`);
  2. derive same-shape students (6 layers x 64, 2 heads, ffn 176) with `pangu-pro inherit`'s pipeline
     (`run_inherit`): random selection, L1, L2, Taylor and learned hard-concrete masks, layers by
     cosine; plus a randomly initialised student ("random init", no inheritance);
  3. continue pretraining every student with the trainer's AdamW / TrainStep / schedule on the same
     batches for K steps; held-out loss at 0 and every K/10 steps;
  4. report held-out loss after 0 and K steps, and the steps each student needs to reach (a) the
     loss the random-init student ends at, (b) the loss the worst inherited student ends at.

Writes benchmarks/results/inherit.json and inherit.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np

BYTE_OFFSET = 3  # ids 0, 1, 2 = pad, bos, eos; byte b -> b + 3
VOCAB = 256 + BYTE_OFFSET
CRITERIA = ("random", "l1", "l2", "taylor", "learned")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="benchmarks/results", help="folder for inherit.json / inherit.md")
    parser.add_argument("--work", default="runs/bench_inherit", help="scratch folder (data, teacher, students)")
    parser.add_argument("--corpus-mb", type=float, default=1.0, help="built-in corpus size")
    parser.add_argument("--seq", type=int, default=64, help="tokens per sample")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--teacher-steps", type=int, default=400)
    parser.add_argument("--mask-steps", type=int, default=150, help="learned-mask steps (teacher weights frozen)")
    parser.add_argument("--steps", type=int, default=150, help="continued-pretraining steps K per student")
    parser.add_argument("--eval-batches", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--no-write", action="store_true", help="print the table only")


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


def held_out_loss(model, heldout: Path, batch_size: int) -> float:
    """The trainer's held-out loss (`evaluate_loss`) over the held-out shards."""
    from pangu_pro.model.pangu_pi import PanGuPiWithLoss
    from pangu_pro.train.evaluate import eval_dataset, evaluate_loss

    return evaluate_loss(PanGuPiWithLoss(model), eval_dataset(heldout, batch_size))["loss"]


def continue_pretraining(model, rows: np.ndarray, heldout: Path, args, lr: float) -> list[tuple[int, float]]:
    """K steps of AdamW on `rows` in order; held-out loss at step 0 and every K/8 steps."""
    from mindspore import Tensor

    from pangu_pro.config import TrainConfig
    from pangu_pro.model.pangu_pi import PanGuPiWithLoss
    from pangu_pro.train.optim import build_optimizer
    from pangu_pro.train.schedule import lr_at
    from pangu_pro.train.step import TrainStep

    tc = TrainConfig(batch_size=args.batch_size, lr=lr, warmup_steps=max(1, args.steps // 20), steps=args.steps,
                     weight_decay=0.1, grad_clip=1.0)
    step_fn = TrainStep(PanGuPiWithLoss(model), build_optimizer(model.trainable_params(), tc), grad_clip=tc.grad_clip)
    every = max(1, args.steps // 10)
    curve = [(0, held_out_loss(model, heldout, args.batch_size))]
    for step in range(1, args.steps + 1):
        start = ((step - 1) * args.batch_size) % (len(rows) - args.batch_size)
        batch = Tensor(rows[start:start + args.batch_size])
        step_fn([batch], lr_at(step, lr=tc.lr, total_steps=tc.steps, warmup_steps=tc.warmup_steps,
                               min_lr_ratio=tc.min_lr_ratio))
        if step % every == 0 or step == args.steps:
            curve.append((step, held_out_loss(model, heldout, args.batch_size)))
    return curve


def steps_to_reach(curve: list[tuple[int, float]], target: float):
    for step, loss in curve:
        if loss <= target + 1e-9:
            return step
    return None


def format_table(result: dict) -> str:
    k = result["setup"]["continue_steps"]
    lines = [
        "# Parameter inheritance: which criterion gives the best student?",
        "",
        f"Teacher: {result['setup']['teacher']} ({result['teacher']['parameters']:,} parameters), "
        f"pretrained {result['setup']['teacher_steps']} steps, held-out loss {result['teacher']['heldout_loss']:.3f}. "
        f"Student: {result['setup']['student']} ({result['student_parameters']:,} parameters). "
        f"Data: {result['setup']['data']}.",
        "",
        f"| student | held-out loss at 0 | after {k} steps | steps to {result['reach_target']:.3f} "
        f"(random init at {k}) | steps to {result['reach_target_inherited']:.3f} (worst inherited at {k}) "
        f"| derive time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in result["students"].items():
        reach, tight = row["steps_to_reach"], row["steps_to_reach_inherited"]
        lines.append(f"| {name} | {row['loss_0']:.3f} | {row['loss_k']:.3f} | "
                     f"{'—' if reach is None else reach} | {'—' if tight is None else tight} | "
                     f"{row['derive_seconds']:.1f} |")
    inherited = {n: r for n, r in result["students"].items() if n != "random init"}
    best0 = min(inherited, key=lambda n: inherited[n]["loss_0"])
    bestk = min(inherited, key=lambda n: inherited[n]["loss_k"])
    scratch = result["students"]["random init"]
    lines += ["", f"Observed: every inherited student starts far below random init ({scratch['loss_0']:.3f}) and "
              f"ends below it ({scratch['loss_k']:.3f} after {k} steps). Lowest loss at step 0: {best0} "
              f"({inherited[best0]['loss_0']:.3f}); lowest after {k} steps: {bestk} "
              f"({inherited[bestk]['loss_k']:.3f}). The paper's order (learned >= Taylor > L2 > L1 >> random) is "
              f"expected after long continued pretraining; this run is short, on a tiny model, with one seed.",
              "", result["notes"], ""]
    return "\n".join(lines)


def run(args) -> int:
    from pangu_pro.config import config_from_dict
    from pangu_pro.data.corpus import build_builtin_corpus
    from pangu_pro.inherit.config import InheritConfig, InheritRunConfig
    from pangu_pro.inherit.run import run_inherit
    from pangu_pro.io import atomic_write_json, atomic_write_text
    from pangu_pro.model.params import count_parameters
    from pangu_pro.model.weights import build_model
    from pangu_pro.runtime import init_mindspore
    from pangu_pro.train.trainer import train

    began = time.perf_counter()
    init_mindspore(args.seed)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus"
    if not (corpus / "manifest.json").is_file():
        build_builtin_corpus(corpus, args.corpus_mb, progress=False)
    rows = byte_rows(corpus / "train.txt", args.seq)
    heldout_rows = byte_rows(corpus / "heldout.txt", args.seq)[: args.eval_batches * args.batch_size]
    rng = np.random.default_rng(args.seed)
    rows = rows[rng.permutation(len(rows))]
    data = write_shards(rows, work / "data")
    heldout = write_shards(heldout_rows, work / "heldout")
    print(f"data: {len(rows)} train rows, {len(heldout_rows)} held-out rows of {args.seq + 1} byte ids", flush=True)

    # 1. teacher
    teacher_dir = work / "teacher"
    teacher_raw = {"model": teacher_model(args.seq), "data": {"train_files": [str(data)], "seed": args.seed},
                   "train": {"batch_size": args.batch_size, "lr": 2e-3, "warmup_steps": args.teacher_steps // 20,
                             "steps": args.teacher_steps, "output_dir": str(teacher_dir), "log_every": 50}}
    teacher_cfg = config_from_dict(teacher_raw, "bench teacher")
    ckpt = teacher_dir / "checkpoints" / f"step_{args.teacher_steps:08d}"
    t0 = time.perf_counter()
    if not (ckpt / "state.json").is_file():
        import shutil
        shutil.rmtree(teacher_dir, ignore_errors=True)
        train(teacher_cfg, progress=False, announce=lambda *_: None)
    teacher_seconds = time.perf_counter() - t0
    teacher = build_model(teacher_cfg.model, ckpt)
    teacher_loss = held_out_loss(teacher, heldout, args.batch_size)
    print(f"teacher: {args.teacher_steps} steps in {teacher_seconds:.0f} s, held-out loss {teacher_loss:.3f}",
          flush=True)

    # 2. students
    target_path = work / "student.yaml"
    import yaml
    target_path.write_text(yaml.safe_dump({"model": student_model(args.seq)}))
    students = {}
    derive_seconds = {}
    student_cfg = None
    for criterion in CRITERIA:
        out = work / f"inherit_{criterion}"
        inherit = InheritConfig(target_config=str(target_path), teacher_checkpoint=str(ckpt), criterion=criterion,
                                layer_selection="cosine", calibration_batches=4, steps=args.mask_steps,
                                batch_size=args.batch_size, lr_mask=0.1, lr_lambda=1.0, lr_weights=0.0,
                                log_every=max(1, args.mask_steps // 4), checkpoint_every=args.mask_steps,
                                seed=args.seed, output_dir=str(out))
        config = InheritRunConfig.of(teacher_cfg, inherit)
        import shutil
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        # force: the report records whether the masks converged (summary["convergence"]) instead of stopping
        summary = run_inherit(config, progress=False, announce=lambda *_: None, force=True)
        derive_seconds[criterion] = time.perf_counter() - t0
        from pangu_pro.config import load_config
        student_cfg = load_config(out / "student" / "config.yaml").model
        students[criterion] = (build_model(student_cfg, out / "student"), summary)
        print(f"derived {criterion}: layers {summary['kept_layers']} in {derive_seconds[criterion]:.0f} s", flush=True)
    scratch = build_model(student_cfg, seed=args.seed)

    # 3. continued pretraining (rows after the teacher's share, the same order for every student)
    start = min(args.teacher_steps * args.batch_size, len(rows) - args.steps * args.batch_size - 1)
    cont_rows = rows[max(0, start):]
    lr = 1e-3
    results = {}
    order = [("random init", scratch, None)] + [
        (f"{c} (inherited)" if c != "random" else "random selection (inherited)", m, s)
        for c, (m, s) in students.items()]
    for name, model, summary in order:
        t0 = time.perf_counter()
        curve = continue_pretraining(model, cont_rows, heldout, args, lr)
        key = "random init" if summary is None else summary["criterion"]
        results[name] = {"criterion": key, "curve": curve, "loss_0": curve[0][1], "loss_k": curve[-1][1],
                         "derive_seconds": 0.0 if summary is None else derive_seconds[key],
                         "train_seconds": time.perf_counter() - t0,
                         "kept_layers": None if summary is None else summary["kept_layers"]}
        print(f"{name}: held-out {curve[0][1]:.3f} -> {curve[-1][1]:.3f}", flush=True)
    target = results["random init"]["loss_k"]
    tight = max(row["loss_k"] for name, row in results.items() if name != "random init")
    for row in results.values():
        row["steps_to_reach"] = steps_to_reach(row["curve"], target)
        row["steps_to_reach_inherited"] = steps_to_reach(row["curve"], tight)
    learned = students["learned"][1]
    result = {
        "benchmark": "inherit",
        "setup": {"teacher": "8 layers x 128, 4 heads / 2 kv, ffn 352, SIAF + AugShortcut",
                  "student": "6 layers x 64, 2 heads / 1 kv, ffn 176 (AugShortcut bottleneck 8 kept)",
                  "data": f"built-in corpus ({args.corpus_mb} MB of stdlib prose), byte-level ids, "
                          f"seq {args.seq}, batch {args.batch_size}",
                  "teacher_steps": args.teacher_steps, "mask_steps": args.mask_steps,
                  "continue_steps": args.steps, "continue_lr": lr, "seed": args.seed},
        "teacher": {"parameters": count_parameters(teacher_cfg.model).total, "heldout_loss": teacher_loss,
                    "train_seconds": teacher_seconds},
        "student_parameters": count_parameters(student_cfg).total,
        "learned_masks": {"expected_size": learned.get("expected_size"), "sparsity": learned.get("sparsity")},
        "reach_target": target,
        "reach_target_inherited": tight,
        "students": results,
        "seconds": time.perf_counter() - began,
        "notes": ("Layers by cosine (first and last kept) for every inherited student. Learned masks train "
                  f"{args.mask_steps} steps with the teacher's weights frozen (lr_weights 0), so every "
                  "student's weights see the same number of updates; their mask values are folded into "
                  "the weights. One seed; differences of a few hundredths are within run-to-run noise."),
    }
    print(format_table(result))
    if not args.no_write:
        out = Path(args.out)
        atomic_write_json(out / "inherit.json", result)
        atomic_write_text(out / "inherit.md", format_table(result))
        print(f"wrote {out / 'inherit.json'} and {out / 'inherit.md'} ({result['seconds']:.0f} s)")
    return 0
