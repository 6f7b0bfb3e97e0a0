"""Inheritance cells on the model's own conventions: the cosine layer scores hand attention the causal mask
the model itself would (under flash attention's sparse_mode 2 the compressed 2048 x 2048 mask whole)."""
import numpy as np
import pytest
from mindspore import Tensor, nn

from pangu_pro.config import ModelConfig
from pangu_pro.inherit.cells import BlockSimilarity
from pangu_pro.model.layers import FLASH_MASK_SIZE
from pangu_pro.model.pangu_pi import causal_mask, mask_for_tokens
from pangu_pro.model.weights import build_model


@pytest.mark.parametrize("flash,seq,t,side", [(True, 4096, 256, FLASH_MASK_SIZE), (True, 2048, 100, FLASH_MASK_SIZE),
                                             (False, 4096, 256, 256), (True, 512, 64, 64)])
def test_mask_for_tokens(flash, seq, t, side):
    full = causal_mask(seq, flash)
    got = mask_for_tokens(full, t, flash and seq >= FLASH_MASK_SIZE)
    assert got.shape == (side, side)
    np.testing.assert_array_equal(got, full[:side, :side])


class MaskSide(nn.Cell):
    """A stand-in block: adds the side length of the mask it is handed to the residual stream."""

    def construct(self, x, cos, sin, mask):
        return x + mask.shape[0] / 1000.0


def test_cosine_scores_hand_the_compressed_flash_mask_whole():
    """The old slicing `causal_mask[:t, :t]` handed a 256 x 256 corner of the compressed mask to a
    sparse_mode 2 kernel; the blocks must see the mask the model's own forward uses."""
    cfg = ModelConfig(vocab_size=32, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=48,
                      seq_length=4096, aug_shortcut_ratio=8, use_flash_attention=True)
    net = build_model(cfg, seed=0)
    t = 256
    assert net.model.mask_for(t).shape == (FLASH_MASK_SIZE, FLASH_MASK_SIZE)
    net.model.layers = nn.CellList([MaskSide(), MaskSide()])
    ids = np.random.default_rng(0).integers(0, 32, (2, t)).astype(np.int32)
    got = BlockSimilarity(net)(Tensor(ids)).asnumpy()

    x = net.model.embed_tokens.weight.asnumpy()[ids].astype(np.float64)
    expected = []
    for _ in range(2):
        y = x + FLASH_MASK_SIZE / 1000.0
        cos = (x * y).sum(-1) / (np.sqrt((x * x).sum(-1) * (y * y).sum(-1)) + 1e-8)
        expected.append((1.0 - cos).mean())
        x = y
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_counted_keep_gradient_through_the_clamp_is_the_modelled_one():
    """#25: the counted-keep simulation (test_inherit_math) uses `hardconcrete.counted_keep_grad`; here
    MindSpore's own gradient through a mask's clamp: full inside, half exactly at ±4.6 (the tie split by
    clip_by_value's Maximum and Minimum), zero beyond — not the zero at the bound the simulation assumed."""
    import mindspore as ms

    from pangu_pro.inherit import hardconcrete as hc
    from pangu_pro.inherit.cells import HardConcrete

    values = np.array([-4.7, -4.6, -4.5, -1.0, 0.0, 2.0, 4.5, 4.6, 4.7], np.float32)
    mask = HardConcrete("probe", values.shape, 0.5)
    mask.log_alpha.set_data(Tensor(values))

    class Total(nn.Cell):
        def __init__(self, cell):
            super().__init__()
            self.cell = cell

        def construct(self):
            return self.cell.counted_keep().sum()

    got = ms.grad(Total(mask), grad_position=None, weights=mask.trainable_params())()[0].asnumpy()
    want = hc.counted_keep_grad(values)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-9)
    full = hc.counted_keep_grad(np.array([4.6 - 1e-4, -4.6 + 1e-4]))
    np.testing.assert_allclose(got[[7, 1]], 0.5 * full, rtol=2e-3)  # at the bound: half
    assert got[0] == 0.0 and got[-1] == 0.0  # beyond it: nothing
