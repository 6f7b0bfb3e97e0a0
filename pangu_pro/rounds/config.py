"""The `multi_round:` section of a config file (docs/multi_round.md)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from pangu_pro.configtools import require

Unit = Literal["batch", "sample"]
Order = Literal["shuffle", "draw", "corpus"]
RoundSchedule = Literal["official", "round1"]

OFFICIAL_UNIT_TOKENS = 2 ** 21  # the official repository scores one training batch of ~2M tokens


@dataclass
class MultiRoundConfig:
    """Round 1 trains as the `train:` section says; every later round re-trains the previous round's
    weights on a subset of `rate` of the training data, drawn without replacement with probability
    softmax(loss / temperature) of the previous round's per-unit losses."""

    rounds: int = 2  # training rounds; 1 = plain training
    rate: float = 0.5  # fraction of the units (batches or samples) drawn for the next round, in (0, 1]
    unit: Unit = "batch"  # what is scored and drawn: units of consecutive training batches, or samples
    temperature: float = 1.0  # p_i ∝ exp(l_i / T); large T -> uniform, small T -> hardest first
    seed: int = 0  # round k draws with seed + k
    order: Order = "shuffle"  # how the next round reads its units: seeded shuffle, draw order, corpus order
    score_unit_tokens: int = OFFICIAL_UNIT_TOKENS  # tokens per scoring unit, rounded to whole global batches
    round_steps: Optional[int] = None  # steps of rounds 2..; default round(rate * train.steps)
    round_schedule: RoundSchedule = "official"  # lr schedule of rounds 2..: official = the repo's schedule from a pruned checkpoint (ours to use here)
    round_lr: Optional[float] = None  # peak lr of rounds 2..
    round_warmup_steps: Optional[int] = None  # warm-up of rounds 2.., in steps ...
    round_warmup_fraction: Optional[float] = None  # ... or as a fraction of the round's steps
    round_min_lr_ratio: Optional[float] = None  # floor of rounds 2.. as a fraction of their peak lr
    flush_every: int = 16  # scored units between atomic saves of a rank's partial scores

    def validate(self) -> None:
        require(self.rounds >= 1, "rounds", f"must be at least 1, got {self.rounds}")
        require(0.0 < self.rate <= 1.0, "rate", f"must lie in (0, 1], got {self.rate}")
        require(self.temperature > 0.0, "temperature", f"must be positive, got {self.temperature}")
        require(self.seed >= 0, "seed", f"must be non-negative, got {self.seed}")
        require(self.flush_every >= 1, "flush_every", f"must be at least 1, got {self.flush_every}")
        require(self.score_unit_tokens >= 1, "score_unit_tokens", f"must be at least 1, got {self.score_unit_tokens}")
        require(self.round_steps is None or self.round_steps >= 1, "round_steps",
                f"must be at least 1, got {self.round_steps}")
        require(self.round_schedule in ("official", "round1"), "round_schedule",
                f"must be official or round1, got {self.round_schedule!r}")
        require(self.round_lr is None or self.round_lr > 0, "round_lr", f"must be positive, got {self.round_lr}")
        require(self.round_warmup_steps is None or self.round_warmup_steps >= 0, "round_warmup_steps",
                f"must be non-negative, got {self.round_warmup_steps}")
        require(self.round_warmup_fraction is None or 0 <= self.round_warmup_fraction <= 1, "round_warmup_fraction",
                f"must lie in [0, 1], got {self.round_warmup_fraction}")
        require(self.round_warmup_steps is None or self.round_warmup_fraction is None, "round_warmup_fraction",
                "set either round_warmup_steps or round_warmup_fraction, not both")
        require(self.round_min_lr_ratio is None or 0 <= self.round_min_lr_ratio <= 1, "round_min_lr_ratio",
                f"must lie in [0, 1], got {self.round_min_lr_ratio}")
