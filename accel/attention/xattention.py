"""XAttention on Wan self-attention (METHODS 1.1): antidiagonal block scoring + per-row top-p selection."""

from __future__ import annotations

import torch

from accel.attention.base import AttentionMethod
from accel.config import ConfigError, XAttentionSettings
from accel.telemetry import Recorder
from accel.tracking import StepInfo
from kernels import antidiagonal_block_scores, block_sparse_attention, mask_density, uniform_offsets


def select_blocks(scores: torch.Tensor, tau: float | torch.Tensor, keep_first: bool = True) -> torch.Tensor:
    """Per query-block row, the shortest prefix of blocks (by score, descending) whose sum reaches ``tau * rowsum``.

    The block that crosses the threshold is kept. ``tau`` is a float or a per-head tensor ``(H,)``;
    ``tau >= 1`` keeps every block. Key block 0 is always kept (as in the reference).
    ``scores``: ``(B, H, nq, nk)``; returns bool of the same shape.
    """
    h = scores.shape[1]
    tau_t = torch.as_tensor(tau, dtype=torch.float32, device=scores.device).reshape(-1)
    if tau_t.numel() not in (1, h):
        raise ValueError(f"tau has {tau_t.numel()} values for {h} heads")
    tau_t = tau_t.view(1, -1, 1, 1)
    ordered, order = scores.float().sort(dim=-1, descending=True)
    cum = ordered.cumsum(-1)
    before = cum - ordered
    keep = (before < tau_t * cum[..., -1:]) | (tau_t >= 1)
    mask = torch.zeros_like(keep).scatter_(-1, order, keep)
    if keep_first:
        mask[..., 0] = True
    return mask


class XAttention(AttentionMethod):
    """Block-sparse attention with masks from strided antidiagonal scores."""

    name = "xattention"

    def __init__(self, settings: XAttentionSettings, block_size: int, recorder: Recorder | None = None):
        super().__init__(recorder)
        self.settings = settings
        self.block_size = settings.block_size or block_size
        self.stride = settings.stride
        if self.block_size % self.stride:
            raise ConfigError(f"block_size {self.block_size} must be a multiple of stride {self.stride}")
        self.tau_table: torch.Tensor | None = None

    def setup(self, num_layers: int, num_heads: int) -> None:
        super().setup(num_layers, num_heads)
        tau = torch.tensor(self.settings.tau, dtype=torch.float32).reshape(-1)
        if tau.numel() == 1 or tau.numel() == num_heads:
            self.tau_table = tau.expand(num_layers, num_heads).clone()
        elif tau.numel() == num_layers * num_heads:
            self.tau_table = tau.view(num_layers, num_heads)
        else:
            raise ConfigError(
                f"tau has {tau.numel()} values but the model has {num_heads} heads x {num_layers} layers: "
                f"give 1, {num_heads} or {num_layers * num_heads} values"
            )

    def is_dense_step(self, layer: int, info: StepInfo) -> bool:
        return info.step < self.settings.warmup_steps

    def predict_mask(self, q: torch.Tensor, k: torch.Tensor, layer: int) -> torch.Tensor:
        """Block mask ``(B, H, nq, nk)`` for this layer's thresholds."""
        scores = antidiagonal_block_scores(q, k, self.stride, self.block_size)
        return select_blocks(scores, self.tau_table[layer].to(q.device))

    def attend(self, q, k, v, layer, info):
        if self.is_dense_step(layer, info):
            return self.warmup_dense(q, k, v, layer)
        with self.recorder.timed("mask_predict", layer=layer, device=q.device):
            mask = self.predict_mask(q, k, layer)
        return self.sparse(q, k, v, mask, layer)

    def sparse(self, q, k, v, mask, layer, mask_ref: str | None = None):
        """Attention with a fixed-block mask; logs per-head density and keeps the mask if the policy asks."""
        rec = self.recorder
        offsets = uniform_offsets(q.shape[1], self.block_size, q.device)
        out = block_sparse_attention(q, k, v, mask, offsets, offsets)
        density = mask_density(mask, offsets, offsets).mean(0)
        if mask_ref is None:
            mask_ref = rec.record_mask(layer, mask[0])
        rec.log("density", density, layer=layer, threshold=self.tau_table[layer], density=density, mask_ref=mask_ref)
        return out
