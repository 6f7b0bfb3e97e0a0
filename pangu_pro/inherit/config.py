"""The `inherit:` section of a config file, and the loader of an inheritance config.

An inheritance config is an ordinary pangu-pro config whose `model:` section is the **teacher**
(or, instead, `inherit.teacher_config` names the teacher's YAML and `model:` is left out), whose
`data:` section is the calibration / mask-training data, and whose `inherit:` section says what to
derive::

    inherit:
      teacher_checkpoint: runs/pangu_7b/final      # weights file or checkpoint folder
      target_config: configs/pangu_1b_pro.yaml     # the student's shape (its model section)
      vocab_map: runs/tok/compact.new2old.npy      # optional: new id -> teacher id
      criterion: learned                           # random | l1 | l2 | taylor | learned
      layer_selection: cosine                      # cosine | learned | uniform
      aug_bottleneck: preset                       # preset | teacher (AugShortcut bottleneck width)
      steps: 3200                                  # mask-learning steps (criterion learned)
      batch_size: 1                                # per micro batch and rank
      grad_accum_steps: 4
      lr_mask: 1.0
      lr_lambda: 1.0
      lr_weights: 0                                # 0 freezes the teacher's weights (7B: must)
      calibration_batches: 16                      # batches for taylor and cosine scores
      output_dir: runs/inherit_7b_to_1b_pro
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal, Optional

from pangu_pro.config import Config, config_from_dict
from pangu_pro.configtools import ConfigError, apply_overrides, blame_override, read_yaml, require

Criterion = Literal["random", "l1", "l2", "taylor", "learned"]
LayerSelection = Literal["cosine", "learned", "uniform"]
CRITERIA = ("random", "l1", "l2", "taylor", "learned")


@dataclass
class InheritConfig:
    """How to derive a student from a teacher (paper-notes §5)."""

    target_config: str  # YAML whose model section is the student's shape
    teacher_config: Optional[str] = None  # teacher's YAML, when the file has no model section
    teacher_checkpoint: Optional[str] = None  # None: a randomly initialised teacher (tests, dry runs)
    vocab_map: Optional[str] = None  # new2old .npy (or .json) of a compressed tokenizer
    criterion: Criterion = "learned"  # importance of heads, neurons and channels (docs/inherit.md)
    layer_selection: LayerSelection = "cosine"  # which layers the student keeps (docs/inherit.md)
    aug_bottleneck: Literal["preset", "teacher"] = "preset"  # preset: the target's width, units by criterion; teacher: all
    calibration_batches: int = 8  # batches scored by taylor and cosine
    steps: int = 100  # mask-learning steps
    batch_size: int = 4  # sequences per micro batch and data-parallel rank
    grad_accum_steps: int = 1  # micro batches per mask step (global batch = batch_size x this x ranks)
    lr_mask: float = 0.1  # Adam learning rate of the hard-concrete mask logits
    lr_lambda: float = 0.1  # learning rate of the Lagrange multipliers of the size constraint
    mask_beta1: float = 0.0  # Adam momentum of the masks: 0 avoids overshooting the target (docs/inherit.md)
    lr_weights: float = 0.0  # 0: the teacher's weights stay frozen while the masks learn (a 7B teacher must)
    teacher_dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # matmul weights; auto: bf16 frozen on Ascend
    warmup_fraction: float = 0.2  # the target sparsity ramps up over this share of the steps
    init_keep_probability: float = 0.9979  # the start: log_alpha 4.565, just inside the clamp at 4.6 (Sheared-LLaMA: ln 99 = 4.595)
    # at the clamp the gradient halves and beyond it is 0 (hardconcrete.keep_probability_grad)
    grad_clip: float = 1.0  # global-norm clip of the weight gradients
    fold_mask_values: bool = True  # multiply the kept units' mask values into the student weights
    taylor_form: Literal["abs_sum", "sum_abs"] = "abs_sum"  # per unit |sum w*g| or sum |w*g| (docs/inherit.md)
    convergence_tolerance: float = 0.05  # learned masks: see `pangu_pro.inherit.convergence`
    heldout_batches: int = 4  # batches of the masked-teacher vs student loss report at materialisation
    seed: int = 1234  # seed of the random criterion, mask sampling and data order
    log_every: int = 10  # steps between metrics lines
    checkpoint_every: int = 50  # steps between mask-learning checkpoints (resumable)
    keep_checkpoints: int = 2  # mask-learning checkpoints kept
    output_dir: str = "runs/inherit"  # masks/, student/ (config.yaml, model.safetensors) and metrics
    student_schedule: Literal["official", "preset"] = "official"  # the student's continued pretraining: official = the repo's from a pruned checkpoint (lr 1e-4, 3% warm-up, floor 1e-5); preset = the target's own

    def validate(self) -> None:
        require(bool(self.target_config.strip()), "target_config", "empty path")
        for name in ("calibration_batches", "steps", "batch_size", "grad_accum_steps", "log_every",
                     "checkpoint_every", "keep_checkpoints", "heldout_batches"):
            require(getattr(self, name) >= 1, name, f"must be at least 1, got {getattr(self, name)}")
        for name in ("lr_mask", "lr_lambda"):
            require(getattr(self, name) > 0, name,
                    f"must be positive (the lambdas ascend by negated gradients), got {getattr(self, name)}")
        require(0 <= self.mask_beta1 < 1, "mask_beta1", f"must lie in [0, 1), got {self.mask_beta1}")
        require(self.lr_weights >= 0, "lr_weights", f"must be non-negative, got {self.lr_weights}")
        require(not (self.teacher_dtype == "bfloat16" and self.lr_weights > 0), "teacher_dtype",
                "bfloat16 teacher weights must be frozen (lr_weights: 0): AdamW updates need fp32 masters")
        require(0 < self.warmup_fraction <= 1, "warmup_fraction", f"must lie in (0, 1], got {self.warmup_fraction}")
        require(0 < self.init_keep_probability < 1, "init_keep_probability",
                f"must lie in (0, 1), got {self.init_keep_probability}")
        require(self.grad_clip > 0, "grad_clip", "must be positive")
        require(0 < self.convergence_tolerance < 1, "convergence_tolerance",
                f"must lie in (0, 1), got {self.convergence_tolerance}")
        if self.vocab_map is not None:
            require(self.vocab_map.endswith((".npy", ".json")), "vocab_map",
                    f"expected a new2old .npy (or its .json), got {self.vocab_map!r}")


@dataclass
class InheritRunConfig(Config):
    """A pangu-pro config with an `inherit:` section: the stage owns its section, the base Config knows
    no stage."""

    inherit: Optional[InheritConfig] = None

    @classmethod
    def of(cls, config: Config, inherit: InheritConfig) -> "InheritRunConfig":
        """`config`'s sections plus `inherit`."""
        return cls(**{f.name: getattr(config, f.name) for f in fields(Config)}, inherit=inherit)


def _resolve(path: str, base: Path) -> str:
    """A relative path as written, if it exists from the working directory; else relative to the config."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return str(p)
    candidate = base / p
    return str(candidate) if candidate.exists() else str(p)


def load_inherit_config(path: str | Path, overrides: list[str] | None = None):
    """Read an inheritance config: the top-level Config with a required `inherit:` section.

    When `inherit.teacher_config` is set, the teacher's model section is read from that file (and the
    inheritance config must not have its own `model:`).
    """
    path = Path(path)
    data = read_yaml(path)
    try:
        apply_overrides(data, overrides)
    except ConfigError as err:
        raise err.within(source=str(path)) from None
    section = data.get("inherit")
    if not isinstance(section, dict):
        raise ConfigError("inherit", "required section is missing (see docs/inherit.md)", str(path))
    teacher = section.get("teacher_config")
    if teacher is not None:
        if "model" in data:
            raise ConfigError("inherit.teacher_config", "give the teacher either as a model section or as "
                              "inherit.teacher_config, not both", str(path))
        teacher_path = _resolve(str(teacher), path.parent)
        teacher_data = read_yaml(teacher_path)
        if "model" not in teacher_data:
            raise ConfigError("inherit.teacher_config", f"{teacher_path} has no model section", str(path))
        data["model"] = teacher_data["model"]
        section["teacher_config"] = teacher_path
    try:
        config = config_from_dict(data, str(path), InheritRunConfig)
    except ConfigError as err:
        raise blame_override(err, overrides, str(path)) from None
    config.inherit.target_config = _resolve(config.inherit.target_config, path.parent)
    if config.inherit.vocab_map is not None:
        config.inherit.vocab_map = _resolve(config.inherit.vocab_map, path.parent)
    return config
