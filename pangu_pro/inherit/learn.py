"""Learning hard-concrete masks on data (criterion `learned`), with checkpoints and exact resume.

    learn_masks(config, plan, teacher, layers, par, resume)

Per step: `grad_accum_steps` micro batches, each with its own sampled masks (noise drawn from (seed,
step, rank)) -> masked-teacher LM loss + size constraint (per layer for heads, neurons and AugShortcut
bottleneck units, penalties averaged) -> averaged gradients -> AdamW on log_alpha (inherit.lr_mask), plain steps on the lambdas with negated gradients
(inherit.lr_lambda, ascent), AdamW on the teacher's weights (inherit.lr_weights, clipped; none if 0)
-> log_alpha clamped to [-4.6, 4.6]. The target sparsity ramps over the first `warmup_fraction` of the
steps. A frozen teacher (lr_weights 0) has no gradients, no optimizer state and is not checkpointed;
the parallel section's `recompute` applies to its layers. Checkpoints reuse the trainer's format
(`pangu_pro.train.checkpoint`): ``model.safetensors`` holds the masks' log_alpha, the lambdas and,
only when they train, the teacher's weights; ``optimizer.safetensors`` the AdamW states; ``state.json`` the step and the data position. The masks' Adam has no momentum by
default (inherit.mask_beta1 = 0): with momentum the sparsity overshoots its target and oscillates.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from pangu_pro.config import Config
from pangu_pro.inherit import hardconcrete as hc
from pangu_pro.inherit.hardconcrete import UnitArrays
from pangu_pro.inherit.plan import StudentPlan

MASKS_DIR = "masks"
PER_LAYER_TYPES = ("heads", "neurons", "bottleneck")  # a row per layer, each constrained to the target


class OptimizerGroup:
    """Several AdamW optimizers seen as one by the trainer's checkpoint functions."""

    def __init__(self, *optimizers):
        self.optimizers = [opt for opt in optimizers if opt is not None]

    def state_parameters(self):
        return [p for opt in self.optimizers for p in opt.state_parameters()]


def _adamw(params, tag: str, weight_decay: float, train_cfg, beta1: Optional[float] = None):
    from pangu_pro.train.optim import AdamW

    beta1 = train_cfg.beta1 if beta1 is None else beta1
    opt = AdamW(params, weight_decay=weight_decay, beta1=beta1, beta2=train_cfg.beta2, eps=train_cfg.eps)
    opt.step.name = f"adam_step.{tag}"  # three optimizers in one step cell: distinct names
    return opt


def learned_types(plan: StudentPlan, layer_selection: str) -> list[str]:
    types = plan.pruned_types()
    if layer_selection != "learned" and "layers" in types:
        types.remove("layers")
    return types


def final_targets(plan: StudentPlan, types: list[str]) -> np.ndarray:
    """Final target sparsity per learned type (layers: of the intermediate layers only)."""
    t, s = plan.teacher, plan.student
    values = {name: float(getattr(plan.targets(), name)) for name in types}
    if "layers" in values:
        values["layers"] = 1 - (s.num_layers - 2) / max(t.num_layers - 2, 1)
    return np.array([values[name] for name in types], np.float64)


def keep_arrays(cfg, masks, kept_layers: np.ndarray) -> tuple[UnitArrays, UnitArrays]:
    """(counted keep (`hardconcrete.counted_keep`), log_alpha scores) in the teacher's unit shapes, from
    the mask cell."""
    keep = UnitArrays.full(cfg, 1.0)
    scores = UnitArrays.full(cfg, 0.0)
    keep.layers[:] = 0.0
    keep.layers[kept_layers] = 1.0
    if masks.heads is not None:
        la = masks.heads.log_alpha.asnumpy()
        keep.heads[:] = 0.0
        keep.heads[kept_layers] = hc.counted_keep(la)
        scores.heads[kept_layers] = la
    for name in ("neurons", "bottleneck"):
        cell = getattr(masks, name)
        if cell is not None:
            la = cell.log_alpha.asnumpy()
            getattr(keep, name)[:] = 0.0
            getattr(keep, name)[kept_layers] = hc.counted_keep(la)
            getattr(scores, name)[kept_layers] = la
    if masks.hidden is not None:
        scores.hidden = masks.hidden.log_alpha.asnumpy().astype(np.float64)
        keep.hidden = hc.counted_keep(scores.hidden)
    if masks.layers is not None:
        la = masks.layers.log_alpha.asnumpy().astype(np.float64)
        scores.layers = np.concatenate([[hc.LOG_ALPHA_LIMIT], la, [hc.LOG_ALPHA_LIMIT]])
        keep.layers = np.concatenate([[1.0], hc.counted_keep(la), [1.0]])
    return keep, scores


def layer_sparsity(keep: UnitArrays, kept: np.ndarray, types: list[str]) -> dict[str, list[float]]:
    """Expected fraction pruned per layer of the learned types: heads, neurons and bottleneck units per kept
    teacher layer, hidden channels as one entry, layer gates per intermediate layer (1 - counted keep)."""
    out = {}
    for name in types:
        if name in PER_LAYER_TYPES:
            out[name] = hc.row_sparsity(getattr(keep, name)[kept]).tolist()
        elif name == "hidden":
            out[name] = hc.row_sparsity(keep.hidden).tolist()
        else:
            out[name] = (1.0 - np.asarray(keep.layers[1:-1])).tolist()
    return out


@dataclass
class LearnedMasks:
    scores: UnitArrays  # log_alpha (higher: keep)
    values: UnitArrays  # mask values folded into the kept units (`hardconcrete.fold_value`)
    medians: UnitArrays  # the noise-free masks the run ended with (what the masked teacher computed)
    keep: UnitArrays  # counted keep (`hardconcrete.counted_keep`)
    expected_size: float
    sparsity: dict
    layer_sparsity: dict
    steps: int
    history: list


def _frozen(params):
    """Parameters that do not train stay out of gradients, optimizer state and checkpoints."""
    for p in params:
        p.requires_grad = False


def teacher_record(checkpoint: Optional[str], seed: int) -> dict:
    """What mask checkpoints record of their teacher (`provenance.weights_record`; a random one by seed)."""
    from pangu_pro.io import resolve_weights
    from pangu_pro.provenance import weights_record

    if checkpoint is None:
        return {"path": f"random init (inherit.seed {seed})", "bytes": None, "sha256": None}
    return weights_record(resolve_weights(checkpoint))


def learn_masks(config: Config, plan: StudentPlan, teacher, kept_layers: Optional[np.ndarray], par,
                resume: Optional[str] = None, progress: bool = True, announce=print) -> LearnedMasks:
    """Train masks (and optionally the teacher's weights); see the module doc."""
    import mindspore as ms
    from mindspore import Tensor
    from pangu_pro.progress import progress_bar

    from pangu_pro.inherit.cells import GradientAscent, InheritMasks, MaskedTeacherLoss, MaskTrainStep
    from pangu_pro.collective import agree
    from pangu_pro.model.pangu_pi import PanGuPiWithLoss
    from pangu_pro.model.sharding import parallelize
    from pangu_pro.provenance import check_same_weights
    from pangu_pro.train.checkpoint import (checkpoint_name, clean_partial, latest_checkpoint, load_checkpoint,
                                            prune_checkpoints, read_state, resolve_resume, save_checkpoint)
    from pangu_pro.train.metrics import MetricsLog
    from pangu_pro.train.trainer import train_dataset

    ic = config.inherit
    cfg = teacher.config
    lead = par.rank == 0
    types = learned_types(plan, ic.layer_selection)
    if not types:
        raise ValueError("the target prunes nothing: the student has the teacher's shape")
    layers_fixed = kept_layers is not None and len(kept_layers) < cfg.num_layers
    masks = InheritMasks(cfg, types, layers=kept_layers if layers_fixed else None,
                         init_keep=ic.init_keep_probability)
    teacher_params = teacher.trainable_params()
    if ic.lr_weights == 0:
        _frozen(teacher_params)
    loss = MaskedTeacherLoss(parallelize(PanGuPiWithLoss(teacher), config.parallel).net, masks)
    mask_opt = _adamw(masks.mask_parameters(), "masks", 0.0, config.train, ic.mask_beta1)
    lambda_opt = GradientAscent([loss.lambda1, loss.lambda2])
    weight_opt = (_adamw(teacher_params, "weights", config.train.weight_decay, config.train)
                  if ic.lr_weights > 0 else None)
    step_cell = MaskTrainStep(loss, mask_opt, lambda_opt, weight_opt, ic.grad_clip, par.world)
    step_cell.set_train(True)
    group = OptimizerGroup(mask_opt, lambda_opt, weight_opt)

    out = Path(ic.output_dir)
    ckpt_root = out / MASKS_DIR
    teacher_origin = teacher_record(ic.teacher_checkpoint, ic.seed)  # recorded in each mask checkpoint

    def prepare():
        """(first step, metrics log); some checks and writes run on rank 0 only."""
        start = 0
        if resume is not None:
            path = resolve_resume(ckpt_root if resume == "auto" else resume)
            check_same_weights(read_state(path).get("teacher"), teacher_origin, "the teacher", path)
            state = load_checkpoint(path, loss, group)
            if state.get("world", 1) != par.world:
                raise ValueError(f"{path}: written by {state.get('world')} ranks, resumed with {par.world}")
            start = int(state["step"])
            announce(f"resuming mask learning from {path} at step {start}")
        elif lead and latest_checkpoint(ckpt_root) is not None:
            raise ValueError(f"{ckpt_root} already holds mask checkpoints: pass --resume to continue, or choose "
                             f"another inherit.output_dir")
        if lead:
            clean_partial(ckpt_root)
        metrics = MetricsLog(out / "masks.jsonl", fresh=resume is None) if lead else None
        if metrics is not None and resume is not None:
            metrics.truncate_after(start)
        return start, metrics

    start, metrics, error = 0, None, None
    try:
        start, metrics = prepare()
    except Exception as err:  # noqa: BLE001 - re-raised on every rank by `agree`
        error = err
    agree(par.rank, par.world, error)  # before the first collective of the steps: no rank waits there for a failed one

    accum = ic.grad_accum_steps
    data_config = dataclasses.replace(config, train=dataclasses.replace(
        config.train, steps=ic.steps, batch_size=ic.batch_size, grad_accum_steps=accum))
    kept = np.arange(cfg.num_layers) if kept_layers is None else np.asarray(kept_layers)
    final = final_targets(plan, types)
    history = []
    bar = progress_bar(total=ic.steps, initial=start, disable=not (progress and lead), desc="masks", unit="step",
                       every=ic.log_every)
    try:
        if start < ic.steps:
            batches = train_dataset(data_config, par, skip_batches=start * accum).create_tuple_iterator(num_epochs=1)
        lr_m, lr_l, lr_w = (Tensor(v, ms.float32) for v in (ic.lr_mask, ic.lr_lambda, ic.lr_weights))
        noise_digest = hashlib.sha256()  # of the noise this rank draws, printed for the cluster self-check
        for step in range(start + 1, ic.steps + 1):
            micro = [next(batches)[0] for _ in range(accum)]
            targets = np.array([hc.target_sparsity(step - 1, ic.steps, t, ic.warmup_fraction) for t in final],
                               np.float32)
            drawn = [masks.noise(ic.seed, (step - 1) * accum + i + 1, par.rank) for i in range(accum)]
            for noise in drawn:
                noise_digest.update(noise.tobytes())
            noises = [Tensor(noise) for noise in drawn]
            total, lm, s = step_cell(micro, Tensor(targets), noises, lr_m, lr_l, lr_w)
            sparsity = {name: float(v) for name, v in zip(types, s)}
            if step % ic.log_every == 0 or step == ic.steps:
                keep, _ = keep_arrays(cfg, masks, kept)
                size = hc.expected_size(cfg, keep, vocab_size=plan.student.vocab_size)
                lambdas = loss.lambda1.asnumpy(), loss.lambda2.asnumpy()
                record = {"type": "masks", "step": step, "loss": lm, "total": total, "expected_size": size,
                          **{f"sparsity_{k}": v for k, v in sparsity.items()},
                          **{f"target_{k}": float(t) for k, t in zip(types, targets)},
                          **{f"lambda1_{k}": float(v) for k, v in zip(types, lambdas[0])},
                          **{f"lambda2_{k}": float(v) for k, v in zip(types, lambdas[1])},
                          "layer_sparsity": layer_sparsity(keep, kept, types)}
                history.append(record)
                bar.set_postfix(loss=f"{record['loss']:.3f}", size=f"{size / 1e6:.2f}M",
                                **{k[:6]: f"{v:.2f}" for k, v in sparsity.items()}, refresh=False)
                if metrics is not None:
                    metrics.write(record)
            bar.update(1)  # after the postfix: a printed line shows this step's values
            if lead and (step % ic.checkpoint_every == 0 or step == ic.steps):
                # masks, lambdas and their optimizer state; the teacher's weights only if they train
                state = {"step": step, "consumed_batches": step * accum, "world": par.world, "types": types,
                         "weights_trained": ic.lr_weights > 0, "teacher": teacher_origin,
                         "rng": {"seed": ic.seed, "data_seed": config.data.seed}}
                save_checkpoint(ckpt_root / checkpoint_name(step), loss, group, state)
                prune_checkpoints(ckpt_root, ic.keep_checkpoints)
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()
    if par.world > 1:  # identical lines on every rank: the replicas (weights, masks, lambdas) did not diverge
        from pangu_pro.train.trainer import weights_digest
        print(f"rank {par.rank}/{par.world}: mask step {ic.steps} sha256 {weights_digest(loss)}", flush=True)
        if start < ic.steps:  # distinct lines: every rank drew its own mask noise in this run
            print(f"rank {par.rank}/{par.world}: mask noise sha256 {noise_digest.hexdigest()}", flush=True)
    for p in teacher_params:
        p.requires_grad = True  # materialisation reads every teacher weight (`model_state`)
    keep, scores = keep_arrays(cfg, masks, kept)
    values = UnitArrays.full(cfg, 1.0)
    medians = UnitArrays.full(cfg, 1.0)
    medians.layers = keep.layers.copy() if "layers" not in types else medians.layers
    for name in types:
        setattr(values, name, hc.fold_value(getattr(scores, name)))
        setattr(medians, name, hc.deterministic_mask(getattr(scores, name)))
    if "layers" in types:
        values.layers[[0, -1]] = 1.0
        medians.layers[[0, -1]] = 1.0
    for name in PER_LAYER_TYPES:  # layers a fixed selection dropped
        if name in types:
            dropped = np.setdiff1d(np.arange(cfg.num_layers), kept)
            getattr(medians, name)[dropped] = 0.0
    size = hc.expected_size(cfg, keep, vocab_size=plan.student.vocab_size)
    over = {"heads": keep.heads[kept], "neurons": keep.neurons[kept], "hidden": keep.hidden,
            "layers": keep.layers[1:-1], "bottleneck": keep.bottleneck[kept]}  # as the constraint counts them
    sparsity = {name: hc.expected_sparsity(over[name]) for name in types}
    return LearnedMasks(scores=scores, values=values, medians=medians, keep=keep, expected_size=size,
                        sparsity=sparsity, layer_sparsity=layer_sparsity(keep, kept, types), steps=ic.steps,
                        history=history)
