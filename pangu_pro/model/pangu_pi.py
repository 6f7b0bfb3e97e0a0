"""The PanGu-pi decoder (paper-notes §1), top to bottom.

    x = embed(ids)
    for each layer:
        h = norm_1(x)
        x = x + Attention(h) + AugShortcut(h)        # AugShortcut only if `aug_shortcut`
        x = x + W2( SIAF(W1 norm_2(x)) * W3 norm_2(x) )   # SIAF = silu if not `siaf`
    logits = lm_head(norm(x))

With both PanGu-pi switches off this is exactly LLaMA-2. Parameters are fp32; matmuls run in
`compute_dtype`; the residual stream, norms, softmax, RoPE and the loss stay fp32.
"""
from __future__ import annotations

import math

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Normal, initializer
from mindspore.ops.auto_generate import SiLU

from pangu_pro.config import ModelConfig
from pangu_pro.model.layers import (DTYPES, AugmentedShortcut, Linear, RMSNorm, RotaryEmbedding,
                                    SeriesInformedActivation, flash_causal_mask, flash_sparse_mode, rope_tables)

MASK_VALUE = -1e9  # added to fp32 scores only, never cast to fp16


class Attention(nn.Cell):
    """Causal multi-head attention with RoPE and optional grouped-query heads.

    Without a cache it attends within the given tokens. With a cache ([B, KV, S_max, D] Parameters,
    already in the layout the score matmul reads, so no copy of the cache per step) it first writes
    this call's keys and values in place at `cache_index` [B, KV, T, 3] (rows (b, kv, position)),
    then attends over the whole cache; `mask` hides rows that are in the future or padding.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        dtype = DTYPES[cfg.compute_dtype]
        self.num_heads = cfg.num_heads
        self.kv_heads = cfg.kv_heads
        self.head_dim = cfg.head_dim
        self.groups = cfg.num_heads // cfg.kv_heads
        self.compute_dtype = dtype
        self.scale = 1.0 / math.sqrt(cfg.head_dim)
        d, kv = cfg.hidden_size, cfg.kv_heads * cfg.head_dim
        self.wq = Linear(d, cfg.num_heads * cfg.head_dim, dtype, cfg.init_std)
        self.wk = Linear(d, kv, dtype, cfg.init_std)
        self.wv = Linear(d, kv, dtype, cfg.init_std)
        self.wo = Linear(cfg.num_heads * cfg.head_dim, d, dtype, cfg.init_std)
        self.rope = RotaryEmbedding(cfg.head_dim, fused=cfg.use_fused_kernels)
        self.use_flash_attention = cfg.use_flash_attention
        if self.use_flash_attention:  # Ascend kernel; causal via a "discard" mask (layers.flash_causal_mask)
            from mindspore.ops.operations.nn_ops import FlashAttentionScore
            self.flash_attention = FlashAttentionScore(head_num=cfg.num_heads, scale_value=self.scale,
                                                       pre_tokens=2147483647, next_tokens=0, input_layout="BNSD",
                                                       sparse_mode=flash_sparse_mode(cfg.seq_length))
        self.reshape = ops.Reshape()
        self.transpose = ops.Transpose()
        self.cast = ops.Cast()
        self.qk_matmul = ops.BatchMatMul(transpose_b=True)
        self.pv_matmul = ops.BatchMatMul()
        self.mul_scale = ops.Mul()
        self.add_mask = ops.Add()
        self.softmax = ops.Softmax(axis=-1)
        self.tile_kv = ops.Tile()
        self.merge_heads = ops.Transpose()  # [B, N, T, D] -> [B, T, N, D]; its own layout, so its own primitive
        self.mul_head_mask = ops.Mul()  # head_mask only (parameter inheritance)
        self.write_k_cache = ops.ScatterNdUpdate()  # in place: only T rows per step are written
        self.write_v_cache = ops.ScatterNdUpdate()

    def split_heads(self, x, heads):
        b, t = x.shape[0], x.shape[1]
        return self.transpose(self.reshape(x, (b, t, heads, self.head_dim)), (0, 2, 1, 3))

    def repeat_kv(self, x):
        """[B, KV, S, D] -> [B, H, S, D], each key/value head serving `groups` query heads."""
        if self.groups == 1:
            return x
        b, kv, s, dim = x.shape
        x = self.tile_kv(self.reshape(x, (b, kv, 1, s, dim)), (1, 1, self.groups, 1, 1))
        return self.reshape(x, (b, kv * self.groups, s, dim))

    def construct(self, x, cos, sin, mask, k_cache=None, v_cache=None, cache_index=None, head_mask=None):
        b, t = x.shape[0], x.shape[1]
        q = self.rope(self.split_heads(self.wq(x), self.num_heads), cos, sin)
        k = self.rope(self.split_heads(self.wk(x), self.kv_heads), cos, sin)
        v = self.split_heads(self.wv(x), self.kv_heads)
        if k_cache is not None:
            k = self.write_k_cache(k_cache, cache_index, k)
            v = self.write_v_cache(v_cache, cache_index, v)
        if self.use_flash_attention and k_cache is None:
            out = self.flash_attention(self.cast(q, self.compute_dtype), self.cast(k, self.compute_dtype),
                                       self.cast(v, self.compute_dtype), None, None, None, mask)[3]
        else:
            k = self.repeat_kv(self.cast(k, self.compute_dtype))
            v = self.repeat_kv(self.cast(v, self.compute_dtype))
            scores = self.cast(self.qk_matmul(self.cast(q, self.compute_dtype), k), ms.float32)
            probs = self.softmax(self.add_mask(self.mul_scale(scores, self.scale), mask))
            out = self.pv_matmul(self.cast(probs, self.compute_dtype), v)
        if head_mask is not None:  # [H]: scales each head's output (inheritance masks)
            out = self.mul_head_mask(out, self.cast(self.reshape(head_mask, (1, -1, 1, 1)), out.dtype))
        out = self.reshape(self.merge_heads(out, (0, 2, 1, 3)), (b, t, self.num_heads * self.head_dim))
        return self.wo(out)


class FeedForward(nn.Cell):
    """SwiGLU FFN, W2(act(W1 x) * W3 x), with SIAF as `act` when enabled (paper-notes §1)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        dtype = DTYPES[cfg.compute_dtype]
        self.w1 = Linear(cfg.hidden_size, cfg.intermediate_size, dtype, cfg.init_std)  # gate
        self.w3 = Linear(cfg.hidden_size, cfg.intermediate_size, dtype, cfg.init_std)  # up
        self.w2 = Linear(cfg.intermediate_size, cfg.hidden_size, dtype, cfg.init_std)  # down
        self.use_siaf = cfg.siaf
        if cfg.siaf:
            self.siaf = SeriesInformedActivation(cfg.intermediate_size, cfg.siaf_terms, dtype)
        else:
            self.silu = SiLU()
        self.mul = ops.Mul()
        self.mul_neuron_mask = ops.Mul()  # neuron_mask only (parameter inheritance)
        self.cast = ops.Cast()

    def construct(self, x, neuron_mask=None):
        gate = self.w1(x)
        gate = self.siaf(gate) if self.use_siaf else self.silu(gate)
        hidden = self.mul(gate, self.w3(x))
        if neuron_mask is not None:  # [F]
            hidden = self.mul_neuron_mask(hidden, self.cast(neuron_mask, hidden.dtype))
        return self.w2(hidden)


class DecoderLayer(nn.Cell):
    """Pre-norm block: attention (+ augmented shortcut) then FFN, each with a residual."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        dtype = DTYPES[cfg.compute_dtype]
        self.attention_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, cfg.use_fused_kernels)
        self.attention = Attention(cfg)
        self.use_aug_shortcut = cfg.aug_shortcut
        if cfg.aug_shortcut:
            self.aug_shortcut = AugmentedShortcut(cfg.hidden_size, cfg.aug_shortcut_dim, dtype, cfg.init_std)
        self.ffn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, cfg.use_fused_kernels)
        self.feed_forward = FeedForward(cfg)
        self.cast = ops.Cast()
        self.add_attention = ops.Add()
        self.add_shortcut = ops.Add()
        self.add_ffn = ops.Add()
        self.mul_mask = ops.Mul()  # inheritance masks only

    def shortcut(self, h, bottleneck_mask):
        """The AugShortcut's output; `bottleneck_mask` [B] (inheritance) scales its bottleneck units."""
        if bottleneck_mask is None:
            return self.aug_shortcut(h)
        sc = self.aug_shortcut
        inner = sc.gelu(sc.down(h))
        return sc.up(self.mul_mask(inner, self.cast(bottleneck_mask, inner.dtype)))

    def gate_branch(self, y, hidden_mask, layer_gate):
        """A residual branch's output under the inheritance masks: hidden [d] and layer gate []."""
        if hidden_mask is not None:
            y = self.mul_mask(y, hidden_mask)
        if layer_gate is not None:
            y = self.mul_mask(y, layer_gate)
        return y

    def construct(self, x, cos, sin, mask, k_cache=None, v_cache=None, cache_index=None,
                  head_mask=None, neuron_mask=None, hidden_mask=None, layer_gate=None, bottleneck_mask=None):
        h = self.attention_norm(x, hidden_mask)
        mixed = self.cast(self.attention(h, cos, sin, mask, k_cache, v_cache, cache_index, head_mask), ms.float32)
        if self.use_aug_shortcut:
            mixed = self.add_shortcut(mixed, self.cast(self.shortcut(h, bottleneck_mask), ms.float32))
        x = self.add_attention(x, self.gate_branch(mixed, hidden_mask, layer_gate))
        ffn = self.cast(self.feed_forward(self.ffn_norm(x, hidden_mask), neuron_mask), ms.float32)
        return self.add_ffn(x, self.gate_branch(ffn, hidden_mask, layer_gate))


def causal_mask(seq_length: int, flash: bool) -> np.ndarray:
    """Causal mask: [S, S] additive (0 / MASK_VALUE) for manual attention; for flash attention the
    1 = discard mask of `layers.flash_causal_mask` (compressed 2048 x 2048 from 2048 tokens on)."""
    if flash:
        return flash_causal_mask(seq_length)
    future = np.triu(np.ones((seq_length, seq_length), dtype=bool), k=1)
    return np.where(future, MASK_VALUE, 0.0).astype(np.float32)


def mask_for_tokens(mask, t: int, compressed: bool):
    """The causal mask attention gets for `t` tokens: under flash attention's sparse_mode 2 the compressed
    2048 x 2048 mask whole, whatever `t` (the kernel reads it as a fixed pattern, so a slice would be a
    wrong mask); otherwise its top-left [t, t] corner. Works on numpy arrays and tensors alike."""
    return mask if compressed else mask[:t, :t]


class PanGuPiModel(nn.Cell):
    """Token embedding, the decoder layers and the final norm: ids [B, T] -> hidden [B, T, d] (fp32)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size, cfg.init_std)
        self.layers = nn.CellList([DecoderLayer(cfg) for _ in range(cfg.num_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, ms.float32, cfg.use_fused_kernels)
        cos, sin = rope_tables(cfg.seq_length, cfg.head_dim, cfg.rope_theta)
        self.rope_cos = Tensor(cos)
        self.rope_sin = Tensor(sin)
        self.causal_mask = Tensor(causal_mask(cfg.seq_length, cfg.use_flash_attention))
        self.compressed_mask = cfg.use_flash_attention and flash_sparse_mode(cfg.seq_length) == 2
        self.gather_rows = ops.Gather()

    def construct(self, input_ids, head_mask=None, neuron_mask=None, hidden_mask=None, layer_mask=None,
                  bottleneck_mask=None):
        """Optional inheritance masks: head_mask [L, H], neuron_mask [L, F], hidden_mask [d], layer_mask [L],
        bottleneck_mask [L, B] (the AugShortcut's bottleneck units)."""
        t = input_ids.shape[1]
        x = self.embed_tokens(input_ids)
        if hidden_mask is not None:
            x = x * hidden_mask
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        mask = self.mask_for(t)
        for i in range(len(self.layers)):
            x = self.layers[i](x, cos, sin, mask, None, None, None, _row(head_mask, i), _row(neuron_mask, i),
                               hidden_mask, _row(layer_mask, i), _row(bottleneck_mask, i))
        return self.norm(x, hidden_mask)

    def mask_for(self, t: int):
        """The causal mask of `t` tokens (`mask_for_tokens`); every caller running the layers uses this."""
        return mask_for_tokens(self.causal_mask, t, self.compressed_mask)

    def forward_cached(self, input_ids, positions, cache_index, mask, k_caches, v_caches):
        """Incremental forward: tokens at `positions` [T] (cache rows `cache_index`) attend to the caches."""
        x = self.embed_tokens(input_ids)
        cos = self.gather_rows(self.rope_cos, positions, 0)
        sin = self.gather_rows(self.rope_sin, positions, 0)
        for i in range(len(self.layers)):
            x = self.layers[i](x, cos, sin, mask, k_caches[i], v_caches[i], cache_index)
        return self.norm(x)


def _row(masks, i):
    """Row `i` of an optional per-layer mask (None stays None, resolved when the graph compiles)."""
    if masks is None:
        return None
    return masks[i]


class Embedding(nn.Cell):
    """Token embedding table [V, d], fp32."""

    def __init__(self, vocab_size: int, hidden_size: int, init_std: float = 0.02):
        super().__init__()
        self.weight = Parameter(initializer(Normal(init_std), (vocab_size, hidden_size), ms.float32), name="weight")
        self.gather = ops.Gather()

    def construct(self, input_ids):
        return self.gather(self.weight, input_ids, 0)


class PanGuPiForCausalLM(nn.Cell):
    """PanGu-pi with its LM head: ids [B, T] -> logits [B, T, V] (fp32)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        cfg = self.config = config
        self.model = PanGuPiModel(cfg)
        self.tie_word_embeddings = cfg.tie_word_embeddings
        dtype = DTYPES[cfg.compute_dtype]
        if not cfg.tie_word_embeddings:
            self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, dtype, cfg.init_std)
        else:
            self.tied_matmul = ops.MatMul(transpose_b=True)
        self.compute_dtype = dtype
        self.cast = ops.Cast()
        self.reshape = ops.Reshape()

    def head(self, hidden):
        if self.tie_word_embeddings:
            b, t, d = hidden.shape
            flat = self.cast(self.reshape(hidden, (-1, d)), self.compute_dtype)
            logits = self.tied_matmul(flat, self.cast(self.model.embed_tokens.weight, self.compute_dtype))
            logits = self.reshape(logits, (b, t, -1))
        else:
            logits = self.lm_head(hidden)
        return self.cast(logits, ms.float32)

    def construct(self, input_ids, head_mask=None, neuron_mask=None, hidden_mask=None, layer_mask=None,
                  bottleneck_mask=None):
        return self.head(self.model(input_ids, head_mask, neuron_mask, hidden_mask, layer_mask, bottleneck_mask))


class PanGuPiWithLoss(nn.Cell):
    """Causal-LM loss over packed samples.

    `input_ids` [B, S+1] holds inputs and shifted labels; `loss_mask` [B, S+1] (optional) marks which
    label positions count (the mask of position i+1 weighs the prediction made at i). Labels equal to
    `ignore_index` never count. The loss is the mean over counted positions, computed in fp32.
    """

    def __init__(self, network: PanGuPiForCausalLM):
        super().__init__(auto_prefix=False)  # keep the network's parameter names unchanged
        self.network = network
        self.ignore_index = network.config.ignore_index
        self.log_softmax = ops.LogSoftmax(axis=-1)
        self.gather_d = ops.GatherD()
        self.cast = ops.Cast()
        self.reduce_sum = ops.ReduceSum()
        self.maximum = ops.Maximum()
        # The vocabulary-parallel form (`vocab_nll`), switched on by `sharding` with `vocab_parallel`.
        self.vocab_parallel = False
        self.logit_max = ops.ReduceMax(keep_dims=True)
        self.sub_max = ops.Sub()
        self.exp = ops.Exp()
        self.sum_exp = ops.ReduceSum(keep_dims=True)
        self.log = ops.Log()
        self.one_hot = ops.OneHot()
        self.mul_target = ops.Mul()
        self.sum_target = ops.ReduceSum(keep_dims=True)
        self.sub_target = ops.Sub()
        self.on_value = ms.Tensor(1.0, ms.float32)
        self.off_value = ms.Tensor(0.0, ms.float32)

    def vocab_nll(self, logits, labels):
        """-log softmax(logits)[label] of [N, V] fp32 logits, [N] labels, as reductions over the vocabulary
        axis only: max, sum of exp (log-sum-exp) and the target logit picked by a one-hot product. With the
        vocabulary split over model_parallel each device reduces its slice and only [N, 1] partial maxima
        and sums cross devices (sharding.py), instead of the whole [N, V] logits that LogSoftmax and GatherD
        need. The max is a constant shift (its gradient cancels), so it is not differentiated."""
        shifted = self.sub_max(logits, ops.stop_gradient(self.logit_max(logits, -1)))
        log_sum_exp = self.log(self.sum_exp(self.exp(shifted), -1))
        target = self.sum_target(self.mul_target(shifted, self.one_hot(labels, logits.shape[-1], self.on_value,
                                                                       self.off_value)), -1)
        return self.sub_target(log_sum_exp, target).squeeze(-1)

    def token_losses(self, input_ids, loss_mask=None, head_mask=None, neuron_mask=None, hidden_mask=None,
                     layer_mask=None, bottleneck_mask=None):
        """(negative log-likelihood [B, S], counted-position weights [B, S]), both fp32."""
        tokens = input_ids[:, :-1]
        labels = input_ids[:, 1:]
        valid = self.cast(labels != self.ignore_index, ms.float32)
        if loss_mask is not None:
            valid = valid * self.cast(loss_mask[:, 1:], ms.float32)
        labels = ops.select(labels == self.ignore_index, ops.zeros_like(labels), labels)
        logits = self.network(tokens, head_mask, neuron_mask, hidden_mask, layer_mask, bottleneck_mask)
        if self.vocab_parallel:
            b, t, v = logits.shape
            nll = self.vocab_nll(logits.reshape((b * t, v)), labels.reshape((-1,))).reshape((b, t))
        else:
            nll = -self.gather_d(self.log_softmax(logits), 2, labels.expand_dims(-1)).squeeze(-1)
        return nll * valid, valid

    def construct(self, input_ids, loss_mask=None, head_mask=None, neuron_mask=None, hidden_mask=None,
                  layer_mask=None, bottleneck_mask=None):
        nll, valid = self.token_losses(input_ids, loss_mask, head_mask, neuron_mask, hidden_mask, layer_mask,
                                       bottleneck_mask)
        return self.reduce_sum(nll) / self.maximum(self.reduce_sum(valid), 1.0)


class PanGuPiRowLosses(PanGuPiWithLoss):
    """The same loss without reducing over the batch: (summed NLL [B], counted positions [B]) per row.

    Row i's token-mean loss is ``nll[i] / max(count[i], 1)``; the batch's ``nll.sum() / count.sum()``.
    """

    def __init__(self, network: PanGuPiForCausalLM):
        super().__init__(network)
        self.row_sum = ops.ReduceSum(keep_dims=False)

    def construct(self, input_ids, loss_mask=None, head_mask=None, neuron_mask=None, hidden_mask=None,
                  layer_mask=None):
        nll, valid = self.token_losses(input_ids, loss_mask, head_mask, neuron_mask, hidden_mask, layer_mask)
        return self.row_sum(nll, 1), self.row_sum(valid, 1)
