"""MindFormers-style `type:` names resolve to our classes, and importing MindFormers leaves no litter."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pangu_pro.configtools import ConfigError
from pangu_pro.model import PanGuPiForCausalLM
from pangu_pro.model.params import count_parameters

ROOT = Path(__file__).resolve().parents[1]
TINY = {"vocab_size": 256, "hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 128,
        "seq_length": 16, "aug_shortcut_ratio": 8}


def test_type_names_resolve_through_mindformers_registry():
    from mindformers.tools.register import MindFormerModuleType, MindFormerRegister

    from pangu_pro.model.registry import PanGuPiConfig

    section = {"type": "PanGuPiConfig", "vocab_size": 100, "hidden_size": 64, "num_layers": 1, "num_heads": 4,
               "intermediate_size": 96, "aug_shortcut_ratio": 8}
    cfg = MindFormerRegister.get_instance_from_cfg(dict(section), MindFormerModuleType.CONFIG)
    assert isinstance(cfg, PanGuPiConfig) and cfg.hidden_size == 64
    model = MindFormerRegister.get_instance_from_cfg({"type": "PanGuPiForCausalLM"}, MindFormerModuleType.MODELS,
                                                     default_args={"config": cfg})
    assert isinstance(model, PanGuPiForCausalLM)
    assert sum(p.size for p in model.trainable_params()) == count_parameters(cfg).total
    with pytest.raises(ConfigError, match="num_heads"):
        MindFormerRegister.get_instance_from_cfg({**section, "num_heads": 5}, MindFormerModuleType.CONFIG)


def test_importing_leaves_no_output_folder(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LOG_MF_PATH"}
    code = "import pangu_pro, pangu_pro.model.registry"
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True, capture_output=True)
    assert list(tmp_path.iterdir()) == []


# --- MindFormers' own trainer ----------------------------------------------------------------------

def test_mindformers_yaml_describes_the_same_1b_pro_model():
    from mindformers import MindFormerConfig

    from pangu_pro.config import load_config
    from pangu_pro.model.registry import PanGuPiProConfig

    mf = MindFormerConfig(str(ROOT / "configs" / "mindformers" / "pangu_1b_pro.yaml"))
    section = {k: v for k, v in mf.model.model_config.items() if k != "type"}
    assert mf.model.model_config.type == "PanGuPiProConfig" and mf.model.arch.type == "PanGuPiProForCausalLM"
    assert PanGuPiProConfig(**section).model == load_config(ROOT / "configs" / "pangu_1b_pro.yaml").model
    with pytest.raises(ConfigError, match="model.model_config.num_heads"):
        PanGuPiProConfig(**{**section, "num_heads": 5})


def test_mindformers_parallel_config_becomes_our_layout(semi_auto):
    from mindformers.modules.transformer import TransformerOpParallelConfig

    from pangu_pro.model.registry import PanGuPiProConfig, PanGuPiProForCausalLM

    # the object MindFormers' trainer puts on the model config (it must serialise: lazy_inline prints the config)
    par = TransformerOpParallelConfig(data_parallel=2, model_parallel=4, use_seq_parallel=True, vocab_emb_dp=False)
    model = PanGuPiProForCausalLM(PanGuPiProConfig(**TINY, parallel_config=par))
    attention = model.with_loss.network.model.layers[0].attention
    assert attention.wq.matmul.in_strategy == ((2, 1), (4, 1))
    assert attention.wo.matmul.out_strategy == ((8, 1),)  # sequence parallel
    assert model.with_loss.network.model.embed_tokens.gather.in_strategy == ((4, 1), (2, 1))  # vocab split


def test_mindformers_optimizer_groups_equal_ours():
    """The YAML's optimizer under MindFormers' grouping, as its trainer builds it (on the wrapped network,
    here GradAccumulationCell for the YAML's 64 steps): every parameter's weight decay equals our AdamW's.
    MindFormers' own groups decay SIAF's scale (> 1-D, not `.bias`), and its `no_weight_decay_keywords`
    model hook is not found on the wrapper; with `type: AdamW` (the old YAML) the scale was decayed."""
    from mindformers import MindFormerConfig
    from mindformers.core.optim import build_optim
    from mindformers.trainer.optimizer_grouped_parameters import get_optimizer_grouped_parameters
    from mindspore.nn.wrap.cell_wrapper import GradAccumulationCell

    from pangu_pro.config import TrainConfig
    from pangu_pro.model.registry import PanGuPiProConfig, PanGuPiProForCausalLM
    from pangu_pro.train.optim import build_optimizer

    mf = MindFormerConfig(str(ROOT / "configs" / "mindformers" / "pangu_1b_pro.yaml"))
    model = PanGuPiProForCausalLM(PanGuPiProConfig(**TINY))
    groups = get_optimizer_grouped_parameters(model=GradAccumulationCell(model, 4),
                                              weight_decay=mf.optimizer.weight_decay)
    raw = {p.name: g["weight_decay"] for g in groups for p in g["params"]}
    assert raw["model.layers.0.feed_forward.siaf.scale"] == 0.1  # MindFormers' rule alone decays it
    optimizer = build_optim(mf.optimizer, default_args={"params": groups, "learning_rate": 3e-4})
    theirs = {p.name: wd for p, wd in zip(optimizer.parameters, optimizer.group_weight_decay)}
    ours = build_optimizer(model.trainable_params(), TrainConfig(weight_decay=mf.optimizer.weight_decay))
    assert theirs == {p.name: wd for p, wd in zip(ours.params, ours.weight_decays)}
    assert theirs["model.layers.0.feed_forward.siaf.scale"] == theirs["model.layers.0.feed_forward.siaf.bias"] == 0.0
    assert theirs["model.layers.0.attention.wq.weight"] == 0.1 and theirs["model.norm.weight"] == 0.0


def test_the_model_is_lazy_inline_as_mindformers_llama_and_computes_the_same(semi_auto):
    """MindFormers' `lazy_inline` on the constructor: under a parallel context the cell is marked for one
    reusable sub-graph (its config must serialise for that); stand-alone (every CPU run) MindFormers skips
    it, and the CPU loss equals our loss cell's with the same weights."""
    import mindspore as ms
    import numpy as np

    from pangu_pro.model.pangu_pi import PanGuPiWithLoss
    from pangu_pro.model.registry import PanGuPiProConfig, PanGuPiProForCausalLM

    marked = PanGuPiProForCausalLM(PanGuPiProConfig(**TINY))
    assert marked.cell_init_args.startswith("lazy_inline_PanGuPiProForCausalLM")
    ms.reset_auto_parallel_context()
    model = PanGuPiProForCausalLM(PanGuPiProConfig(**TINY))
    assert getattr(model, "cell_init_args", None) is None
    reference = PanGuPiWithLoss(PanGuPiForCausalLM(PanGuPiProConfig(**TINY).model))
    ms.load_param_into_net(reference, {p.name: p for p in model.get_parameters()}, strict_load=True)
    ids = ms.Tensor(np.random.default_rng(0).integers(3, TINY["vocab_size"], (2, TINY["seq_length"] + 1)), ms.int32)
    assert model(ids).asnumpy() == reference(ids).asnumpy()


@pytest.mark.slow
def test_mindformers_trainer_builds_and_trains_our_model(tmp_path, monkeypatch):
    """MindFormers' Trainer builds PanGu-pi from the YAML's model section (tiny sizes) and runs a step:
    its loss and global norm equal ours on the same batch and weights."""
    import numpy as np
    import mindspore as ms
    import mindspore.dataset as ds
    from mindspore import ops
    from mindspore.train import Callback
    from mindformers import MindFormerConfig, Trainer
    from mindformers.tools.register import MindFormerModuleType, MindFormerRegister
    from mindformers.wrapper import MFTrainOneStepCell

    from pangu_pro.model.pangu_pi import PanGuPiWithLoss
    from pangu_pro.model.registry import PanGuPiProForCausalLM

    class CPUTrainOneStepCell(MFTrainOneStepCell):  # its overflow check is Ascend-only (mindspore-notes)
        def get_overflow_status(self, status, compute_output):
            return ops.logical_not(ops.stack([ops.isfinite(g).all() for g in compute_output]).all())

    if "CPUTrainOneStepCell" not in MindFormerRegister.registry[MindFormerModuleType.WRAPPER]:
        MindFormerRegister.register_cls(CPUTrainOneStepCell, MindFormerModuleType.WRAPPER)

    class Capture(Callback):
        def on_train_begin(self, run_context):
            self.net = run_context.original_args().train_network.network
            self.net = getattr(self.net, "network", self.net)  # MindFormers' DataOrderWrapperCell
            self.initial = {p.name: p.asnumpy().copy() for p in self.net.trainable_params()}

        def on_train_step_end(self, run_context):
            self.outputs = [o.asnumpy() if o is not None else None for o in run_context.original_args().net_outputs]

    monkeypatch.chdir(tmp_path)
    cfg = MindFormerConfig(str(ROOT / "configs" / "mindformers" / "pangu_1b_pro.yaml"))
    cfg.model.model_config.update({**TINY, "compute_dtype": "float32", "use_flash_attention": False,
                                   "use_fused_kernels": False})
    cfg.use_parallel, cfg.output_dir = False, str(tmp_path / "out")
    cfg.context = MindFormerConfig(mode=0, device_target="CPU")
    cfg.runner_config.update({"batch_size": 2, "sink_mode": False, "gradient_accumulation_steps": 1})
    cfg.train_dataset.batch_size = 2
    cfg.runner_wrapper.type = "CPUTrainOneStepCell"
    cfg.callbacks = [{"type": "MFLossMonitor"}]
    cfg.lr_schedule.update({"warmup_steps": 0, "total_steps": 10})
    ids = np.random.default_rng(0).integers(3, TINY["vocab_size"], (2, TINY["seq_length"] + 1)).astype(np.int32)
    capture = Capture()
    Trainer(args=cfg, task="text_generation", train_dataset=ds.NumpySlicesDataset({"input_ids": ids}, shuffle=False)
            .batch(2), callbacks=[capture]).train()

    assert isinstance(capture.net, PanGuPiProForCausalLM)
    loss, overflow, _, _, global_norm = capture.outputs
    ours = PanGuPiWithLoss(PanGuPiForCausalLM(capture.net.config.model))
    for p in ours.trainable_params():
        p.set_data(ms.Tensor(capture.initial[p.name]))
    batch = ms.Tensor(ids)
    grads = ops.GradOperation(get_by_list=True)(ours, ms.ParameterTuple(ours.trainable_params()))(batch)
    norm = float(np.sqrt(sum((g.asnumpy().astype(np.float64) ** 2).sum() for g in grads)))
    assert not overflow
    assert float(loss) == pytest.approx(float(ours(batch).asnumpy()), rel=1e-5)
    assert float(np.asarray(global_norm).reshape(())) == pytest.approx(norm, rel=1e-4)
