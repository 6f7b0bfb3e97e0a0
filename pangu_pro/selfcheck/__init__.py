"""The cluster self-check's logic (scripts/ascend_check.sh): every parallel layout must train like one device.

The script trains a small model a few steps under each case of one table (`cases.cases()`: layouts, the
1B Pro preset's own sections, a resume onto another layout, an fp16 overflow step, the fused kernels)
from the same initial weights and data (through the real launcher and trainer), then per case:

    python -m pangu_pro.selfcheck cases --device ascend|cpu [--list]   (the table / the plan run)
    python -m pangu_pro.selfcheck collect RUN_DIR --name NAME --init W --out RESULT.json
    python -m pangu_pro.selfcheck verdicts --device D --out DIR   (PASS/FAIL per case vs its reference)
    python -m pangu_pro.selfcheck kernels CONFIG --init W --data D --seq S   (fused vs unfused fp32)

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

    python -m pangu_pro.selfcheck scores REFERENCE.npz RESULT.npz --name NAME   (PASS/FAIL)

compares every unit's and every sample's score (relative difference <= 2e-2, as the loss), after
checking both files cover the same samples in the same units (a layout that scores rows of another
unit, or a rank's rows twice, fails on the samples even when the unit means agree).

Parameter inheritance (`pangu-pro inherit`, configs/parallel_check_inherit.yaml: learned masks for a
few steps) on one device and data parallel at the same global batch:

    python -m pangu_pro.selfcheck collect-inherit RUN_DIR --name NAME --workers N --out RESULT.json
    python -m pangu_pro.selfcheck inherit REFERENCE.json RESULT.json ...   (PASS/FAIL per run)
    python -m pangu_pro.selfcheck teacher-dtype FP32.json BF16.json        (PASS/FAIL)

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

The modules, one job each: `compare` (verdicts, tolerances, the comparisons, the rank digests in
worker logs), `cases` (the case table, the plan the script runs, the verdict per case), `collect`
(reading a run's results; writing the inputs), `kernels` (fused against unfused fp32), `logits` (an HF
export against our model), `__main__` (the command line above).
"""
