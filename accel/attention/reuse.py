"""Temporal Mask Reuse (METHODS 1.3): refresh a head's mask only when its pooled Q/K drifted.

State per (layer, CFG branch): the anchor (pooled ``q̄ = mean_i q_i``, ``k̄``, fp32, per head) and
the thresholds in force at each head's last refresh. Drift ``D = ||q̄ - q̄_a||_1 + ||k̄ - k̄_a||_1``
is raw (model-scale dependent). A head refreshes iff ``D > delta`` (equality reuses), or its
threshold changed, or it has no anchor yet. Optional layer gating: if the refreshing fraction of a
layer's heads is below ``gate_lower`` none refresh; above ``gate_upper`` all do (under context parallelism the
fraction counts every rank's heads). A refreshed head moves its anchor; a reused head keeps it, so drift
accumulates until it crosses delta.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Decision:
    """One layer call's reuse decision."""

    refresh: torch.Tensor  # (H,) bool
    drift: torch.Tensor  # (H,) float; NaN where there was no anchor
    q_mean: torch.Tensor  # (B, H, D) pooled queries of this call
    k_mean: torch.Tensor

    @property
    def heads(self) -> list[int]:
        """Indices of refreshing heads (a host sync: the work to skip must be known on the host)."""
        return self.refresh.nonzero().flatten().tolist()


def _local(counts: torch.Tensor) -> torch.Tensor:
    """Head counts of a single-process run: already the whole model's."""
    return counts


class MaskReuse:
    """Anchors and the refresh rule for every (layer, branch)."""

    def __init__(self, delta: float, gate_lower: float = 0.0, gate_upper: float = 1.0):
        self.delta = float(delta)
        self.gate_lower = gate_lower
        self.gate_upper = gate_upper
        self._anchor: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.count: Callable[[torch.Tensor], torch.Tensor] = _local  # head counts -> their sum over the ranks

    def decide(self, layer: int, branch: str, q: torch.Tensor, k: torch.Tensor, thresholds: torch.Tensor) -> Decision:
        """Which heads of ``q, k`` ``(B, L, H, D)`` need a new mask under per-head ``thresholds`` ``(H,)``."""
        q_mean, k_mean = q.float().mean(1), k.float().mean(1)
        heads = q.shape[2]
        anchor = self._anchor.get((layer, branch))
        if anchor is None or anchor[0].shape != q_mean.shape:
            nan = torch.full((heads,), float("nan"), device=q.device)
            return Decision(torch.ones(heads, dtype=torch.bool, device=q.device), nan, q_mean, k_mean)
        qa, ka, ta = anchor
        drift = ((q_mean - qa).abs().sum(-1) + (k_mean - ka).abs().sum(-1)).amax(0)  # worst case over the batch
        refresh = drift > self.delta
        if self.gate_lower > 0 or self.gate_upper < 1:  # the layer's refreshing fraction, over every rank's heads
            counts = self.count(torch.stack([refresh.float().sum(), torch.tensor(float(heads), device=q.device)]))
            fraction = counts[0] / counts[1]
            refresh = torch.where(fraction < self.gate_lower, torch.zeros_like(refresh), refresh)
            refresh = torch.where(fraction > self.gate_upper, torch.ones_like(refresh), refresh)
        refresh |= thresholds.to(ta.device) != ta  # a changed threshold always forces a refresh
        return Decision(refresh, drift, q_mean, k_mean)

    def commit(self, layer: int, branch: str, decision: Decision, thresholds: torch.Tensor) -> None:
        """Move the anchors of the refreshed heads to this call's pooled Q/K."""
        key = (layer, branch)
        thresholds = thresholds.to(decision.q_mean.device)
        anchor = self._anchor.get(key)
        if anchor is None or anchor[0].shape != decision.q_mean.shape:
            self._anchor[key] = (decision.q_mean, decision.k_mean, thresholds.clone())
            return
        qa, ka, ta = anchor
        r = decision.refresh
        self._anchor[key] = (
            torch.where(r[None, :, None], decision.q_mean, qa),
            torch.where(r[None, :, None], decision.k_mean, ka),
            torch.where(r, thresholds, ta),
        )

    def anchors(self, layer: int) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The anchors of ``layer`` per CFG branch: ``(q̄ (B, H, D), k̄ (B, H, D), thresholds (H,))``."""
        return {branch: anchor for (lay, branch), anchor in self._anchor.items() if lay == layer}

    def set_anchor(self, layer: int, branch: str, anchor: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
        """Replace the anchor of ``(layer, branch)`` (its heads moved between ranks: :mod:`accel.balance`)."""
        self._anchor[(layer, branch)] = anchor
