#!/usr/bin/env bash
# The first thing to run on a new cluster (docs/ascend.md, "Checking a cluster"):
#   bash scripts/ascend_check.sh [--out DIR] [--cpu] [--list]
# On one node of 8 Ascend NPUs it trains configs/parallel_check.yaml (narrow, 4 layers) for 3 steps at
# sequence 2048 (flash attention sparse_mode 2 with the compressed mask, as every preset) under every case
# of the table in pangu_pro/selfcheck/cases.py (`--list` prints them, one line each, without running):
# dp8; dp2 x mp4; dp2 x pp2 x mp2; ZeRO; sequence parallel; vocab parallel; accumulation; interleave;
# a resume of the dp2 x mp4 run's step-2 checkpoint under ZeRO; configs/pangu_1b_pro.yaml's own
# parallel: section and accumulation (ZeRO + accumulation + bf16 + flash) against one device at its
# global batch; an fp16 step that overflows and must be skipped on every rank (dp8 and dp2 x mp4); and
# on one device the fused kernels in bf16 against the unfused fp32 path (loss and every gradient).
# Each run starts from the same weights and data through the real launcher and trainer; loss, gradient
# norm (a 1/dp scale fails its tolerance), updated weights and AdamW moments are compared with the
# single-device run: PASS/FAIL per case. Then: multi-round scoring on one device and dp2 x mp4; the pipeline
# run merged, exported to Hugging Face and its logits checked; inheritance (configs/parallel_check_inherit
# .yaml) on one device and dp8: mask digests, mask-step losses, the student, bf16 against fp32 teacher.
# --cpu: no NPU needed; runs the data-parallel cases on 2 CPU workers at sequence 128 (says so).
set -euo pipefail

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
OUT=output/ascend_check; CPU=0; LIST=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) [[ $# -ge 2 ]] || usage; OUT="$2"; shift 2 ;;
    --cpu) CPU=1; shift ;;
    --list) LIST=1; shift ;;
    -h|--help) usage ;;
    *) echo "error: unknown option '$1'" >&2; usage ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ -x "$ROOT/.venv/bin/python" ]] && export PATH="$ROOT/.venv/bin:$PATH"
PYTHON="$(command -v python3 || command -v python)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" GLOG_v="${GLOG_v:-3}"
CASES=ascend; [[ "$CPU" == 1 ]] && CASES=cpu
if [[ "$LIST" == 1 ]]; then  # the table itself: nothing runs
  exec "$PYTHON" -m pangu_pro.selfcheck cases --device "$CASES" --list
fi
source "$ROOT/scripts/device.sh"
if [[ "$CPU" == 1 ]]; then
  PANGU_PRO_DEVICE=cpu; DEVICE_WHY="--cpu"
  export PANGU_PRO_DEVICE
else
  detect_device || exit 2
  if [[ "$PANGU_PRO_DEVICE" != ascend ]]; then
    echo "error: no NPU ($DEVICE_WHY): the cluster check needs one node of 8 Ascend NPUs." >&2
    echo "  To exercise the script itself here, --cpu runs its data-parallel cases on 2 CPU workers." >&2
    exit 2
  fi
fi

CONFIG="$ROOT/configs/parallel_check.yaml"
rm -rf "$OUT"; mkdir -p "$OUT"; OUT="$(cd "$OUT" && pwd)"
echo "ascend_check: device $PANGU_PRO_DEVICE ($DEVICE_WHY); everything under $OUT" >&2
SEQ=$("$PYTHON" -m pangu_pro.selfcheck cases --device "$CASES" --seq)
if [[ "$CASES" == cpu ]]; then
  echo "ascend_check: --cpu trains at sequence $SEQ, not 2048 (too slow on the CPU): flash sparse_mode 2, fp16/bf16" \
    "and the semi-auto cases run only on the NPUs (bash scripts/ascend_check.sh --list)" >&2
fi
# the training cases read sequences of $SEQ tokens; scoring, export and inheritance the config's 128
"$PYTHON" -m pangu_pro.selfcheck data "$OUT/train.mindrecord" --vocab 1024 --seq "$SEQ" >/dev/null
"$PYTHON" -m pangu_pro.selfcheck data "$OUT/data.mindrecord" --vocab 1024 --seq 128 >/dev/null
"$PYTHON" -m pangu_pro.selfcheck init "$CONFIG" "$OUT/init.safetensors" >/dev/null
COMMON=("data.train_files=[$OUT/train.mindrecord]" "train.init_weights=$OUT/init.safetensors")
PORT=$((20000 + RANDOM % 20000))
FAILED=0

# launch TOOL CONFIG NAME WORKERS ARG...: tools/TOOL.py on one device, or on WORKERS through the launcher
# (worker logs in $OUT/NAME/logs); output in $OUT/NAME.log. A failed run prints FAIL and returns 1.
launch() {
  local tool="$1" config="$2" name="$3" workers="$4"; shift 4
  local status=0
  echo "-- $name: $workers worker(s) $*" >&2
  if [[ "$workers" == 1 ]]; then
    "$PYTHON" "$ROOT/tools/$tool.py" "$config" "$@" --no-progress >"$OUT/$name.log" 2>&1 || status=$?
  else
    PORT=$((PORT + 1))
    bash "$ROOT/scripts/run_distribute.sh" "$config" --tool "$tool" --workers "$workers" --master-port "$PORT" \
      --timeout 900 --log-dir "$OUT/$name/logs" -- "$@" >"$OUT/$name.log" 2>&1 || status=$?
  fi
  if [[ "$status" != 0 ]]; then
    echo "FAIL $name: the run failed (exit $status); last lines of $OUT/$name.log:"
    tail -n 15 "$OUT/$name.log" | sed 's/^/  | /'
    FAILED=$((FAILED + 1)); return 1
  fi
}

# run_case NAME WORKERS OVERRIDE...: train, then collect loss / grad norm / final (merged) weights and moments.
run_case() {
  local name="$1" workers="$2"; shift 2
  local run="$OUT/$name"
  launch train "$CONFIG" "$name" "$workers" "${COMMON[@]}" "train.output_dir=$run" "$@" || return 0
  "$PYTHON" -m pangu_pro.selfcheck collect "$run" --name "$name" --init "$OUT/init.safetensors" \
    --out "$OUT/$name.json" >>"$OUT/$name.log" 2>&1 ||
    { echo "FAIL $name: could not read its results ($OUT/$name.log)"; FAILED=$((FAILED + 1)); }
}

# kernels_case NAME: one device, fused kernels against the unfused fp32 path on the same weights and batch.
kernels_case() {
  local name="$1"
  echo "-- $name: 1 worker(s)" >&2
  if ! "$PYTHON" -m pangu_pro.selfcheck kernels "$CONFIG" --init "$OUT/init.safetensors" \
       --data "$OUT/train.mindrecord" --seq "$SEQ" >"$OUT/$name.txt" 2>"$OUT/$name.log"; then
    [[ -s "$OUT/$name.txt" ]] || { echo "FAIL $name: the check failed; last lines of $OUT/$name.log:";
                                   tail -n 15 "$OUT/$name.log" | sed 's/^/  | /'; }
    FAILED=$((FAILED + 1))
  fi
  cat "$OUT/$name.txt"
}

# the cases, from the one table (`--list` prints the same): NAME, WORKERS, KIND, REFERENCE, ARGUMENTS
mapfile -t PLAN < <("$PYTHON" -m pangu_pro.selfcheck cases --device "$CASES" --out "$OUT")
for line in "${PLAN[@]}"; do
  IFS=$'\t' read -r name workers kind reference args <<<"$line"
  read -ra ARGS <<<"$args"
  if [[ "$kind" == kernels ]]; then kernels_case "$name"; else run_case "$name" "$workers" "${ARGS[@]}"; fi
done
if [[ "$PANGU_PRO_DEVICE" == ascend ]]; then EXPORT_CASE=dp2_pp2_mp2; else EXPORT_CASE=dp2; fi

# failures FILE: the FAIL lines of a comparison that exited non-zero; at least 1 (a crash prints none)
failures() { local n; n=$(grep -c '^FAIL' "$1" || true); echo $((n > 0 ? n : 1)); }

if [[ -f "$OUT/single.json" ]]; then
  "$PYTHON" -m pangu_pro.selfcheck verdicts --device "$CASES" --out "$OUT" | tee "$OUT/compare.txt" ||
    FAILED=$((FAILED + $(failures "$OUT/compare.txt")))
else
  echo "FAIL single: the single-device reference did not run; nothing to compare against"; FAILED=$((FAILED + 1))
fi

# score_case NAME WORKERS OVERRIDE...: `pangu-pro score` of the single-device run's final checkpoint
# (units of one global batch), then its unit and sample scores against one device's (scores_single).
score_case() {
  local name="$1" workers="$2"; shift 2
  local status=0 args=(score "$CONFIG" "data.train_files=[$OUT/data.mindrecord]" "train.output_dir=$OUT/$name" "$@"
                       --checkpoint "$SCORED" --out "$OUT/$name.npz" --unit-samples "$UNIT" --no-progress)
  echo "-- $name: $workers worker(s) $*" >&2
  if [[ "$workers" == 1 ]]; then
    "$PYTHON" -m pangu_pro.cli "${args[@]}" >"$OUT/$name.log" 2>&1 || status=$?
  else
    PORT=$((PORT + 1))
    msrun --worker_num="$workers" --local_worker_num="$workers" --master_port="$PORT" --log_dir="$OUT/$name/logs" \
      --join=True python -m pangu_pro.cli "${args[@]}" >"$OUT/$name.log" 2>&1 || status=$?  # msrun runs "python"
  fi
  if [[ "$status" != 0 ]]; then
    echo "FAIL $name: scoring failed (exit $status); last lines of $OUT/$name.log:"
    tail -n 15 "$OUT/$name.log" | sed 's/^/  | /'; FAILED=$((FAILED + 1))
  elif [[ "$name" != scores_single ]]; then
    "$PYTHON" -m pangu_pro.selfcheck scores "$OUT/scores_single.npz" "$OUT/$name.npz" --name "$name" ||
      FAILED=$((FAILED + 1))
  fi
}

SCORED=$(ls -d "$OUT"/single/checkpoints/step_* 2>/dev/null | tail -n 1)
if [[ -z "$SCORED" ]]; then
  echo "FAIL scores: the single-device run left no checkpoint to score"; FAILED=$((FAILED + 1))
elif [[ "$PANGU_PRO_DEVICE" == ascend ]]; then  # one global batch of 8 per unit
  UNIT=8
  score_case scores_single 1 train.batch_size=8
  if [[ -f "$OUT/scores_single.npz" ]]; then
    score_case scores_dp2_mp4 8 parallel.data_parallel=2 parallel.model_parallel=4 train.batch_size=4
  fi
else
  UNIT=4
  score_case scores_single 1 train.batch_size=4
  if [[ -f "$OUT/scores_single.npz" ]]; then score_case scores_dp2 2 parallel.data_parallel=2 train.batch_size=2; fi
fi

# save -> merge -> export -> logits, from the run directory as a user would
if [[ -d "$OUT/$EXPORT_CASE/checkpoints" ]]; then
  if "$PYTHON" -m pangu_pro.cli convert merge "$OUT/$EXPORT_CASE" --out "$OUT/merged" >"$OUT/export.log" 2>&1 &&
     "$PYTHON" -m pangu_pro.cli convert to-hf --checkpoint "$OUT/$EXPORT_CASE" --config "$CONFIG" --out "$OUT/hf" \
       --quiet >>"$OUT/export.log" 2>&1; then
    "$PYTHON" -m pangu_pro.selfcheck logits "$CONFIG" "$OUT/merged" "$OUT/hf" 2>>"$OUT/export.log" ||
      FAILED=$((FAILED + 1))
  else
    echo "FAIL export: merge or to-hf of $EXPORT_CASE failed; last lines of $OUT/export.log:"
    tail -n 15 "$OUT/export.log" | sed 's/^/  | /'; FAILED=$((FAILED + 1))
  fi
fi

# inherit_case NAME WORKERS OVERRIDE...: `pangu-pro inherit` of configs/parallel_check_inherit.yaml (learned
# masks for a few steps, the script's initial weights as the teacher), then its mask-step losses, loss
# report, per-rank mask digests and student (`selfcheck collect-inherit`).
inherit_case() {
  local name="$1" workers="$2"; shift 2
  launch inherit "$ROOT/configs/parallel_check_inherit.yaml" "$name" "$workers" \
    "data.train_files=[$OUT/data.mindrecord]" "inherit.teacher_checkpoint=$OUT/init.safetensors" \
    "inherit.output_dir=$OUT/$name" "$@" --force || return 0
  "$PYTHON" -m pangu_pro.selfcheck collect-inherit "$OUT/$name" --name "$name" --workers "$workers" \
    --out "$OUT/$name.json" >>"$OUT/$name.log" 2>&1 ||
    { echo "FAIL $name: could not read its results ($OUT/$name.log)"; FAILED=$((FAILED + 1)); }
}

# Inheritance at one global batch (8 on the NPUs, 4 on the CPU): one device against data parallel; the
# teacher's matmul weights stored in bf16 against fp32 at the first mask step (on Ascend the runs above
# store bf16, as `teacher_dtype: auto` must choose there, and a 1-step run stores fp32; on the CPU auto
# means fp32, so a 1-step run asks for bf16 storage explicitly).
if [[ "$PANGU_PRO_DEVICE" == ascend ]]; then
  INHERIT_DP=inherit_dp8; INHERIT_FP32=inherit_fp32_teacher; INHERIT_BF16=inherit_single
  inherit_case inherit_single 1 inherit.batch_size=8
  inherit_case inherit_dp8 8 parallel.data_parallel=8 inherit.batch_size=1
  inherit_case inherit_fp32_teacher 1 inherit.batch_size=8 inherit.steps=1 inherit.teacher_dtype=float32
else
  INHERIT_DP=inherit_dp2; INHERIT_FP32=inherit_single; INHERIT_BF16=inherit_bf16_teacher
  inherit_case inherit_single 1 inherit.batch_size=4
  inherit_case inherit_dp2 2 parallel.data_parallel=2 inherit.batch_size=2
  inherit_case inherit_bf16_teacher 1 inherit.batch_size=4 inherit.steps=1 inherit.teacher_dtype=bfloat16
fi
if [[ -f "$OUT/inherit_single.json" ]]; then  # a run that failed is counted above
  INHERIT_RESULTS=("$OUT/inherit_single.json")
  [[ -f "$OUT/$INHERIT_DP.json" ]] && INHERIT_RESULTS+=("$OUT/$INHERIT_DP.json")
  "$PYTHON" -m pangu_pro.selfcheck inherit "${INHERIT_RESULTS[@]}" | tee "$OUT/inherit.txt" ||
    FAILED=$((FAILED + $(failures "$OUT/inherit.txt")))
fi
if [[ -f "$OUT/$INHERIT_FP32.json" && -f "$OUT/$INHERIT_BF16.json" ]]; then
  "$PYTHON" -m pangu_pro.selfcheck teacher-dtype "$OUT/$INHERIT_FP32.json" "$OUT/$INHERIT_BF16.json" ||
    FAILED=$((FAILED + 1))
fi

if [[ "$FAILED" == 0 ]]; then echo "ascend_check: all PASS"; else echo "ascend_check: $FAILED FAIL"; exit 1; fi
