"""Loss scaling for fp16 (Ascend): the loss is multiplied by `scale` before backward and the gradients
divided by it after, so small gradients survive fp16. What happens when a step's loss or gradients are
not finite:

    none / static   stop the run (the update is not applied; the last checkpoint stays as it was)
    dynamic         skip the update and divide the scale by `factor`; after `window` clean steps in a
                    row multiply it by `factor`. An overflow at scale 1 cannot be fixed by scaling: stop.

The step (`train/step.py`) detects an overflow by `isfinite`. That sees it only where an overflow gives
inf/NaN. On Ascend 910A, and on 910B-class chips run with MS_ASCEND_CHECK_OVERFLOW_MODE=SATURATION_MODE,
fp16 overflow saturates to +-65504 instead, and MindSpore's own loss-scale cell reads the NPU float status
registers there (`mindspore/nn/wrap/loss_scale.py`, `TrainOneStepWithLossScaleCell.get_overflow_status`:
910A always, 910B/910_93/950 only in SATURATION_MODE, INFNAN mode by `isfinite`/AllFinite otherwise).
`overflow_check` is the same decision; `check_overflow_detectable` refuses float16 compute where only the
float-status registers could see an overflow, before the first step (every rank, the same message).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

OVERFLOW_MODE_ENV = "MS_ASCEND_CHECK_OVERFLOW_MODE"
INFNAN_SOCS = ("ascend910b", "ascend910_93", "ascend950")  # MindSpore's ascend_910b_target


def overflow_check(device_target: str, soc_version: str, overflow_mode: Optional[str]) -> str:
    """'isfinite' where an overflow gives inf/NaN, 'float_status' where it saturates (mindspore's
    loss-scale cell's choice; `soc_version` as `MSContext.get_ascend_soc_version()`, `overflow_mode`
    the MS_ASCEND_CHECK_OVERFLOW_MODE environment variable or None)."""
    if device_target != "Ascend":
        return "isfinite"
    if soc_version in INFNAN_SOCS:
        return "float_status" if overflow_mode == "SATURATION_MODE" else "isfinite"
    return "float_status"  # 910A ('ascend910') and any chip MindSpore does not list as INFNAN-capable


def fp16_overflow_problem(compute_dtype: str, device_target: str, soc_version: str,
                          overflow_mode: Optional[str]) -> Optional[str]:
    """Why float16 compute cannot run here (a sentence naming the fix), or None."""
    if compute_dtype != "float16" or overflow_check(device_target, soc_version, overflow_mode) == "isfinite":
        return None
    where = (f"{soc_version} with {OVERFLOW_MODE_ENV}=SATURATION_MODE" if soc_version in INFNAN_SOCS
             else f"{soc_version or 'this Ascend chip'} (fp16 overflow saturates there)")
    fix = (f"unset {OVERFLOW_MODE_ENV} (INFNAN mode, where an overflow gives inf), or use bfloat16 or float32"
           if soc_version in INFNAN_SOCS else "use float32 (910A has no bfloat16 kernels)")
    return (f"is float16 on {where}: an fp16 overflow saturates to +-65504 instead of inf, which the "
            f"training step's isfinite check cannot see, so a loss scale would never back off and overflowed "
            f"gradients would be applied; {fix}")


def check_overflow_detectable(config, device_target: str) -> None:
    """Raise ConfigError (key model.compute_dtype) when float16 overflow would go undetected here."""
    import os

    from pangu_pro.configtools import ConfigError

    if config.model.compute_dtype != "float16" or device_target != "Ascend":
        return
    from mindspore._c_expression import MSContext

    problem = fp16_overflow_problem(config.model.compute_dtype, device_target,
                                    MSContext.get_instance().get_ascend_soc_version(),
                                    os.environ.get(OVERFLOW_MODE_ENV))
    if problem:
        raise ConfigError("model.compute_dtype", problem, config.source or None)

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
