"""Analytic parameter counts of a PanGu-pi model, by component, without building it.

The counts follow the cells in `pangu_pro.model.pangu_pi` one to one (a test checks them against an
instantiated model), so a user can size a model, or a vocabulary, before spending any compute.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from pangu_pro.config import ModelConfig

NO_DECAY_MARKERS = (".siaf.",)  # 2-D parameters that are not weight matrices (SIAF's per-channel terms)


def decays(name: str, shape: Sequence[int]) -> bool:
    """Whether weight decay applies to the parameter `name` of `shape`: every matrix, not 1-D parameters
    (norm gains, biases) nor SIAF's scale and bias [n, F] (activation-function parameters initialised to
    exactly SiLU: decaying them would turn the activation off). Our AdamW (`train/optim.py`) and
    MindFormers' route (`registry.PanGuPiAdamW`) both group by it."""
    if len(shape) <= 1:
        return False
    return not any(marker in f".{name}" for marker in NO_DECAY_MARKERS)

COMPONENTS = ("embedding", "lm_head", "attention", "ffn", "siaf", "aug_shortcut", "norms")


@dataclass(frozen=True)
class ParameterCount:
    embedding: int
    lm_head: int
    attention: int
    ffn: int
    siaf: int
    aug_shortcut: int
    norms: int

    @property
    def total(self) -> int:
        return sum(getattr(self, name) for name in COMPONENTS)

    @property
    def vocab_share(self) -> float:
        """Fraction of all parameters spent on the embedding and the LM head."""
        return (self.embedding + self.lm_head) / self.total

    def as_dict(self) -> dict[str, int]:
        return {**{name: getattr(self, name) for name in COMPONENTS}, "total": self.total}


def count_parameters(cfg: ModelConfig) -> ParameterCount:
    d, f, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
    q_and_o = 2 * d * cfg.num_heads * cfg.head_dim
    k_and_v = 2 * d * cfg.kv_heads * cfg.head_dim
    return ParameterCount(
        embedding=cfg.vocab_size * d,
        lm_head=0 if cfg.tie_word_embeddings else cfg.vocab_size * d,
        attention=layers * (q_and_o + k_and_v),
        ffn=layers * 3 * d * f,
        siaf=layers * 2 * cfg.siaf_terms * f if cfg.siaf else 0,
        aug_shortcut=layers * 2 * d * cfg.aug_shortcut_dim if cfg.aug_shortcut else 0,
        norms=(2 * layers + 1) * d,
    )


def format_parameter_table(cfg: ModelConfig, name: str = "") -> str:
    """A plain-text table of the counts, with each component's share and the vocab share."""
    count = count_parameters(cfg)
    total = count.total
    lines = [f"parameters of {name}" if name else "parameters", f"{'component':<14}{'count':>16}{'share':>9}"]
    for component in COMPONENTS:
        value = getattr(count, component)
        lines.append(f"{component:<14}{value:>16,}{100 * value / total:>8.2f}%")
    lines.append(f"{'total':<14}{total:>16,}{100.0:>8.2f}%")
    lines.append(f"embedding + head share: {100 * count.vocab_share:.2f}%")
    return "\n".join(lines)
