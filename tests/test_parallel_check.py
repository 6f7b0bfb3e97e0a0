"""The cluster self-check's comparison (pangu_pro.selfcheck): fake result files, one matching the
single-device reference and some off in exactly one quantity, give PASS and FAIL with the difference."""
from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from pangu_pro.selfcheck.__main__ import main
from pangu_pro.selfcheck.compare import compare_files

RNG = np.random.default_rng(0)
INIT = {"w": RNG.standard_normal((4, 4)).astype(np.float32), "b": RNG.standard_normal(4).astype(np.float32)}
UPDATE = {k: 1e-2 * RNG.standard_normal(v.shape).astype(np.float32) for k, v in INIT.items()}


def write_result(folder, name, *, loss_scale=1.0, norm_scale=1.0, weight_scale=1.0, weight_noise=0.0, drop_step=None):
    weights = {k: INIT[k] + weight_scale * UPDATE[k] + weight_noise for k in INIT}
    save_file(weights, str(folder / f"{name}.safetensors"))
    steps = [s for s in (1, 2, 3) if s != drop_step]
    result = {"name": name, "loss": {str(s): (5.0 - 0.5 * s) * loss_scale for s in steps},
              "grad_norm": {str(s): (2.0 / s) * norm_scale for s in steps}, "weights": f"{name}.safetensors",
              "weight_update": max(float(np.abs(UPDATE[k]).max()) for k in UPDATE)}
    (folder / f"{name}.json").write_text(json.dumps(result))
    return folder / f"{name}.json"


@pytest.fixture()
def results(tmp_path):
    return {name: write_result(tmp_path, name, **kw) for name, kw in {
        "single": {}, "dp8": {"loss_scale": 1.001, "weight_noise": 1e-5},
        "zero_slice_norm": {"norm_scale": 8 ** -0.5},  # a per-rank slice's norm
        "double_update": {"weight_scale": 2.0},  # e.g. interleave summing instead of averaging
        "loss_off": {"loss_scale": 1.1}, "short": {"drop_step": 3}}.items()}


def test_matching_layout_passes_and_each_defect_fails(results):
    verdicts = {v.name: v for v in compare_files(results["single"], [p for n, p in results.items() if n != "single"])}
    assert verdicts["dp8"].passed and verdicts["dp8"].line().startswith("PASS dp8")
    assert verdicts["dp8"].differences["loss"] == pytest.approx(1e-3, rel=1e-6)
    assert not verdicts["zero_slice_norm"].passed and "grad_norm off by 6.46e-01" in verdicts["zero_slice_norm"].line()
    assert not verdicts["double_update"].passed and verdicts["double_update"].differences["weights"] >= 0.99
    assert not verdicts["loss_off"].passed and list(verdicts["loss_off"].problems) == ["loss off by 1.00e-01 > 2e-02"]
    assert not verdicts["short"].passed and "steps ['3'] missing" in verdicts["short"].line()


def test_a_non_finite_value_at_any_step_fails():
    from pangu_pro.selfcheck.compare import Verdict, compare_series

    ref = {"1": 4.5, "2": 4.0, "3": 3.5}
    for bad_step in ("1", "3"):  # max() over a NaN that is not first would skip it
        verdict = Verdict("nan", True)
        compare_series(verdict, "loss", ref, {**ref, bad_step: float("nan")}, 2e-2)
        assert verdict.differences["loss"] == float("inf") and verdict.problems == ["loss off by inf > 2e-02"]


def test_the_command_prints_pass_fail_and_exits_non_zero_on_a_failure(results, capsys):
    assert main(["compare", str(results["single"]), str(results["dp8"])]) == 0
    assert capsys.readouterr().out.startswith("PASS dp8")
    assert main(["compare", str(results["single"]), str(results["dp8"]), str(results["loss_off"])]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["PASS", "FAIL"]


def write_scores(path, unit_loss, sample_loss, unit_size=4):
    from pangu_pro.rounds.scoring import save_scores

    save_scores(path, np.asarray(unit_loss, np.float64), np.asarray(sample_loss, np.float64), unit_size, {})
    return path


def test_scores_under_a_layout_pass_within_tolerance_and_each_defect_fails(tmp_path):
    """The self-check's scoring case: one device's scores against a layout's. Rows of one unit
    swapped with another unit's, a short file or a NaN fail, naming the unit or sample."""
    from pangu_pro.selfcheck.compare import compare_score_files

    samples = 4.0 + 0.25 * np.arange(10)  # 10 samples in units of 4: the last unit is short
    units = np.array([samples[0:4].mean(), samples[4:8].mean(), samples[8:].mean()])
    ref = write_scores(tmp_path / "single.npz", units, samples)
    close = write_scores(tmp_path / "close.npz", units * 1.003, samples * 0.997)
    swapped = samples.copy()
    swapped[[3, 4]] = swapped[[4, 3]]  # unit means move a little, the samples a lot
    rows = write_scores(tmp_path / "rows.npz", units, swapped)
    nan = samples.copy()
    nan[7] = np.nan
    bad = write_scores(tmp_path / "nan.npz", units, nan)
    short = write_scores(tmp_path / "short.npz", units[:2], samples[:8])

    verdict = compare_score_files(ref, close, "scores_dp2_mp4")
    assert verdict.passed and verdict.line().startswith("PASS scores_dp2_mp4")
    assert verdict.differences["units"] == pytest.approx(3e-3, rel=1e-6)
    verdict = compare_score_files(ref, rows, "rows")
    assert not verdict.passed and verdict.problems == [  # unit scores kept: only the samples show it
        "sample 3 scored 5.0000, one device 4.7500 (off by 5.26e-02 > 2e-02; 2 samples off)"]
    verdict = compare_score_files(ref, bad, "nan")
    assert not verdict.passed and verdict.problems[0].startswith("sample 7 scored nan")
    verdict = compare_score_files(ref, short, "short")
    assert not verdict.passed and verdict.problems == ["num_samples 8, expected 10"]


def test_the_scores_command_exits_non_zero_on_a_failure(tmp_path, capsys):
    samples = 4.0 + RNG.random(8)
    units = np.array([samples[:4].mean(), samples[4:].mean()])
    ref = write_scores(tmp_path / "single.npz", units, samples)
    off = write_scores(tmp_path / "off.npz", units * 1.05, samples)
    assert main(["scores", str(ref), str(ref), "--name", "same"]) == 0
    assert main(["scores", str(ref), str(off), "--name", "off"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("PASS same") and lines[1].startswith("FAIL off") and "unit 0 scored" in lines[1]


DIGEST_A, DIGEST_B = "a" * 64, "b" * 64


def inherit_result(name, *, workers=1, loss_scale=1.0, digests=None, noise=None, student=6.9593,
                   teacher_dtype="float32"):
    """As `collect_inherit` writes it: mask-step losses, the materialisation report, the rank digests of
    masks (equal) and of mask noise (one per rank)."""
    return {"name": name, "workers": workers, "teacher_dtype": teacher_dtype, "student_problems": [],
            "loss": {str(s): (6.97 + 0.003 * s) * loss_scale for s in (1, 2, 3, 4)},
            "losses": {"masked_teacher_soft": 6.98, "masked_teacher_selected": 6.9593, "student": student},
            "digests": digests if digests is not None else {str(r): DIGEST_A for r in range(workers)},
            "noise_digests": noise if noise is not None else {str(r): f"{r:064x}" for r in range(workers)}}


def test_inheritance_under_data_parallel_passes_and_each_defect_fails():
    """The self-check's inheritance case: the data-parallel run against one device. Ranks whose masks
    differ (or a rank that printed no digest), ranks that drew the same mask noise, a mask-step loss off by more than the tolerance, a student
    whose loss is not the folded teacher's, a student that does not load: FAIL, naming what."""
    from pangu_pro.selfcheck.compare import check_inherit

    single = inherit_result("inherit_single")
    assert check_inherit(single).passed and check_inherit(single).line().startswith("PASS inherit_single")
    verdict = check_inherit(inherit_result("inherit_dp2", workers=2, loss_scale=1.0008), single)
    assert verdict.passed and verdict.differences["loss"] == pytest.approx(8e-4, rel=1e-6)
    diverged = check_inherit(inherit_result("dp", workers=2, digests={"0": DIGEST_A, "1": DIGEST_B}), single)
    assert not diverged.passed and diverged.problems == ["masks differ across ranks (rank 0 aaaaaaaaaaaa, "
                                                         "rank 1 bbbbbbbbbbbb)"]
    silent = check_inherit(inherit_result("dp", workers=8, digests={str(r): DIGEST_A for r in range(7)}), single)
    assert not silent.passed and silent.problems == ["ranks [7] printed no mask digest"]
    same_noise = check_inherit(inherit_result("dp", workers=3, noise={"0": DIGEST_A, "1": DIGEST_B, "2": DIGEST_A}),
                               single)
    assert not same_noise.passed and same_noise.problems == [
        "ranks [0, 2] drew the same mask noise (the averaged gradient sees fewer mask samples than 3)"]
    no_noise = check_inherit(inherit_result("dp", workers=2, noise={"0": DIGEST_A}), single)
    assert not no_noise.passed and no_noise.problems == ["ranks [1] printed no mask-noise digest"]
    summed = check_inherit(inherit_result("dp", workers=2, loss_scale=2.0), single)  # ranks summed, not averaged
    assert not summed.passed and summed.problems == ["loss off by 1.00e+00 > 2e-02"]
    folded = check_inherit(inherit_result("dp", student=6.99), single)
    assert not folded.passed and folded.problems[0].startswith("folded teacher 6.9593 vs student 6.9900: off by")
    broken = inherit_result("dp")
    broken["student_problems"] = ["student x does not load: shape"]
    broken["losses"] = None
    assert check_inherit(broken).problems == ["student x does not load: shape", "inherit.json has no loss report"]


def test_rank_digests_are_read_from_worker_logs():
    from pangu_pro.selfcheck.compare import rank_digests

    logs = [f"[INFO] noise\nrank 0/2: mask step 4 sha256 {DIGEST_A}\nstudent written\n",
            f"rank 1/2: mask step 4 sha256 {DIGEST_B}\n[INFO] rank 1/2: mask step 4 sha256 {DIGEST_A}\n"]
    assert rank_digests(logs) == {0: DIGEST_A, 1: DIGEST_B}
    from pangu_pro.selfcheck.compare import RANK_NOISE

    logs = [f"rank 0/2: mask step 4 sha256 {DIGEST_A}\nrank 0/2: mask noise sha256 {DIGEST_B}\n"]
    assert rank_digests(logs, RANK_NOISE) == {0: DIGEST_B} and rank_digests(logs) == {0: DIGEST_A}


def test_bf16_teacher_against_fp32_passes_within_a_bf16_ulp_and_each_defect_fails():
    from pangu_pro.selfcheck.compare import compare_teacher_dtypes

    fp32 = inherit_result("inherit_single")
    bf16 = inherit_result("inherit_bf16_teacher", teacher_dtype="bfloat16", loss_scale=1.001)
    bf16["loss"] = {"1": bf16["loss"]["1"]}  # a 1-step run: only the first step is compared
    verdict = compare_teacher_dtypes(fp32, bf16)
    assert verdict.passed and verdict.line().startswith("PASS bf16_teacher")
    auto_fp32 = compare_teacher_dtypes(fp32, inherit_result("inherit_single", teacher_dtype="float32"))
    assert not auto_fp32.passed and auto_fp32.problems == [
        "inherit_single: teacher stored in float32, expected bfloat16"]
    garbage = compare_teacher_dtypes(fp32, inherit_result("b", teacher_dtype="bfloat16", loss_scale=1.01))
    assert not garbage.passed and garbage.problems == ["loss off by 1.00e-02 > 4e-03"]


def test_the_inherit_commands_exit_non_zero_on_a_failure(tmp_path, capsys):
    paths = {}
    for name, kw in {"single": {}, "dp": {"workers": 2}, "diverged": {"workers": 2, "digests": {"0": DIGEST_A}},
                     "bf16": {"teacher_dtype": "bfloat16"}}.items():
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(inherit_result(name, **kw)))
    assert main(["inherit", str(paths["single"]), str(paths["dp"])]) == 0
    assert main(["inherit", str(paths["single"]), str(paths["dp"]), str(paths["diverged"])]) == 1
    assert main(["teacher-dtype", str(paths["single"]), str(paths["bf16"])]) == 0
    assert main(["teacher-dtype", str(paths["single"]), str(paths["dp"])]) == 1
    lines = [line.split()[:2] for line in capsys.readouterr().out.splitlines()]
    assert lines == [["PASS", "single"], ["PASS", "dp"], ["PASS", "single"], ["PASS", "dp"], ["FAIL", "diverged"],
                     ["PASS", "bf16_teacher"], ["FAIL", "bf16_teacher"]]


# ---------------------------------------------------------------- the case table, moments, overflow, kernels

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_list_and_plan_come_from_one_table_with_the_shipped_cases():
    """--list: one line per case with its layout and sequence; the plan the script runs names the same
    cases in the same order; the cases the issue asks for are there, at sequence 2048 on the NPUs."""
    from pangu_pro.selfcheck.cases import cases_for, list_lines, plan_lines

    for device, seq in (("ascend", 2048), ("cpu", 128)):
        table = cases_for(device, ROOT)
        listed = [line for line in list_lines(device, ROOT) if not line.startswith("#")]
        planned = plan_lines(device, ROOT, ROOT / "out")
        assert [line.split()[0] for line in listed] == [c.name for c in table] == [p.split("\t")[0] for p in planned]
        assert all(f" seq {seq} " in line for line in listed)
        assert all(f"model.seq_length={seq}" in p for p in planned)
    ascend = {line.split()[0]: line for line in list_lines("ascend", ROOT)}
    assert "dp8, ZeRO, accumulation 4, bf16, flash" in ascend["preset_1b_pro"]
    assert "vocab parallel" in ascend["vocab_parallel"]
    assert "resumes dp2_mp4 at step 2" in ascend["resume_zero_from_dp2_mp4"]
    assert "fp16, dynamic loss scale" in ascend["fp16_overflow_dp2_mp4"] and "kernels" in ascend
    assert list_lines("cpu", ROOT)[0].startswith("# --cpu: the data-parallel cases on 2 CPU workers at sequence 128")


def test_the_script_lists_the_table_without_running_anything():
    import subprocess

    from pangu_pro.selfcheck.cases import list_lines

    for flags, device in (([], "ascend"), (["--cpu"], "cpu")):
        done = subprocess.run(["bash", str(ROOT / "scripts" / "ascend_check.sh"), "--list", *flags],
                              capture_output=True, text=True, timeout=120, env={**__import__("os").environ,
                                                                                  "PANGU_PRO_DEVICE": "cpu"})
        assert done.returncode == 0 and done.stdout.splitlines() == list_lines(device, ROOT), done.stderr


def test_the_preset_case_runs_the_shipped_sections():
    """The preset case carries configs/pangu_1b_pro.yaml's parallel: section whole (= configs/parallel/
    pangu_1b_pro_8dev.yaml's), its accumulation scaled to 4, its bf16/flash numerics; every case's batch
    per rank gives its global batch, and its reference trains the same global batch."""
    import yaml

    from pangu_pro.selfcheck.cases import GLOBAL_BATCH, batch_per_rank, case_arguments, cases_for

    preset = yaml.safe_load((ROOT / "configs" / "pangu_1b_pro.yaml").read_text())
    node = yaml.safe_load((ROOT / "configs" / "parallel" / "pangu_1b_pro_8dev.yaml").read_text())
    assert node["parallel"] == preset["parallel"] and node["train"]["grad_accum_steps"] == preset["train"][
        "grad_accum_steps"]
    table = {c.name: c for c in cases_for("ascend", ROOT)}
    case = table["preset_1b_pro"]
    assert {k[len("parallel."):]: v for k, v in case.settings.items() if k.startswith("parallel.")} == \
        preset["parallel"]
    assert case.settings["train.grad_accum_steps"] == 4 and case.settings["model.compute_dtype"] == "bfloat16"
    assert case.settings["model.use_flash_attention"] is True
    for c in table.values():
        st = c.settings
        dp = int(st.get("parallel.data_parallel", 1))
        micro = int(st.get("parallel.micro_batch_num", 1)) if int(st.get("parallel.pipeline_stage", 1)) > 1 else 1
        total = batch_per_rank(c, "ascend") * dp * int(st.get("train.grad_accum_steps", 1)) * micro
        assert total == (c.global_batch or GLOBAL_BATCH["ascend"]), c.name
        if c.reference:
            assert (table[c.reference].global_batch or 8) == (c.global_batch or 8), c.name
    args = case_arguments(table["resume_zero_from_dp2_mp4"], "ascend", ROOT / "out", list(table.values()))
    assert args[-2:] == ["--resume", str(ROOT / "out" / "dp2_mp4" / "checkpoints" / "rank_0" / "step_00000002")]
    assert "train.save_every=1" in case_arguments(table["dp2_mp4"], "ascend", ROOT / "out", list(table.values()))


def test_the_grad_norm_tolerance_fails_a_1_over_dp_gradient(results):
    """A layout whose gradients are divided by dp once too often (gradients_mean under semi-auto) logs a
    norm 1/dp of one device's: FAIL at every dp of the table, and the printed note says so."""
    from pangu_pro.selfcheck.cases import cases_for
    from pangu_pro.selfcheck.compare import compare, grad_norm_catches, read_result, tolerance_note

    reference = read_result(results["single"])
    dps = sorted({int(c.settings.get("parallel.data_parallel", 1)) for c in cases_for("ascend", ROOT)} - {1})
    assert dps[0] == 2
    for dp in dps:
        result = {**reference, "name": f"dp{dp}", "grad_norm": {s: v / dp for s, v in reference["grad_norm"].items()}}
        verdict = compare(reference, result)
        assert grad_norm_catches(dp) and not verdict.passed
        assert verdict.problems == [f"grad_norm off by {1 - 1 / dp:.2e} > 5e-02"]
    assert "at dp 2 here, so it fails" in tolerance_note(dps)
    assert "would NOT fail" in tolerance_note([2], tolerance=0.6)


def moments(scale=1.0, step=3):
    return {"adam_m.w": scale * INIT["w"] * 1e-3, "adam_v.w": scale ** 2 * INIT["w"] ** 2 * 1e-6,
            "adam_step": np.array(step, np.int32)}


def test_optimizer_moments_are_compared(tmp_path, results):
    """Moments within tolerance pass; moments of a 1/dp gradient (m / dp, v / dp^2), or an update count that
    counted a skipped step, fail; a run that saved none fails."""
    from pangu_pro.selfcheck.compare import compare, read_result

    save_file(moments(), str(tmp_path / "ref_opt.safetensors"))
    reference = {**read_result(results["single"]), "moments": str(tmp_path / "ref_opt.safetensors")}
    for name, kw, problems in (("close", {"scale": 1.001}, []),
                               ("dp2", {"scale": 0.5}, ["adam_m off by 5.00e-01 > 5e-02",
                                                         "adam_v off by 7.50e-01 > 5e-02"]),
                               ("counted", {"step": 4}, ["adam_step 4, expected 3"])):
        save_file(moments(**kw), str(tmp_path / f"{name}.safetensors"))
        verdict = compare(reference, {**reference, "name": name, "moments": str(tmp_path / f"{name}.safetensors")})
        assert verdict.problems == problems, name
    assert compare(reference, {**reference, "moments": None}).problems == ["moments: the run saved no optimizer state"]


def test_an_overflow_step_must_be_skipped_on_every_rank(tmp_path, results):
    """The fp16 overflow cases: the reference and the case skip step 1 (its non-finite norm is not compared);
    a run that applied it, or a data-parallel rank whose weights differ (it applied the step alone), fails;
    through `verdicts`, a case of the table that skipped nothing fails even against a reference that did not."""
    from pangu_pro.selfcheck.cases import case_verdicts
    from pangu_pro.selfcheck.compare import compare, read_result

    base = read_result(results["single"])
    reference = {**base, "name": "single_fp16_overflow", "skipped": [1],
                 "grad_norm": {**base["grad_norm"], "1": float("inf")}}
    same = {r: DIGEST_A for r in range(2)}
    assert compare(reference, {**reference, "name": "fp16_overflow_dp2", "digests": same}).passed
    applied = compare(reference, {**reference, "skipped": []})
    assert applied.problems == ["skipped steps [], the reference skipped [1]"]
    alone = compare(reference, {**reference, "digests": {0: DIGEST_A, 1: DIGEST_B}})
    assert alone.problems == ["the data-parallel ranks' weights differ (2 digests over 2 ranks)"]
    for name, skipped in (("single_fp16_overflow", []), ("fp16_overflow_dp2", [])):
        (tmp_path / f"{name}.json").write_text(json.dumps({**base, "name": name, "skipped": skipped,
                                                           "weights": str(tmp_path.parent / "x.safetensors")}))
    save_file(INIT, str(tmp_path.parent / "x.safetensors"))
    note, verdicts = case_verdicts("cpu", ROOT, tmp_path)
    by_name = {v.name: v for v in verdicts}
    assert note.startswith("grad_norm tolerance 5e-02")
    assert by_name["single_fp16_overflow"].problems == ["skipped steps [], the case needs [1] skipped"]
    assert by_name["fp16_overflow_dp2"].problems == ["skipped steps [], the case needs [1] skipped"]
    assert set(by_name) == {"single_fp16_overflow", "fp16_overflow_dp2"}  # no results for the others: left out


def test_kernel_comparison_names_the_gradient_that_differs():
    from pangu_pro.selfcheck.kernels import compare_kernels

    grads = {"a": np.ones((3, 3), np.float32), "b": np.arange(4, dtype=np.float32)}
    assert compare_kernels((2.0, grads), (2.01, {k: v * 1.01 for k, v in grads.items()})).passed
    off = compare_kernels((2.0, grads), (2.0, {**grads, "b": grads["b"] * 1.2}))
    assert off.problems == ["gradient of b off by 2.00e-01 > 5e-02"]
    nan = compare_kernels((2.0, grads), (float("nan"), grads))
    assert not nan.passed and nan.problems[0].startswith("loss nan")


@pytest.mark.slow
def test_the_kernel_case_on_the_cpu_says_nothing_was_fused(tmp_path):
    """On the CPU the config runs unfused fp32 on both sides: equal, but the case must not PASS."""
    from pangu_pro.selfcheck.collect import write_data, write_init
    from pangu_pro.selfcheck.kernels import kernels_check

    config = str(ROOT / "configs" / "parallel_check.yaml")
    write_init(config, tmp_path / "init.safetensors")
    data = write_data(tmp_path / "d.mindrecord", 1024, 128, 4)
    verdict = kernels_check(config, str(tmp_path / "init.safetensors"), str(data), 128)
    assert verdict.differences == {"loss": 0.0, "grads": 0.0}
    assert verdict.problems == ["on CPU the config runs unfused fp32: nothing fused was compared"]


def test_a_run_resumed_into_a_new_output_folder_starts_its_metrics(tmp_path):
    """The resume cases (and any resume onto another layout, which needs a new train.output_dir) open
    the new folder's metrics log with nothing to truncate; it used to fail with 'no metrics file'."""
    from pangu_pro.train.metrics import MetricsLog, read_metrics

    log = MetricsLog(tmp_path / "new" / "metrics.jsonl", fresh=False)
    log.truncate_after(2)
    log.write({"type": "train", "step": 3, "loss": 1.0})
    log.close()
    assert [r["step"] for r in read_metrics(tmp_path / "new")] == [3]
