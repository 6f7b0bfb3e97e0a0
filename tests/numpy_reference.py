"""A NumPy reference of the PanGu-pi forward pass, written from the formulas in paper-notes §1.

It shares no code with the MindSpore cells: tests compare the two on the same weights.
"""
from __future__ import annotations

import numpy as np
from scipy.special import erf


def silu(x):
    return x / (1.0 + np.exp(-x))


def siaf(x, scale, bias):
    """sum_i silu(a_i * x + b_i); scale and bias are [n, F]."""
    return sum(silu(x * scale[i] + bias[i]) for i in range(scale.shape[0]))


def gelu(x):
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def aug_shortcut(z, w_down, w_up):
    """T(Z) = W_up GELU(W_down Z)."""
    return gelu(z @ w_down.T) @ w_up.T


def rms_norm(x, weight, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight


def rope(x, positions, theta):
    """Rotate-half RoPE on [..., T, D] at integer positions [T]."""
    d = x.shape[-1]
    inv_freq = 1.0 / theta ** (np.arange(0, d, 2) / d)
    angles = np.outer(positions, inv_freq)
    cos, sin = np.cos(np.concatenate([angles, angles], -1)), np.sin(np.concatenate([angles, angles], -1))
    rotated = np.concatenate([-x[..., d // 2:], x[..., : d // 2]], -1)
    return x * cos + rotated * sin


def forward(weights: dict, cfg, input_ids: np.ndarray) -> np.ndarray:
    """Logits [B, T, V] in float64 for a ModelConfig `cfg` and a name -> array weights dict."""
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    b, t = input_ids.shape
    heads, kv, hd = cfg.num_heads, cfg.kv_heads, cfg.head_dim
    x = w["model.embed_tokens.weight"][input_ids]
    positions = np.arange(t)
    future = np.triu(np.ones((t, t), bool), 1)
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        h = rms_norm(x, w[p + "attention_norm.weight"], cfg.rms_norm_eps)
        q = (h @ w[p + "attention.wq.weight"].T).reshape(b, t, heads, hd).transpose(0, 2, 1, 3)
        k = (h @ w[p + "attention.wk.weight"].T).reshape(b, t, kv, hd).transpose(0, 2, 1, 3)
        v = (h @ w[p + "attention.wv.weight"].T).reshape(b, t, kv, hd).transpose(0, 2, 1, 3)
        q, k = rope(q, positions, cfg.rope_theta), rope(k, positions, cfg.rope_theta)
        k, v = np.repeat(k, heads // kv, axis=1), np.repeat(v, heads // kv, axis=1)
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd)
        scores = np.where(future, -np.inf, scores)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attn = (probs @ v).transpose(0, 2, 1, 3).reshape(b, t, heads * hd) @ w[p + "attention.wo.weight"].T
        if cfg.aug_shortcut:
            attn = attn + aug_shortcut(h, w[p + "aug_shortcut.down.weight"], w[p + "aug_shortcut.up.weight"])
        x = x + attn
        h = rms_norm(x, w[p + "ffn_norm.weight"], cfg.rms_norm_eps)
        gate = h @ w[p + "feed_forward.w1.weight"].T
        if cfg.siaf:
            gate = siaf(gate, w[p + "feed_forward.siaf.scale"], w[p + "feed_forward.siaf.bias"])
        else:
            gate = silu(gate)
        x = x + (gate * (h @ w[p + "feed_forward.w3.weight"].T)) @ w[p + "feed_forward.w2.weight"].T
    x = rms_norm(x, w["model.norm.weight"], cfg.rms_norm_eps)
    head = w["model.embed_tokens.weight"] if cfg.tie_word_embeddings else w["lm_head.weight"]
    return x @ head.T
