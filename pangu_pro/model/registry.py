"""PanGu-pi in MindFormers' registry, so MindFormers-style YAML resolves `type:` names to our classes,
and MindFormers' own trainer (`mindformers.Trainer`, run_mindformer.py) can train it
(`PanGuPiProConfig` + `PanGuPiProForCausalLM`; configs/mindformers/pangu_1b_pro.yaml).

    model:
      model_config: {type: PanGuPiConfig, vocab_size: 48000, hidden_size: 1792, ...}
      arch: {type: PanGuPiForCausalLM}

`MindFormerRegister.get_instance_from_cfg` resolves both names (the config section with module type
CONFIG; the arch with MODELS and `default_args={'config': model_config}`). Importing this module registers
both classes; it is imported lazily because importing MindFormers takes seconds.
"""
from __future__ import annotations

import dataclasses

import mindspore as ms
from mindformers.core.optim.adamw import AdamW as MindFormersAdamW  # what `type: AdamW` builds (use_fused off)
from mindformers.models.configuration_utils import PretrainedConfig
from mindformers.models.modeling_utils import PreTrainedModel
from mindformers.models.utils import lazy_inline
from mindformers.tools.register import MindFormerModuleType, MindFormerRegister

from pangu_pro.config import ModelConfig, ParallelConfig
from pangu_pro.configtools import from_mapping
from pangu_pro.model.params import decays
from pangu_pro.model.pangu_pi import PanGuPiForCausalLM, PanGuPiWithLoss
from pangu_pro.model.sharding import configure_model, sharding_active


@MindFormerRegister.register(MindFormerModuleType.CONFIG)
@dataclasses.dataclass
class PanGuPiConfig(ModelConfig):
    """ModelConfig under the name MindFormers' YAML uses; validated on construction."""

    def __post_init__(self):
        self.validate()

    @classmethod
    def from_model_config(cls, cfg: ModelConfig) -> "PanGuPiConfig":
        return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(ModelConfig)})


MindFormerRegister.register_cls(PanGuPiForCausalLM, MindFormerModuleType.MODELS)


# --- MindFormers' own trainer (`Trainer`, run_mindformer.py): configs/mindformers/pangu_1b_pro.yaml ---

MODEL_KEYS = tuple(f.name for f in dataclasses.fields(ModelConfig))


def parallel_from_mindformers(config) -> ParallelConfig:
    """Our ParallelConfig from the `parallel_config` (and `recompute_config`) MindFormers' trainer puts
    on the model config: dp, mp, pp, micro batches, `use_seq_parallel`, `vocab_emb_dp` (False =
    vocabulary split over mp), full recompute; ZeRO from the parallel context. Sharding itself is
    `sharding.configure_model`."""
    par = getattr(config, "parallel_config", None)
    recompute = getattr(getattr(par, "recompute", None), "recompute", False)
    return ParallelConfig(data_parallel=getattr(par, "data_parallel", 1), model_parallel=getattr(par, "model_parallel", 1),
                          pipeline_stage=getattr(par, "pipeline_stage", 1),
                          micro_batch_num=getattr(par, "micro_batch_num", 1),
                          sequence_parallel=bool(getattr(par, "use_seq_parallel", False)),
                          vocab_parallel=not getattr(par, "vocab_emb_dp", True),
                          recompute="full" if recompute is True else "none",
                          optimizer_shard=bool(ms.get_auto_parallel_context("enable_parallel_optimizer")))


@MindFormerRegister.register(MindFormerModuleType.CONFIG)
class PanGuPiProConfig(PretrainedConfig):
    """`model.model_config` of a MindFormers YAML: our ModelConfig keys (validated, errors name the key)
    plus whatever MindFormers' trainer adds (parallel_config, batch_size, dataset_config, ...), which
    a PretrainedConfig keeps as attributes. `model` is the validated ModelConfig.

    Our keys are kept as plain attributes, so the config serialises as MindFormers expects (`repr`, which
    `lazy_inline` calls, diffs it against a default `PanGuPiProConfig()`, built with no keys and not
    validated)."""

    model_type = "pangu_pi_pro"

    def __init__(self, **kwargs):
        ours = {key: kwargs.pop(key) for key in MODEL_KEYS if key in kwargs}
        for key in ("pad_token_id", "bos_token_id", "eos_token_id"):  # PretrainedConfig also keeps these
            if key in ours:
                kwargs[key] = ours[key]
        super().__init__(**kwargs)
        for key, value in ours.items():
            setattr(self, key, value)
        if ours:
            self.model  # noqa: B018 - validate now: errors name the key before any cell is built
        self.use_past = False  # MindFormers' trainer refuses incremental inference in training

    @property
    def model(self) -> ModelConfig:
        given = {key: getattr(self, key, None) for key in MODEL_KEYS}  # None: not given (PretrainedConfig's ids)
        return from_mapping(ModelConfig, {k: v for k, v in given.items() if v is not None}, "model.model_config")


@MindFormerRegister.register(MindFormerModuleType.MODELS)
class PanGuPiProForCausalLM(PreTrainedModel):
    """PanGu-π as a MindFormers causal LM, by MindFormers' training conventions: `input_ids` [B, S+1]
    (the dataset column, seq_length + 1 tokens) in, the mean token loss out; labels are the inputs
    shifted by one, `ignore_index` labels do not count. Parameter names are our own
    (`model.layers.0.attention.wq.weight`, ...), so checkpoints load with `load_weights` and convert
    with `pangu-pro convert`. MindFormers' trainer wraps it (MicroBatchInterleaved, PipelineCell,
    GradAccumulationCell, MFTrainOneStepCell) like its own LLaMA, and compiles it once as a reusable
    sub-graph (MindFormers' `lazy_inline`, which it skips stand-alone) rather than once per micro batch."""

    config_class = PanGuPiProConfig
    base_model_prefix = "pangu_pi_pro"

    @lazy_inline  # MindFormers' own, as its LlamaForCausalLM: one sub-graph for the 64 accumulated micro batches
    def __init__(self, config: PanGuPiProConfig = None, **kwargs):
        super().__init__(config, auto_prefix=False)
        self.with_loss = PanGuPiWithLoss(PanGuPiForCausalLM(config.model))
        if sharding_active():  # MindFormers set semi-auto parallel: our layout from its parallel_config
            configure_model(self.with_loss, parallel_from_mindformers(config))

    def can_generate(self) -> bool:
        return False  # generation: `pangu-pro generate` (pangu_pro.model.generation)

    def get_model_parameters(self, only_trainable: bool = False):
        params = self.trainable_params() if only_trainable else self.get_parameters()
        return set(params)

    def construct(self, input_ids):
        return self.with_loss(input_ids)


def regroup_weight_decay(groups, weight_decay: float) -> list[dict]:
    """MindFormers' optimizer groups re-split by our rule (`params.decays`): every group's parameters
    into a decayed group (`weight_decay`) and an exempt one (0.0), each keeping the group's other keys
    (a grouped learning rate). Empty groups are dropped."""
    out = []
    for group in groups if isinstance(groups[0], dict) else [{"params": list(groups)}]:
        rest = {k: v for k, v in group.items() if k not in ("params", "weight_decay")}
        for decayed in (True, False):
            params = [p for p in group["params"] if decays(p.name, p.shape) == decayed]
            if params:
                out.append({**rest, "params": params, "weight_decay": weight_decay if decayed else 0.0})
    return out


@MindFormerRegister.register(MindFormerModuleType.OPTIMIZER)
class PanGuPiAdamW(MindFormersAdamW):
    """MindFormers' AdamW with our weight-decay groups (`optimizer: {type: PanGuPiAdamW}` in the YAML).

    MindFormers' trainer groups parameters by its own rule (`get_optimizer_grouped_parameters`: every
    parameter of more than one dimension not ending in `.bias` is decayed), which decays SIAF's
    `scale` [n, F]; its `no_weight_decay_keywords()` model hook cannot fix that, because the trainer
    hands the grouping the wrapped network (`_VirtualDatasetCell`, `GradAccumulationCell`,
    `PipelineCell`; base_trainer.py `training_process`), on which the model's methods are not found.
    So the optimizer re-splits the groups it receives by `params.decays`, as `pangu-pro train` does."""

    def __init__(self, params, learning_rate=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, swap=False):
        super().__init__(regroup_weight_decay(params, float(weight_decay)), learning_rate=learning_rate, betas=betas,
                         eps=eps, weight_decay=weight_decay, swap=swap)
