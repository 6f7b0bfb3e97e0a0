"""`pangu-pro inherit CONFIG`: derive a student checkpoint from a teacher, top to bottom.

    1. checks (before any compute): the target config against the teacher (`plan.plan_student`),
       the vocabulary map, the data the criterion needs
    2. the teacher (from inherit.teacher_checkpoint), adapted to the device (fp32 on the CPU)
    3. layer selection: cosine (1 - cos of each block's input and output on calibration data),
       uniform, or learned (layer masks, with the learned criterion)
    4. unit scores by the criterion (random, l1, l2, taylor, learned); learned masks train on data
       with checkpoints (`--resume`) and a progress bar showing the expected size and sparsities
    5. materialisation: top-k per layer, mask values folded, weights sliced ->
       OUTPUT_DIR/student/{model.safetensors, config.yaml, selection.json} and OUTPUT_DIR/inherit.json
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Optional

import numpy as np

from pangu_pro.collective import agree
from pangu_pro.config import Config, load_config
from pangu_pro.configtools import ConfigError
from pangu_pro.inherit.hardconcrete import MASK_TYPES, UnitArrays, select_layers
from pangu_pro.inherit.plan import StudentPlan, plan_student, teacher_dtype
from pangu_pro.runlock import hold_run_lock

STUDENT_DIR = "student"


def check(config: Config) -> StudentPlan:
    """Every check that needs no compute; returns the student plan (errors name the field)."""
    ic = config.inherit
    if ic is None:
        raise ConfigError("inherit", "section missing", config.source or None)
    try:
        target = load_config(ic.target_config).model
    except ConfigError as err:
        raise ConfigError("inherit.target_config", str(err), config.source or None) from None
    new2old = None
    if ic.vocab_map is not None:
        from pangu_pro.tokenizer.compress import load_new2old

        if not Path(ic.vocab_map).is_file():
            raise ConfigError("inherit.vocab_map", f"{ic.vocab_map}: file not found", config.source or None)
        new2old = load_new2old(ic.vocab_map)
    plan = plan_student(config.model, target, new2old, source=ic.target_config, aug_bottleneck=ic.aug_bottleneck)
    if ic.layer_selection == "learned" and ic.criterion != "learned":
        raise ConfigError("inherit.layer_selection", "learned layer masks need criterion: learned",
                          config.source or None)
    needs_data = ic.criterion in ("taylor", "learned") or (
        ic.layer_selection == "cosine" and plan.student.num_layers < config.model.num_layers)
    if needs_data and not config.data.train_files:
        raise ConfigError("data.train_files", f"criterion {ic.criterion} / layer selection {ic.layer_selection} "
                          "needs data (MindRecord files or preprocess folders)", config.source or None)
    if needs_data:
        from pangu_pro.inherit.data import check_data_vocabulary

        fed = plan.student.vocab_size if new2old is not None else plan.teacher.vocab_size
        check_data_vocabulary(config.data.train_files, fed, ic.vocab_map or ic.teacher_config or config.source,
                              ic.vocab_map, config.source or None)
    if ic.teacher_checkpoint is not None:
        from pangu_pro.model.weights import resolve_weights

        resolve_weights(ic.teacher_checkpoint)
    return plan


def store_teacher(teacher, dtype: str, say=print):
    """Keep the teacher's matmul weights in `dtype` (bfloat16: half the memory of a frozen teacher on
    Ascend; every Linear casts its weight to the compute dtype anyway). Embedding, norms and SIAF stay fp32.

    The weights' float32 values are kept on the host (`teacher.fp32_weights`, 4 bytes per matmul weight
    in host memory, none on the device), so that `teacher_state` (the scores and the student) reads the
    checkpoint's values, not their bfloat16 rounding."""
    teacher.fp32_weights = {}
    if dtype == "float32":
        return teacher
    import mindspore as ms

    from pangu_pro.model.layers import Linear

    for _, cell in teacher.cells_and_names():
        if isinstance(cell, Linear):
            teacher.fp32_weights[cell.weight.name] = np.array(cell.weight.asnumpy(), np.float32)
            cell.weight.set_dtype(ms.bfloat16)  # later set_data casts to it
    say("teacher matmul weights kept in bfloat16 (frozen); their float32 values stay on the host")
    return teacher


def teacher_state(teacher) -> dict:
    """Every teacher weight as a float32 numpy array: the float32 values `store_teacher` kept for the
    weights stored in bfloat16, the parameters themselves for the rest."""
    import mindspore as ms
    from mindspore import ops

    kept = getattr(teacher, "fp32_weights", {})
    return {p.name: kept[p.name] if p.name in kept else ops.cast(p, ms.float32).asnumpy()
            for p in teacher.trainable_params()}


def load_teacher(config: Config, plan: StudentPlan, device: str, say=print):
    """The teacher on `device`, with its embedding and head gathered to the compact vocabulary when the
    plan has an id map (the data then holds compact ids); returns (teacher, plan on that teacher)."""
    import dataclasses

    from pangu_pro.model.weights import build_model, load_state, model_state, resolve_weights
    from pangu_pro.runtime import adapt_to_device

    ic = config.inherit
    cfg = adapt_to_device(config.model, device, say)
    if plan.new2old is None:
        teacher = build_model(cfg, ic.teacher_checkpoint, seed=ic.seed)
        return store_teacher(teacher, teacher_dtype(config, device), say), plan
    from pangu_pro.tensors import load_tensors
    from pangu_pro.tokenizer.remap import remap_config, remap_tensors

    if ic.teacher_checkpoint is not None:
        source = str(resolve_weights(ic.teacher_checkpoint))
        tensors = load_tensors(source)[0]
    else:
        source, tensors = "random teacher", model_state(build_model(cfg, seed=ic.seed))
    tensors = remap_tensors(tensors, plan.new2old, cfg.vocab_size, source)
    compact = remap_config(Config(model=cfg), plan.new2old).model
    teacher = build_model(compact, seed=ic.seed)
    load_state(teacher, tensors, source)
    store_teacher(teacher, teacher_dtype(config, device), say)
    say(f"teacher remapped to the compact vocabulary: {cfg.vocab_size} -> {compact.vocab_size} ids "
        f"({ic.vocab_map})")
    return teacher, dataclasses.replace(plan, teacher=remap_config(Config(model=plan.teacher), plan.new2old).model,
                                        new2old=None)


def calibration_batches(config: Config) -> list[np.ndarray]:
    """The first `inherit.calibration_batches` batches, identical on every rank (unsharded, seeded)."""
    from pangu_pro.data.dataset import create_dataset

    ic = config.inherit
    ds = create_dataset(config.data.train_files, ic.batch_size, shuffle=config.data.shuffle, seed=config.data.seed)
    out = []
    for (ids,) in ds.create_tuple_iterator(num_epochs=1, output_numpy=True):
        out.append(ids)
        if len(out) == ic.calibration_batches:
            break
    return out


def choose_layers(method: str, plan: StudentPlan, teacher, batches) -> tuple[Optional[np.ndarray], Optional[list]]:
    """Kept teacher layers (None: learned later, or nothing to drop) and the per-layer scores."""
    from pangu_pro.inherit.criteria import cosine_layer_scores, uniform_layers

    total, keep = plan.teacher.num_layers, plan.student.num_layers
    if keep == total:
        return np.arange(total), None
    if method == "uniform":
        return uniform_layers(total, keep), None
    if method == "cosine":
        scores = cosine_layer_scores(teacher, batches)
        return select_layers(scores, keep), scores.tolist()
    return None, None  # learned


def unit_scores(criterion: str, config: Config, plan: StudentPlan, teacher, kept_layers, batches):
    """(scores, values) for the non-learned criteria; values are ones (nothing to fold)."""
    from pangu_pro.inherit.criteria import magnitude_scores, random_scores, taylor_scores
    cfg = teacher.config
    if criterion == "random":
        scores = random_scores(cfg, config.inherit.seed)
    elif criterion in ("l1", "l2"):
        scores = magnitude_scores(teacher_state(teacher), cfg, 1 if criterion == "l1" else 2)
    elif criterion == "taylor":
        gates = np.zeros(cfg.num_layers)
        gates[kept_layers] = 1.0
        scores = taylor_scores(teacher, cfg, batches, gates, config.inherit.taylor_form)
    else:
        raise ValueError(f"unknown criterion {criterion!r}")
    return scores, UnitArrays.full(cfg, 1.0)


class NotConvergedError(ValueError):
    """The learned masks did not converge and materialisation was not forced (exit code 2)."""


def heldout_losses(config: Config, teacher, plan: StudentPlan, sel, folded: dict, medians: UnitArrays,
                   student_tensors: dict) -> dict:
    """Mean LM loss on `inherit.heldout_batches` batches (data.eval_files, else the first training batches)
    of: the masked teacher with the noise-free masks the run ended with; the teacher with the mask values
    folded in and the selection's 0/1 masks; the student. The last two must agree."""
    from mindspore import Tensor

    from pangu_pro.data.dataset import create_dataset
    from pangu_pro.inherit.materialize import head_mask_from_groups
    from pangu_pro.model.pangu_pi import PanGuPiWithLoss
    from pangu_pro.model.weights import build_model, load_state
    from pangu_pro.runtime import adapt_to_device
    from pangu_pro.train.evaluate import pad_batch

    ic = config.inherit
    files = config.data.eval_files or config.data.train_files
    ds = create_dataset(files, ic.batch_size, shuffle=False, drop_remainder=False)
    # (ids, loss mask, rows): a short last batch is padded (`pad_batch`), so each net compiles one graph,
    # and the mean is over samples (as the trainer's `evaluate_loss`)
    batches = []
    for (ids,) in ds.create_tuple_iterator(num_epochs=1, output_numpy=True):
        padded, mask = pad_batch(np.asarray(ids, np.int32), ic.batch_size)
        batches.append((Tensor(padded), Tensor(mask), len(ids)))
        if len(batches) == ic.heldout_batches:
            break
    rows = sum(n for _, _, n in batches)
    cfg = teacher.config
    groups = cfg.num_heads // cfg.kv_heads

    def mean_loss(run) -> float:
        return sum(float(run(ids, mask).asnumpy()) * n for ids, mask, n in batches) / rows

    def masked(net, masks: UnitArrays):
        args = (Tensor(head_mask_from_groups(masks.heads, groups).astype(np.float32)),
                Tensor(masks.neurons.astype(np.float32)), Tensor(masks.hidden.astype(np.float32)),
                Tensor(masks.layers.astype(np.float32)),
                Tensor(masks.bottleneck.astype(np.float32)) if cfg.aug_shortcut else None)
        return mean_loss(lambda ids, mask: net(ids, mask, *args))

    net = PanGuPiWithLoss(teacher)
    original = teacher_state(teacher)
    soft = masked(net, medians)
    load_state(teacher, folded)
    binary = masked(net, sel.binary_masks(plan.teacher))
    load_state(teacher, original)
    student = build_model(adapt_to_device(plan.student, None, lambda *_: None))
    load_state(student, student_tensors)
    student_net = PanGuPiWithLoss(student)
    student_loss = mean_loss(student_net)
    return {"data": "data.eval_files" if config.data.eval_files else "first training batches (not held out)",
            "batches": len(batches), "masked_teacher_soft": soft, "masked_teacher_selected": binary,
            "student": student_loss}


def save_final_masks(path: Path, scores: UnitArrays, values: UnitArrays, selected: UnitArrays) -> None:
    """The masks behind the student, in the teacher's unit shapes: scores, folded values, 0/1 selection."""
    from pangu_pro.io import atomic_path

    arrays = {f"{kind}_{name}": np.asarray(getattr(u, name)) for kind, u in
              (("scores", scores), ("values", values), ("selected", selected))
              for name in MASK_TYPES}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)


def run_inherit(config: Config, resume: Optional[str] = None, *, progress: bool = True, announce=print,
                force: bool = False) -> dict:
    """Run the whole inheritance as `config` says (see the module doc); returns the summary. Rank 0
    holds inherit.output_dir's run lock (`pangu_pro.runlock`) throughout."""
    from pangu_pro.inherit.plan import check_data_parallel
    from pangu_pro.runtime import init_mindspore
    from pangu_pro.train.trainer import setup_parallel

    began = time.perf_counter()
    check_data_parallel(config)  # before any parallel set-up
    target = init_mindspore()
    par = setup_parallel(config)
    with contextlib.ExitStack() as held:
        plan = error = None
        try:
            if par.rank == 0:
                held.enter_context(hold_run_lock(config.inherit.output_dir, "inheritance"))
            plan = check(config)  # 1
        except Exception as err:  # noqa: BLE001 - re-raised on every rank by `agree`
            error = err
        agree(par.rank, par.world, error)
        return _inherit(config, par, plan, target, began, resume, progress, announce, force)


def _inherit(config: Config, par, plan: StudentPlan, target: str, began: float, resume: Optional[str],
             progress: bool, announce, force: bool) -> dict:
    import mindspore as ms

    from pangu_pro.inherit.materialize import materialize, select_units, write_student
    from pangu_pro.io import atomic_write_json
    from pangu_pro.model.params import count_parameters

    ic = config.inherit
    lead = par.rank == 0
    say = announce if lead else (lambda *_: None)
    teacher_parameters = count_parameters(plan.teacher).total
    say(f"teacher {teacher_parameters:,} parameters -> student "
        f"{count_parameters(plan.student).total:,} ({plan.student.num_layers} layers, hidden "
        f"{plan.student.hidden_size}, {plan.student.num_heads} heads, ffn {plan.student.intermediate_size}, "
        f"vocab {plan.student.vocab_size}); criterion {ic.criterion}, layers by {ic.layer_selection}")
    ms.set_seed(ic.seed)
    teacher, plan = load_teacher(config, plan, target, say)  # 2
    if ic.teacher_checkpoint is None:
        say("warning: inherit.teacher_checkpoint is not set; inheriting from a randomly initialised teacher")
    needs_batches = ic.criterion == "taylor" or (ic.layer_selection == "cosine"
                                                 and plan.student.num_layers < plan.teacher.num_layers)
    batches = calibration_batches(config) if needs_batches else []
    kept_layers, layer_scores = choose_layers(ic.layer_selection, plan, teacher, batches)  # 3
    learned = report = None
    if ic.criterion == "learned":  # 4
        from pangu_pro.inherit.convergence import convergence_report
        from pangu_pro.inherit.learn import PER_LAYER_TYPES, final_targets, learn_masks

        learned = learn_masks(config, plan, teacher, kept_layers, par, resume, progress, say)
        scores, values = learned.scores, learned.values
        types = list(learned.layer_sparsity)
        targets = dict(zip(types, final_targets(plan, types)))
        kept = np.arange(plan.teacher.num_layers) if kept_layers is None else np.asarray(kept_layers)
        rows = {"heads": lambda u: u.heads[kept], "neurons": lambda u: u.neurons[kept],
                "hidden": lambda u: u.hidden, "layers": lambda u: u.layers[1:-1],
                "bottleneck": lambda u: u.bottleneck[kept]}
        # heads, neurons and bottleneck units per layer; the layer gates count as one row (their share pruned)
        rows_sparsity = {t: (v if t in PER_LAYER_TYPES else [float(np.mean(v))])
                         for t, v in learned.layer_sparsity.items()}
        report = convergence_report(learned.expected_size, count_parameters(plan.student).total,
                                    rows_sparsity, targets, [rows[t](learned.medians) for t in types],
                                    ic.convergence_tolerance)
        for line in report.lines():
            say(line)
        if not report.converged and not force:
            agree(par.rank, par.world, NotConvergedError(
                f"{ic.output_dir}: the masks did not converge ({'; '.join(report.failures())}); the checkpoints "
                f"are in {Path(ic.output_dir) / 'masks'}: continue with --resume and a larger inherit.steps, or "
                f"materialise anyway with --force"))
    else:
        scores, values = unit_scores(ic.criterion, config, plan, teacher, kept_layers, batches)
    sel = select_units(plan, scores, kept_layers)  # 5
    state = teacher_state(teacher)
    fold = values if ic.fold_mask_values else UnitArrays.full(plan.teacher, 1.0)
    tensors = materialize(state, plan, sel, fold)
    summary = {"criterion": ic.criterion, "layer_selection": ic.layer_selection,
               "teacher_parameters": teacher_parameters,
               "student_parameters": count_parameters(plan.student).total,
               "teacher_dtype": teacher_dtype(config, target),  # matmul weights as stored ("auto" resolved)
               "kept_layers": [int(i) for i in sel.layers], "layer_scores": layer_scores,
               "student": str(Path(ic.output_dir) / STUDENT_DIR), "seconds": None}
    if learned is not None:
        summary.update(expected_size=learned.expected_size, sparsity=learned.sparsity, mask_steps=learned.steps,
                       layer_sparsity=learned.layer_sparsity, convergence=report.as_json(),
                       forced=bool(force and not report.converged))
    if lead:
        from pangu_pro.inherit.learn import teacher_record
        from pangu_pro.inherit.materialize import fold_values

        if learned is not None and config.data.train_files:
            losses = heldout_losses(config, teacher, plan, sel, fold_values(state, plan.teacher, fold),
                                    learned.medians, tensors)
            summary["losses"] = losses
            say(f"loss on {losses['batches']} batches of {losses['data']}: masked teacher (masks as learned) "
                f"{losses['masked_teacher_soft']:.4f}, masked teacher (selection, values folded) "
                f"{losses['masked_teacher_selected']:.4f}, student {losses['student']:.4f}")
        save_final_masks(Path(ic.output_dir) / "masks_final.npz", scores, fold, sel.binary_masks(plan.teacher))
        write_student(Path(ic.output_dir) / STUDENT_DIR, tensors, plan, sel,
                      {"criterion": ic.criterion, "layer_selection": ic.layer_selection,
                       "teacher_checkpoint": ic.teacher_checkpoint or "random init",
                       "teacher": teacher_record(ic.teacher_checkpoint, ic.seed)},  # provenance.weights_record
                      preset=ic.target_config, schedule=ic.student_schedule)
        summary["seconds"] = round(time.perf_counter() - began, 1)
        atomic_write_json(Path(ic.output_dir) / "inherit.json", summary)
    say(f"student written to {summary['student']} ({summary['student_parameters']:,} parameters)")
    return summary
