"""PanGu-pi decoder for Hugging Face transformers (PyTorch), as in PanGu-pi Pro (arXiv 2402.02791).

Top to bottom, for ids x:

    x = embed_tokens(ids)
    for each layer:
        h = input_layernorm(x)                                  # RMSNorm
        x = x + Attention(h) + AugShortcut(h)                   # AugShortcut(h) = up(GELU(down(h)))
        x = x + down( SIAF(gate(n)) * up(n) ),  n = post_attention_layernorm(x)
    logits = lm_head(norm(x))

SIAF(z) = sum_i silu(a_i * z + b_i) with per-channel a_i, b_i (`mlp.siaf.scale` / `mlp.siaf.bias`, shape
[n, intermediate]). With `siaf` off the gate is plain SiLU; with `aug_shortcut` off there is no shortcut
branch, and the network is exactly LLaMA-2. Attention uses rotate-half RoPE and optional grouped-query
heads; keys and values go through a transformers `Cache` so that `generate` decodes incrementally.

This file only imports torch and transformers: it is copied into export folders and loaded with
``trust_remote_code=True``.
"""
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_pangu_pi import PanGuPiConfig


class PanGuPiRMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * g, computed in fp32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x * self.weight.float()).to(dtype)


class PanGuPiRotaryEmbedding(nn.Module):
    """cos and sin [B, T, head_dim] of rotate-half RoPE for the given positions (fp32)."""

    def __init__(self, config: PanGuPiConfig):
        super().__init__()
        self.head_dim = config.head_dim
        self.theta = config.rope_theta

    def forward(self, position_ids, device):
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device) / self.head_dim
        inv_freq = 1.0 / (self.theta ** exponents)
        angles = position_ids.to(device=device, dtype=torch.float32)[..., None] * inv_freq
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos(), angles.sin()


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rope(x, cos, sin):
    """x [B, N, T, D]; cos, sin [B, T, D]. Computed in fp32, returned in x's dtype."""
    cos, sin = cos[:, None], sin[:, None]
    y = x.float() * cos + rotate_half(x.float()) * sin
    return y.to(x.dtype)


def repeat_kv(x, groups: int):
    """[B, KV, S, D] -> [B, KV * groups, S, D]: each key/value head serves `groups` query heads."""
    if groups == 1:
        return x
    b, kv, s, d = x.shape
    return x[:, :, None].expand(b, kv, groups, s, d).reshape(b, kv * groups, s, d)


class PanGuPiAttention(nn.Module):
    """Causal multi-head (or grouped-query) attention with RoPE, no biases."""

    def __init__(self, config: PanGuPiConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.groups = self.num_heads // self.kv_heads
        self.scale = self.head_dim ** -0.5
        d = config.hidden_size
        self.q_proj = nn.Linear(d, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, d, bias=False)

    def forward(self, h, cos, sin, allowed, past_key_values: Optional[Cache] = None):
        b, t, _ = h.shape
        q = self.q_proj(h).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)
        k, v = repeat_kv(k, self.groups), repeat_kv(v, self.groups)
        scores = torch.matmul(q, k.transpose(-1, -2)).float() * self.scale
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1).to(v.dtype)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim)
        return self.o_proj(out)


class PanGuPiAugmentedShortcut(nn.Module):
    """T(h) = up(GELU(down(h))), bottleneck hidden / ratio; runs beside attention on the normed input."""

    def __init__(self, config: PanGuPiConfig):
        super().__init__()
        self.down_proj = nn.Linear(config.hidden_size, config.aug_shortcut_dim, bias=False)
        self.up_proj = nn.Linear(config.aug_shortcut_dim, config.hidden_size, bias=False)

    def forward(self, h):
        return self.up_proj(F.gelu(self.down_proj(h)))  # exact (erf) GELU


class PanGuPiSeriesActivation(nn.Module):
    """SIAF: sum_i silu(scale[i] * z + bias[i]), per channel of the intermediate dimension."""

    def __init__(self, channels: int, terms: int):
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(terms, channels))
        self.bias = nn.Parameter(torch.zeros(terms, channels))

    def forward(self, z):
        out = F.silu(z * self.scale[0] + self.bias[0])
        for i in range(1, self.scale.shape[0]):
            out = out + F.silu(z * self.scale[i] + self.bias[i])
        return out


class PanGuPiMLP(nn.Module):
    """SwiGLU: down(act(gate(x)) * up(x)), act = SIAF when enabled, else SiLU."""

    def __init__(self, config: PanGuPiConfig):
        super().__init__()
        d, f = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)
        self.siaf = PanGuPiSeriesActivation(f, config.siaf_terms) if config.siaf else None

    def forward(self, x):
        gate = self.gate_proj(x)
        gate = self.siaf(gate) if self.siaf is not None else F.silu(gate)
        return self.down_proj(gate * self.up_proj(x))


class PanGuPiDecoderLayer(nn.Module):
    """Pre-norm block: x + Attention(h) + AugShortcut(h), then x + MLP(norm(x))."""

    def __init__(self, config: PanGuPiConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = PanGuPiRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = PanGuPiAttention(config, layer_idx)
        self.aug_shortcut = PanGuPiAugmentedShortcut(config) if config.aug_shortcut else None
        self.post_attention_layernorm = PanGuPiRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = PanGuPiMLP(config)

    def forward(self, x, cos, sin, allowed, past_key_values=None):
        h = self.input_layernorm(x)
        mixed = self.self_attn(h, cos, sin, allowed, past_key_values)
        if self.aug_shortcut is not None:
            mixed = mixed + self.aug_shortcut(h)
        x = x + mixed
        return x + self.mlp(self.post_attention_layernorm(x))


class PanGuPiPreTrainedModel(PreTrainedModel):
    config_class = PanGuPiConfig
    base_model_prefix = "model"
    _no_split_modules = ["PanGuPiDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_cache_class = True

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=std)
        elif isinstance(module, PanGuPiRMSNorm):
            module.weight.data.fill_(1.0)
        elif isinstance(module, PanGuPiSeriesActivation):  # starts as plain SiLU
            module.scale.data.zero_()
            module.scale.data[0] = 1.0
            module.bias.data.zero_()
        if isinstance(module, PanGuPiAugmentedShortcut):  # visited after its Linear children
            module.up_proj.weight.data.zero_()


def attention_allowed(cache_position, key_length: int, attention_mask=None):
    """Boolean [B or 1, 1, T, S]: query i may see key j if j <= its cache position and j is not padding."""
    keys = torch.arange(key_length, device=cache_position.device)
    allowed = (keys[None, :] <= cache_position[:, None])[None, None]
    if attention_mask is not None:
        if attention_mask.dim() != 2:
            raise ValueError(f"attention_mask must be 2-D [batch, keys], got shape {tuple(attention_mask.shape)}")
        allowed = allowed & attention_mask[:, None, None, :key_length].bool()
    return allowed


class PanGuPiModel(PanGuPiPreTrainedModel):
    """Embedding, decoder layers and final norm: ids [B, T] -> hidden states [B, T, d]."""

    def __init__(self, config: PanGuPiConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(PanGuPiDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = PanGuPiRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = PanGuPiRotaryEmbedding(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        past_key_values: Optional[Cache] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        use_cache: Optional[bool] = None,
        cache_position: Optional[torch.LongTensor] = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        t = x.shape[1]
        if cache_position is None:
            cache_position = torch.arange(past, past + t, device=x.device)
        if position_ids is None:
            position_ids = cache_position[None, :]
        cos, sin = self.rotary_emb(position_ids, x.device)
        allowed = attention_allowed(cache_position, past + t, attention_mask)
        for layer in self.layers:
            x = layer(x, cos, sin, allowed, past_key_values if use_cache else None)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(x),
                                       past_key_values=past_key_values if use_cache else None)


class PanGuPiForCausalLM(PanGuPiPreTrainedModel, GenerationMixin):
    """PanGu-pi with its LM head (tied to the embedding when `tie_word_embeddings`)."""

    _tied_weights_keys = ["lm_head.weight"]

    def __init__(self, config: PanGuPiConfig):
        super().__init__(config)
        self.model = PanGuPiModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def get_decoder(self):
        return self.model

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        past_key_values: Optional[Cache] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        labels: Optional[torch.LongTensor] = None,
        use_cache: Optional[bool] = None,
        cache_position: Optional[torch.LongTensor] = None,
        logits_to_keep: Union[int, torch.Tensor] = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                             cache_position=cache_position)
        hidden = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep, :]).float()
        loss = None
        if labels is not None:  # next-token loss; label -100 is ignored
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=outputs.past_key_values)


__all__ = ["PanGuPiForCausalLM", "PanGuPiModel", "PanGuPiPreTrainedModel"]
