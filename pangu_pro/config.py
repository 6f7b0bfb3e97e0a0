"""The sections of a pangu-pro YAML file and the function that loads one.

A config file has one mapping per section::

    model:     {...}   # ModelConfig: the network's shape and the PanGu-pi switches
    parallel:  {...}   # ParallelConfig: device layout (data / tensor / pipeline parallel)
    data:      {...}   # DataConfig: where the packed training data lies
    train:     {...}   # TrainConfig: optimizer, schedule, run length, checkpoints
    multi_round: {...} # MultiRoundConfig: rounds of re-training on the hardest data (docs/multi_round.md)

Only `model` is required. `load_config(path, overrides)` reads, type-checks and validates all of
it before any graph is built; errors name the file and the dotted key.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from pangu_pro.configtools import (ConfigError, apply_overrides, blame_override, from_mapping, read_yaml,
                                   require, to_mapping)

DType = Literal["float32", "bfloat16", "float16"]

# Upper bounds on model sizes, about 16x the largest preset (configs/pangu_7b.yaml: 29 layers, hidden 4096,
# FFN 11008, vocabulary 100883; sequence length 64x its 2048), so that a typo is refused before anything
# is allocated. PANGU_PRO_ALLOW_LARGE_MODELS=1 in the environment lifts them for those who mean it.
MODEL_LIMITS = {"num_layers": 512, "hidden_size": 65536, "num_heads": 1024, "intermediate_size": 262144,
                "vocab_size": 2_097_152, "seq_length": 131072, "siaf_terms": 64}
MAX_PARAMETERS = 128e9
ALLOW_LARGE_MODELS = "PANGU_PRO_ALLOW_LARGE_MODELS"


@dataclass
class ModelConfig:
    """Shape of a PanGu-pi decoder. With `siaf` and `aug_shortcut` off it is exactly LLaMA-2."""

    vocab_size: int  # tokens in the vocabulary (embedding and LM-head rows)
    hidden_size: int  # width of the residual stream
    num_layers: int  # decoder layers
    num_heads: int  # query heads; head_dim = hidden_size / num_heads must be even
    intermediate_size: int  # SwiGLU FFN width
    num_kv_heads: Optional[int] = None  # None: plain multi-head attention (= num_heads)
    seq_length: int = 2048  # longest sequence (RoPE table, KV cache)
    rope_theta: float = 10000.0  # RoPE base frequency
    rms_norm_eps: float = 1e-5  # epsilon of every RMSNorm
    # PanGu-pi modules (paper-notes §1)
    siaf: bool = True  # series informed activation on the SwiGLU gate
    siaf_terms: int = 2  # n in sum_i act(a_i x + b_i)
    aug_shortcut: bool = True  # T(norm(x)) = W_up GELU(W_down norm(x)) beside attention
    aug_shortcut_ratio: int = 32  # bottleneck = hidden_size / ratio
    tie_word_embeddings: bool = False  # LM head shares the embedding matrix
    init_std: float = 0.02  # standard deviation of the normal initialisation of the weight matrices
    # Numerics and kernels: parameters are always fp32, matmuls run in compute_dtype.
    compute_dtype: DType = "float32"  # dtype of the matmuls (parameters stay float32)
    use_flash_attention: bool = False  # Ascend only
    use_fused_kernels: bool = False  # fused RMSNorm / RoPE, Ascend only
    pad_token_id: int = 0  # id of padding (batched generation, HF export)
    bos_token_id: int = 1  # beginning-of-sequence id (HF export, generation config)
    eos_token_id: int = 2  # end-of-sequence id; generation stops on it
    ignore_index: int = -100  # label value excluded from the loss

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def aug_shortcut_dim(self) -> int:
        return self.hidden_size // self.aug_shortcut_ratio

    def validate(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                     "seq_length", "siaf_terms", "aug_shortcut_ratio"):
            require(getattr(self, name) > 0, name, f"must be positive, got {getattr(self, name)}")
        if os.environ.get(ALLOW_LARGE_MODELS) != "1":
            advice = f"set {ALLOW_LARGE_MODELS}=1 in the environment if you mean it"
            for name, limit in MODEL_LIMITS.items():
                require(getattr(self, name) <= limit, name, f"{getattr(self, name)} exceeds the limit {limit} "
                        f"(about 16x the largest preset, configs/pangu_7b.yaml); {advice}")
            d, f = self.hidden_size, self.intermediate_size
            approx = self.vocab_size * d * (1 if self.tie_word_embeddings else 2) + self.num_layers * (4 * d * d + 3 * d * f)
            require(approx <= MAX_PARAMETERS, "", f"the model would have about {approx / 1e9:.0f}B "
                    f"parameters, more than the limit {MAX_PARAMETERS / 1e9:.0f}B; {advice}")
        require(self.hidden_size % self.num_heads == 0, "num_heads",
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        require(self.head_dim % 2 == 0, "num_heads",
                f"head_dim {self.head_dim} (hidden_size / num_heads) must be even for RoPE")
        if self.num_kv_heads is not None:
            require(self.num_kv_heads > 0, "num_kv_heads", f"must be positive, got {self.num_kv_heads}")
            require(self.num_heads % self.num_kv_heads == 0, "num_kv_heads",
                    f"num_kv_heads {self.num_kv_heads} does not divide num_heads {self.num_heads}")
        if self.aug_shortcut:
            require(self.hidden_size % self.aug_shortcut_ratio == 0, "aug_shortcut_ratio",
                    f"hidden_size {self.hidden_size} is not divisible by aug_shortcut_ratio "
                    f"{self.aug_shortcut_ratio}")
        require(self.rms_norm_eps > 0, "rms_norm_eps", "must be positive")
        require(self.rope_theta > 0, "rope_theta", "must be positive")
        require(self.init_std > 0, "init_std", "must be positive")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            require(0 <= value < self.vocab_size, name, f"{value} is outside the vocabulary [0, {self.vocab_size})")


@dataclass
class ParallelConfig:
    """Device layout (docs/parallel.md). On the CPU only data parallel runs; the rest is checked here,
    laid out by `pangu_pro.model.sharding` and run on Ascend. `check_layout` adds the checks that need
    the model section or the device count."""

    data_parallel: int = 1  # data-parallel replicas (batches split over them)
    model_parallel: int = 1  # tensor parallel: heads, kv-heads and the FFN channels are split
    pipeline_stage: int = 1  # pipeline stages (layers split over them)
    micro_batch_num: int = 1  # pipeline micro batches per step (>= pipeline_stage)
    pipeline_offset: list[int] = field(default_factory=list)  # per stage: layers added to the even split
    sequence_parallel: bool = False  # norms/residuals split along the sequence over model_parallel
    vocab_parallel: bool = False  # embedding and LM head split by vocabulary over model_parallel
    optimizer_shard: bool = False  # ZeRO: optimizer state (and weights) split over data_parallel
    optimizer_shard_threshold_kb: int = 64  # parameters smaller than this stay whole
    optimizer_weight_shard_size: int = -1  # ZeRO group size; -1: all data_parallel ranks (< dp: within a node)
    recompute: Literal["none", "full", "selective"] = "none"  # recompute in backward (docs/parallel.md)
    allreduce_fusion_mb: int = 32  # fusion buffer (MB) of the gradient all-reduce and of ZeRO's reduce-scatter /
    #                                all-gather; 0 = MindSpore's automatic fusion
    micro_batch_interleave_num: int = 1  # nn.MicroBatchInterleaved: overlap compute and communication

    def validate(self) -> None:
        for name in ("data_parallel", "model_parallel", "pipeline_stage", "micro_batch_num",
                     "micro_batch_interleave_num"):
            require(getattr(self, name) >= 1, name, f"must be at least 1, got {getattr(self, name)}")
        require(self.micro_batch_num >= self.pipeline_stage, "micro_batch_num",
                f"{self.micro_batch_num} micro batches cannot fill {self.pipeline_stage} pipeline stages "
                f"(micro_batch_num must be >= pipeline_stage)")
        if self.pipeline_offset:
            require(len(self.pipeline_offset) == self.pipeline_stage, "pipeline_offset",
                    f"needs one entry per pipeline stage ({self.pipeline_stage}), got {len(self.pipeline_offset)}")
            require(sum(self.pipeline_offset) == 0, "pipeline_offset",
                    f"entries move layers between stages and must sum to 0, got {sum(self.pipeline_offset)}")
        require(self.optimizer_shard_threshold_kb >= 0, "optimizer_shard_threshold_kb",
                f"must be non-negative, got {self.optimizer_shard_threshold_kb}")
        require(self.optimizer_weight_shard_size == -1 or (
            self.optimizer_weight_shard_size > 1 and self.data_parallel % self.optimizer_weight_shard_size == 0),
            "optimizer_weight_shard_size", f"must be -1 (all {self.data_parallel} data-parallel ranks) or a divisor "
            f"> 1 of data_parallel {self.data_parallel}, got {self.optimizer_weight_shard_size}")
        require(self.allreduce_fusion_mb >= 0, "allreduce_fusion_mb",
                f"must be 0 (off) or positive, got {self.allreduce_fusion_mb}")
        require(not (self.sequence_parallel and self.model_parallel == 1), "sequence_parallel",
                "splits the sequence over model_parallel, which is 1")
        require(self.micro_batch_interleave_num == 1 or self.pipeline_stage == 1, "micro_batch_interleave_num",
                f"{self.micro_batch_interleave_num} cannot be combined with pipeline_stage "
                f"{self.pipeline_stage} (the pipeline already interleaves micro batches); set it to 1")

    @property
    def device_num(self) -> int:
        return self.data_parallel * self.model_parallel * self.pipeline_stage

    def stage_layers(self, num_layers: int) -> list[int]:
        """Decoder layers per pipeline stage: layer i sits on stage floor(i * pp / layers) (the even
        split `i // (layers / pp)`, earlier stages taking the remainder), plus `pipeline_offset`."""
        pp = self.pipeline_stage
        even = [-((-num_layers * (s + 1)) // pp) + ((-num_layers * s) // pp) for s in range(pp)]
        return [n + o for n, o in zip(even, self.pipeline_offset or [0] * pp)]

    def layer_stages(self, num_layers: int) -> list[int]:
        """The pipeline stage of each decoder layer, in order."""
        return [stage for stage, n in enumerate(self.stage_layers(num_layers)) for _ in range(n)]


@dataclass
class DataConfig:
    """Packed MindRecord data of `seq_length + 1` tokens per sample (`pangu-pro preprocess` output).

    `train_files` / `eval_files` list shard files or preprocess output folders (a folder means its
    shards, sorted). `index_file` is a .npy of sample indices: training then reads exactly those
    samples in that order (a multi-round training subset) instead of a shuffle.
    """

    train_files: list[str] = field(default_factory=list)  # MindRecord shards or preprocess output folders to train on
    eval_files: list[str] = field(default_factory=list)  # held-out shards or folders (train.eval_every, perplexity)
    tokenizer: Optional[str] = None  # SentencePiece .model used to make the data
    shuffle: bool = True  # a seeded permutation per epoch; ignored with index_file
    seed: int = 1234  # shuffle seed
    index_file: Optional[str] = None  # .npy of sample indices read in that order (multi-round)
    allow_shorter_samples: bool = False  # train on shards packed shorter than model.seq_length (else refused)

    def validate(self) -> None:
        for name in ("train_files", "eval_files"):
            for i, path in enumerate(getattr(self, name)):
                require(bool(path.strip()), f"{name}[{i}]", "empty path")
        require(self.seed >= 0, "seed", f"must be non-negative (numpy seeds the shuffle), got {self.seed}")
        if self.index_file is not None:
            require(self.index_file.endswith(".npy"), "index_file",
                    f"expected a numpy .npy file of sample indices, got {self.index_file!r}")
        if self.tokenizer is not None:
            require(self.tokenizer.endswith(".model"), "tokenizer",
                    f"expected a SentencePiece .model file, got {self.tokenizer!r}")


STOPPABLE_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2", "SIGHUP")  # train.stop_signals may name these


def default_stop_signals() -> list[str]:
    """What schedulers send before they stop a job (SIGUSR1: some send it first) and Ctrl-C."""
    return ["SIGTERM", "SIGINT", "SIGUSR1"]


@dataclass
class TrainConfig:
    """Optimisation (paper-notes §6) and the run's bookkeeping (docs/training.md describes each key)."""

    batch_size: int = 8  # per data-parallel rank, per micro step
    grad_accum_steps: int = 1  # micro steps per optimizer step
    lr: float = 3e-4  # peak learning rate (after warmup, before lr_base_batch scaling)
    lr_base_batch: Optional[int] = None  # if set: lr *= (global_batch / lr_base_batch) ** lr_scaling_power
    lr_scaling_power: float = 0.5  # exponent of the batch-size lr scaling (0.5: square root)
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio at the last step
    warmup_steps: int = 0  # linear warmup from 0 to lr
    warmup_fraction: Optional[float] = None  # warm-up as a fraction of `steps` (instead of warmup_steps)
    steps: int = 1000  # optimizer steps of the run
    weight_decay: float = 0.1  # AdamW decoupled weight decay (not on norms, biases and SIAF parameters)
    beta1: float = 0.9  # AdamW first-moment decay
    beta2: float = 0.95  # AdamW second-moment decay
    eps: float = 1e-8  # AdamW epsilon
    grad_clip: float = 1.0  # global-norm clip; 0 turns clipping off
    loss_scale: Literal["none", "static", "dynamic"] = "none"  # fp16 loss scaling: off, fixed or dynamic
    loss_scale_value: float = 65536.0  # initial (dynamic) or fixed (static) scale
    loss_scale_factor: float = 2.0  # dynamic: divide on overflow, multiply after a clean window
    loss_scale_window: int = 1000  # dynamic: clean steps before the scale grows
    seed: int = 1234  # seed of the weight initialisation
    output_dir: str = "runs/default"  # run folder: checkpoints/, metrics.jsonl, config.yaml
    init_weights: Optional[str] = None  # start a fresh run from these weights (e.g. an inherited student)
    save_every: int = 0  # steps between checkpoints; 0 = only at the end
    keep_last: int = 3  # checkpoints kept (older ones are deleted)
    log_every: int = 1  # steps between metrics.jsonl lines
    eval_every: int = 0  # steps between held-out evaluations on data.eval_files; 0 = never
    eval_batches: int = 8  # batches of batch_size per evaluation
    peak_flops: Optional[float] = None  # per device, for MFU; None: measured on the CPU, vendor figure on Ascend
    stop_signals: list[str] = field(default_factory=default_stop_signals)  # on these: finish the step, save, exit 75

    def validate(self) -> None:
        for name in ("batch_size", "grad_accum_steps", "steps", "keep_last", "log_every", "eval_batches",
                     "loss_scale_window"):
            require(getattr(self, name) >= 1, name, f"must be at least 1, got {getattr(self, name)}")
        for name in ("save_every", "eval_every"):
            require(getattr(self, name) >= 0, name, f"must be 0 (off) or positive, got {getattr(self, name)}")
        require(self.lr > 0, "lr", f"must be positive, got {self.lr}")
        require(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", f"must lie in [0, 1], got {self.min_lr_ratio}")
        require(0 <= self.warmup_steps <= self.steps, "warmup_steps",
                f"must lie in [0, steps={self.steps}], got {self.warmup_steps}")
        if self.warmup_fraction is not None:
            require(0 <= self.warmup_fraction <= 1, "warmup_fraction", f"must lie in [0, 1], got {self.warmup_fraction}")
            require(self.warmup_steps == 0, "warmup_fraction",
                    f"set either warmup_steps ({self.warmup_steps}) or warmup_fraction, not both")
        require(self.weight_decay >= 0, "weight_decay", f"must be non-negative, got {self.weight_decay}")
        for name in ("beta1", "beta2"):
            require(0 <= getattr(self, name) < 1, name, f"must lie in [0, 1), got {getattr(self, name)}")
        require(self.eps > 0, "eps", f"must be positive, got {self.eps}")
        require(self.grad_clip >= 0, "grad_clip", f"must be 0 (off) or positive, got {self.grad_clip}")
        if self.lr_base_batch is not None:
            require(self.lr_base_batch >= 1, "lr_base_batch", f"must be at least 1, got {self.lr_base_batch}")
        require(self.loss_scale_value >= 1, "loss_scale_value", f"must be at least 1, got {self.loss_scale_value}")
        require(self.loss_scale_factor > 1, "loss_scale_factor", f"must exceed 1, got {self.loss_scale_factor}")
        if self.peak_flops is not None:
            require(self.peak_flops > 0, "peak_flops", f"must be positive, got {self.peak_flops}")
        require(self.seed >= 0, "seed", f"must be non-negative, got {self.seed}")
        require(bool(self.output_dir.strip()), "output_dir", "empty path")
        for name in self.stop_signals:
            require(name in STOPPABLE_SIGNALS, "stop_signals",
                    f"{name!r} is not one of {', '.join(STOPPABLE_SIGNALS)}")


@dataclass
class DeviceConfig:
    """Ascend runtime settings that `runtime.apply_device_config` applies (the CPU ignores them)."""

    jit_level: Optional[Literal["O0", "O1", "O2"]] = None  # MindSpore jit_config jit_level; None: its default
    max_device_memory_gb: Optional[float] = None  # memory pool cap per device (runtime.set_memory); None: all

    def validate(self) -> None:
        if self.max_device_memory_gb is not None:
            require(1 <= self.max_device_memory_gb <= 1024, "max_device_memory_gb",
                    f"must be in [1, 1024] GB, got {self.max_device_memory_gb}")


# ----------------------------------------------------------------- the `multi_round:` section

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


@dataclass
class Config:
    """A whole pangu-pro config file."""

    model: ModelConfig
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    multi_round: Optional[MultiRoundConfig] = None  # multi-round training (pangu_pro.rounds, docs/multi_round.md)
    source: str = field(default="", compare=False)

    def validate(self) -> None:
        check_layout(self, None)


def check_layout(config: Config, device_num: int | None) -> None:
    """Cross-section checks of `config.parallel` against `config.model` (and the device count).

    `device_num=None` skips the device-count check (Config.validate runs that way); launchers pass
    the real count. Raises ConfigError naming the parallel key at fault.
    """
    p, m = config.parallel, config.model
    if device_num is not None:
        require(p.device_num == device_num, "parallel",
                f"data_parallel {p.data_parallel} x model_parallel {p.model_parallel} x pipeline_stage "
                f"{p.pipeline_stage} = {p.device_num}, but the run has {device_num} devices")
    mp = p.model_parallel
    require(m.num_heads % mp == 0, "parallel.model_parallel",
            f"{mp} does not divide model.num_heads {m.num_heads}")
    require(m.kv_heads % mp == 0, "parallel.model_parallel",
            f"{mp} does not divide model.num_kv_heads {m.kv_heads}")
    require(m.intermediate_size % mp == 0, "parallel.model_parallel",
            f"{mp} does not divide model.intermediate_size {m.intermediate_size}")
    if p.vocab_parallel:
        require(m.vocab_size % mp == 0, "parallel.vocab_parallel",
                f"model.vocab_size {m.vocab_size} is not divisible by model_parallel {mp}")
    if p.sequence_parallel:
        require(m.seq_length % mp == 0, "parallel.sequence_parallel",
                f"model.seq_length {m.seq_length} is not divisible by model_parallel {mp}")
    require(m.seq_length % mp == 0, "parallel.model_parallel",
            f"{mp} does not divide model.seq_length {m.seq_length} (the loss splits tokens over it)")
    require(m.num_layers >= p.pipeline_stage, "parallel.pipeline_stage",
            f"{p.pipeline_stage} stages need at least as many layers, model.num_layers is {m.num_layers}")
    if p.pipeline_stage > 1:
        require(not m.tie_word_embeddings, "parallel.pipeline_stage",
                "tied embeddings would share one weight between the first and the last stage; "
                "set model.tie_word_embeddings: false or pipeline_stage: 1")
    require(config.train.batch_size % p.micro_batch_interleave_num == 0, "parallel.micro_batch_interleave_num",
            f"{p.micro_batch_interleave_num} does not divide train.batch_size {config.train.batch_size} (each "
            "interleaved slice must split evenly over the data-parallel ranks)")
    if p.pipeline_offset:
        counts = p.stage_layers(m.num_layers)
        require(min(counts) >= 1, "parallel.pipeline_offset",
                f"leaves a stage without layers: layers per stage would be {counts}")


def config_from_dict(data: dict, source: str = "", kind: type = Config) -> Config:
    """Build and validate a Config (or a stage's subclass `kind`, which adds its own section, e.g.
    pangu_pro.inherit.config.InheritRunConfig) from a raw mapping; errors name `source` and the key."""
    data = dict(data)
    data.pop("source", None)
    try:
        config = from_mapping(kind, data)
    except ConfigError as err:
        raise err.within(source=source or None) from None
    config.source = source
    return config


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read `path` (YAML), apply ``section.key=value`` overrides, and validate everything."""
    data = read_yaml(path)
    try:
        apply_overrides(data, overrides)
        return config_from_dict(data, str(path))
    except ConfigError as err:
        raise blame_override(err, overrides, str(path)) from None


def save_config(config: Config, path: str | Path) -> None:
    """Write `config` as YAML (atomically), so that a run directory describes itself."""
    import yaml

    from pangu_pro.io import atomic_write_text

    data = to_mapping(config)
    data.pop("source", None)
    atomic_write_text(Path(path), yaml.safe_dump(data, sort_keys=False))


def replace_model(config: Config, **changes) -> Config:
    """A copy of `config` whose model section has `changes` applied and re-validated."""
    model = dataclasses.replace(config.model, **changes)
    try:
        model.validate()
    except ConfigError as err:
        raise err.within("model", config.source or None) from None
    return dataclasses.replace(config, model=model)
