"""The training loop of `pangu-pro train`, readable top to bottom.

    train(config, resume=None)
      1. device (PANGU_PRO_DEVICE), data-parallel group when launched by msrun (or, on Ascend, the
         semi-auto context for tensor/pipeline parallel and ZeRO), model config adapted to the device
      2. model, AdamW, TrainStep (`build_training`: sharded and pipeline-wrapped under semi-auto); from a checkpoint when resuming (weights, moments, step, data
         position, loss scale), or from `train.init_weights` when starting fresh
      3. the data loader for this rank, skipping the batches already consumed
      4. per step: k micro batches -> TrainStep -> overflow check -> metrics line -> held-out eval
         every `eval_every` steps -> checkpoint every `save_every` steps (and at the end, and after a
         stop signal on any rank: `preemption`, then the run ends with "stopped" in its summary)

Only rank 0 writes (checkpoints, metrics.jsonl, the progress bar); every rank runs the same steps.
Under semi-auto parallel every rank saves its own slice (checkpoints/rank_<r>/step_N, beside
strategy/strategy_rank_<r>.ckpt) and the first rank of the last pipeline stage writes the metrics.
A non-finite loss or gradient stops the run before the update is applied (NonFiniteLossError names
the step and the last good checkpoint), or skips the step under dynamic loss scaling.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
import time
from pathlib import Path
from typing import Optional

import numpy as np

from pangu_pro import provenance
from pangu_pro.collective import any_rank
from pangu_pro.config import Config
from pangu_pro.configtools import ConfigError, to_mapping
from pangu_pro.data.integrity import name_read_errors
from pangu_pro.runlock import hold_on_rank0
from pangu_pro.train.checkpoint import (CHECKPOINTS, checkpoint_bytes, checkpoint_name, clean_partial,
                                        folder_bytes, latest_checkpoint, load_checkpoint, prune_checkpoints,
                                        resolve_resume, save_checkpoint, warn_if_no_space)
from pangu_pro.train.layout import checkpoint_layout
from pangu_pro.train.loss_scale import SKIP, STOP, LossScaler, check_overflow_detectable
from pangu_pro.train.metrics import (METRICS_NAME, MetricsLog, device_peak_flops, mfu,
                                     train_flops_per_token)
from pangu_pro.train.preemption import StopSignals
from pangu_pro.train.schedule import lr_at, scaled_lr, warmup_steps_of


class NonFiniteLossError(RuntimeError):
    """The loss or a gradient was NaN/inf at `step`; the update was not applied."""

    def __init__(self, step: int, loss: float, grad_norm: float, checkpoint: Optional[Path]):
        self.step, self.loss, self.grad_norm, self.checkpoint = step, loss, grad_norm, checkpoint
        last = str(checkpoint) if checkpoint else "none saved yet"
        bad = [name for name, value in (("loss", loss), ("gradient norm", grad_norm)) if not math.isfinite(value)]
        super().__init__(f"step {step}: non-finite {' and '.join(bad) or 'value'} (loss {loss}, gradient norm "
                         f"{grad_norm}); stopped before applying this update. Last good checkpoint: {last}")


@dataclasses.dataclass
class Parallel:
    """This process's place in the run.

    `replicas` is the data-parallel degree (how many `train.batch_size` batches one micro step
    consumes); `num_shards`/`shard_id` are what this rank's loader reads, `read_batch` samples at a
    time (`sharding.dataset_shard`: under semi-auto parallel with `full_batch` every rank reads the
    global batch, batch_size x dp x micro_batch_num). `writer` writes metrics and the config (the
    first rank of the last pipeline stage, which holds the loss); under semi-auto every rank saves
    its own checkpoint slice.
    """

    rank: int = 0
    world: int = 1
    semi_auto: bool = False
    replicas: Optional[int] = None  # default: world
    num_shards: Optional[int] = None  # default: world
    shard_id: Optional[int] = None  # default: rank
    read_factor: int = 1  # read_batch = train.batch_size * read_factor
    micro_batches: int = 1  # pipeline micro batches per step (summed by nn.PipelineCell)
    writer: int = 0

    def __post_init__(self):
        self.replicas = self.world if self.replicas is None else self.replicas
        self.num_shards = self.world if self.num_shards is None else self.num_shards
        self.shard_id = self.rank if self.shard_id is None else self.shard_id


def _semi_auto_key(par) -> str:
    if par.model_parallel > 1:
        return "parallel.model_parallel"
    return "parallel.pipeline_stage" if par.pipeline_stage > 1 else "parallel.optimizer_shard"


def setup_parallel(config: Config) -> Parallel:
    """Join the group when launched by msrun (or an HCCL rank table), else one process.

    Pure data parallel runs anywhere (DATA_PARALLEL, our own gradient all-reduce). Tensor/pipeline
    parallel and ZeRO need semi-auto parallel, which MindSpore runs on Ascend only ("Invalid backend:
    CPU"); there the auto-parallel context comes from `sharding.set_parallel_context`.
    """
    import mindspore as ms

    from pangu_pro.model.sharding import needs_semi_auto

    launched = "MS_WORKER_NUM" in os.environ or int(os.environ.get("RANK_SIZE", "1")) > 1
    par = config.parallel
    if needs_semi_auto(par):
        if ms.get_context("device_target") != "Ascend":
            raise ConfigError(_semi_auto_key(par), "needs semi-auto parallel (tensor/pipeline parallel or ZeRO), "
                              "which MindSpore runs on Ascend only; on the CPU train data parallel "
                              "(model_parallel 1, pipeline_stage 1, optimizer_shard false)")
        if par.pipeline_stage > 1 and config.train.grad_accum_steps > 1:
            raise ConfigError("train.grad_accum_steps", f"is {config.train.grad_accum_steps} with pipeline_stage "
                              f"{par.pipeline_stage}; a pipeline accumulates over parallel.micro_batch_num, so "
                              "raise that and set grad_accum_steps to 1")
        return _setup_semi_auto(config)
    if not launched:
        if par.data_parallel > 1:
            raise ConfigError("parallel.data_parallel", f"is {par.data_parallel} but this is a single process; "
                              "launch with scripts/run_distribute.sh")
        return Parallel()
    from mindspore.communication import get_group_size, get_rank, init

    from pangu_pro.model.sharding import gradients_mean

    init()
    world, rank = get_group_size(), get_rank()
    if par.data_parallel not in (1, world):
        raise ConfigError("parallel.data_parallel", f"is {par.data_parallel} but {world} workers were launched")
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL,
                                 gradients_mean=gradients_mean("data_parallel"), device_num=world)
    return Parallel(rank, world)


def _setup_semi_auto(config: Config) -> Parallel:
    """Ascend: init(), the semi-auto context with this rank's strategy file, and the data split."""
    import mindspore as ms
    from mindspore.communication import get_group_size, get_rank, init

    from pangu_pro.model.sharding import dataset_shard, gradients_mean, set_parallel_context, strategy_file_path

    par = config.parallel
    init()
    rank, world = get_rank(), get_group_size()
    strategy = strategy_file_path(config.train.output_dir, rank)
    kwargs = set_parallel_context(par, device_num=world, strategy_file=strategy, config=config)
    if kwargs["parallel_mode"] != "semi_auto_parallel":  # ZeRO over data parallel alone: each rank its shard
        ms.set_auto_parallel_context(parallel_mode="semi_auto_parallel", full_batch=False,
                                     gradients_mean=gradients_mean("semi_auto_parallel"),
                                     strategy_ckpt_config={"save_file": strategy, "only_trainable_params": False})
    shards, shard_id = dataset_shard(par, rank)
    micro = par.micro_batch_num if par.pipeline_stage > 1 else 1
    read_factor = (par.data_parallel if shards == 1 else 1) * micro
    return Parallel(rank, world, semi_auto=True, replicas=par.data_parallel, num_shards=shards, shard_id=shard_id,
                    read_factor=read_factor, micro_batches=micro, writer=world - world // par.pipeline_stage)


def weights_digest(model) -> str:
    """sha256 over the model's parameters (names, shapes and fp32 bytes), in parameter order."""
    import hashlib

    digest = hashlib.sha256()
    for param in model.trainable_params():
        value = np.ascontiguousarray(param.asnumpy(), dtype=np.float32)
        digest.update(f"{param.name}{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def base_learning_rate(train_cfg, world: int) -> float:
    """train.lr, rescaled for the global batch when train.lr_base_batch is set (paper-notes §6)."""
    if train_cfg.lr_base_batch is None:
        return train_cfg.lr
    global_batch = train_cfg.batch_size * train_cfg.grad_accum_steps * world
    return scaled_lr(train_cfg.lr, global_batch, train_cfg.lr_base_batch, train_cfg.lr_scaling_power)


def train_dataset(config: Config, par: Parallel, skip_batches: int):
    """This rank's training batches, enough epochs for the whole run, the first `skip_batches` skipped."""
    from pangu_pro.data.dataset import count_samples, create_dataset, load_indices, resolve_files

    data, tc = config.data, config.train
    if not data.train_files:
        raise ConfigError("data.train_files", "no training data given (MindRecord files or preprocess folders)")
    if data.index_file:
        provenance.check_selection(data.index_file, resolve_files(data.train_files))
    total = count_samples(data.train_files)
    indices = load_indices(data.index_file, total) if data.index_file else None
    per_rank = (total if indices is None else len(indices)) // par.num_shards
    read_batch = tc.batch_size * par.read_factor
    needed = tc.steps * tc.grad_accum_steps * read_batch
    if per_rank < read_batch:
        raise ConfigError("train.batch_size", f"{tc.batch_size} (x {par.read_factor} per read) exceeds the "
                          f"{per_rank} samples each of {par.num_shards} ranks gets per epoch")
    num_epochs = max(1, math.ceil(needed / per_rank))
    return create_dataset(data.train_files, read_batch, shuffle=data.shuffle, seed=data.seed, rank=par.shard_id,
                          world=par.num_shards, skip_batches=skip_batches, indices=indices, num_epochs=num_epochs)


def build_training(config: Config, par: Parallel):
    """Model, AdamW and TrainStep for `config` (model section already adapted to the device).

    Under semi-auto parallel (`par.semi_auto`, context set by `setup_parallel`) the loss network is
    set up for the layout by `sharding.parallelize` (strategies, pipeline stages, recompute, ZeRO
    opt-outs, the interleave/pipeline/one-graph accumulation wrapper) and the framework reduces the
    gradients (no DistributedGradReducer; `nn.PipelineGradReducer` when the wrapper sums micro
    losses); the step computes the global norm and overflow flag over all ranks.
    Nothing is compiled here. Returns (model, loss_net, optimizer, step_fn).
    """
    import mindspore as ms
    from mindspore import nn

    from pangu_pro.train.optim import build_optimizer
    from pangu_pro.train.step import TrainStep

    from pangu_pro.model.sharding import LazyInlineWithLoss, parallelize, summed_micro_losses

    tc, pcfg = config.train, config.parallel
    ms.set_seed(tc.seed)
    if not par.semi_auto:  # data parallel: recompute only; the step accumulates and all-reduces itself
        model, loss_net = build_loss_network(config)
        loss_net = parallelize(loss_net, pcfg).net
        optimizer = build_optimizer(model.trainable_params(), tc)
        return model, loss_net, optimizer, TrainStep(loss_net, optimizer, grad_clip=tc.grad_clip,
                                                     grad_accum_steps=tc.grad_accum_steps, world=par.world)
    # called once per micro batch by the wrapper when it sums micro losses: one reusable sub-graph,
    # a choice made before the cell is built (`parallelize`'s docstring)
    lazy = summed_micro_losses(pcfg, tc.grad_accum_steps) > 1
    model, loss_net = build_loss_network(config, loss_cell=LazyInlineWithLoss if lazy else None)
    laid = parallelize(loss_net, pcfg, grad_accum_steps=tc.grad_accum_steps)
    optimizer = build_optimizer(laid.net.trainable_params(), tc)
    reducer = (nn.PipelineGradReducer(optimizer.params, opt_shard=pcfg.optimizer_shard)
               if laid.needs_grad_reducer else None)
    step_fn = TrainStep(laid.net, optimizer, grad_clip=tc.grad_clip, grad_accum_steps=tc.grad_accum_steps,
                        micro_batches=laid.micro_batches, grad_reducer=reducer, semi_auto=True)
    return model, loss_net, optimizer, step_fn


def build_loss_network(config: Config, loss_cell=None, weights=None):
    """(model, loss cell) for `config`, as built: the caller sets it up for the layout
    (`sharding.parallelize`). Training and multi-round scoring (`rounds.scoring`) both build here.
    `loss_cell` defaults to PanGuPiWithLoss; `weights` loads whole tensors (the compile slices them)."""
    from pangu_pro.model.pangu_pi import PanGuPiWithLoss
    from pangu_pro.model.weights import build_model

    model = build_model(config.model, weights=weights, seed=config.train.seed)
    return model, (loss_cell or PanGuPiWithLoss)(model)


def layout_of(config: Config, par: Parallel) -> dict:
    """What a checkpoint's slices depend on: resuming needs the same (else merge first)."""
    return checkpoint_layout(config.parallel, par.world)


MERGE_WAIT_S = 7200  # how long the other ranks wait for rank 0 to merge a checkpoint (cluster time-out)


def merged_for_new_layout(rank_ckpt: Path, rank: int, wait_s: float = MERGE_WAIT_S) -> Path:
    """The whole-tensor checkpoint of the run that wrote the rank folder `rank_ckpt`
    (<run>/checkpoints/rank_<r>/step_N), merged once by rank 0 into <run>/checkpoints/merged/step_N
    (`train.merge.merge_run`); the other ranks wait for it."""
    from pangu_pro.train.checkpoint import STATE_NAME, merged_checkpoint_dir
    from pangu_pro.train.merge import merge_run

    run, step = rank_ckpt.parent.parent.parent, int(rank_ckpt.name.split("_")[1])
    merged = merged_checkpoint_dir(run, step)
    if rank == 0 and not (merged / STATE_NAME).is_file():
        merge_run(run, merged, step=step, overwrite=merged.exists())
    deadline = time.monotonic() + wait_s
    while not (merged / STATE_NAME).is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{merged}: rank 0 did not finish merging {run} step {step} in {wait_s:.0f} s")
        time.sleep(2)
    return merged


def train(config: Config, resume: Optional[str] = None, *, progress: bool = True, announce=print,
          allow_changes: bool = False) -> dict:
    """Run (or continue) training as `config` says; returns a summary. See the module doc.

    `resume`: a checkpoint folder, a run directory, or "auto" (the newest checkpoint of
    train.output_dir; under semi-auto parallel, of this rank's `checkpoints/rank_<r>/`).
    `allow_changes`: resume with deliberately changed keys (lr, steps, ...; `provenance.check_resume_config`).
    Rank 0 holds train.output_dir's run lock (`runlock`) for the run's life; a signal of
    train.stop_signals ends the run after the current step with a checkpoint and "stopped" in the
    summary (`preemption`).
    """
    from pangu_pro.runtime import apply_device_config, init_mindspore

    # before anything is built: the output folder, and the data against the model and tokenizer
    provenance.check_output_folder(config.train.output_dir, "train.output_dir")
    provenance.check_data(config)
    provenance.check_data(config, config.data.eval_files, "data.eval_files")
    target = init_mindspore()
    check_overflow_detectable(config, target)  # fp16 where only the NPU float status could see an overflow
    apply_device_config(config.device, target)
    par = setup_parallel(config)
    with contextlib.ExitStack() as held:
        hold_on_rank0(held, config.train.output_dir, "training", par.rank, par.world)
        stop = held.enter_context(StopSignals(config.train.stop_signals))
        return _train(config, resume, par, target, stop, progress, announce, allow_changes)


def _train(config: Config, resume: Optional[str], par: Parallel, target: str, stop: StopSignals, progress: bool,
           announce, allow_changes: bool) -> dict:
    from pangu_pro.model.distributed_ckpt import owned_parameters, rank_checkpoint_dir
    from pangu_pro.model.pangu_pi import PanGuPiWithLoss
    from pangu_pro.model.sharding import strategy_file_path
    from pangu_pro.model.weights import load_weights
    from pangu_pro.progress import progress_bar
    from pangu_pro.runtime import adapt_to_device
    from pangu_pro.train.checkpoint import intact_resume, read_state, resolve_rank_resume
    from pangu_pro.train.evaluate import eval_dataset, evaluate_loss

    tc = config.train
    lead = par.rank == par.writer
    say = announce if (lead and announce is not None) else (lambda *_: None)
    model_cfg = adapt_to_device(config.model, target, say)
    config = dataclasses.replace(config, model=model_cfg)
    out = Path(tc.output_dir)
    # data parallel: rank 0 writes checkpoints/step_N; semi-auto: every rank checkpoints/rank_<r>/step_N
    ckpt_root = rank_checkpoint_dir(out, par.rank) if par.semi_auto else out / CHECKPOINTS
    saves = par.semi_auto or par.rank == 0

    # 2. model, optimizer, step; state from a checkpoint when resuming
    model, loss_net, optimizer, step_fn = build_training(config, par)
    # what this rank saves: its pipeline stage's parameters (sliced as compiled); None = all
    owned = owned_parameters(model, config.parallel.pipeline_stage, par.world, par.rank) if par.semi_auto else None
    scaler = LossScaler.from_config(tc)
    start, consumed, tokens_seen, last_ckpt, sliced = 0, 0, 0, None, False
    if resume is not None:
        where = out if resume == "auto" else Path(resume)
        last_ckpt = resolve_rank_resume(where, par.rank) if par.semi_auto else resolve_resume(where)
        # a damaged newest checkpoint falls back to an older one, unless that folder was named (or under
        # semi-auto, where each rank checks only its own slice and all ranks must resume the same step)
        last_ckpt = intact_resume(last_ckpt, not par.semi_auto and last_ckpt != where, say)
        state = read_state(last_ckpt)
        current = to_mapping(config)
        current.pop("source", None)
        for change in provenance.check_resume_config(state.get("config"), current, last_ckpt, allow_changes):
            say(f"resuming with a changed {change}")
        # rank slices of another layout (or resumed without semi-auto): merge them, then load whole tensors
        if "layout" in state and (not par.semi_auto or state["layout"] != layout_of(config, par)):
            if last_ckpt.parent.parent.parent.resolve() == out.resolve():
                raise ConfigError("train.output_dir", f"{out} holds the run being resumed under another layout "
                                  f"({state['layout']}); its rank folders and strategy files would mix with the "
                                  "new layout's: choose a new train.output_dir and pass --resume " + str(out))
            say(f"{last_ckpt}: written under the layout {state['layout']}; merging it for {layout_of(config, par)}")
            last_ckpt = merged_for_new_layout(last_ckpt, par.rank)  # whole tensors: the compile slices them
            state = read_state(last_ckpt)
        elif par.semi_auto and "layout" in state:  # this rank's slices of the same layout
            sliced = True
        elif state.get("world", 1) != par.world and not par.semi_auto:
            raise ValueError(f"{last_ckpt}: written by {state.get('world')} data-parallel ranks, resumed with "
                             f"{par.world}; the data position would not carry over")
        if not sliced:  # whole tensors: load now (under semi-auto the compile slices them)
            load_checkpoint(last_ckpt, model, optimizer)
        start, consumed, tokens_seen = state["step"], state["consumed_batches"], state.get("tokens", 0)
        scaler = LossScaler(**state["loss_scale"])
        say(f"resuming from {last_ckpt} at step {start}")
    elif latest_checkpoint(ckpt_root) is not None:  # every rank checks, so all stop together
        raise ValueError(f"{ckpt_root} already holds checkpoints: pass --resume to continue that run, or "
                         f"choose another train.output_dir")
    elif tc.init_weights:  # a fresh run (new optimizer state and schedule) from given weights
        provenance.check_checkpoint_data(config.data.train_files, "data.train_files", tc.init_weights)
        load_weights(model, tc.init_weights)
        say(f"initial weights from {tc.init_weights}")
    if start >= tc.steps:
        say(f"nothing to do: the checkpoint is at step {start} of {tc.steps}")
        return {"step": start, "steps_run": 0, "checkpoint": str(last_ckpt) if last_ckpt else None}
    if saves:
        clean_partial(ckpt_root)
        warn_if_no_space(ckpt_root, checkpoint_bytes(model, optimizer, owned), "a checkpoint", say)
    if lead:
        from pangu_pro.config import save_config
        save_config(config, out / "config.yaml")
    metrics = MetricsLog(out / METRICS_NAME, fresh=resume is None) if lead else None
    if metrics is not None and resume is not None:
        metrics.truncate_after(start)

    # 3. data
    from pangu_pro.data.dataset import resolve_files

    batches = name_read_errors(train_dataset(config, par, skip_batches=consumed).create_tuple_iterator(num_epochs=1),
                               resolve_files(config.data.train_files))
    if sliced:  # this rank's slices fit the compiled (sliced) parameters: compile on the first batches
        first = [next(batches)[0] for _ in range(tc.grad_accum_steps)]
        step_fn.compile(first)
        load_checkpoint(last_ckpt, model, optimizer, names=owned)
        batches = itertools.chain([(b,) for b in first], batches)
    # held-out evaluation is one rank's own graph: data parallel only (a semi-auto graph spans all ranks)
    eval_net = (PanGuPiWithLoss(model) if tc.eval_every and config.data.eval_files and lead and not par.semi_auto
                else None)

    # 4. the loop
    data_origin = provenance.data_record(config.data.train_files)  # recorded in each checkpoint
    lr0 = base_learning_rate(tc, par.replicas * par.micro_batches)
    peak = device_peak_flops(target, tc.peak_flops, par.world, say) if lead else None
    bar = progress_bar(total=tc.steps, initial=start, disable=not (progress and lead), desc="train", unit="step",
                       every=tc.log_every)
    window_tokens, window_time, flops_per_token, step = 0, 0.0, None, start
    last, stopped = {}, None
    try:
        for step in range(start + 1, tc.steps + 1):
            micro = [next(batches)[0] for _ in range(tc.grad_accum_steps)]
            seq = int(micro[0].shape[1]) - 1
            provenance.check_batch_length(seq, model_cfg.seq_length, config.data.allow_shorter_samples,
                                          config.data.train_files)
            flops_per_token = flops_per_token or train_flops_per_token(model_cfg, seq)
            lr = lr_at(step, lr=lr0, total_steps=tc.steps,
                       warmup_steps=warmup_steps_of(tc.steps, tc.warmup_steps, tc.warmup_fraction),
                       min_lr_ratio=tc.min_lr_ratio)
            began = time.perf_counter()
            result = step_fn(micro, lr, scaler.scale)
            elapsed = time.perf_counter() - began
            consumed += tc.grad_accum_steps
            step_tokens = seq * tc.batch_size * tc.grad_accum_steps * par.replicas * par.micro_batches
            tokens_seen += step_tokens
            window_tokens += step_tokens
            window_time += elapsed
            scale_used = scaler.scale
            action = scaler.update(result.finite)
            if action == STOP:
                if metrics is not None:
                    metrics.write({"type": "error", "step": step, "loss": result.loss, "grad_norm": result.grad_norm})
                raise NonFiniteLossError(step, result.loss, result.grad_norm, last_ckpt)
            last = {"loss": result.loss, "lr": lr, "grad_norm": result.grad_norm}
            bar.set_postfix({"loss": f"{result.loss:.4f}", "lr": f"{lr:.2e}", "grad_norm": f"{result.grad_norm:.3f}",
                             "tok/s": f"{window_tokens / window_time:.0f}"}, refresh=False)
            bar.update(1)
            if metrics is not None and (step % tc.log_every == 0 or step == tc.steps):
                tps = window_tokens / window_time
                metrics.write({"type": "train", "step": step, "loss": result.loss, "lr": lr,
                               "grad_norm": result.grad_norm, "tokens_per_s": tps,
                               "mfu": mfu(flops_per_token, tps, peak, par.world), "tokens": tokens_seen,
                               "loss_scale": scale_used, "skipped": action == SKIP, "step_time_s": elapsed})
                window_tokens, window_time = 0, 0.0
            if eval_net is not None and step % tc.eval_every == 0:
                held_out = evaluate_loss(eval_net, eval_dataset(config.data.eval_files, tc.batch_size),
                                         tc.eval_batches)
                metrics.write({"type": "eval", "step": step, "eval_loss": held_out["loss"],
                               "eval_perplexity": held_out["perplexity"], "eval_samples": held_out["samples"]})
                bar.write(f"step {step}: held-out loss {held_out['loss']:.4f}, perplexity "
                          f"{held_out['perplexity']:.2f}")
            stopping = any_rank(stop.received is not None, par.world)  # every rank, every step
            if (tc.save_every and step % tc.save_every == 0) or step == tc.steps or stopping:
                if saves:
                    state = {"step": step, "consumed_batches": consumed, "consumed_samples":
                             consumed * tc.batch_size * par.read_factor * par.num_shards, "tokens": tokens_seen,
                             "world": par.world,
                             "lr": lr, "loss": result.loss, "loss_scale": scaler.state(),
                             "rng": {"seed": tc.seed, "data_seed": config.data.seed, "shuffle": config.data.shuffle,
                                     "note": "the step draws no random numbers; the data order is a function "
                                             "of data_seed and consumed_batches"},
                             "config": to_mapping(config), "provenance": {"data": data_origin}}
                    state["config"].pop("source", None)
                    if par.semi_auto:  # this rank's slices; the strategy file says how they fit together
                        state.update(rank=par.rank, layout=layout_of(config, par),
                                     strategy=strategy_file_path(str(out), par.rank))
                    last_ckpt = save_checkpoint(ckpt_root / checkpoint_name(step), model, optimizer, state,
                                                names=owned)
                    prune_checkpoints(ckpt_root, tc.keep_last)
                    warn_if_no_space(ckpt_root, folder_bytes(last_ckpt), "the next checkpoint", say)
            if stopping and step < tc.steps:
                any_rank(False, par.world)  # no rank exits (msrun would kill the rest) before the save is done
                stopped = stop.received or "a stop signal on another rank"
                say(f"stopped by {stopped} after step {step}" + (f": checkpoint {last_ckpt}" if saves else ""))
                break
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()
    if par.world > 1 and not par.semi_auto:  # identical fingerprints: the data-parallel replicas did not diverge
        print(f"rank {par.rank}/{par.world}: step {step} weights sha256 {weights_digest(model)}", flush=True)
    # a rank that writes no checkpoints names none (its last_ckpt is only where it resumed from)
    return {"step": step, "steps_run": step - start, "tokens": tokens_seen, **last, "rank": par.rank,
            "checkpoint": str(last_ckpt) if (last_ckpt and saves) else None, "output_dir": str(out),
            "stopped": stopped}
