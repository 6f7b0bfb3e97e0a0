# Sourced by run_distribute.sh and ascend_check.sh: choose the device and say why.
# An explicit PANGU_PRO_DEVICE wins; else an Ascend install or npu-smi means ascend; else cpu.
# Sets and exports PANGU_PRO_DEVICE (cpu|ascend) and sets DEVICE_WHY.
detect_device() {
  if [[ -n "${PANGU_PRO_DEVICE:-}" ]]; then
    DEVICE_WHY="PANGU_PRO_DEVICE=$PANGU_PRO_DEVICE"
  elif command -v npu-smi >/dev/null 2>&1; then
    PANGU_PRO_DEVICE=ascend; DEVICE_WHY="npu-smi found"
  elif [[ -n "${ASCEND_HOME_PATH:-}" || -d /usr/local/Ascend/ascend-toolkit ]]; then
    PANGU_PRO_DEVICE=ascend; DEVICE_WHY="Ascend install found (${ASCEND_HOME_PATH:-/usr/local/Ascend/ascend-toolkit})"
  else
    PANGU_PRO_DEVICE=cpu; DEVICE_WHY="no Ascend install or npu-smi found; set PANGU_PRO_DEVICE=ascend to override"
  fi
  PANGU_PRO_DEVICE="$(echo "$PANGU_PRO_DEVICE" | tr '[:upper:]' '[:lower:]')"
  [[ "$PANGU_PRO_DEVICE" == npu ]] && PANGU_PRO_DEVICE=ascend
  if [[ "$PANGU_PRO_DEVICE" == gpu || "$PANGU_PRO_DEVICE" == cuda ]]; then  # pangu_pro/runtime.py GPU_REFUSAL
    echo "error: PANGU_PRO_DEVICE=$PANGU_PRO_DEVICE: GPUs are not supported: MindSpore 2.9 ships only a legacy" \
         "CUDA 11.1/11.6 plugin and lists Ascend and CPU builds; pangu-pro's kernels and layouts are" \
         "Ascend's. Use PANGU_PRO_DEVICE=ascend, or cpu for small runs (docs/ascend.md, GPUs)" >&2
    return 2
  fi
  [[ "$PANGU_PRO_DEVICE" == cpu || "$PANGU_PRO_DEVICE" == ascend ]] || {
    echo "error: PANGU_PRO_DEVICE=$PANGU_PRO_DEVICE: expected cpu or ascend" >&2; return 2; }
  export PANGU_PRO_DEVICE
}
