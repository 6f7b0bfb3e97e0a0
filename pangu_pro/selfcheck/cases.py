"""The self-check's cases, one table for `ascend_check.sh --list` and the run: each case's layout
settings, its trainer arguments, the plan the script runs, and each collected case against its reference.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from pangu_pro.selfcheck.compare import Verdict, compare, read_result, tolerance_note

SEQ = {"ascend": 2048, "cpu": 128}  # 2048: flash sparse_mode 2 with the compressed mask, as every preset
GLOBAL_BATCH = {"ascend": 8, "cpu": 4}  # sequences per update of the standard cases
PRESET = "configs/pangu_1b_pro.yaml"  # the shipped preset whose sections the check runs (= parallel/..._8dev)
PRESET_ACCUMULATION = 4  # the preset's grad_accum_steps (64) scaled down: a few micro steps show the path
# step 1's gradients overflow (x 1e38: fp16 gives inf, and the fp32 sum of squares too), the scale drops to 100
OVERFLOW = {"train.loss_scale": "dynamic", "train.loss_scale_value": "1.0e+38", "train.loss_scale_factor": "1.0e+36"}


@dataclass(frozen=True)
class Case:
    """One run of the check. `settings`: the config overrides that make its layout (the batch size per
    rank and the sequence length are derived); `reference`: the single-device case it is compared with
    (None: it is a reference); `resume`: (case, step) whose checkpoint it resumes from; `skipped`: the
    steps its loss scale must skip; `kind`: train, or kernels (fused against unfused, one device)."""
    name: str
    workers: int
    settings: dict = field(default_factory=dict)
    reference: Optional[str] = "single"
    devices: tuple = ("ascend",)
    global_batch: Optional[int] = None  # default GLOBAL_BATCH[device]
    resume: Optional[tuple] = None
    skipped: tuple = ()
    kind: str = "train"
    note: str = ""


def preset_settings(root: Path) -> dict:
    """The 1B Pro preset's own `parallel:` section and its accumulation (scaled), and its model's numerics
    (bf16, flash attention, fused kernels), as overrides: the check runs what users launch."""
    import yaml

    raw = yaml.safe_load((root / PRESET).read_text(encoding="utf-8"))
    settings = {f"parallel.{k}": v for k, v in raw["parallel"].items()}
    settings["train.grad_accum_steps"] = min(int(raw["train"].get("grad_accum_steps", 1)), PRESET_ACCUMULATION)
    for key in ("compute_dtype", "use_flash_attention", "use_fused_kernels"):
        settings[f"model.{key}"] = raw["model"][key]
    return settings


def cases(root: Path) -> list[Case]:
    """Every case of scripts/ascend_check.sh, in run order (a reference before the cases against it)."""
    preset = preset_settings(root)
    dp_preset = int(preset["parallel.data_parallel"])
    preset_batch = dp_preset * int(preset["train.grad_accum_steps"])  # batch 1 per rank and micro step
    tp = {"parallel.data_parallel": 2, "parallel.model_parallel": 4}
    both = ("ascend", "cpu")
    return [
        Case("single", 1, reference=None, devices=both, note="the reference of the layouts below"),
        Case("kernels", 1, reference=None, kind="kernels",
             note="fused kernels (flash attention, RoPE, RmsNorm) in bf16 against the unfused fp32 path: "
                  "loss and every gradient"),
        Case("dp8", 8, {"parallel.data_parallel": 8}),
        Case("dp2", 2, {"parallel.data_parallel": 2}, devices=("cpu",)),
        Case("dp2_accumulation", 2, {"parallel.data_parallel": 2, "train.grad_accum_steps": 2}, devices=("cpu",)),
        Case("dp2_mp4", 8, tp),
        Case("dp2_pp2_mp2", 8, {"parallel.data_parallel": 2, "parallel.model_parallel": 2,
                                "parallel.pipeline_stage": 2, "parallel.micro_batch_num": 4}),
        Case("zero", 8, {"parallel.data_parallel": 8, "parallel.optimizer_shard": True,
                         "parallel.optimizer_shard_threshold_kb": 0}),
        Case("sequence_parallel", 8, {**tp, "parallel.sequence_parallel": True}),
        Case("vocab_parallel", 8, {**tp, "parallel.vocab_parallel": True}),
        Case("accumulation", 8, {"parallel.data_parallel": 4, "parallel.model_parallel": 2,
                                 "train.grad_accum_steps": 2}),
        Case("interleave", 8, {**tp, "parallel.micro_batch_interleave_num": 2}),
        Case("resume_zero_from_dp2_mp4", 8, {"parallel.data_parallel": 8, "parallel.optimizer_shard": True},
             resume=("dp2_mp4", 2), note="the dp2_mp4 run's step-2 checkpoint resumed under ZeRO for step 3"),
        Case("resume_dp2", 2, {"parallel.data_parallel": 2}, devices=("cpu",), resume=("dp2", 2),
             note="the dp2 run's step-2 checkpoint resumed for step 3"),
        Case("single_preset", 1, {k: v for k, v in preset.items() if not k.startswith("parallel.")}, reference=None,
             global_batch=preset_batch, note=f"the reference of the preset case ({PRESET} train/model sections)"),
        Case("preset_1b_pro", dp_preset, preset, reference="single_preset", global_batch=preset_batch,
             note=f"{PRESET}'s parallel: section, its accumulation {PRESET_ACCUMULATION} of 64, bf16, flash"),
        Case("single_fp16_overflow", 1, {"model.compute_dtype": "float16", **OVERFLOW}, reference=None,
             devices=both, skipped=(1,), note="step 1 overflows (loss scale 1e38) and is skipped"),
        Case("fp16_overflow_dp8", 8, {"parallel.data_parallel": 8, "model.compute_dtype": "float16", **OVERFLOW},
             reference="single_fp16_overflow", skipped=(1,), note="every rank skips step 1 (same weights digest)"),
        Case("fp16_overflow_dp2_mp4", 8, {**tp, "model.compute_dtype": "float16", **OVERFLOW},
             reference="single_fp16_overflow", skipped=(1,), note="the all-reduced flag skips step 1 on every rank"),
        Case("fp16_overflow_dp2", 2, {"parallel.data_parallel": 2, **OVERFLOW}, devices=("cpu",),
             reference="single_fp16_overflow", skipped=(1,), note="every rank skips step 1 (same weights digest)"),
    ]


def cases_for(device: str, root: Path) -> list[Case]:
    return [c for c in cases(root) if device in c.devices]


def batch_per_rank(case: Case, device: str) -> int:
    """train.batch_size that gives the case its global batch: global / (dp x accumulation x micro batches)."""
    st = case.settings
    dp = int(st.get("parallel.data_parallel", 1))
    accumulation = int(st.get("train.grad_accum_steps", 1))
    micro = int(st.get("parallel.micro_batch_num", 1)) if int(st.get("parallel.pipeline_stage", 1)) > 1 else 1
    total = case.global_batch or GLOBAL_BATCH[device]
    batch, rest = divmod(total, dp * accumulation * micro)
    interleave = int(st.get("parallel.micro_batch_interleave_num", 1))
    if rest or batch < 1 or batch % interleave:
        raise ValueError(f"case {case.name}: global batch {total} does not split over dp {dp} x accumulation "
                         f"{accumulation} x micro batches {micro} (interleave {interleave})")
    return batch


def _text(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def case_arguments(case: Case, device: str, out: Path, table: list[Case]) -> list[str]:
    """The trainer arguments of a case (without data, initial weights and output folder)."""
    args = [f"{k}={_text(v)}" for k, v in case.settings.items()]
    args += [f"model.seq_length={SEQ[device]}", f"train.batch_size={batch_per_rank(case, device)}"]
    if any(c.resume and c.resume[0] == case.name for c in table):  # a later case resumes from its checkpoints
        args.append("train.save_every=1")
    if case.resume is not None:
        source = next(c for c in table if c.name == case.resume[0])
        semi_auto = any(source.settings.get(k) not in (None, 1, False) for k in
                        ("parallel.model_parallel", "parallel.pipeline_stage", "parallel.optimizer_shard"))
        folder = out / source.name / "checkpoints" / ("rank_0" if semi_auto else "")
        args += ["--resume", str(folder / f"step_{case.resume[1]:08d}")]
    return args


def layout_text(case: Case) -> str:
    """'dp2 x mp4, ZeRO, accumulation 4, ...' from a case's settings."""
    st = case.settings
    parts = [" x ".join(f"{tag}{st[key]}" for tag, key in (("dp", "parallel.data_parallel"),
                                                            ("mp", "parallel.model_parallel"),
                                                            ("pp", "parallel.pipeline_stage"))
                        if int(st.get(key, 1)) > 1) or "1 device"]
    flags = {"parallel.optimizer_shard": "ZeRO", "parallel.sequence_parallel": "sequence parallel",
             "parallel.vocab_parallel": "vocab parallel"}
    parts += [text for key, text in flags.items() if st.get(key)]
    for key, text in (("parallel.micro_batch_num", "micro batches"), ("train.grad_accum_steps", "accumulation"),
                      ("parallel.micro_batch_interleave_num", "interleave")):
        if int(st.get(key, 1)) > 1:
            parts.append(f"{text} {st[key]}")
    if "model.compute_dtype" in st:
        parts.append(str(st["model.compute_dtype"]).replace("bfloat16", "bf16").replace("float16", "fp16"))
    if st.get("model.use_flash_attention"):
        parts.append("flash")
    if "train.loss_scale" in st:
        parts.append(f"{st['train.loss_scale']} loss scale")
    return ", ".join(parts)


def list_lines(device: str, root: Path) -> list[str]:
    """`ascend_check.sh --list`: every case of `device`, one line each: name, workers, layout, sequence."""
    lines = [] if device == "ascend" else [
        f"# --cpu: the data-parallel cases on 2 CPU workers at sequence {SEQ['cpu']}, not {SEQ['ascend']} (too slow "
        f"on the CPU; flash sparse_mode 2 is not exercised), fp32 (the CPU has no fp16/bf16 training)"]
    for case in cases_for(device, root):
        against = f"vs {case.reference}" if case.reference else "reference"
        resumed = f"; resumes {case.resume[0]} at step {case.resume[1]}" if case.resume else ""
        note = f" -- {case.note}" if case.note else ""
        lines.append(f"{case.name:<26} {case.workers} worker(s)  {layout_text(case):<44} seq {SEQ[device]:<5} "
                     f"{against}{resumed}{note}")
    return lines


def plan_lines(device: str, root: Path, out: Path) -> list[str]:
    """What the script runs: one tab-separated line per case: name, workers, kind, reference, arguments."""
    table = cases_for(device, root)
    return ["\t".join([c.name, str(c.workers), c.kind, c.reference or "-", " ".join(case_arguments(c, device, out,
                                                                                                  table))])
            for c in table]


def case_verdicts(device: str, root: Path, out: Path) -> tuple[str, list[Verdict]]:
    """Every collected case against its reference (OUT/<name>.json), and a case or reference that must
    skip steps skipped exactly those; cases whose run failed (no result) are left out: the script counted
    them. Returns the tolerance note and the verdicts."""
    table = cases_for(device, root)
    results = {c.name: read_result(out / f"{c.name}.json") for c in table if (out / f"{c.name}.json").is_file()}
    verdicts = []
    for case in table:
        if case.kind != "train" or case.name not in results:
            continue
        if case.reference is None:
            verdict = Verdict(case.name, True)
        elif case.reference in results:
            verdict = compare(results[case.reference], results[case.name])
        else:
            continue
        if sorted(results[case.name].get("skipped", [])) != sorted(case.skipped):
            verdict.problems.append(f"skipped steps {results[case.name].get('skipped', [])}, the case needs "
                                    f"{list(case.skipped)} skipped")
            verdict.passed = False
        if case.reference is not None or case.skipped:
            verdicts.append(verdict)
    dps = [int(c.settings.get("parallel.data_parallel", 1)) for c in table if c.reference]
    return tolerance_note([dp for dp in dps if dp > 1]), verdicts
