"""Ascend-only settings checked on the CPU: the flash-attention mask and sparse mode, the `device:`
config section and what runtime.py would call with it (issue 12 items 6 and 8)."""
from __future__ import annotations

import numpy as np
import pytest
import mindspore as ms

from pangu_pro.config import ConfigError, DeviceConfig, ModelConfig, config_from_dict
from pangu_pro.model.layers import FLASH_MASK_SIZE, flash_causal_mask, flash_sparse_mode
from pangu_pro.model.pangu_pi import PanGuPiModel
from pangu_pro.runtime import apply_device_config


@pytest.mark.parametrize("seq", [2048, 4096, 8192])
def test_compressed_mask_is_the_causal_rule_of_any_long_sequence(seq):
    """sparse_mode 2 (leftUpCausal) reads the 2048 x 2048 mask as the template of every diagonal
    block: it must equal the top-left block of the full [S, S] causal mask (1 = discard j > i)."""
    assert flash_sparse_mode(seq) == 2
    mask = flash_causal_mask(seq)
    assert mask.shape == (FLASH_MASK_SIZE, FLASH_MASK_SIZE) and mask.dtype == np.uint8
    i, j = np.indices((seq, seq))
    full = (j > i).astype(np.uint8)
    np.testing.assert_array_equal(mask, full[:FLASH_MASK_SIZE, :FLASH_MASK_SIZE])
    assert mask.sum() == FLASH_MASK_SIZE * (FLASH_MASK_SIZE - 1) // 2


def test_short_sequences_keep_the_full_mask():
    assert flash_sparse_mode(1024) == 0  # MindFormers compresses from 2048 tokens on only
    np.testing.assert_array_equal(flash_causal_mask(1024), np.triu(np.ones((1024, 1024), np.uint8), 1))


def test_model_passes_the_compressed_mask_with_sparse_mode_2():
    cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                      seq_length=2048, aug_shortcut_ratio=8, use_flash_attention=True)
    model = PanGuPiModel(cfg)
    fa = model.layers[0].attention.flash_attention
    assert (fa.sparse_mode, fa.next_tokens, fa.pre_tokens) == (2, 0, 2147483647)
    assert model.compressed_mask and model.causal_mask.shape == (2048, 2048)
    np.testing.assert_array_equal(model.causal_mask.asnumpy(), flash_causal_mask(2048))
    short = PanGuPiModel(ModelConfig(**{**cfg.__dict__, "seq_length": 256}))
    assert short.layers[0].attention.flash_attention.sparse_mode == 0 and not short.compressed_mask
    assert short.causal_mask.shape == (256, 256)


def test_device_section_is_validated():
    model = {"vocab_size": 64, "hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}
    config = config_from_dict({"model": model, "device": {"jit_level": "O1", "max_device_memory_gb": 58}})
    assert config.device == DeviceConfig(jit_level="O1", max_device_memory_gb=58)
    for device, key in (({"jit_level": "O3"}, "device.jit_level"), ({"max_device_memory_gb": 0.5},
                                                                   "device.max_device_memory_gb")):
        with pytest.raises(ConfigError) as err:
            config_from_dict({"model": model, "device": device})
        assert err.value.key == key


def test_runtime_applies_jit_level_and_memory_cap_on_ascend_only(monkeypatch):
    calls = []
    monkeypatch.setattr(ms, "set_context", lambda **kw: calls.append(("set_context", kw)))
    monkeypatch.setattr(ms.runtime, "set_memory", lambda **kw: calls.append(("set_memory", kw)))
    cfg = DeviceConfig(jit_level="O0", max_device_memory_gb=58.5)
    assert apply_device_config(cfg, "CPU") == {} and calls == []
    assert apply_device_config(DeviceConfig(), "Ascend") == {} and calls == []
    apply_device_config(cfg, "Ascend")
    assert calls == [("set_context", {"jit_config": {"jit_level": "O0"}}), ("set_memory", {"max_size": "58.5GB"})]


@pytest.mark.parametrize("target,soc,mode,check", [
    ("CPU", "", None, "isfinite"),
    ("Ascend", "ascend910", None, "float_status"),  # 910A: fp16 overflow always saturates
    ("Ascend", "ascend910", "INFNAN_MODE", "float_status"),  # the variable does not change 910A
    ("Ascend", "ascend910b", None, "isfinite"),  # INFNAN mode is the 910B default
    ("Ascend", "ascend910b", "INFNAN_MODE", "isfinite"),
    ("Ascend", "ascend910b", "SATURATION_MODE", "float_status"),
    ("Ascend", "ascend910_93", "SATURATION_MODE", "float_status"),
    ("Ascend", "ascend950", None, "isfinite"),
])
def test_overflow_check_follows_mindspores_loss_scale_cell(target, soc, mode, check):
    """mindspore/nn/wrap/loss_scale.py get_overflow_status: GPU/INFNAN by finiteness, 910A and SATURATION_MODE
    by the NPU float status registers."""
    from pangu_pro.train.loss_scale import fp16_overflow_problem, overflow_check

    assert overflow_check(target, soc, mode) == check
    assert (fp16_overflow_problem("float16", target, soc, mode) is None) == (check == "isfinite")
    for dtype in ("float32", "bfloat16"):
        assert fp16_overflow_problem(dtype, target, soc, mode) is None


def _fake_soc(monkeypatch, soc: str):
    import mindspore._c_expression as c_expression

    class FakeContext:
        @staticmethod
        def get_instance():
            return FakeContext()

        def get_ascend_soc_version(self):
            return soc

    monkeypatch.setattr(c_expression, "MSContext", FakeContext)


def test_training_refuses_float16_where_overflow_saturates(monkeypatch, tmp_path):
    """On a 910A (soc faked) `train` stops before building anything, naming model.compute_dtype and the fix."""
    import pangu_pro.runtime as runtime
    from pangu_pro.train.trainer import train

    model = {"vocab_size": 64, "hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64,
             "compute_dtype": "float16"}
    config = config_from_dict({"model": model, "train": {"loss_scale": "dynamic",
                                                         "output_dir": str(tmp_path / "run")}})
    monkeypatch.setattr(runtime, "init_mindspore", lambda *a, **k: "Ascend")
    monkeypatch.setattr("pangu_pro.train.trainer.setup_parallel",
                        lambda *_: pytest.fail("the refusal must come before the parallel set-up"))
    _fake_soc(monkeypatch, "ascend910")
    with pytest.raises(ConfigError) as err:
        train(config, progress=False, announce=None)
    assert err.value.key == "model.compute_dtype"
    assert "saturates to +-65504" in str(err.value) and "use float32" in str(err.value)
    _fake_soc(monkeypatch, "ascend910b")
    monkeypatch.setenv("MS_ASCEND_CHECK_OVERFLOW_MODE", "SATURATION_MODE")
    with pytest.raises(ConfigError, match="unset MS_ASCEND_CHECK_OVERFLOW_MODE"):
        train(config, progress=False, announce=None)
    monkeypatch.delenv("MS_ASCEND_CHECK_OVERFLOW_MODE")  # INFNAN mode: isfinite sees the overflow, set-up goes on
    with pytest.raises(pytest.fail.Exception, match="parallel set-up"):
        train(config, progress=False, announce=None)
