"""The self-check's comparisons (pure but for reading files): a run's result against its reference,
scores under a layout against one device's, inheritance runs; the tolerances (the package doc says what
each one catches) and the per-rank digests the workers print.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

TOLERANCES = {"loss": 2e-2, "grad_norm": 5e-2, "weights": 5e-2, "moments": 5e-2}
# inheritance (see the package doc): mask-step losses as training losses; the folded teacher against the
# student and the bf16-stored teacher against the fp32 one within one bf16 unit in the last place (2^-8)
INHERIT_TOLERANCES = {"loss": TOLERANCES["loss"], "folded": 2.0 ** -8, "bf16_teacher": 2.0 ** -8}
RANK_DIGEST = re.compile(r"^rank (\d+)/\d+: mask step \d+ sha256 ([0-9a-f]{64})$", re.M)
RANK_NOISE = re.compile(r"^rank (\d+)/\d+: mask noise sha256 ([0-9a-f]{64})$", re.M)
RANK_WEIGHTS = re.compile(r"^rank (\d+)/\d+: step \d+ weights sha256 ([0-9a-f]{64})$", re.M)  # trainer, data parallel
SCORE_TOLERANCE = 2e-2  # relative, per unit and per sample: scores are losses


# ---------------------------------------------------------------- results and their comparison

def relative(a: float, b: float) -> float:
    """|a - b| / |b|; inf when either is not finite, so that a maximum over steps cannot skip a NaN."""
    diff = abs(a - b) / max(abs(b), 1e-12)
    return diff if np.isfinite(diff) else float("inf")


@dataclass
class Verdict:
    name: str
    passed: bool
    differences: dict = field(default_factory=dict)  # quantity -> worst difference (see the package doc)
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


# ---------------------------------------------------------------- inheritance

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
