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
from mindformers.models.configuration_utils import PretrainedConfig
from mindformers.models.modeling_utils import PreTrainedModel
from mindformers.tools.register import MindFormerModuleType, MindFormerRegister

from pangu_pro.config import ModelConfig, ParallelConfig
from pangu_pro.configtools import from_mapping
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
    a PretrainedConfig keeps as attributes. `model` is the validated ModelConfig."""

    model_type = "pangu_pi_pro"

    def __init__(self, **kwargs):
        ours = {key: kwargs.pop(key) for key in MODEL_KEYS if key in kwargs}
        for key in ("pad_token_id", "bos_token_id", "eos_token_id"):  # PretrainedConfig also keeps these
            if key in ours:
                kwargs[key] = ours[key]
        super().__init__(**kwargs)
        self.model = from_mapping(ModelConfig, ours, "model.model_config")
        self.use_past = False  # MindFormers' trainer refuses incremental inference in training


@MindFormerRegister.register(MindFormerModuleType.MODELS)
class PanGuPiProForCausalLM(PreTrainedModel):
    """PanGu-π as a MindFormers causal LM, by MindFormers' training conventions: `input_ids` [B, S+1]
    (the dataset column, seq_length + 1 tokens) in, the mean token loss out; labels are the inputs
    shifted by one, `ignore_index` labels do not count. Parameter names are our own
    (`model.layers.0.attention.wq.weight`, ...), so checkpoints load with `load_weights` and convert
    with `pangu-pro convert`. MindFormers' trainer wraps it (MicroBatchInterleaved, PipelineCell,
    GradAccumulationCell, MFTrainOneStepCell) like its own LLaMA."""

    config_class = PanGuPiProConfig
    base_model_prefix = "pangu_pi_pro"

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
