"""The fused C++ SIAF kernel for the CPU (pangu_pro.model.kernels) against the NumPy formula and against
MindSpore's own autodiff of the primitives; its build cache and its fallback."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor, nn

from pangu_pro.model import kernels
from pangu_pro.model.layers import SeriesInformedActivation

from tests import numpy_reference as ref

pytestmark = pytest.mark.skipif(kernels.siaf_op() is None, reason="no C++ compiler for the CPU kernels")


def siaf_cell(scale, bias, fused: bool):
    cell = SeriesInformedActivation(channels=scale.shape[1], terms=scale.shape[0])
    cell.scale.set_data(Tensor(scale))
    cell.bias.set_data(Tensor(bias))
    cell.use_kernel = fused  # before the first call: graph mode reads it when compiling
    return cell


class Weighted(nn.Cell):
    """sum(siaf(x) * w): a scalar whose gradient feeds dy = w into the backward."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def construct(self, x, w):
        return (self.cell(x) * w).sum()


def gradients(cell, x, w):
    net = Weighted(cell)
    grad = ms.jit(ms.value_and_grad(net, grad_position=0, weights=net.trainable_params()))
    _, (dx, (dscale, dbias)) = grad(Tensor(x), Tensor(w))
    return dx.asnumpy(), dscale.asnumpy(), dbias.asnumpy()


def numpy_gradients(x, scale, bias, dy):
    """d/dx, d/da, d/db of sum(dy * sum_t silu(a_t x + b_t)), in float64."""
    x, scale, bias, dy = (np.asarray(v, np.float64) for v in (x, scale, bias, dy))
    z = scale[:, None, :] * x.reshape(-1, x.shape[-1])[None] + bias[:, None, :]  # [terms, rows, F]
    s = 1.0 / (1.0 + np.exp(-z))
    g = dy.reshape(-1, x.shape[-1])[None] * s * (1.0 + z * (1.0 - s))
    dx = (g * scale[:, None, :]).sum(0).reshape(x.shape)
    return dx, (g * x.reshape(-1, x.shape[-1])[None]).sum(1), g.sum(1)


# [2, 5, 12]: one thread; [4, 64, 600] = 153,600 elements: two threads (one per 65,536), per-thread sums
@pytest.mark.parametrize("shape,terms", [((2, 5, 12), 3), ((4, 64, 600), 2), ((1, 1, 300), 2)])
def test_fused_siaf_matches_numpy_values_and_gradients(shape, terms):
    rng = np.random.default_rng(7)
    scale, bias = rng.standard_normal((2, terms, shape[-1])).astype(np.float32)
    x, w = rng.standard_normal((2, *shape)).astype(np.float32) * 2
    cell = siaf_cell(scale, bias, fused=True)
    assert cell.kernel is not None
    np.testing.assert_allclose(cell(Tensor(x)).asnumpy(), ref.siaf(x, scale, bias), rtol=1e-5, atol=1e-6)
    for got, want, name in zip(gradients(cell, x, w), numpy_gradients(x, scale, bias, w), ("dx", "dscale", "dbias")):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max(), err_msg=name)


def test_fused_siaf_is_exact_at_extreme_inputs():
    """exp(-z) overflows for z <= -89 in fp32: the kernel must still give silu(z) -> -0 and silu'(z) -> 0,
    and silu'(z) -> 1 for large z (a -ffast-math build gave NaN and gradients of 1e22 here)."""
    z = np.array([-3e38, -1e30, -1e10, -100, -89, -88, -20, -1, 0, 1, 20, 88, 89, 100, 1e10, 1e30, 3e38],
                 np.float32)
    ones, zeros = np.ones((1, z.size), np.float32), np.zeros((1, z.size), np.float32)
    cell = siaf_cell(ones, zeros, fused=True)
    zz = z.astype(np.float64)
    sig = np.exp(-np.logaddexp(0.0, -zz))  # sigmoid without overflow
    np.testing.assert_allclose(cell(Tensor(z[None])).asnumpy()[0], zz * sig, rtol=1e-6, atol=1e-36)  # MindSpore flushes denormals
    dx, _, _ = gradients(cell, z[None], ones)
    np.testing.assert_allclose(dx[0], sig * (1 + zz * (1 - sig)), rtol=1e-5, atol=1e-30)


def test_fused_siaf_equals_the_primitives_autodiff():
    """Values and gradients of the kernel against MindSpore's own SiLU / Mul / Add autodiff."""
    rng = np.random.default_rng(8)
    scale, bias = rng.standard_normal((2, 2, 96)).astype(np.float32)
    x, w = rng.standard_normal((2, 3, 40, 96)).astype(np.float32)
    fused, plain = siaf_cell(scale, bias, True), siaf_cell(scale, bias, False)
    np.testing.assert_allclose(fused(Tensor(x)).asnumpy(), plain(Tensor(x)).asnumpy(), rtol=1e-5, atol=1e-6)
    for got, want, name in zip(gradients(fused, x, w), gradients(plain, x, w), ("dx", "dscale", "dbias")):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max(), err_msg=name)


def test_the_library_is_cached_and_keeps_denormals(tmp_path, monkeypatch):
    """A library built or linked with -ffast-math would switch the process to flush-to-zero on load."""
    monkeypatch.setenv(kernels.CACHE_ENV, str(tmp_path))
    first = kernels.compile_library("siaf")
    assert first.parent == tmp_path and kernels.compile_library("siaf") == first
    assert [p.name for p in tmp_path.iterdir()] == [first.name], "no temporary files left behind"
    ctypes.CDLL(str(first))
    tiny = np.array([1e-39], np.float32)
    assert (tiny * np.float32(1.0))[0] != 0.0, "loading the kernel library turned on flush-to-zero"


def test_without_a_compiler_the_cells_use_the_primitives(monkeypatch):
    monkeypatch.setenv(kernels.COMPILER_ENV, "no-such-compiler-g++")
    monkeypatch.setenv(kernels.CACHE_ENV, "/nonexistent/cache")
    with pytest.raises(RuntimeError, match="no-such-compiler-g\\+\\+"):
        kernels.compile_library("siaf")
    kernels._library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="using MindSpore primitives"):
            assert kernels.siaf_op() is None
        cell = SeriesInformedActivation(channels=12, terms=2)
        assert cell.kernel is None and not cell.use_kernel
        x = np.linspace(-4, 4, 24, dtype=np.float32).reshape(2, 12)
        np.testing.assert_allclose(cell(Tensor(x)).asnumpy(), ref.silu(x), rtol=1e-6, atol=1e-7)
    finally:
        kernels._library.cache_clear()


def test_kernels_can_be_switched_off(monkeypatch):
    monkeypatch.setenv(kernels.DISABLE_ENV, "0")
    kernels._library.cache_clear()
    try:
        assert kernels.siaf_op() is None
    finally:
        kernels._library.cache_clear()
