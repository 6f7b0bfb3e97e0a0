"""Tensor/sequence/pipeline layout of the PanGu-pi cells, read back from the primitives on the CPU.

A semi-auto parallel context with 8 devices lets `.shard()` run without devices (mindspore-notes,
"Shard strategies without devices"); compiling such a graph needs Ascend (tests/test_parallel_ascend.py).
"""
from __future__ import annotations

import dataclasses

import pytest
import mindspore as ms
from mindspore import nn
from mindspore.ops.primitive import Primitive

from pangu_pro.config import ModelConfig, ParallelConfig
from pangu_pro.model.pangu_pi import PanGuPiForCausalLM, PanGuPiWithLoss
from pangu_pro.model.sharding import (Parallelized, apply_recompute, assign_pipeline_stages, configure_model,
                                      dataset_shard, parallel_context_kwargs, parallelize, set_parallel_context,
                                      shard_model, summed_micro_losses, wrap_for_pipeline)

MHA = ModelConfig(vocab_size=256, hidden_size=64, num_layers=4, num_heads=4, intermediate_size=128,
                  seq_length=32, aug_shortcut_ratio=8, siaf_terms=3)
GQA = dataclasses.replace(MHA, num_kv_heads=2, siaf=False, tie_word_embeddings=True)

# primitives that take no strategy (Cast/Reshape follow their input), run only in cached decoding
# (gather_rows) or on scalars (maximum), or belong to the inheritance masks' broadcast paths
# (the KV-cache writes only run in generation, which is stand-alone)
UNSHARDED = {"cast", "reshape", "gather_rows", "maximum", "mul_mask", "sum_masked", "div", "write_k_cache",
             "write_v_cache"}


def expected_layout(model_cfg: ModelConfig, d: int, m: int, sp: bool, vp: bool) -> dict[str, tuple]:
    """The layout of docs/parallel.md, written out independently of pangu_pro.model.sharding."""
    s = m if sp else 1
    x, heads, ch = (d, s, 1), (d, m, 1, 1), (d, 1, m)
    col, row = ((d, 1), (m, 1)), ((d, m), (1, m))
    norm = {"square": (x,), "mean": (x,), "rsqrt": (x,), "add": (x, ()), "mul": (x, x),
            "mul_weight": (x, (1,)), "fused_norm": (x, (1,))}
    layer = {}
    for n in ("attention_norm", "ffn_norm"):
        layer.update({f"{n}.{k}": v for k, v in norm.items()})
    layer.update({
        "attention.wq.matmul": col, "attention.wk.matmul": col, "attention.wv.matmul": col,
        "attention.wo.matmul": row, "attention.transpose": ((d, 1, m, 1),),
        "attention.rope.slice_lo": (heads,), "attention.rope.slice_hi": (heads,), "attention.rope.neg": (heads,),
        "attention.rope.concat": (heads, heads), "attention.rope.mul_cos": (heads, (1, 1)),
        "attention.rope.mul_sin": (heads, (1, 1)), "attention.rope.add": (heads, heads),
        "attention.rope.fused_rope": (heads, (1, 1, 1, 1), (1, 1, 1, 1)),
        "attention.tile_kv": ((d, m, 1, 1, 1),), "attention.qk_matmul": (heads, heads),
        "attention.mul_scale": (heads, ()), "attention.add_mask": (heads, (1, 1)),
        "attention.softmax": (heads,), "attention.pv_matmul": (heads, heads), "attention.merge_heads": (heads,),
        "attention.mul_head_mask": (heads, (1, m, 1, 1)),
        "feed_forward.w1.matmul": col, "feed_forward.w3.matmul": col, "feed_forward.w2.matmul": row,
        "feed_forward.mul": (ch, ch), "feed_forward.mul_neuron_mask": (ch, (m,)),
        "add_attention": (x, x), "add_shortcut": (x, x), "add_ffn": (x, x),
    })
    if model_cfg.siaf:
        layer.update({"feed_forward.siaf.row": ((1, m),), "feed_forward.siaf.mul": (ch, (1, m)),
                      "feed_forward.siaf.add_bias": (ch, (1, m)), "feed_forward.siaf.silu": (ch,),
                      "feed_forward.siaf.sum_terms": (ch, ch)})
    else:
        layer["feed_forward.silu"] = (ch,)
    if model_cfg.aug_shortcut:  # replicated weights, tokens split like the residual stream
        layer.update({"aug_shortcut.down.matmul": ((d * s, 1), (1, 1)), "aug_shortcut.up.matmul": ((d * s, 1), (1, 1)),
                      "aug_shortcut.mul_inv_sqrt2": (x, ()), "aug_shortcut.erf": (x,), "aug_shortcut.add_one": (x, ()),
                      "aug_shortcut.mul": (x, x), "aug_shortcut.mul_half": (x, ())})
    out = {}
    for i in range(model_cfg.num_layers):
        out.update({f"model.layers.{i}.{k}": v for k, v in layer.items()})
    out.update({f"model.norm.{k}": v for k, v in norm.items()})
    out["model.embed_tokens.gather"] = (((m, 1) if vp else (1, 1)), (d, 1))
    head = ((d, 1), (m, 1)) if vp else ((d * m, 1), (1, 1))
    out["tied_matmul" if model_cfg.tie_word_embeddings else "lm_head.matmul"] = head
    split, rows = (d, m), (d, 1)  # vocabulary-parallel cross-entropy on [tokens, V]; None: the other form's ops
    vocab = {"logit_max": (split,), "sub_max": (split, rows), "exp": (split,), "sum_exp": (split,), "log": (rows,),
             "one_hot": (split, (), ()), "mul_target": (split, split), "sum_target": (split,),
             "sub_target": (rows, rows)}
    out.update({f"loss.{k}": v if vp else None for k, v in vocab.items()})
    out.update({"loss.log_softmax": None if vp else ((d, m, 1),),
                "loss.gather_d": None if vp else ((d, m, 1), (d, m, 1)), "loss.reduce_sum": ((d, m),)})
    return out


def read_strategies(network) -> dict[str, tuple]:
    """Every primitive's in_strategy (None if unset), by parameter-style path."""
    found = {}
    for cell_name, cell in network.cells_and_names():
        path = cell_name.replace("network.", "", 1) if cell_name.startswith("network.") else cell_name
        if cell_name == "":
            path = "loss"
        elif cell_name == "network":
            path = ""
        for attr in dir(cell):
            value = getattr(cell, attr, None) if not attr.startswith("__") else None
            if isinstance(value, Primitive):
                key = f"{path}.{attr}" if path else attr
                found[key] = getattr(value, "in_strategy", None)
    return found


LAYOUTS = [  # (model, dp, mp, pp, sequence parallel, vocab parallel)
    (MHA, 8, 1, 1, False, False),
    (MHA, 2, 4, 1, False, False),
    (MHA, 1, 4, 2, True, False),
    (GQA, 2, 2, 2, False, True),
    (GQA, 1, 2, 4, True, True),
]


@pytest.mark.parametrize("model_cfg,dp,mp,pp,sp,vp", LAYOUTS)
def test_every_primitive_has_the_expected_strategy(semi_auto, model_cfg, dp, mp, pp, sp, vp):
    parallel = ParallelConfig(data_parallel=dp, model_parallel=mp, pipeline_stage=pp, micro_batch_num=max(pp, 2),
                              sequence_parallel=sp, vocab_parallel=vp)
    network = PanGuPiWithLoss(PanGuPiForCausalLM(model_cfg))
    applied = shard_model(network, parallel)
    expected = expected_layout(model_cfg, dp, mp, sp, vp)
    found = read_strategies(network)
    sharded = {k: v for k, v in found.items() if k.rsplit(".", 1)[-1] not in UNSHARDED}
    assert sharded == expected
    assert {k: v[0] for k, v in applied.items()} == {k: v for k, v in expected.items() if v is not None}
    assert network.vocab_parallel is vp  # the loss computes the form its strategies are for
    assert all(v is None for k, v in found.items() if k.rsplit(".", 1)[-1] in UNSHARDED)


def test_literal_layout_dp2_mp4(semi_auto):
    """A few strategies spelled out as numbers, for the Megatron layout of mindspore-notes."""
    network = PanGuPiWithLoss(PanGuPiForCausalLM(MHA))
    shard_model(network, ParallelConfig(data_parallel=2, model_parallel=4))
    layer = network.network.model.layers[1]
    assert layer.attention.wq.matmul.in_strategy == ((2, 1), (4, 1))
    assert layer.attention.wo.matmul.in_strategy == ((2, 4), (1, 4))
    assert getattr(layer.attention.wo.matmul, "out_strategy", None) is None
    assert layer.attention.softmax.in_strategy == ((2, 4, 1, 1),)
    assert layer.feed_forward.siaf.mul.in_strategy == ((2, 1, 4), (1, 4))
    assert layer.aug_shortcut.down.matmul.in_strategy == ((2, 1), (1, 1))
    assert layer.ffn_norm.mul_weight.in_strategy == ((2, 1, 1), (1,))
    assert network.network.lm_head.matmul.in_strategy == ((8, 1), (1, 1))


def test_sequence_parallel_reduce_scatters_row_parallel_outputs(semi_auto):
    network = PanGuPiWithLoss(PanGuPiForCausalLM(MHA))
    shard_model(network, ParallelConfig(data_parallel=2, model_parallel=4, sequence_parallel=True))
    layer = network.network.model.layers[0]
    assert layer.attention.wo.matmul.out_strategy == ((8, 1),)
    assert layer.feed_forward.w2.matmul.out_strategy == ((8, 1),)
    assert layer.add_ffn.in_strategy == ((2, 4, 1), (2, 4, 1))
    assert layer.aug_shortcut.up.matmul.in_strategy == ((8, 1), (1, 1))


def test_flash_attention_strategy(semi_auto):
    cfg = dataclasses.replace(MHA, use_flash_attention=True)
    model = PanGuPiForCausalLM(cfg)
    shard_model(model, ParallelConfig(data_parallel=2, model_parallel=4))
    fa = model.model.layers[0].attention.flash_attention
    assert fa.in_strategy == ((2, 4, 1, 1), (2, 4, 1, 1), (2, 4, 1, 1), (1, 1))


def test_no_strategies_outside_semi_auto_parallel():
    model = PanGuPiForCausalLM(MHA)
    assert shard_model(model, ParallelConfig(data_parallel=2, model_parallel=4)) == {}
    with pytest.raises(AttributeError):
        _ = model.model.layers[0].attention.wq.matmul.in_strategy


@pytest.mark.parametrize("layers,pp,offset,stages", [
    (4, 2, [], [0, 0, 1, 1]),
    (4, 4, [], [0, 1, 2, 3]),
    (5, 2, [], [0, 0, 0, 1, 1]),  # layer_id // (5 / 2): 0, 0, 0 (2 // 2.5), 1, 1
    (5, 2, [1, -1], [0, 0, 0, 0, 1]),
    (6, 3, [-1, 0, 1], [0, 1, 1, 2, 2, 2]),
])
def test_pipeline_stages(semi_auto, layers, pp, offset, stages):
    cfg = dataclasses.replace(MHA, num_layers=layers)
    network = PanGuPiWithLoss(PanGuPiForCausalLM(cfg))
    parallel = ParallelConfig(data_parallel=8 // pp if pp < 8 else 1, pipeline_stage=pp, micro_batch_num=pp,
                              pipeline_offset=offset)
    assert assign_pipeline_stages(network, parallel) == stages
    lm = network.network
    assert [layer.pipeline_stage for layer in lm.model.layers] == stages
    assert lm.model.embed_tokens.pipeline_stage == 0
    assert lm.model.norm.pipeline_stage == pp - 1
    assert lm.lm_head.pipeline_stage == pp - 1
    with pytest.raises(AttributeError):  # the loss cell is not staged (its input slice feeds stage 0)
        network.pipeline_stage
    with pytest.raises(AttributeError):
        lm.pipeline_stage


def test_recompute_modes():
    full = PanGuPiForCausalLM(MHA)
    apply_recompute(full, ParallelConfig(recompute="full"))
    assert all(layer._has_config_recompute for layer in full.model.layers)
    assert not full.model.embed_tokens._has_config_recompute

    sel = PanGuPiForCausalLM(MHA)
    apply_recompute(sel, ParallelConfig(recompute="selective"))
    layer = sel.model.layers[2]
    assert not layer._has_config_recompute
    for prim in (layer.attention.softmax, layer.attention.qk_matmul, layer.feed_forward.siaf.silu):
        assert prim.attrs.get("recompute") is True
    for prim in (layer.attention.wq.matmul, layer.attention.pv_matmul, layer.feed_forward.mul):
        assert prim.attrs.get("recompute") is None


def test_configure_model_opts_norms_out_of_zero(semi_auto):
    network = PanGuPiWithLoss(PanGuPiForCausalLM(MHA))
    configure_model(network, ParallelConfig(data_parallel=4, model_parallel=2, optimizer_shard=True))
    flags = {p.name: p.parallel_optimizer for p in network.get_parameters()}
    assert flags["model.norm.weight"] is False
    assert flags["model.layers.0.attention_norm.weight"] is False
    assert flags["model.layers.0.attention.wq.weight"] is True


def test_parallel_context_kwargs():
    dp_only = ParallelConfig(data_parallel=8, optimizer_shard=True, optimizer_shard_threshold_kb=128)
    assert parallel_context_kwargs(dp_only) == {
        "parallel_mode": "data_parallel", "device_num": 8, "gradients_mean": True,
        "enable_parallel_optimizer": True, "parallel_optimizer_config": {"gradient_accumulation_shard": False,
                                                                         "parallel_optimizer_threshold": 128,
                                                                         "optimizer_weight_shard_size": -1},
        "comm_fusion": {kind: {"mode": "size", "config": 32} for kind in ("allreduce", "allgather", "reducescatter")}}
    pipe = ParallelConfig(data_parallel=2, model_parallel=2, pipeline_stage=2, micro_batch_num=4, allreduce_fusion_mb=0)
    assert parallel_context_kwargs(pipe, "out/strategy/strategy_rank_3.ckpt") == {
        "parallel_mode": "semi_auto_parallel", "device_num": 8, "gradients_mean": False, "full_batch": True,
        "pipeline_stages": 2, "pipeline_config": {"pipeline_interleave": False, "pipeline_scheduler": "1f1b"},
        "strategy_ckpt_config": {"save_file": "out/strategy/strategy_rank_3.ckpt", "only_trainable_params": False},
        "comm_fusion": {kind: {"mode": "auto", "config": None} for kind in ("allreduce", "allgather", "reducescatter")}}
    assert parallel_context_kwargs(ParallelConfig()) == {"parallel_mode": "stand_alone"}
    node_local = ParallelConfig(data_parallel=16, model_parallel=4, optimizer_shard=True, optimizer_weight_shard_size=8)
    assert parallel_context_kwargs(node_local)["parallel_optimizer_config"]["optimizer_weight_shard_size"] == 8
    assert dataset_shard(dp_only, 3) == (8, 3)
    assert dataset_shard(pipe, 3) == (1, 0)


def test_set_parallel_context_checks_devices_and_sets_the_context():
    from pangu_pro.config import ConfigError

    try:
        with pytest.raises(ConfigError) as err:
            set_parallel_context(ParallelConfig(data_parallel=2, model_parallel=2), device_num=8)
        assert err.value.key == "parallel"
        set_parallel_context(ParallelConfig(data_parallel=2, model_parallel=2, pipeline_stage=2, micro_batch_num=2),
                             device_num=8)
        assert ms.get_auto_parallel_context("parallel_mode") == "semi_auto_parallel"
        assert ms.get_auto_parallel_context("pipeline_stages") == 2
        assert ms.get_auto_parallel_context("device_num") == 8
    finally:
        ms.reset_auto_parallel_context()


def test_wrap_for_pipeline(semi_auto):
    network = PanGuPiWithLoss(PanGuPiForCausalLM(MHA))
    piped = wrap_for_pipeline(network, ParallelConfig(data_parallel=4, pipeline_stage=2, micro_batch_num=4))
    assert isinstance(piped, nn.PipelineCell) and piped.micro_size == 4
    inter = wrap_for_pipeline(network, ParallelConfig(data_parallel=8, micro_batch_interleave_num=2))
    assert isinstance(inter.interleaved, nn.MicroBatchInterleaved) and inter.inverse == 0.5
    accumulated = wrap_for_pipeline(network, ParallelConfig(data_parallel=8, micro_batch_interleave_num=2), 4)
    assert accumulated.micro_size == 4 and accumulated.network.interleaved.network is network
    assert summed_micro_losses(ParallelConfig(data_parallel=8), 4) == 4
    assert summed_micro_losses(ParallelConfig(data_parallel=4, pipeline_stage=2, micro_batch_num=8)) == 8
    assert wrap_for_pipeline(network, ParallelConfig(data_parallel=8)) is network


def _sharded(network) -> dict[str, tuple]:
    return {k: v for k, v in read_strategies(network).items() if k.rsplit(".", 1)[-1] not in UNSHARDED}


def test_parallelize_pipeline_sets_up_every_piece(semi_auto):
    """pp 2 x mp 2 x dp 2 with ZeRO and full recompute: strategies, stages, recompute, ZeRO opt-outs
    and the PipelineCell summing micro_batch_num losses, which needs the gradient reducer."""
    network = PanGuPiWithLoss(PanGuPiForCausalLM(MHA))
    cfg = ParallelConfig(data_parallel=2, model_parallel=2, pipeline_stage=2, micro_batch_num=4,
                         optimizer_shard=True, recompute="full")
    laid = parallelize(network, cfg)
    assert isinstance(laid.net, nn.PipelineCell) and laid.net.micro_size == 4 and laid.net.network is network
    assert (laid.micro_batches, laid.needs_grad_reducer) == (4, True)
    assert _sharded(network) == expected_layout(MHA, 2, 2, False, False)
    assert [layer.pipeline_stage for layer in network.network.model.layers] == [0, 0, 1, 1]
    assert all(layer._has_config_recompute for layer in network.network.model.layers)
    assert network.network.model.norm.weight.parallel_optimizer is False


def test_parallelize_accumulates_in_one_graph(semi_auto):
    """ZeRO over dp 8 (semi-auto) with 4 accumulation steps: GradAccumulation of 4 micro losses,
    selective recompute, no pipeline stages; forward_only sets up the same net without a wrapper."""
    from mindspore.parallel.nn import GradAccumulation

    network = PanGuPiWithLoss(PanGuPiForCausalLM(MHA))
    cfg = ParallelConfig(data_parallel=8, optimizer_shard=True, recompute="selective")
    laid = parallelize(network, cfg, grad_accum_steps=4)
    assert isinstance(laid.net, GradAccumulation) and laid.net.micro_size == 4 and laid.net.network is network
    assert (laid.micro_batches, laid.needs_grad_reducer) == (4, True)
    assert _sharded(network) == expected_layout(MHA, 8, 1, False, False)
    assert network.network.model.layers[0].attention.softmax.attrs.get("recompute") is True
    assert not hasattr(network.network.model.layers[0], "pipeline_stage")

    scorer = PanGuPiWithLoss(PanGuPiForCausalLM(MHA))
    assert parallelize(scorer, cfg, grad_accum_steps=4, forward_only=True) == Parallelized(scorer)
    assert _sharded(scorer) == expected_layout(MHA, 8, 1, False, False)


def test_parallelize_tensor_parallel_without_accumulation_keeps_the_net(semi_auto):
    network = PanGuPiWithLoss(PanGuPiForCausalLM(MHA))
    assert parallelize(network, ParallelConfig(data_parallel=4, model_parallel=2)) == Parallelized(network, 1, False)
    assert _sharded(network) == expected_layout(MHA, 4, 2, False, False)


def test_parallelize_data_parallel_applies_only_recompute(semi_auto):
    """A data-parallel layout attaches no strategy and no wrapper (even under a semi-auto context, and
    with accumulation: the data-parallel step accumulates on its own); only recompute applies."""
    network = PanGuPiWithLoss(PanGuPiForCausalLM(MHA))
    laid = parallelize(network, ParallelConfig(data_parallel=8, recompute="full", micro_batch_interleave_num=2),
                       grad_accum_steps=4)
    assert laid == Parallelized(network, 1, False)
    assert all(v is None for v in read_strategies(network).values())
    assert all(layer._has_config_recompute for layer in network.network.model.layers)
    plain = PanGuPiWithLoss(PanGuPiForCausalLM(MHA))
    assert parallelize(plain, ParallelConfig(data_parallel=8)).net is plain
    assert not any(layer._has_config_recompute for layer in plain.network.model.layers)
