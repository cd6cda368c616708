"""Block-sparse attention over variable-size blocks: the single entry point every sparse method uses.

Layout follows diffusers' attention dispatch: ``q, k, v`` are ``(B, L, H, D)``. A block mask
``mask[b, h, i, j]`` says whether query block ``i`` attends to key block ``j``. Block
boundaries are given as offsets ``(B, H, n + 1)`` (or anything broadcastable to it, e.g. ``(n + 1,)``)
so both fixed blocks (XAttention: :func:`uniform_offsets`) and per-head cluster sizes (SVG2, after
its permutation) use the same call. Query rows whose block selects no key get a zero output,
as FlashAttention-style kernels return.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Bound on the elements of one materialised token mask chunk in the reference implementation.
_MAX_MASK_ELEMS = 1 << 26


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


def _full_offsets(off: torch.Tensor | None, batch: int, heads: int, length: int, nblocks: int, device) -> torch.Tensor:
    if off is None:
        if length % nblocks:
            raise ValueError(f"without offsets, length {length} must split evenly into {nblocks} blocks")
        off = uniform_offsets(length, length // nblocks, device)
    off = off.to(device=device, dtype=torch.long)
    if off.shape[-1] != nblocks + 1:
        raise ValueError(f"offsets have {off.shape[-1] - 1} blocks but the mask has {nblocks}")
    if int(off[..., -1].min()) != length or int(off[..., -1].max()) != length:
        raise ValueError(f"offsets must end at the sequence length {length}")
    return off.expand(batch, heads, nblocks + 1)


def mask_density(
    mask: torch.Tensor, q_offsets: torch.Tensor | None = None, k_offsets: torch.Tensor | None = None
) -> torch.Tensor:
    """Fraction of query-key pairs computed: ``sum m_ij |Q_i||K_j| / sum |Q_i||K_j|`` per ``(B, H)``."""
    b, h, nq, nk = mask.shape
    qs = torch.ones(nq, device=mask.device) if q_offsets is None else q_offsets.diff(dim=-1).float()
    ks = torch.ones(nk, device=mask.device) if k_offsets is None else k_offsets.diff(dim=-1).float()
    qs = qs.expand(b, h, nq)
    ks = ks.expand(b, h, nk)
    num = torch.einsum("bhi,bhij,bhj->bh", qs, mask.float(), ks)
    return num / (qs.sum(-1) * ks.sum(-1))


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    q_offsets: torch.Tensor | None = None,
    k_offsets: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention of ``q`` over ``k, v`` restricted to the selected blocks; returns ``(B, Lq, H, D)``.

    ``mask`` is bool ``(B, H, nq, nk)`` (a ``(H, nq, nk)`` mask is broadcast over the batch).
    A mask that selects every block takes the exact dense path (``scaled_dot_product_attention``
    without a mask), so a fully dense setting reproduces dense attention bit for bit.
    """
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError("q, k, v must be (B, L, H, D)")
    batch, lq, heads, _ = q.shape
    lk = k.shape[1]
    if mask.ndim == 3:
        mask = mask.unsqueeze(0)
    mask = mask.to(device=q.device, dtype=torch.bool).expand(batch, heads, *mask.shape[-2:])
    nq, nk = mask.shape[-2:]
    if bool(mask.all()):
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale)
        return out.transpose(1, 2)
    q_off = _full_offsets(q_offsets, batch, heads, lq, nq, q.device)
    k_off = _full_offsets(k_offsets, batch, heads, lk, nk, q.device)
    return _reference(q, k, v, mask, q_off, k_off, scale)


def _reference(q, k, v, mask, q_off, k_off, scale):
    """Pure-torch reference: expand the block mask to tokens chunk by chunk and run masked SDPA."""
    batch, lq, heads, _ = q.shape
    lk = k.shape[1]
    nk = mask.shape[-1]
    qid = block_token_ids(q_off, lq)  # (B, H, Lq)
    kid = block_token_ids(k_off, lk)  # (B, H, Lk)
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    out = torch.empty_like(qt)
    chunk = max(1, _MAX_MASK_ELEMS // max(1, batch * heads * lk))
    for start in range(0, lq, chunk):
        stop = min(lq, start + chunk)
        rows = torch.gather(mask, 2, qid[:, :, start:stop, None].expand(-1, -1, -1, nk))
        token_mask = torch.gather(rows, 3, kid[:, :, None, :].expand(-1, -1, stop - start, -1))
        o = F.scaled_dot_product_attention(qt[:, :, start:stop], kt, vt, attn_mask=token_mask, scale=scale)
        empty = ~token_mask.any(-1, keepdim=True)
        out[:, :, start:stop] = o.masked_fill(empty, 0.0)
    return out.transpose(1, 2)
