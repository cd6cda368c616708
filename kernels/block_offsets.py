"""Block boundaries as offsets, shared by the block-sparse entry point and its backends.

A sequence of ``L`` tokens is cut into ``n`` blocks by offsets ``[o_0 = 0, o_1, ..., o_n = L]`` (shape
``(..., n + 1)``, e.g. ``(B, H, n + 1)`` for per-head clusters): fixed blocks (:func:`uniform_offsets`) or
variable-size ones (SVG2's clusters), and a block mask's compact visit lists (:func:`build_lookup`, what the
Triton and FlexAttention backends walk). Torch only, and importing nothing else of ``accel.kernels``, so both
:mod:`accel.kernels.block_sparse` and the backends (:mod:`accel.kernels.flex`) can use it without importing each
other.
"""

from __future__ import annotations

import math

import torch

__all__ = ["block_token_ids", "uniform_offsets"]


def uniform_offsets(length: int, block_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Offsets ``[0, B, 2B, ..., length]`` of fixed blocks, the last one possibly short."""
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    n = math.ceil(length / block_size)
    off = torch.arange(n + 1, device=device, dtype=torch.long) * block_size
    off[-1] = length
    return off


def block_token_ids(offsets: torch.Tensor, length: int) -> torch.Tensor:
    """For each token position, the index of the block that holds it; shape ``offsets.shape[:-1] + (length,)``."""
    pos = torch.arange(length, device=offsets.device, dtype=offsets.dtype)
    inner = offsets[..., 1:].contiguous()
    pos = pos.expand(*inner.shape[:-1], length).contiguous()
    return torch.searchsorted(inner, pos, right=True)


def build_lookup(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Compact visit lists of a block mask ``(B, H, nq, nk)``, without a host-device sync.

    Returns ``lut`` int32 ``(B*H, nq, nk)``: per query block the selected key block indices in ascending
    order first (the rest of the row is arbitrary valid indices), and ``count`` int32 ``(B*H, nq)``. Built with
    a cumulative sum and one scatter (no sort, no ``max``), so it costs about one pass over the mask; a caller
    that keeps a mask (e.g. Temporal Mask Reuse) can keep its lookup too and pass it to the kernels.
    """
    b, h, nq, nk = mask.shape
    m = mask.reshape(b * h, nq, nk)
    count = m.sum(-1, dtype=torch.int32)
    slot = torch.where(m, m.cumsum(-1) - 1, nk)  # where each selected block goes; the rest to a spare column
    lut = torch.zeros(b * h, nq, nk + 1, device=mask.device, dtype=torch.int32)
    ids = torch.arange(nk, device=mask.device, dtype=torch.int32).expand(b * h, nq, nk)
    lut.scatter_(-1, slot, ids)
    return lut[..., :nk], count.contiguous()
