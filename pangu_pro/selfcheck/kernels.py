"""The self-check's kernel case: on one device, the fused kernels (bf16, flash attention, fused RoPE and
RmsNorm) against the unfused fp32 path, loss and every gradient.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from pangu_pro.selfcheck.compare import Verdict, relative

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
