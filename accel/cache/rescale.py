"""The TeaCache family's distance between steps: the relative L1 change of a timestep-embedding tensor, rescaled by
a polynomial fitted per model (TeaCache4Wan2.1, ali-vilab/TeaCache ``teacache_generate.py``; FlowCache and
MotionCache reuse the same fits), and the reference's warm-ups scaled to a run."""

from __future__ import annotations

import numpy as np
import torch

# Rescale polynomials for Wan2.1 T2V, highest degree first (METHODS 3.1), by (model size, use_ret_steps): with
# ret-steps on the projected modulation e0, without on the timestep embedding e.
COEFFICIENTS: dict[tuple[str, bool], tuple[float, ...]] = {
    ("1.3b", True): (-5.21862437e4, 9.23041404e3, -5.28275948e2, 1.36987616e1, -4.99875664e-2),
    ("14b", True): (-3.03318725e5, 4.90537029e4, -2.65530556e3, 5.87365115e1, -3.15583525e-1),
    ("1.3b", False): (2.39676752e3, -1.31110545e3, 2.01331979e2, -8.29855975, 1.37887774e-1),
    ("14b", False): (-5784.54975374, 5449.50911966, -1811.16591783, 256.27178429, -13.02252404),
}
RAW = "none"  # no rescale: the raw relative L1 (as FlowCache's MAGI-1 variant); for models without a fit
REFERENCE_STEPS = 50  # the seeds' schedule: warm-ups are given in steps of it


def reference_steps(count: int, num_steps: int) -> int:
    """``count`` steps of the seeds' 50-step schedule scaled to a run of ``num_steps`` (rounded, at least 1)."""
    return max(1, round(count * num_steps / REFERENCE_STEPS))


def polynomial(coefficients: str, use_ret_steps: bool, what: str = "rescale") -> np.poly1d:
    """The rescale polynomial of ``coefficients`` (``1.3b``, ``14b`` or ``none``: the identity)."""
    if coefficients != RAW and (coefficients, use_ret_steps) not in COEFFICIENTS:
        raise ValueError(f"unknown {what} coefficient set {coefficients!r}; choose 1.3b, 14b or {RAW}")
    return np.poly1d([1.0, 0.0] if coefficients == RAW else COEFFICIENTS[(coefficients, use_ret_steps)])


def relative_l1(cur: torch.Tensor, prev: torch.Tensor) -> float:
    """``mean|cur - prev| / mean|prev|`` over every element."""
    return float((cur - prev).abs().mean() / prev.abs().mean().clamp_min(1e-12))
