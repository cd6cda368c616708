"""XAttention on Wan self-attention (METHODS 1.1): antidiagonal block scoring + per-row top-p selection."""

from __future__ import annotations

import math
from typing import Any

import torch

from accel.attention.headwise import HeadwiseSparse
from accel.config import ConfigError, XAttentionSettings
from accel.schema import Event
from accel.telemetry import Recorder
from accel.tracking import StepInfo
from kernels import antidiagonal_block_scores, block_sparse_attention, dispatch, mask_density, uniform_offsets


def select_blocks(scores: torch.Tensor, tau: float | torch.Tensor, keep_first: bool = True) -> torch.Tensor:
    """Per query-block row, the shortest prefix of blocks (by score, descending) whose sum reaches ``tau * rowsum``.

    The block that crosses the threshold is kept. ``tau`` is a float, a per-head tensor ``(H,)`` or a
    per-(batch, head) tensor ``(B, H)``; ``tau >= 1`` keeps every block. Key block 0 is always kept
    (as in the reference). ``scores``: ``(B, H, nq, nk)``; returns bool of the same shape.
    """
    b, h = scores.shape[:2]
    tau_t = torch.as_tensor(tau, dtype=torch.float32, device=scores.device)
    if tau_t.numel() == 1:
        tau_t = tau_t.reshape(1, 1, 1, 1)
    elif tau_t.shape == (h,):
        tau_t = tau_t.view(1, h, 1, 1)
    elif tau_t.shape == (b, h):
        tau_t = tau_t.view(b, h, 1, 1)
    else:
        raise ValueError(f"tau of shape {tuple(tau_t.shape)} does not fit {b} x {h} (batch x heads)")
    ordered, order = scores.float().sort(dim=-1, descending=True)
    cum = ordered.cumsum(-1)
    before = cum - ordered
    keep = (before < tau_t * cum[..., -1:]) | (tau_t >= 1)
    mask = torch.zeros_like(keep).scatter_(-1, order, keep)
    if keep_first:
        mask[..., 0] = True
    return mask


class XAttention(HeadwiseSparse):
    """Block-sparse attention with masks from strided antidiagonal scores; +TMR and per-head tau tables."""

    name = "xattention"

    def __init__(
        self,
        settings: XAttentionSettings,
        block_size: int,
        recorder: Recorder | None = None,
        model: str = "",
        tmr_delta: float = 30.0,
    ):
        super().__init__(settings, recorder, model, tmr_delta)
        self.block_size = settings.block_size or block_size
        self._lookups: dict[int, tuple[torch.Tensor, Any]] = {}
        self.stride = settings.stride
        if self.block_size % self.stride:
            raise ConfigError(f"block_size {self.block_size} must be a multiple of stride {self.stride}")

    def uniform_thresholds(self):
        return self.settings.tau

    def is_dense_step(self, layer: int, info: StepInfo) -> bool:
        return info.step < self.settings.dense_steps(info.num_steps)

    def predict(self, q, k, layer, branch, thresholds, heads):
        """Block mask ``(B, H', nq, nk)`` of ``heads`` (all when None)."""
        if heads is not None:
            q, k, thresholds = q[:, :, heads], k[:, :, heads], thresholds[heads]
        scores = antidiagonal_block_scores(q, k, self.stride, self.block_size)
        return select_blocks(scores, thresholds)

    def fits(self, state, q, k):
        b, lq, h, _ = q.shape
        blocks = (math.ceil(lq / self.block_size), math.ceil(k.shape[1] / self.block_size))
        return state.shape == (b, h, *blocks)

    def merge(self, cached, heads, fresh):
        mask = cached.clone()
        mask[:, heads] = fresh
        return mask

    def record(self, layer, state):
        return self.recorder.record_mask(layer, state[0])

    def _offsets(self, q, k):
        """Block boundaries of the queries and the keys (they differ when Q attends to a longer KV buffer)."""
        return uniform_offsets(q.shape[1], self.block_size, q.device), uniform_offsets(
            k.shape[1], self.block_size, q.device
        )

    def state_density(self, state, q, k):
        return mask_density(state, *self._offsets(q, k))

    def _lookup(self, layer: int, state: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        """What the kernel backend builds from ``state`` (Triton's visit lists, FlexAttention's BlockMask), kept per
        layer while the mask is reused (TMR); None for the torch reference."""
        backend = dispatch.resolve(q.device, tokens=q.shape[1])
        if backend == "torch":
            return None
        kept = self._lookups.get(layer)
        if kept is None or kept[0] is not state:
            if backend == "flex":
                from kernels.flex import block_mask

                built = block_mask(state, self.block_size, self.block_size, q.shape[1], k.shape[1])
            else:
                from kernels.triton_attention import build_lookup

                built = build_lookup(state)
            kept = self._lookups[layer] = (state, built)
        return kept[1]

    def apply(self, q, k, v, state, layer, thresholds, mask_ref):
        lookup = self._lookup(layer, state, q, k)
        dense = self.dense_hint(q.device)
        out = block_sparse_attention(q, k, v, state, block_size=self.block_size, dense=dense, lookup=lookup)
        density = self.state_density(state, q, k).mean(0)
        self.recorder.log(Event.DENSITY, density, layer=layer, threshold=thresholds, density=density, mask_ref=mask_ref)
        return out
