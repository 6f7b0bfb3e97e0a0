"""The `multi_round:` section of a config file (docs/multi_round.md)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from pangu_pro.configtools import require

Unit = Literal["batch", "sample"]
Order = Literal["shuffle", "draw", "corpus"]


@dataclass
class MultiRoundConfig:
    """Round 1 trains as the `train:` section says; every later round re-trains the previous round's
    weights on a subset of `rate` of the training data, drawn without replacement with probability
    softmax(loss / temperature) of the previous round's per-unit losses."""

    rounds: int = 2  # training rounds; 1 = plain training
    rate: float = 0.5  # fraction of the units (batches or samples) drawn for the next round, in (0, 1]
    unit: Unit = "batch"  # what is scored and drawn: consecutive blocks of score_batch_size samples, or samples
    temperature: float = 1.0  # p_i ∝ exp(l_i / T); large T -> uniform, small T -> hardest first
    seed: int = 0  # round k draws with seed + k
    order: Order = "shuffle"  # how the next round reads its units: seeded shuffle, draw order, corpus order
    score_batch_size: Optional[int] = None  # default train.batch_size
    round_steps: Optional[int] = None  # steps of rounds 2..; default round(rate * train.steps)
    round_lr: Optional[float] = None  # peak lr of rounds 2..; default train.lr
    round_warmup_steps: Optional[int] = None  # default min(train.warmup_steps, round steps)
    flush_every: int = 16  # scored batches between atomic saves of a rank's partial scores

    def validate(self) -> None:
        require(self.rounds >= 1, "rounds", f"must be at least 1, got {self.rounds}")
        require(0.0 < self.rate <= 1.0, "rate", f"must lie in (0, 1], got {self.rate}")
        require(self.temperature > 0.0, "temperature", f"must be positive, got {self.temperature}")
        require(self.seed >= 0, "seed", f"must be non-negative, got {self.seed}")
        require(self.flush_every >= 1, "flush_every", f"must be at least 1, got {self.flush_every}")
        for name in ("score_batch_size", "round_steps"):
            value = getattr(self, name)
            require(value is None or value >= 1, name, f"must be at least 1, got {value}")
        require(self.round_lr is None or self.round_lr > 0, "round_lr", f"must be positive, got {self.round_lr}")
        require(self.round_warmup_steps is None or self.round_warmup_steps >= 0, "round_warmup_steps",
                f"must be non-negative, got {self.round_warmup_steps}")
