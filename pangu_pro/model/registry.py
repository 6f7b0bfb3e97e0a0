"""PanGu-pi in MindFormers' registry, so MindFormers-style YAML resolves `type:` names to our classes.

    model:
      model_config: {type: PanGuPiConfig, vocab_size: 48000, hidden_size: 1792, ...}
      arch: {type: PanGuPiForCausalLM}

`MindFormerRegister.get_instance_from_cfg` resolves both names (the config section with module type
CONFIG; the arch with MODELS and `default_args={'config': model_config}`). Importing this module registers
both classes; it is imported lazily because importing MindFormers takes seconds.
"""
from __future__ import annotations

import dataclasses

from mindformers.tools.register import MindFormerModuleType, MindFormerRegister

from pangu_pro.config import ModelConfig
from pangu_pro.model.pangu_pi import PanGuPiForCausalLM


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
