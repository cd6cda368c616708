"""Block-sparse attention through PyTorch's FlexAttention: a compiled block-sparse kernel on CPU (inductor's C++)
and on GPU (inductor's Triton), the third backend beside :mod:`accel.kernels.triton_attention` and the torch reference.

The ``BlockMask`` is built straight from the bool block mask, never from a token mask: the selected blocks that
lie wholly inside the sequences are *full* blocks (no ``mask_mod`` evaluated in them), and the selected blocks of
the last, partial key block are *partial* ones whose ``mask_mod`` drops the padding keys. The ``mask_mod`` also
encodes block membership, so the eager (uncompiled) path, which ignores the block structure, computes the same
thing. Rows whose block selects nothing return zeros, as the other backends. SVG2's variable-size clusters run on a
fixed grid over the permuted tokens (:func:`cluster_block_mask`): grid blocks that straddle a cluster edge are
partial, and their ``mask_mod`` looks up each token's cluster pair.

``flex_attention`` is compiled once per process (``torch.compile``, static shapes: a new sequence length
recompiles, a new mask never does); compiling needs a C++ compiler on CPU (:func:`available`). The seconds spent
compiling are kept in :data:`compile_seconds` so they can be shown apart from steady-state attention time.
"""

from __future__ import annotations

import functools
import math
import shutil
import time

import torch

from accel.kernels.block_offsets import block_token_ids

compile_seconds: dict[tuple, float] = {}  # (B, H, Lq, Lk, D, dtype, device, blocks) -> seconds of the first call


@functools.cache
def available() -> bool:
    """Whether FlexAttention exists in this torch and can be compiled here (a C++ compiler on the path)."""
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return any(shutil.which(cc) for cc in ("cc", "gcc", "clang", "c++", "g++"))


@functools.cache
def _compiled():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def block_mask(mask: torch.Tensor, block_q: int, block_k: int, lq: int, lk: int):
    """The ``BlockMask`` of a bool block mask ``(B, H, nq, nk)`` over blocks of ``block_q`` x ``block_k`` tokens."""
    tail = lk % block_k != 0  # the last key block is partial: its keys past lk are padding
    full = mask.clone() if tail else mask
    if tail:
        full[..., -1] = False

    def selected(batch, head, q_idx, kv_idx):
        return mask[batch, head, q_idx // block_q, kv_idx // block_k] & (kv_idx < lk)

    return _from_blocks(full, mask & ~full, (block_q, block_k), selected, lq, lk)


def _from_blocks(full: torch.Tensor, partial: torch.Tensor, block: tuple[int, int], mask_mod, lq: int, lk: int):
    """The ``BlockMask`` of bool ``full`` and ``partial`` block maps ``(B, H, nq, nk)`` (``mask_mod`` is evaluated in
    the partial blocks only)."""
    from torch.nn.attention.flex_attention import BlockMask

    from accel.kernels.block_offsets import build_lookup

    b, h, nq, nk = full.shape
    lut_full, count_full = build_lookup(full)
    lut_part, count_part = build_lookup(partial)
    return BlockMask.from_kv_blocks(
        count_part.view(b, h, nq),
        lut_part.reshape(b, h, nq, nk).contiguous(),
        count_full.view(b, h, nq),
        lut_full.reshape(b, h, nq, nk).contiguous(),
        BLOCK_SIZE=block,
        mask_mod=mask_mod,
        seq_lengths=(lq, lk),
    )


# FlexAttention's grid for variable-size clusters (SVG2): tokens are already permuted so each cluster is contiguous
CLUSTER_GRID = 64


def cluster_block_mask(mask: torch.Tensor, q_off: torch.Tensor, k_off: torch.Tensor, lq: int, lk: int,
                       grid: int = CLUSTER_GRID):  # fmt: skip
    """The ``BlockMask`` over a fixed ``grid`` x ``grid`` token grid of a mask ``(B, H, nq, nk)`` over variable-size
    clusters with offsets ``(B, H, n + 1)``: a grid block is computed when any cluster pair it overlaps is selected,
    *full* (no ``mask_mod``) when every one is, and *partial* otherwise, where the ``mask_mod`` looks up each token's
    cluster pair. Nothing of size ``Lq x Lk`` is built: rectangle sums of the cluster mask give both answers."""
    b, h, _, nk = mask.shape
    q_ids, k_ids = block_token_ids(q_off, lq), block_token_ids(k_off, lk)  # (B, H, L): each token's cluster
    gq, gk = math.ceil(lq / grid), math.ceil(lk / grid)
    # first and last cluster each grid block overlaps
    q_first, q_last = q_ids[..., ::grid], q_ids[..., torch.arange(1, gq + 1).mul(grid).clamp(max=lq) - 1]
    k_first, k_last = k_ids[..., ::grid], k_ids[..., torch.arange(1, gk + 1).mul(grid).clamp(max=lk) - 1]
    sums = torch.nn.functional.pad(mask.int().cumsum(-1).cumsum(-2), (1, 0, 1, 0))  # (B, H, nq + 1, nk + 1)

    def corner(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        flat = rows[..., :, None] * (nk + 1) + cols[..., None, :]
        return sums.flatten(-2).gather(-1, flat.flatten(-2)).view(b, h, gq, gk)

    selected = (corner(q_last + 1, k_last + 1) - corner(q_first, k_last + 1) - corner(q_last + 1, k_first)
                + corner(q_first, k_first))  # fmt: skip
    pairs = (q_last - q_first + 1)[..., :, None] * (k_last - k_first + 1)[..., None, :]
    full = (selected == pairs) & (lk % grid == 0 or torch.arange(gk) < gk - 1)  # a padded key block is partial

    def selected_pair(batch, head, q_idx, kv_idx):
        kv = kv_idx.clamp(max=lk - 1)
        return mask[batch, head, q_ids[batch, head, q_idx], k_ids[batch, head, kv]] & (kv_idx < lk)

    return _from_blocks(full, (selected > 0) & ~full, (grid, grid), selected_pair, lq, lk)


def flex_block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    block_q: int,
    block_k: int,
    scale: float | None = None,
    compiled: bool = True,
    blocks=None,
) -> torch.Tensor:
    """Attention of ``q`` over ``k, v`` (``(B, L, H, D)``) restricted to the blocks of ``mask`` ``(B, H, nq, nk)``.

    ``compiled=False`` runs FlexAttention eagerly (slow, no compiler needed; for tests). ``blocks`` is a
    :func:`block_mask` kept by a caller that reuses the mask.
    """
    b, lq, h, d = q.shape
    lk = k.shape[1]
    blocks = blocks if blocks is not None else block_mask(mask, block_q, block_k, lq, lk)
    qt, kt, vt = (x.transpose(1, 2).contiguous() for x in (q, k, v))  # (B, H, L, D): 10% faster than strided on CPU
    if not compiled:
        from torch.nn.attention.flex_attention import flex_attention

        return flex_attention(qt, kt, vt, block_mask=blocks, scale=scale).transpose(1, 2)
    key = (b, h, lq, lk, d, q.dtype, q.device.type, block_q, block_k)
    t0 = time.perf_counter()
    out = _compiled()(qt, kt, vt, block_mask=blocks, scale=scale)
    if key not in compile_seconds:
        compile_seconds[key] = time.perf_counter() - t0
    return out.transpose(1, 2)
