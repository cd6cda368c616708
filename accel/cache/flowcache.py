"""FlowCache chunk-wise reuse for SkyReels-V2 diffusion forcing (METHODS 3.1).

Per group ``g`` and CFG branch, with ``k`` the group's own step: steps ``k < ret_steps`` and the last
step are computed (accumulator reset). ``ret_steps`` left unset is the reference's warm-up scaled to the
run's steps: 5 of 50 with the ret-steps polynomial (2 of 20), 1 without it (:func:`reference_steps`).
Otherwise ``acc += poly(mean|e0 - e0_prev| / mean|e0_prev|)``
where ``e0`` is the group's timestep-modulation tensor; the group is computed iff ``acc >= thresh``
(then ``acc = 0``). ``e0_prev`` is always updated. Computing runs all blocks and stores
``R = x_out - x_in`` (block-0 input to last-block output); reusing sets ``x_out = x_in + R``. The
output head always runs. Presets: slow 0.1, fast 0.15. A threshold <= 0 disables reuse: the
polynomials are negative for tiny changes (1.3B ret: -0.05 at 0), so ``acc >= 0`` alone could still reuse.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from accel.cache.chunked import GroupCache, GroupStep
from accel.schema import Event

# Rescale polynomials, highest degree first (METHODS 3.1).
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


@dataclass
class _GroupState:
    acc: float = 0.0
    e0_prev: torch.Tensor | None = None
    residual: torch.Tensor | None = None


class FlowCache(GroupCache):
    """Chunk-wise residual reuse with per-group accumulators."""

    name = "flowcache"

    def __init__(self, thresh: float = 0.1, ret_steps: int | None = None, coefficients: str = "1.3b",
                 use_ret_steps: bool = True):  # fmt: skip
        if coefficients != RAW and (coefficients, use_ret_steps) not in COEFFICIENTS:
            raise ValueError(f"unknown FlowCache coefficient set {coefficients!r}; choose 1.3b, 14b or {RAW}")
        self.thresh = thresh
        self.ret_steps = ret_steps
        self.use_ret_steps = use_ret_steps
        self.poly = np.poly1d([1.0, 0.0] if coefficients == RAW else COEFFICIENTS[(coefficients, use_ret_steps)])
        self.state: dict[tuple[int, str], _GroupState] = {}

    def reset(self) -> None:
        self.state = {}

    def distance(self, e0: torch.Tensor, prev: torch.Tensor) -> float:
        """Relative L1 change of the modulation tensor, rescaled by the polynomial."""
        rel = float((e0 - prev).abs().mean() / prev.abs().mean().clamp_min(1e-12))
        return float(self.poly(rel))

    def warmup(self, num_steps: int) -> int:
        """Leading steps always computed: ``ret_steps``, or the reference's (5 of 50, or 1) scaled to the run."""
        if self.ret_steps is not None:
            return self.ret_steps
        return reference_steps(5, num_steps) if self.use_ret_steps else 1

    def predict(self, step: GroupStep) -> torch.Tensor:
        st = self.state.setdefault(step.key, _GroupState())
        emb = step.emb
        e0 = emb.e0.float()
        forced = self.thresh <= 0 or step.step < self.warmup(step.num_steps) or step.step >= step.num_steps - 1
        if forced or st.e0_prev is None or st.residual is None:
            compute = True
        else:
            st.acc += self.distance(e0, st.e0_prev)
            compute = st.acc >= self.thresh
        acc = st.acc
        st.e0_prev = e0
        if compute:
            st.acc = 0.0
            out = step.run_blocks(None)
            st.residual = out - emb.tokens
            step.log(Event.CHUNK_COMPUTE, acc, self.thresh, emb.tokens.shape[1])
            return out
        step.log(Event.CHUNK_REUSE, acc, self.thresh, 0)
        return emb.tokens + st.residual
