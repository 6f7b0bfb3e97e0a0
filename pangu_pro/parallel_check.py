"""The cluster self-check's logic (scripts/ascend_check.sh): every parallel layout must train like one device.

The script trains a small model a few steps under each case of one table (`cases()`: layouts, the
1B Pro preset's own sections, a resume onto another layout, an fp16 overflow step, the fused kernels)
from the same initial weights and data (through the real launcher and trainer), then per case:

    python -m pangu_pro.parallel_check cases --device ascend|cpu [--list]   (the table / the plan run)
    python -m pangu_pro.parallel_check collect RUN_DIR --name NAME --init W --out RESULT.json
    python -m pangu_pro.parallel_check verdicts --device D --out DIR   (PASS/FAIL per case vs its reference)
    python -m pangu_pro.parallel_check kernels CONFIG --init W --data D --seq S   (fused vs unfused fp32)

`collect` reads the run's metrics.jsonl (loss, global gradient norm and skipped steps per step), its
final weights and AdamW state (a distributed run is merged first: `train.merge`, so the check covers
the merge too) and the data-parallel ranks' weight digests from the worker logs; `verdicts` puts each
case beside its single-device reference. What is compared, and the default tolerances (bf16 on the
NPU; reduction orders differ between layouts):

- loss per step: relative difference <= 2e-2
- global gradient norm per step: relative difference <= 5e-2 (a per-rank slice's norm is off by
  sqrt(ranks), a gradient divided by dp once too often by 1 - 1/dp >= 0.5: both far beyond this;
  the output's first line says so)
- updated weights: max |w - w_ref| over max |w_ref - w_init| <= 5e-2, i.e. relative to how far the
  reference moved (a layout that drops or doubles an update fails)
- AdamW moments: max |m - m_ref| over max |m_ref| <= 5e-2 (each of m and v), the update count exactly
- skipped steps equal the case's (an overflow step skipped by every rank), and in data parallel every
  rank's weights digest identical (a rank that applied the step alone differs)
- kernels: loss within 2e-2 and every gradient within 5e-2 (||g - g_ref|| / ||g_ref||) of the unfused
  fp32 path on the same device

Multi-round scoring (`pangu-pro score`, docs/multi_round.md) is checked the same way: the script
scores the single-device run's final checkpoint on one device and under a parallel layout (semi-auto
dp 2 x mp 4 on the NPUs; data parallel over 2 workers with --cpu), then

    python -m pangu_pro.parallel_check scores REFERENCE.npz RESULT.npz --name NAME   (PASS/FAIL)

compares every unit's and every sample's score (relative difference <= 2e-2, as the loss), after
checking both files cover the same samples in the same units (a layout that scores rows of another
unit, or a rank's rows twice, fails on the samples even when the unit means agree).

Parameter inheritance (`pangu-pro inherit`, configs/parallel_check_inherit.yaml: learned masks for a
few steps) on one device and data parallel at the same global batch:

    python -m pangu_pro.parallel_check collect-inherit RUN_DIR --name NAME --workers N --out RESULT.json
    python -m pangu_pro.parallel_check inherit REFERENCE.json RESULT.json ...   (PASS/FAIL per run)
    python -m pangu_pro.parallel_check teacher-dtype FP32.json BF16.json        (PASS/FAIL)

- every rank's digest of its masks and Lagrange multipliers after the last step identical (only rank 0
  writes the masks, so each rank prints its digest; a rank whose gradients were not averaged fails)
- every rank's digest of the mask noise it drew different (ranks drawing the same noise would give the
  averaged gradient one mask sample instead of one per rank, and nothing else would show it)
- masked-teacher loss per mask step within the loss tolerance of one device's: the runs are not equal
  (each rank draws its own mask noise: up to 1.7e-3 apart on the CPU with 2 workers, the size of the
  spread of one device's first-step loss over 4 noise seeds, 1.8e-3, at keep probability 0.998)
- the student loads into its config, and the materialisation report's folded teacher (0/1 selection)
  and student losses agree within 2^-8 (one bf16 unit: the same weights in both)
- teacher-dtype: the first mask step's loss (before any update, the same mask noise) with the teacher's
  matmul weights stored in bf16 against fp32, within 2^-8; each run stored what it says (inherit.json)

`data` writes the synthetic corpus, `init` the initial weights, `logits` checks an HF export against
our model on the merged checkpoint.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

TOLERANCES = {"loss": 2e-2, "grad_norm": 5e-2, "weights": 5e-2, "moments": 5e-2}
# inheritance (see the module doc): mask-step losses as training losses; the folded teacher against the
# student and the bf16-stored teacher against the fp32 one within one bf16 unit in the last place (2^-8)
INHERIT_TOLERANCES = {"loss": TOLERANCES["loss"], "folded": 2.0 ** -8, "bf16_teacher": 2.0 ** -8}
RANK_DIGEST = re.compile(r"^rank (\d+)/\d+: mask step \d+ sha256 ([0-9a-f]{64})$", re.M)
RANK_NOISE = re.compile(r"^rank (\d+)/\d+: mask noise sha256 ([0-9a-f]{64})$", re.M)
RANK_WEIGHTS = re.compile(r"^rank (\d+)/\d+: step \d+ weights sha256 ([0-9a-f]{64})$", re.M)  # trainer, data parallel
SCORE_TOLERANCE = 2e-2  # relative, per unit and per sample: scores are losses


# ---------------------------------------------------------------- results and their comparison (pure)

def relative(a: float, b: float) -> float:
    """|a - b| / |b|; inf when either is not finite, so that a maximum over steps cannot skip a NaN."""
    diff = abs(a - b) / max(abs(b), 1e-12)
    return diff if np.isfinite(diff) else float("inf")


@dataclass
class Verdict:
    name: str
    passed: bool
    differences: dict = field(default_factory=dict)  # quantity -> worst difference (see module doc)
    problems: list = field(default_factory=list)

    def line(self) -> str:
        shown = ", ".join(f"{k} {v:.2e}" for k, v in self.differences.items())
        why = f" ({'; '.join(self.problems)})" if self.problems else ""
        return f"{'PASS' if self.passed else 'FAIL'} {self.name:<16} {shown}{why}"


def compare_series(verdict: Verdict, key: str, ref: dict, got: dict, tolerance: float) -> None:
    """Add to `verdict` the worst relative difference of `got` against `ref` ({step: value}) over the
    reference's steps, and a problem if a step is missing or the difference exceeds `tolerance`."""
    missing = sorted(set(ref) - set(got), key=int)
    if not ref or missing:
        verdict.problems.append(f"{key}: steps {missing[:5] or 'all'} missing")
        return
    worst = max(relative(float(got[s]), float(ref[s])) for s in ref)
    verdict.differences[key] = worst
    if worst > tolerance:
        verdict.problems.append(f"{key} off by {worst:.2e} > {tolerance:.0e}")


def grad_norm_catches(dp: int, tolerance: float = TOLERANCES["grad_norm"]) -> bool:
    """Whether a gradient norm 1/dp of the reference's (a double division by the data-parallel degree)
    fails the grad_norm tolerance: its relative difference is 1 - 1/dp."""
    return 1.0 - 1.0 / dp > tolerance


def tolerance_note(dps: list[int], tolerance: float = TOLERANCES["grad_norm"]) -> str:
    """The line the comparison prints first: what the grad_norm tolerance catches at this run's dp degrees."""
    caught = all(grad_norm_catches(dp, tolerance) for dp in dps)
    smallest = min(dps) if dps else 2
    return (f"grad_norm tolerance {tolerance:.0e} (relative): a gradient scaled by 1/dp is off by 1 - 1/dp, "
            f">= {1 - 1 / smallest:.2f} at dp {smallest} here, so it {'fails' if caught else 'would NOT fail'}; "
            f"optimizer moments within {TOLERANCES['moments']:.0e} of the reference's largest")


def compare_tensors(verdict: Verdict, key: str, ref: dict, got: dict, scale: float, tolerance: float) -> None:
    """max |got - ref| over every tensor of `ref`, divided by `scale`, into `verdict` (missing or
    misshapen tensors are problems)."""
    absent = sorted(set(ref) - set(got))
    if absent:
        verdict.problems.append(f"{key}: {len(absent)} tensors missing, e.g. {absent[:2]}")
        return
    worst = 0.0
    for name, value in ref.items():
        if got[name].shape != value.shape:
            verdict.problems.append(f"{key}: {name} has shape {got[name].shape}, expected {value.shape}")
            return
        diff = float(np.abs(got[name].astype(np.float64) - value).max()) if value.size else 0.0
        worst = max(worst, diff / max(scale, 1e-30) if np.isfinite(diff) else float("inf"))
    verdict.differences[key] = worst
    if worst > tolerance:
        verdict.problems.append(f"{key} off by {worst:.2e} > {tolerance:.0e}")


def compare_moments(verdict: Verdict, ref: dict, got: dict, tolerance: float) -> None:
    """AdamW's first and second moments, each family relative to the reference's largest value, and its
    update count exactly (a skipped step must not count, on any rank)."""
    for prefix in ("adam_m.", "adam_v."):
        family = {k: v for k, v in ref.items() if k.startswith(prefix)}
        if family:
            largest = max(float(np.abs(v).max()) for v in family.values() if v.size)
            compare_tensors(verdict, prefix.rstrip("."), family, got, largest, tolerance)
    for name in sorted(k for k in ref if not k.startswith(("adam_m.", "adam_v."))):
        if name not in got or not np.array_equal(np.asarray(got[name]), np.asarray(ref[name])):
            verdict.problems.append(f"{name} {np.asarray(got.get(name)).tolist()}, expected "
                                    f"{np.asarray(ref[name]).tolist()}")


def compare(reference: dict, result: dict, tolerances: Optional[dict] = None) -> Verdict:
    """`result` against `reference`; both as written by `collect` (loss/grad_norm: {step: value},
    weights/moments: {name: array} or a safetensors path, weight_update: max |w_ref - w_init|,
    skipped: the steps the loss scale skipped, first_step: the first step the run trained (> 1 after a
    resume), digests: {rank: weights sha256} of a data-parallel run)."""
    tol = {**TOLERANCES, **(tolerances or {})}
    verdict = Verdict(result.get("name", "?"), True)
    first = int(result.get("first_step", 1))
    skipped = {str(s) for s in reference.get("skipped", [])}
    for key in ("loss", "grad_norm"):
        ref = {s: v for s, v in reference.get(key, {}).items() if int(s) >= first}
        if key == "grad_norm":  # an overflowed step's norm is not finite on both sides
            ref = {s: v for s, v in ref.items() if s not in skipped}
        compare_series(verdict, key, ref, result.get(key, {}), tol[key])
    if sorted(result.get("skipped", [])) != sorted(s for s in reference.get("skipped", []) if s >= first):
        verdict.problems.append(f"skipped steps {sorted(result.get('skipped', []))}, the reference skipped "
                                f"{sorted(reference.get('skipped', []))}")
    digests = result.get("digests") or {}
    if len(set(digests.values())) > 1:
        verdict.problems.append(f"the data-parallel ranks' weights differ ({len(set(digests.values()))} digests "
                                f"over {len(digests)} ranks)")
    if reference.get("moments"):
        if not result.get("moments"):
            verdict.problems.append("moments: the run saved no optimizer state")
        else:
            compare_moments(verdict, _weights(reference["moments"]), _weights(result["moments"]), tol["moments"])
    if "weights" in reference:
        moved = max(float(reference.get("weight_update", 0.0)), 1e-12)
        compare_tensors(verdict, "weights", _weights(reference["weights"]), _weights(result.get("weights")), moved,
                        tol["weights"])
    verdict.passed = not verdict.problems
    return verdict


def compare_scores(reference: dict, result: dict, name: str, tolerance: float = SCORE_TOLERANCE) -> Verdict:
    """Scores of one checkpoint under a layout (`result`) against one device's (`reference`), both as
    `rounds.scoring.load_scores` reads them: same unit size and samples, then the worst relative
    difference of the unit scores and of the sample scores, each within `tolerance`."""
    verdict = Verdict(name, True)
    for key in ("unit_size", "num_samples"):
        if reference[key] != result[key]:
            verdict.problems.append(f"{key} {result[key]}, expected {reference[key]}")
    if not verdict.problems:
        for key, what in (("unit_loss", "unit"), ("sample_loss", "sample")):
            ref, got = np.asarray(reference[key], np.float64), np.asarray(result[key], np.float64)
            if ref.shape != got.shape:
                verdict.problems.append(f"{got.size} {what} scores, expected {ref.size}")
                continue
            diff = np.abs(got - ref) / np.maximum(np.abs(ref), 1e-12)
            diff[~np.isfinite(got)] = np.inf
            worst = int(np.argmax(diff))
            verdict.differences[f"{what}s"] = float(diff[worst])
            if diff[worst] > tolerance:
                verdict.problems.append(f"{what} {worst} scored {got[worst]:.4f}, one device {ref[worst]:.4f} "
                                        f"(off by {diff[worst]:.2e} > {tolerance:.0e}; "
                                        f"{int((diff > tolerance).sum())} {what}s off)")
    verdict.passed = not verdict.problems
    return verdict


def compare_score_files(reference_path: str | Path, result_path: str | Path, name: str) -> Verdict:
    from pangu_pro.rounds.scoring import load_scores

    return compare_scores(load_scores(reference_path), load_scores(result_path), name)


def _weights(source) -> dict:
    if source is None:
        return {}
    if isinstance(source, (str, Path)):
        from pangu_pro.tensors import load_tensors

        return load_tensors(source)[0]
    return source


def compare_files(reference_path: str | Path, result_paths: list, tolerances: Optional[dict] = None) -> list[Verdict]:
    reference = read_result(reference_path)
    return [compare(reference, read_result(p), tolerances) for p in result_paths]


def read_result(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a result file ({err})") from None
    if isinstance(data.get("weights"), str) and not Path(data["weights"]).is_absolute():
        data["weights"] = str(path.parent / data["weights"])
    return data


# ---------------------------------------------------------------- inheritance (pure)

def rank_digests(texts: list[str], pattern: re.Pattern = RANK_DIGEST) -> dict[int, str]:
    """{rank: sha256} from the lines `learn_masks` prints on every rank of a data-parallel run: the
    digest of that rank's masks and Lagrange multipliers after the last mask step (RANK_DIGEST), or of
    the mask noise it drew (RANK_NOISE)."""
    out = {}
    for text in texts:
        for match in pattern.finditer(text):
            out[int(match.group(1))] = match.group(2)
    return out


def ranked_digests(raw: dict, workers: int, what: str, problems: list[str]) -> dict[int, str]:
    """{rank: digest} of a collected result (JSON keys are strings); every rank of `workers` that printed
    no `what` digest is added to `problems`."""
    digests = {int(rank): value for rank, value in raw.items()}
    silent = sorted(set(range(workers)) - set(digests))
    if silent:
        problems.append(f"ranks {silent} printed no {what} digest")
    return digests


def check_inherit(result: dict, reference: Optional[dict] = None, tolerances: Optional[dict] = None) -> Verdict:
    """One `pangu-pro inherit` run as `collect_inherit` wrote it: the student loaded; the materialisation
    report's folded teacher (0/1 selection) and student losses agree; in data parallel, every rank printed
    the same digest of its masks and multipliers and a digest of its own mask noise; against `reference`
    (the one-device run at the same global batch), the masked-teacher loss of every mask step."""
    tol = {**INHERIT_TOLERANCES, **(tolerances or {})}
    verdict = Verdict(result.get("name", "?"), True)
    verdict.problems.extend(result.get("student_problems", []))
    losses = result.get("losses")
    if not losses:
        verdict.problems.append("inherit.json has no loss report")
    else:
        diff = relative(float(losses["masked_teacher_selected"]), float(losses["student"]))
        verdict.differences["folded"] = diff
        if diff > tol["folded"]:
            verdict.problems.append(f"folded teacher {losses['masked_teacher_selected']:.4f} vs student "
                                    f"{losses['student']:.4f}: off by {diff:.2e} > {tol['folded']:.0e}")
    workers = int(result.get("workers", 1))
    if workers > 1:
        digests = ranked_digests(result.get("digests", {}), workers, "mask", verdict.problems)
        if len(set(digests.values())) > 1:
            shown = ", ".join(f"rank {r} {d[:12]}" for r, d in sorted(digests.items()))
            verdict.problems.append(f"masks differ across ranks ({shown})")
        noise = ranked_digests(result["noise_digests"], workers, "mask-noise", verdict.problems)
        drawn = Counter(noise.values())
        same = sorted(r for r, d in noise.items() if drawn[d] > 1)
        if same:
            verdict.problems.append(f"ranks {same} drew the same mask noise (the averaged gradient sees fewer "
                                    f"mask samples than {workers})")
    if reference is not None:
        compare_series(verdict, "loss", reference.get("loss", {}), result.get("loss", {}), tol["loss"])
    verdict.passed = not verdict.problems
    return verdict


def compare_teacher_dtypes(fp32: dict, bf16: dict, tolerance: float = INHERIT_TOLERANCES["bf16_teacher"]) -> Verdict:
    """The teacher's matmul weights stored in bfloat16 against float32: each run stored what it says, and
    the masked-teacher loss of the first mask step (before any update, the same mask noise) agrees."""
    verdict = Verdict("bf16_teacher", True)
    for result, expected in ((fp32, "float32"), (bf16, "bfloat16")):
        if result.get("teacher_dtype") != expected:
            verdict.problems.append(f"{result.get('name', '?')}: teacher stored in {result.get('teacher_dtype')}, "
                                    f"expected {expected}")
    first = {k: v for k, v in fp32.get("loss", {}).items() if k == "1"}
    compare_series(verdict, "loss", first, bf16.get("loss", {}), tolerance)
    verdict.passed = not verdict.problems
    return verdict


# ---------------------------------------------------------------- the cases (one table: --list and the run)

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


# ---------------------------------------------------------------- fused kernels against the unfused fp32 path

KERNEL_TOLERANCES = {"loss": 2e-2, "grads": 5e-2}  # bf16 against fp32: relative loss; per-tensor |dg| / |g|


def forward_backward(model_cfg, weights: str, ids: np.ndarray) -> tuple[float, dict]:
    """The loss and every parameter's gradient (fp32 numpy) of `model_cfg` on `weights` for `ids` [B, S+1]."""
    import mindspore as ms
    from mindspore import Tensor

    from pangu_pro.model.pangu_pi import PanGuPiWithLoss
    from pangu_pro.model.weights import build_model

    net = PanGuPiWithLoss(build_model(model_cfg, weights=weights))
    params = net.trainable_params()
    loss, grads = ms.value_and_grad(net, None, params)(Tensor(ids.astype(np.int32)))
    return float(loss.asnumpy()), {p.name: g.asnumpy().astype(np.float32) for p, g in zip(params, grads)}


def compare_kernels(reference: tuple[float, dict], fused: tuple[float, dict],
                    tolerances: Optional[dict] = None) -> Verdict:
    """The fused-kernel run's loss and gradients against the unfused fp32 run's: the loss relatively, each
    gradient by ||g - g_ref|| / ||g_ref|| (the worst tensor named)."""
    tol = {**KERNEL_TOLERANCES, **(tolerances or {})}
    verdict = Verdict("kernels", True)
    verdict.differences["loss"] = relative(fused[0], reference[0])
    if verdict.differences["loss"] > tol["loss"]:
        verdict.problems.append(f"loss {fused[0]:.4f}, unfused fp32 {reference[0]:.4f}")
    worst, where = 0.0, None
    for name, ref in reference[1].items():
        got = fused[1].get(name)
        if got is None or got.shape != ref.shape:
            verdict.problems.append(f"gradient of {name} missing or misshapen")
            continue
        diff = float(np.linalg.norm((got - ref).astype(np.float64)) / max(np.linalg.norm(ref.astype(np.float64)),
                                                                            1e-30))
        diff = diff if np.isfinite(diff) else float("inf")
        if diff >= worst:
            worst, where = diff, name
    verdict.differences["grads"] = worst
    if worst > tol["grads"]:
        verdict.problems.append(f"gradient of {where} off by {worst:.2e} > {tol['grads']:.0e}")
    verdict.passed = not verdict.problems
    return verdict


def kernels_check(config_path: str, weights: str, data: str, seq: int, batch: int = 2) -> Verdict:
    """One device: the config's kernels (bf16, flash attention with the compressed mask at seq 2048, fused
    RoPE and RmsNorm on Ascend) against the same weights and batch through the unfused fp32 path."""
    import dataclasses

    from pangu_pro.config import load_config
    from pangu_pro.data.dataset import create_dataset
    from pangu_pro.runtime import adapt_to_device, init_mindspore

    target = init_mindspore(seed=0)
    cfg = dataclasses.replace(load_config(config_path).model, seq_length=seq)
    ids = next(create_dataset([data], batch, shuffle=False).create_tuple_iterator(num_epochs=1,
                                                                                    output_numpy=True))[0]
    unfused = dataclasses.replace(cfg, compute_dtype="float32", use_flash_attention=False, use_fused_kernels=False)
    fused = adapt_to_device(cfg, target, lambda *_: None)
    verdict = compare_kernels(forward_backward(unfused, weights, ids), forward_backward(fused, weights, ids))
    if fused == unfused:
        verdict.problems.append(f"on {target} the config runs unfused fp32: nothing fused was compared")
        verdict.passed = False
    return verdict




# ---------------------------------------------------------------- collecting a run

def metrics_of(run: Path) -> tuple[dict, dict, list]:
    """(loss, grad_norm) by step (as strings, JSON keys) and the skipped steps from a run's metrics.jsonl."""
    loss, norm, skipped = {}, {}, []
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the run wrote no metrics (see its logs)")
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("type") == "train":
            loss[str(record["step"])] = record["loss"]
            norm[str(record["step"])] = record["grad_norm"]
            if record.get("skipped"):
                skipped.append(int(record["step"]))
    return loss, norm, skipped


def final_weights(run: Path, work: Path) -> Path:
    """The run's final weights file: merged first when the run saved per-rank slices."""
    from pangu_pro.train.checkpoint import latest_checkpoint

    if (run / "checkpoints").is_dir() and any(p.name.startswith("rank_") for p in (run / "checkpoints").iterdir()):
        from pangu_pro.train.merge import merge_run

        merge_run(run, work, overwrite=True)
        return work / "model.safetensors"
    latest = latest_checkpoint(run / "checkpoints")
    if latest is None:
        raise FileNotFoundError(f"{run}: no checkpoint")
    return latest / "model.safetensors"


def collect(run: str | Path, name: str, init: Optional[str], out: str | Path) -> dict:
    from pangu_pro.tensors import load_tensors

    run, out = Path(run), Path(out)
    loss, norm, skipped = metrics_of(run)
    weights = final_weights(run, out.parent / f"{name}_merged")
    moments = weights.parent / "optimizer.safetensors"
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in sorted((run / "logs").glob("worker_*.log"))]
    result = {"name": name, "run": str(run), "loss": loss, "grad_norm": norm, "weights": str(weights.resolve()),
              "moments": str(moments.resolve()) if moments.is_file() else None, "skipped": skipped,
              "first_step": min((int(s) for s in loss), default=1), "digests": rank_digests(texts, RANK_WEIGHTS)}
    if init:
        start, end = load_tensors(init)[0], load_tensors(weights)[0]
        result["weight_update"] = max(float(np.abs(end[n].astype(np.float64) - start[n]).max()) for n in start)
    out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


def collect_inherit(run: str | Path, name: str, workers: int, out: str | Path) -> dict:
    """An inherit run's masked-teacher loss per mask step (masks.jsonl), its inherit.json (loss report,
    teacher dtype), the per-rank digests from its worker logs (RUN/logs) and whether the student loads."""
    from pangu_pro.config import load_config
    from pangu_pro.io import read_json
    from pangu_pro.tensors import load_tensors
    from pangu_pro.model.weights import build_model

    run, out = Path(run), Path(out)
    path = run / "masks.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the run wrote no mask metrics (see its logs)")
    loss = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("type") == "masks":
            loss[str(record["step"])] = record["loss"]
    summary = read_json(run / "inherit.json")
    problems = []
    student = Path(summary["student"])
    try:
        build_model(load_config(student / "config.yaml").model, student)  # shapes checked against the config
        bad = [k for k, v in load_tensors(student / "model.safetensors")[0].items() if not np.isfinite(v).all()]
        if bad:
            problems.append(f"student weights not finite: {bad[:3]}")
    except Exception as err:  # noqa: BLE001 - reported as the case's failure
        problems.append(f"student {student} does not load: {err}")
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in sorted((run / "logs").glob("worker_*.log"))]
    result = {"name": name, "run": str(run), "workers": workers, "loss": loss, "losses": summary.get("losses"),
              "teacher_dtype": summary.get("teacher_dtype"), "student_problems": problems,
              "digests": rank_digests(texts), "noise_digests": rank_digests(texts, RANK_NOISE)}
    out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


# ---------------------------------------------------------------- inputs: data, initial weights; HF logits

def write_data(out: str | Path, vocab: int, seq: int, samples: int, seed: int = 0) -> Path:
    """A learnable synthetic corpus (arithmetic progressions mod vocab) as one MindRecord shard."""
    from mindspore.mindrecord import FileWriter

    rng = np.random.default_rng(seed)
    rows = (rng.integers(0, vocab, (samples, 1)) + rng.integers(1, 4, (samples, 1)) * np.arange(seq + 1)) % vocab
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = FileWriter(str(path), shard_num=1, overwrite=True)
    writer.add_schema({"input_ids": {"type": "int32", "shape": [-1]}}, "tokens")
    writer.write_raw_data([{"input_ids": row.astype(np.int32)} for row in rows])
    writer.commit()
    return path


def write_init(config_path: str, out: str | Path, seed: int = 0) -> Path:
    from pangu_pro.config import load_config
    from pangu_pro.model.weights import build_model, save_weights

    model = build_model(load_config(config_path).model, seed=seed)
    save_weights(model, out)
    return Path(out)


def logits_check(config_path: str, checkpoint: str, hf_dir: str, tolerance: float = 1e-3) -> Verdict:
    """Our model (fp32, on this host's CPU) on `checkpoint` against the HF export's logits."""
    import dataclasses

    from mindspore import Tensor

    from pangu_pro.config import load_config
    from pangu_pro.model.weights import build_model

    cfg = load_config(config_path).model
    cfg = dataclasses.replace(cfg, compute_dtype="float32", use_flash_attention=False, use_fused_kernels=False)
    ids = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 16))
    ours = build_model(cfg, weights=checkpoint)(Tensor(ids.astype(np.int32))).asnumpy()
    try:
        import torch
        import transformers
    except ImportError:
        return Verdict("hf logits", True, {}, ["skipped: torch/transformers not installed (pip install .[hf])"])
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, trust_remote_code=True, dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    worst = float(np.abs(ours - theirs).max())
    verdict = Verdict("hf logits", worst <= tolerance, {"logits": worst})
    if not verdict.passed:
        verdict.problems.append(f"max |diff| {worst:.2e} > {tolerance:.0e}")
    return verdict


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pangu_pro.parallel_check", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("data")
    p.add_argument("out")
    p.add_argument("--vocab", type=int, required=True)
    p.add_argument("--seq", type=int, required=True)
    p.add_argument("--samples", type=int, default=256)
    p = commands.add_parser("init")
    p.add_argument("config")
    p.add_argument("out")
    p = commands.add_parser("collect")
    p.add_argument("run")
    p.add_argument("--name", required=True)
    p.add_argument("--init")
    p.add_argument("--out", required=True)
    for name, nargs in (("compare", "+"), ("inherit", "*")):  # a reference, then the runs against it
        p = commands.add_parser(name)
        p.add_argument("reference")
        p.add_argument("results", nargs=nargs)
    p = commands.add_parser("scores")
    p.add_argument("reference")
    p.add_argument("result")
    p.add_argument("--name", required=True)
    p = commands.add_parser("collect-inherit")
    p.add_argument("run")
    p.add_argument("--name", required=True)
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--out", required=True)
    p = commands.add_parser("teacher-dtype")
    p.add_argument("fp32")
    p.add_argument("bf16")
    p = commands.add_parser("cases", help="the case table: --list (one line per case) or the plan the script runs")
    p.add_argument("--device", choices=sorted(SEQ), required=True)
    p.add_argument("--out", help="the check's output folder (plan: resume paths)")
    p.add_argument("--list", action="store_true")
    p.add_argument("--seq", action="store_true", help="print the sequence length of the device's cases")
    p = commands.add_parser("verdicts", help="every collected case against its reference")
    p.add_argument("--device", choices=sorted(SEQ), required=True)
    p.add_argument("--out", required=True)
    p = commands.add_parser("kernels")
    p.add_argument("config")
    p.add_argument("--init", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--seq", type=int, required=True)
    p = commands.add_parser("logits")
    p.add_argument("config")
    p.add_argument("checkpoint")
    p.add_argument("hf_dir")
    args = parser.parse_args(argv)
    from pangu_pro.io import read_json

    root = Path(__file__).resolve().parent.parent
    if args.command == "cases":
        if args.seq:
            print(SEQ[args.device])
        elif args.list:
            print("\n".join(list_lines(args.device, root)))
        else:
            print("\n".join(plan_lines(args.device, root, Path(args.out or "."))))
        return 0
    if args.command == "verdicts":
        note, verdicts = case_verdicts(args.device, root, Path(args.out))
        print(note)
    elif args.command == "kernels":
        verdicts = [kernels_check(args.config, args.init, args.data, args.seq)]
    elif args.command == "data":
        print(write_data(args.out, args.vocab, args.seq, args.samples))
    elif args.command == "init":
        print(write_init(args.config, args.out))
    elif args.command == "collect":
        result = collect(args.run, args.name, args.init, args.out)
        print(f"{args.name}: {len(result['loss'])} steps, weights {result['weights']}")
    elif args.command == "compare":
        verdicts = compare_files(args.reference, args.results)
    elif args.command == "collect-inherit":
        result = collect_inherit(args.run, args.name, args.workers, args.out)
        print(f"{args.name}: {len(result['loss'])} mask steps, {len(result['digests'])} rank digests")
    elif args.command == "inherit":
        reference = read_json(args.reference)
        verdicts = [check_inherit(reference)] + [check_inherit(read_json(p), reference) for p in args.results]
    elif args.command == "teacher-dtype":
        verdicts = [compare_teacher_dtypes(read_json(args.fp32), read_json(args.bf16))]
    elif args.command == "scores":
        verdicts = [compare_score_files(args.reference, args.result, args.name)]
    else:
        verdicts = [logits_check(args.config, args.checkpoint, args.hf_dir)]
    if args.command not in ("data", "init", "collect", "collect-inherit"):
        for verdict in verdicts:
            print(verdict.line())
        return 0 if all(v.passed for v in verdicts) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
