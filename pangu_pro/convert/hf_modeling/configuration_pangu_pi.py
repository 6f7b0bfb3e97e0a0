"""Hugging Face configuration of a PanGu-pi decoder (PanGu-pi Pro, arXiv 2402.02791).

A LLaMA configuration plus the two PanGu-pi switches: the series informed activation (SIAF) on the
SwiGLU gate and the augmented shortcut beside attention. Standalone (only transformers): it is
copied into every export folder and loaded with ``trust_remote_code=True``.
"""
from transformers import PretrainedConfig


class PanGuPiConfig(PretrainedConfig):
    model_type = "pangu_pi"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size=48000,
        hidden_size=1792,
        intermediate_size=4864,
        num_hidden_layers=21,
        num_attention_heads=14,
        num_key_value_heads=None,
        hidden_act="silu",
        max_position_embeddings=2048,
        initializer_range=0.02,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        use_cache=True,
        siaf=True,
        siaf_terms=2,
        aug_shortcut=True,
        aug_shortcut_ratio=32,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.head_dim = hidden_size // num_attention_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.use_cache = use_cache
        self.siaf = siaf
        self.siaf_terms = siaf_terms
        self.aug_shortcut = aug_shortcut
        self.aug_shortcut_ratio = aug_shortcut_ratio
        kwargs.pop("head_dim", None)  # always hidden_size / num_attention_heads
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)
        if hidden_act != "silu":
            raise ValueError(f"hidden_act must be 'silu' (SIAF sums SiLU terms), got {hidden_act!r}")
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads}")
        if num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_key_value_heads {self.num_key_value_heads} does not divide "
                             f"num_attention_heads {num_attention_heads}")
        if aug_shortcut and hidden_size % aug_shortcut_ratio:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by aug_shortcut_ratio {aug_shortcut_ratio}")

    @property
    def aug_shortcut_dim(self):
        return self.hidden_size // self.aug_shortcut_ratio
