"""Loss scaling for fp16 (Ascend): the loss is multiplied by `scale` before backward and the gradients
divided by it after, so small gradients survive fp16. What happens when a step's loss or gradients are
not finite:

    none / static   stop the run (the update is not applied; the last checkpoint stays as it was)
    dynamic         skip the update and divide the scale by `factor`; after `window` clean steps in a
                    row multiply it by `factor`. An overflow at scale 1 cannot be fixed by scaling: stop.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

OK, SKIP, STOP = "ok", "skip", "stop"


@dataclass
class LossScaler:
    mode: str = "none"  # none | static | dynamic
    scale: float = 1.0
    factor: float = 2.0
    window: int = 1000
    good_steps: int = 0

    @classmethod
    def from_config(cls, train_cfg) -> "LossScaler":
        scale = 1.0 if train_cfg.loss_scale == "none" else train_cfg.loss_scale_value
        return cls(train_cfg.loss_scale, scale, train_cfg.loss_scale_factor, train_cfg.loss_scale_window)

    def update(self, finite: bool) -> str:
        """Record one step's overflow check; returns OK, SKIP or STOP (module doc)."""
        if self.mode != "dynamic":
            return OK if finite else STOP
        if finite:
            self.good_steps += 1
            if self.good_steps >= self.window:
                self.scale *= self.factor
                self.good_steps = 0
            return OK
        self.good_steps = 0
        if self.scale <= 1.0:
            return STOP
        self.scale = max(self.scale / self.factor, 1.0)
        return SKIP

    def state(self) -> dict:
        return asdict(self)
