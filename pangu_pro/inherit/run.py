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

import time
from pathlib import Path
from typing import Optional

import numpy as np

from pangu_pro.config import Config, load_config
from pangu_pro.configtools import ConfigError
from pangu_pro.inherit.hardconcrete import UnitArrays, select_layers
from pangu_pro.inherit.plan import StudentPlan, plan_student

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
    plan = plan_student(config.model, target, new2old, source=ic.target_config)
    if ic.layer_selection == "learned" and ic.criterion != "learned":
        raise ConfigError("inherit.layer_selection", "learned layer masks need criterion: learned",
                          config.source or None)
    needs_data = ic.criterion in ("taylor", "learned") or (
        ic.layer_selection == "cosine" and plan.student.num_layers < config.model.num_layers)
    if needs_data and not config.data.train_files:
        raise ConfigError("data.train_files", f"criterion {ic.criterion} / layer selection {ic.layer_selection} "
                          "needs data (MindRecord files or preprocess folders)", config.source or None)
    if ic.teacher_checkpoint is not None:
        from pangu_pro.model.weights import resolve_weights

        resolve_weights(ic.teacher_checkpoint)
    return plan


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
    from pangu_pro.model.weights import model_state

    cfg = teacher.config
    if criterion == "random":
        scores = random_scores(cfg, config.inherit.seed)
    elif criterion in ("l1", "l2"):
        scores = magnitude_scores(model_state(teacher), cfg, 1 if criterion == "l1" else 2)
    elif criterion == "taylor":
        gates = np.zeros(cfg.num_layers)
        gates[kept_layers] = 1.0
        scores = taylor_scores(teacher, cfg, batches, gates)
    else:
        raise ValueError(f"unknown criterion {criterion!r}")
    return scores, UnitArrays.full(cfg, 1.0)


def run_inherit(config: Config, resume: Optional[str] = None, *, progress: bool = True, announce=print) -> dict:
    """Run the whole inheritance as `config` says (see the module doc); returns the summary."""
    import mindspore as ms

    from pangu_pro.inherit.materialize import materialize, select_units, write_student
    from pangu_pro.io import atomic_write_json
    from pangu_pro.model.params import count_parameters
    from pangu_pro.model.weights import build_model, model_state
    from pangu_pro.runtime import adapt_to_device, init_mindspore
    from pangu_pro.train.trainer import setup_parallel

    began = time.perf_counter()
    plan = check(config)  # 1
    ic = config.inherit
    target = init_mindspore()
    par = setup_parallel(config)
    lead = par.rank == 0
    say = announce if lead else (lambda *_: None)
    say(f"teacher {count_parameters(plan.teacher).total:,} parameters -> student "
        f"{count_parameters(plan.student).total:,} ({plan.student.num_layers} layers, hidden "
        f"{plan.student.hidden_size}, {plan.student.num_heads} heads, ffn {plan.student.intermediate_size}, "
        f"vocab {plan.student.vocab_size}); criterion {ic.criterion}, layers by {ic.layer_selection}")
    teacher_cfg = adapt_to_device(config.model, target, say)  # 2
    ms.set_seed(ic.seed)
    teacher = build_model(teacher_cfg, ic.teacher_checkpoint, seed=ic.seed)
    if ic.teacher_checkpoint is None:
        say("warning: inherit.teacher_checkpoint is not set; inheriting from a randomly initialised teacher")
    needs_batches = ic.criterion == "taylor" or (ic.layer_selection == "cosine"
                                                 and plan.student.num_layers < plan.teacher.num_layers)
    batches = calibration_batches(config) if needs_batches else []
    kept_layers, layer_scores = choose_layers(ic.layer_selection, plan, teacher, batches)  # 3
    learned = None
    if ic.criterion == "learned":  # 4
        from pangu_pro.inherit.learn import learn_masks

        learned = learn_masks(config, plan, teacher, kept_layers, par, resume, progress, say)
        scores, values = learned.scores, learned.values
    else:
        scores, values = unit_scores(ic.criterion, config, plan, teacher, kept_layers, batches)
    sel = select_units(plan, scores, kept_layers)  # 5
    tensors = materialize(model_state(teacher), plan, sel, values if ic.fold_mask_values else None)
    summary = {"criterion": ic.criterion, "layer_selection": ic.layer_selection,
               "teacher_parameters": count_parameters(plan.teacher).total,
               "student_parameters": count_parameters(plan.student).total,
               "kept_layers": [int(i) for i in sel.layers], "layer_scores": layer_scores,
               "student": str(Path(ic.output_dir) / STUDENT_DIR), "seconds": None}
    if learned is not None:
        summary.update(expected_size=learned.expected_size, sparsity=learned.sparsity, mask_steps=learned.steps)
    if lead:
        write_student(Path(ic.output_dir) / STUDENT_DIR, tensors, plan, sel,
                      {"criterion": ic.criterion, "layer_selection": ic.layer_selection,
                       "teacher_checkpoint": ic.teacher_checkpoint or "random init"})
        summary["seconds"] = round(time.perf_counter() - began, 1)
        atomic_write_json(Path(ic.output_dir) / "inherit.json", summary)
    say(f"student written to {summary['student']} ({summary['student_parameters']:,} parameters)")
    return summary
