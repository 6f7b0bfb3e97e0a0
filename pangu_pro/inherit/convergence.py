"""Did the learned masks converge? Checked before materialising (pure functions of the final masks).

Three numbers, each against `inherit.convergence_tolerance` (tol):

- size: the expected parameter count (`hardconcrete.counted_keep`) against the student's, |gap| / student <= tol;
- per-layer spread: every layer's expected sparsity of heads and neurons (and the hidden channels,
  the layer gates) within tol of its target;
- decided masks: the share of noise-free masks exactly 0 or 1 is at least 1 - tol (a mask in (0, 1)
  is still undecided and top-k would settle it by rank, not by what the masks learned).

`inherit` prints the report; materialisation refuses an unconverged run unless `--force` is given.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ConvergenceReport:
    tolerance: float
    expected_size: float
    target_size: int
    spread: dict = field(default_factory=dict)  # type -> (target, min, max of per-layer sparsity)
    decided: float = 1.0  # share of noise-free masks at exactly 0 or 1

    @property
    def size_gap(self) -> float:
        return (self.expected_size - self.target_size) / self.target_size

    def failures(self) -> list[str]:
        out = []
        if abs(self.size_gap) > self.tolerance:
            out.append(f"expected size {self.expected_size / 1e6:.3f}M is {self.size_gap:+.1%} off the target")
        for name, (target, low, high) in self.spread.items():
            worst = max(abs(low - target), abs(high - target))
            if worst > self.tolerance:
                out.append(f"{name}: per-layer sparsity spans [{low:.3f}, {high:.3f}], target {target:.3f}")
        if self.decided < 1 - self.tolerance:
            out.append(f"only {self.decided:.1%} of the masks are decided (0 or 1)")
        return out

    @property
    def converged(self) -> bool:
        return not self.failures()

    def lines(self) -> list[str]:
        out = [f"mask convergence (tolerance {self.tolerance:g}): expected size {self.expected_size / 1e6:.3f}M vs "
               f"student {self.target_size / 1e6:.3f}M ({self.size_gap:+.2%}); decided masks {self.decided:.1%}"]
        for name, (target, low, high) in self.spread.items():
            out.append(f"  {name:<8} target sparsity {target:.3f}, per layer {low:.3f} .. {high:.3f}")
        fails = self.failures()
        out.append("converged" if not fails else "NOT converged: " + "; ".join(fails))
        return out

    def as_json(self) -> dict:
        return {"tolerance": self.tolerance, "expected_size": self.expected_size, "target_size": self.target_size,
                "size_gap": self.size_gap, "decided": self.decided, "converged": self.converged,
                "spread": {k: {"target": t, "min": lo, "max": hi} for k, (t, lo, hi) in self.spread.items()}}


def convergence_report(expected_size: float, target_size: int, layer_sparsity: dict, targets: dict,
                       medians: list, tolerance: float) -> ConvergenceReport:
    """`layer_sparsity`: type -> per-layer expected sparsity; `targets`: type -> final target;
    `medians`: the noise-free mask arrays of the learned units."""
    spread = {name: (float(targets[name]), float(np.min(v)), float(np.max(v))) for name, v in layer_sparsity.items()}
    flat = np.concatenate([np.ravel(m) for m in medians]) if medians else np.zeros(0)
    decided = float(np.mean((flat == 0) | (flat == 1))) if flat.size else 1.0
    return ConvergenceReport(tolerance, float(expected_size), int(target_size), spread, decided)
