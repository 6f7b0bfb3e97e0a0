"""The self-check's export case: a Hugging Face export's logits against our model on the same checkpoint."""
from __future__ import annotations

import numpy as np

from pangu_pro.selfcheck.compare import Verdict

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
