"""Parameter names and config keys: pangu-pro (MindSpore) <-> Hugging Face (LLaMA / PanGu-pi).

Weights are `[out, in]` on both sides, and both use rotate-half RoPE, so conversion only renames;
no tensor is permuted. The PanGu-pi modules keep their own names in the Hugging Face files:
`self_attn` siblings `aug_shortcut.{down,up}_proj` and `mlp.siaf.{scale,bias}`.
"""
from __future__ import annotations

import re

from pangu_pro.config import ModelConfig

# per decoder layer: (our suffix, Hugging Face suffix)
LAYER_NAMES = [
    ("attention_norm.weight", "input_layernorm.weight"),
    ("attention.wq.weight", "self_attn.q_proj.weight"),
    ("attention.wk.weight", "self_attn.k_proj.weight"),
    ("attention.wv.weight", "self_attn.v_proj.weight"),
    ("attention.wo.weight", "self_attn.o_proj.weight"),
    ("aug_shortcut.down.weight", "aug_shortcut.down_proj.weight"),
    ("aug_shortcut.up.weight", "aug_shortcut.up_proj.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("feed_forward.w1.weight", "mlp.gate_proj.weight"),
    ("feed_forward.w3.weight", "mlp.up_proj.weight"),
    ("feed_forward.w2.weight", "mlp.down_proj.weight"),
    ("feed_forward.siaf.scale", "mlp.siaf.scale"),
    ("feed_forward.siaf.bias", "mlp.siaf.bias"),
]
GLOBAL_NAMES = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]  # same on both sides
TO_HF = dict(LAYER_NAMES)
FROM_HF = {hf: ours for ours, hf in LAYER_NAMES}
LAYER_PATTERN = re.compile(r"model\.layers\.(\d+)\.(.+)")

LLAMA_ARCHITECTURE = "LlamaForCausalLM"
PANGU_ARCHITECTURE = "PanGuPiForCausalLM"
AUTO_MAP = {
    "AutoConfig": "configuration_pangu_pi.PanGuPiConfig",
    "AutoModel": "modeling_pangu_pi.PanGuPiModel",
    "AutoModelForCausalLM": "modeling_pangu_pi.PanGuPiForCausalLM",
}
TORCH_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
                "float16": "float16", "fp16": "float16"}
STORAGE_CODES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter of our model for `cfg` with its shape, in model order."""
    d, f, kv = cfg.hidden_size, cfg.intermediate_size, cfg.kv_heads * cfg.head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (cfg.vocab_size, d)}
    for i in range(cfg.num_layers):
        layer = {
            "attention_norm.weight": (d,),
            "attention.wq.weight": (cfg.num_heads * cfg.head_dim, d),
            "attention.wk.weight": (kv, d),
            "attention.wv.weight": (kv, d),
            "attention.wo.weight": (d, cfg.num_heads * cfg.head_dim),
        }
        if cfg.aug_shortcut:
            layer["aug_shortcut.down.weight"] = (cfg.aug_shortcut_dim, d)
            layer["aug_shortcut.up.weight"] = (d, cfg.aug_shortcut_dim)
        layer.update({"ffn_norm.weight": (d,), "feed_forward.w1.weight": (f, d),
                      "feed_forward.w3.weight": (f, d), "feed_forward.w2.weight": (d, f)})
        if cfg.siaf:
            layer["feed_forward.siaf.scale"] = (cfg.siaf_terms, f)
            layer["feed_forward.siaf.bias"] = (cfg.siaf_terms, f)
        shapes.update({f"model.layers.{i}.{suffix}": shape for suffix, shape in layer.items()})
    shapes["model.norm.weight"] = (d,)
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, d)
    return shapes


def to_hf_name(name: str) -> str:
    """Our parameter name -> the Hugging Face one."""
    if name in GLOBAL_NAMES:
        return name
    match = LAYER_PATTERN.fullmatch(name)
    if match and match.group(2) in TO_HF:
        return f"model.layers.{match.group(1)}.{TO_HF[match.group(2)]}"
    raise KeyError(f"no Hugging Face name for parameter {name}")


def from_hf_name(name: str) -> str | None:
    """The Hugging Face tensor name -> ours; None for a name we do not know."""
    if name in GLOBAL_NAMES:
        return name
    match = LAYER_PATTERN.fullmatch(name)
    if match and match.group(2) in FROM_HF:
        return f"model.layers.{match.group(1)}.{FROM_HF[match.group(2)]}"
    return None


def is_pangu(cfg: ModelConfig) -> bool:
    """True if a PanGu-pi module is on, so the export needs our own modeling code."""
    return cfg.siaf or cfg.aug_shortcut


def hf_config(cfg: ModelConfig, dtype: str = "float32"):
    """The transformers config object for `cfg`: LlamaConfig, or our PanGuPiConfig with `auto_map`."""
    common = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.kv_heads, hidden_act="silu", max_position_embeddings=cfg.seq_length,
        initializer_range=cfg.init_std, rms_norm_eps=cfg.rms_norm_eps, rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_word_embeddings, bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id, dtype=TORCH_DTYPES[dtype],
    )
    if not is_pangu(cfg):
        from transformers import LlamaConfig

        config = LlamaConfig(**common, attention_bias=False, mlp_bias=False, rope_scaling=None,
                             head_dim=cfg.head_dim)
        config.architectures = [LLAMA_ARCHITECTURE]
        return config
    from pangu_pro.convert.hf_modeling.configuration_pangu_pi import PanGuPiConfig

    config = PanGuPiConfig(**common, siaf=cfg.siaf, siaf_terms=cfg.siaf_terms, aug_shortcut=cfg.aug_shortcut,
                           aug_shortcut_ratio=cfg.aug_shortcut_ratio)
    config.architectures = [PANGU_ARCHITECTURE]
    config.auto_map = dict(AUTO_MAP)
    return config


def _refuse(source: str, key: str, message: str):
    raise ValueError(f"{source}: {key}: {message}")


def model_config_from_hf(data: dict, source: str = "config.json") -> ModelConfig:
    """Our ModelConfig for a Hugging Face `config.json` of a LLaMA or PanGu-pi model.

    Anything we cannot reproduce exactly is refused, naming the key.
    """
    architectures = data.get("architectures") or []
    model_type = data.get("model_type")
    known = {LLAMA_ARCHITECTURE: "llama", PANGU_ARCHITECTURE: "pangu_pi"}
    unknown = [a for a in architectures if a not in known]
    if unknown or (not architectures and model_type not in known.values()):
        _refuse(source, "architectures", f"unsupported architecture {unknown or model_type!r}; only "
                f"{list(known)} (model_type 'llama' or 'pangu_pi') can be converted")
    if len(set(architectures)) > 1:
        _refuse(source, "architectures", f"several architectures {architectures}; expected one")
    kind = known[architectures[0]] if architectures else model_type
    if model_type is not None and model_type != kind:
        _refuse(source, "model_type", f"{model_type!r} does not match architecture {architectures[0]}")

    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        if not isinstance(data.get(key), int):
            _refuse(source, key, f"missing or not an integer ({data.get(key)!r})")
    if data.get("rope_scaling"):
        _refuse(source, "rope_scaling", f"{data['rope_scaling']!r} is not supported (plain RoPE only)")
    for key in ("attention_bias", "mlp_bias"):
        if data.get(key):
            _refuse(source, key, "biases are not supported (the model has none)")
    act = data.get("hidden_act", "silu")
    if act != "silu":
        _refuse(source, "hidden_act", f"{act!r} is not supported (SwiGLU with silu only)")
    hidden, heads = data["hidden_size"], data["num_attention_heads"]
    head_dim = data.get("head_dim")
    if head_dim is not None and (hidden % heads or head_dim != hidden // heads):
        _refuse(source, "head_dim", f"{head_dim} differs from hidden_size / num_attention_heads "
                f"({hidden} / {heads}); not supported")
    kv = data.get("num_key_value_heads") or heads

    def token_id(key, default):
        value = data.get(key, default)
        if isinstance(value, list):  # several ids: we keep the first
            value = value[0] if value else default
        return default if value is None else value

    cfg = ModelConfig(
        vocab_size=data["vocab_size"], hidden_size=hidden, num_layers=data["num_hidden_layers"], num_heads=heads,
        intermediate_size=data["intermediate_size"], num_kv_heads=None if kv == heads else kv,
        seq_length=data.get("max_position_embeddings", 2048), rope_theta=float(data.get("rope_theta", 10000.0)),
        rms_norm_eps=float(data.get("rms_norm_eps", 1e-6)),
        siaf=kind == "pangu_pi" and bool(data.get("siaf", True)),
        siaf_terms=data.get("siaf_terms", 2),
        aug_shortcut=kind == "pangu_pi" and bool(data.get("aug_shortcut", True)),
        aug_shortcut_ratio=data.get("aug_shortcut_ratio", 32),
        tie_word_embeddings=bool(data.get("tie_word_embeddings", False)),
        init_std=float(data.get("initializer_range", 0.02)),
        pad_token_id=token_id("pad_token_id", 0), bos_token_id=token_id("bos_token_id", 1),
        eos_token_id=token_id("eos_token_id", 2),
    )
    from pangu_pro.configtools import ConfigError

    try:
        cfg.validate()
    except ConfigError as err:
        raise ValueError(f"{source}: the converted model config is invalid: {err}") from None
    return cfg
