"""Parameter names and config keys: pangu-pro (MindSpore) <-> Hugging Face (LLaMA / PanGu-pi).

Weights are `[out, in]` on both sides, and both use rotate-half RoPE, so conversion only renames;
no tensor is permuted. The PanGu-pi modules keep their own names in the Hugging Face files:
`self_attn` siblings `aug_shortcut.{down,up}_proj` and `mlp.siaf.{scale,bias}`.
"""
from __future__ import annotations

import re

from pangu_pro.config import ModelConfig
from pangu_pro.configtools import ConfigError, brief, from_mapping

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


HF_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
HF_KEYS = {  # our ModelConfig key -> the config.json key
    "vocab_size": "vocab_size", "hidden_size": "hidden_size", "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads", "intermediate_size": "intermediate_size",
    "num_kv_heads": "num_key_value_heads", "seq_length": "max_position_embeddings", "rope_theta": "rope_theta",
    "rms_norm_eps": "rms_norm_eps", "siaf": "siaf", "siaf_terms": "siaf_terms", "aug_shortcut": "aug_shortcut",
    "aug_shortcut_ratio": "aug_shortcut_ratio", "tie_word_embeddings": "tie_word_embeddings",
    "init_std": "initializer_range", "pad_token_id": "pad_token_id", "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id",
}


def model_config_from_hf(data: dict, source: str = "config.json") -> ModelConfig:
    """Our ModelConfig for a Hugging Face `config.json` of a LLaMA or PanGu-pi model.

    Anything we cannot reproduce exactly, of the wrong type or beyond the size limits
    (`pangu_pro.config.MODEL_LIMITS`) is refused, naming the file and the key.
    """
    architectures = data.get("architectures") or []
    model_type = data.get("model_type")
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        _refuse(source, "architectures", f"expected a list of names, got {brief(architectures)}")
    if not isinstance(model_type, (str, type(None))):
        _refuse(source, "model_type", f"expected a name, got {brief(model_type)}")
    known = {LLAMA_ARCHITECTURE: "llama", PANGU_ARCHITECTURE: "pangu_pi"}
    unknown = [a for a in architectures if a not in known]
    if unknown or (not architectures and model_type not in known.values()):
        _refuse(source, "architectures", f"unsupported architecture {brief(unknown or model_type)}; only "
                f"{list(known)} (model_type 'llama' or 'pangu_pi') can be converted")
    if len(set(architectures)) > 1:
        _refuse(source, "architectures", f"several architectures {brief(architectures)}; expected one")
    kind = known[architectures[0]] if architectures else model_type
    if model_type is not None and model_type != kind:
        _refuse(source, "model_type", f"{brief(model_type)} does not match architecture {architectures[0]}")

    for key in HF_REQUIRED:
        if data.get(key) is None:
            _refuse(source, key, "missing")
    if data.get("rope_scaling"):
        _refuse(source, "rope_scaling", f"{brief(data['rope_scaling'])} is not supported (plain RoPE only)")
    for key in ("attention_bias", "mlp_bias"):
        if data.get(key):
            _refuse(source, key, "biases are not supported (the model has none)")
    act = data.get("hidden_act", "silu")
    if act != "silu":
        _refuse(source, "hidden_act", f"{brief(act)} is not supported (SwiGLU with silu only)")

    def token_id(key, default):
        value = data.get(key, default)
        if isinstance(value, list):  # several ids: we keep the first
            value = value[0] if value else default
        return default if value is None else value

    # our key -> its value in config.json, type- and range-checked by ModelConfig before anything is built
    raw = {ours: data[hf] for ours, hf in HF_KEYS.items() if data.get(hf) is not None}
    raw.setdefault("rms_norm_eps", 1e-6)  # the transformers default, not ours
    raw.update({name: token_id(name, default) for name, default in
                (("pad_token_id", 0), ("bos_token_id", 1), ("eos_token_id", 2))})
    if kind != "pangu_pi":
        raw.update(siaf=False, aug_shortcut=False)
    if raw.get("num_kv_heads") == raw["num_heads"]:
        del raw["num_kv_heads"]
    try:
        cfg = from_mapping(ModelConfig, raw)
    except ConfigError as err:
        ours = err.key.split(".")[0].split("[")[0]
        raise ValueError(f"{source}: {HF_KEYS.get(ours, ours) or 'config'}: {err.message}") from None
    head_dim = data.get("head_dim")
    if head_dim is not None and head_dim != cfg.head_dim:
        _refuse(source, "head_dim", f"{brief(head_dim)} differs from hidden_size / num_attention_heads "
                f"({cfg.hidden_size} / {cfg.num_heads}); not supported")
    return cfg
