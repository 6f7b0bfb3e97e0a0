"""MindFormers-style `type:` names resolve to our classes, and importing MindFormers leaves no litter."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pangu_pro.configtools import ConfigError
from pangu_pro.model import PanGuPiForCausalLM
from pangu_pro.model.params import count_parameters


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
