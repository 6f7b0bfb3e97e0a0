"""Building blocks of the PanGu-pi decoder: linear layer, RMSNorm, rotary tables, SIAF, AugShortcut.

Conventions (shared with MindFormers' legacy LLaMA and with Hugging Face):
- weights are stored fp32 as ``[out_features, in_features]``; matmuls run in `compute_dtype`;
- norms, softmax, RoPE and the loss run in fp32;
- every primitive is created in ``__init__`` so that tensor-parallel strategies can be attached with
  ``.shard()`` on Ascend (see `pangu_pro.model.sharding`).
"""
from __future__ import annotations

import math

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Normal, One, Zero, initializer
from mindspore.ops.auto_generate import RmsNorm, RotaryPositionEmbedding, SiLU

DTYPES = {"float32": ms.float32, "bfloat16": ms.bfloat16, "float16": ms.float16}


FLASH_MASK_SIZE = 2048  # the compressed causal mask of FlashAttentionScore's sparse modes 2-4


def flash_sparse_mode(seq_length: int) -> int:
    """FlashAttentionScore's sparse_mode for causal attention, as MindFormers chooses it: 2 (leftUpCausal,
    compressed mask: the kernel skips the blocks above the diagonal) for sequences of at least 2048
    tokens (MindFormers refuses compression below that), else 0 with the full [S, S] mask."""
    return 2 if seq_length >= FLASH_MASK_SIZE else 0


def flash_causal_mask(seq_length: int) -> np.ndarray:
    """The uint8 mask (1 = discard) flash attention gets: the compressed 2048 x 2048 upper triangle under
    sparse_mode 2, whatever the sequence length; the full [S, S] one under sparse_mode 0."""
    size = FLASH_MASK_SIZE if flash_sparse_mode(seq_length) == 2 else seq_length
    return np.triu(np.ones((size, size), dtype=np.uint8), k=1)


class Linear(nn.Cell):
    """y = x W^T without bias; x is [..., in], W is [out, in]."""

    def __init__(self, in_features: int, out_features: int, compute_dtype=ms.float32,
                 init_std: float = 0.02, zero_init: bool = False):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.compute_dtype = compute_dtype
        init = Zero() if zero_init else Normal(init_std)
        self.weight = Parameter(initializer(init, (out_features, in_features), ms.float32), name="weight")
        self.matmul = ops.MatMul(transpose_b=True)
        self.cast = ops.Cast()
        self.reshape = ops.Reshape()

    def construct(self, x):
        lead = x.shape[:-1]
        x = self.reshape(self.cast(x, self.compute_dtype), (-1, self.in_features))
        y = self.matmul(x, self.cast(self.weight, self.compute_dtype))
        return self.reshape(y, lead + (self.out_features,))


class RMSNorm(nn.Cell):
    """x / sqrt(mean(x^2) + eps) * g, computed in fp32, returned in `out_dtype`."""

    def __init__(self, dim: int, eps: float = 1e-5, out_dtype=ms.float32, fused: bool = False):
        super().__init__()
        self.weight = Parameter(initializer(One(), (dim,), ms.float32), name="weight")
        self.eps = eps
        self.out_dtype = out_dtype
        self.fused = fused
        self.cast = ops.Cast()
        self.square = ops.Square()
        self.mean = ops.ReduceMean(keep_dims=True)
        self.add = ops.Add()
        self.rsqrt = ops.Rsqrt()
        self.mul = ops.Mul()
        self.mul_weight = ops.Mul()
        self.fused_norm = RmsNorm(eps)  # = ops.rms_norm, as a primitive that can be sharded
        self.sum_masked = ops.ReduceSum(keep_dims=True)  # channel_mask only
        self.div = ops.Div()

    def construct(self, x, channel_mask=None):
        x = self.cast(x, ms.float32)
        if channel_mask is not None:  # inheritance: mean of x^2 over the live channels, sum(x^2) / #(m > 0);
            # x is already masked (zero where m is), so a pruned student that folded m into its weights
            # computes the same statistic over its channels, soft m included
            m = self.cast(self.cast(channel_mask, ms.float32) > 0, ms.float32)
            mean_sq = self.div(self.sum_masked(self.square(x), -1), self.sum_masked(m))
            y = self.mul_weight(self.mul(x, self.rsqrt(self.add(mean_sq, self.eps))), self.weight)
        elif self.fused:  # Ascend kernel
            y = self.fused_norm(x, self.weight)[0]
        else:
            inv_rms = self.rsqrt(self.add(self.mean(self.square(x), -1), self.eps))
            y = self.mul_weight(self.mul(x, inv_rms), self.weight)
        return self.cast(y, self.out_dtype)


def rope_tables(seq_length: int, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin tables [seq_length, head_dim] for rotate-half RoPE (Hugging Face layout)."""
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    angles = np.outer(np.arange(seq_length, dtype=np.float64), inv_freq)
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


class RotaryEmbedding(nn.Cell):
    """Applies RoPE to [B, N, T, D] tensors given cos/sin rows [T, D] of the positions in use."""

    def __init__(self, head_dim: int, fused: bool = False):
        super().__init__()
        self.half = head_dim // 2
        self.fused = fused
        self.cast = ops.Cast()
        self.mul_cos = ops.Mul()
        self.mul_sin = ops.Mul()
        self.add = ops.Add()
        self.neg = ops.Neg()
        self.concat = ops.Concat(axis=-1)
        self.slice_lo = ops.StridedSlice()  # x[..., :half] and x[..., half:] as shardable primitives
        self.slice_hi = ops.StridedSlice()
        self.fused_rope = RotaryPositionEmbedding()  # = ops.rotary_position_embedding

    def rotate_half(self, x):
        b, n, t, d = x.shape
        x1 = self.slice_lo(x, (0, 0, 0, 0), (b, n, t, self.half), (1, 1, 1, 1))
        x2 = self.slice_hi(x, (0, 0, 0, self.half), (b, n, t, d), (1, 1, 1, 1))
        return self.concat((self.neg(x2), x1))

    def construct(self, x, cos, sin):
        dtype = x.dtype
        x = self.cast(x, ms.float32)
        if self.fused:  # Ascend kernel, BNSD with [1, 1, T, D] tables
            y = self.fused_rope(x, cos.expand_dims(0).expand_dims(0), sin.expand_dims(0).expand_dims(0), 0)
        else:
            y = self.add(self.mul_cos(x, cos), self.mul_sin(self.rotate_half(x), sin))
        return self.cast(y, dtype)


class SeriesInformedActivation(nn.Cell):
    """SIAF (paper-notes §1): sigma_s(x) = sum_i silu(a_i * x + b_i), a_i and b_i per channel.

    Initialised with a_1 = 1 and everything else 0, so a fresh model computes exactly silu(x):
    silu(0) = 0 for the other terms.

    On the CPU in fp32, single device or data parallel, it runs as one fused C++ kernel each way
    (`pangu_pro.model.kernels`); otherwise (Ascend, semi-auto layouts, no compiler) as the primitives
    below, which carry the shard strategies.
    """

    def __init__(self, channels: int, terms: int = 2, compute_dtype=ms.float32):
        super().__init__()
        from pangu_pro.model.kernels import siaf_op
        from pangu_pro.runtime import device_target

        whole = ms.get_auto_parallel_context("parallel_mode") in ("stand_alone", "data_parallel")
        self.kernel = siaf_op() if device_target() == "CPU" and compute_dtype == ms.float32 and whole else None
        self.use_kernel = self.kernel is not None
        self.terms = terms
        scale = np.zeros((terms, channels), np.float32)
        scale[0] = 1.0
        self.scale = Parameter(Tensor(scale), name="scale")
        self.bias = Parameter(initializer(Zero(), (terms, channels), ms.float32), name="bias")
        self.compute_dtype = compute_dtype
        self.cast = ops.Cast()
        self.mul = ops.Mul()
        self.add_bias = ops.Add()
        self.silu = SiLU()
        self.sum_terms = ops.Add()
        self.channels = channels
        self.row = ops.StridedSlice()  # term i's [1, channels] row of scale / bias, shardable by channel

    def term(self, table, i):
        return self.row(table, (i, 0), (i + 1, self.channels), (1, 1))

    def construct(self, x):
        if self.use_kernel:
            return self.kernel(x, self.scale, self.bias)
        scale = self.cast(self.scale, self.compute_dtype)
        bias = self.cast(self.bias, self.compute_dtype)
        out = self.silu(self.add_bias(self.mul(x, self.term(scale, 0)), self.term(bias, 0)))
        for i in range(1, self.terms):
            out = self.sum_terms(out, self.silu(self.add_bias(self.mul(x, self.term(scale, i)), self.term(bias, i))))
        return out


class AugmentedShortcut(nn.Cell):
    """T(z) = W_up GELU(W_down z) (paper-notes §1), bottleneck d/r, W_up zero-initialised.

    GELU is the exact (erf) form, as PyTorch's nn.GELU() computes it.
    """

    def __init__(self, hidden_size: int, bottleneck: int, compute_dtype=ms.float32, init_std: float = 0.02):
        super().__init__()
        self.down = Linear(hidden_size, bottleneck, compute_dtype, init_std)
        self.up = Linear(bottleneck, hidden_size, compute_dtype, zero_init=True)
        self.erf = ops.Erf()
        self.mul = ops.Mul()
        self.mul_half = ops.Mul()
        self.add_one = ops.Add()
        self.mul_inv_sqrt2 = ops.Mul()
        self.inv_sqrt2 = 1.0 / math.sqrt(2.0)

    def gelu(self, x):
        return self.mul_half(self.mul(x, self.add_one(self.erf(self.mul_inv_sqrt2(x, self.inv_sqrt2)), 1.0)), 0.5)

    def construct(self, x):
        return self.up(self.gelu(self.down(x)))
