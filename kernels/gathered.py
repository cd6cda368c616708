"""The torch backend for fixed blocks: gathered keys, batched SDPA, on any device (the CPU's sparse path).

A :class:`GatherPlan` (built from a block mask by :func:`gather_plan`, kept by callers whose mask is static) puts
together the query blocks of one (batch, head) whose mask rows are identical, so they share one gather of their key
blocks and one SDPA row of ``m * block`` queries: CPU SDPA computes a 16-query row at a third of the rate of a
256-query one (measured on 2 cores, head dim 32), and static masks repeat rows (STA's border tiles, every full
row). The distinct rows are then grouped by (query blocks, selected key blocks), one batched
``scaled_dot_product_attention`` per group, split to stay under :data:`GATHER_BYTES` of gathered keys and values.
Work scales with density with one call per distinct shape rather than a Python loop over query blocks.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# most bytes of gathered keys and values one batched SDPA call takes (rows are split beyond)
GATHER_BYTES = 64 * 2**20
_WORD = 62  # mask bits packed per int64 when rows are compared


@dataclass(frozen=True)
class GatherPlan:
    """What :func:`gathered_attention` runs for one mask ``(B, H, nq, nk)``: per group, the query block rows
    ``(n, m)`` and key block rows ``(n, c)`` (indices into ``(B * H * blocks)``) of ``n`` SDPA rows."""

    shape: tuple[int, int, int, int]
    groups: tuple[tuple[torch.Tensor, torch.Tensor], ...]


def _distinct_rows(rows: torch.Tensor, nq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``rows`` ``(R, nk)`` (``nq`` per (batch, head)) ordered so that identical rows of one (batch, head)
    are adjacent: ``(perm, first)``, ``first[i]`` whether ``perm[i]`` starts a run of identical rows. Exact: the rows
    are packed into int64 words and sorted word by word (stable)."""
    r, nk = rows.shape
    words = -(-nk // _WORD)
    bits = F.pad(rows, (0, words * _WORD - nk)).view(r, words, _WORD).long()
    packed = (bits << torch.arange(_WORD, device=rows.device)).sum(-1)
    keys = torch.cat([torch.div(torch.arange(r, device=rows.device), nq, rounding_mode="floor")[:, None], packed], 1)
    perm = torch.arange(r, device=rows.device)
    for col in range(keys.shape[1] - 1, -1, -1):  # least significant word first: a stable radix order
        perm = perm[keys[perm, col].argsort(stable=True)]
    ordered = keys[perm]
    first = torch.ones(r, dtype=torch.bool, device=rows.device)
    first[1:] = (ordered[1:] != ordered[:-1]).any(1)
    return perm, first


def gather_plan(mask: torch.Tensor) -> GatherPlan:
    """The :class:`GatherPlan` of a bool block mask ``(B, H, nq, nk)``; rows that select nothing are left out (their
    output stays zero)."""
    b, h, nq, nk = mask.shape
    rows = mask.reshape(-1, nk)
    perm, first = _distinct_rows(rows, nq)
    starts = first.nonzero().squeeze(1)  # where each distinct row's members begin in perm
    sizes = torch.diff(starts, append=torch.tensor([len(perm)], device=mask.device))
    reps = perm[starts]  # one member row of each distinct row
    counts = rows[reps].sum(-1)
    order = torch.sort((~rows[reps]).to(torch.uint8), dim=-1, stable=True).indices  # selected key blocks first
    k_base = torch.div(reps, nq, rounding_mode="floor") * nk
    shape_key = sizes * (nk + 1) + counts
    groups = []
    for value in torch.unique(shape_key[counts > 0]).tolist():
        m, c = divmod(value, nk + 1)
        sel = (shape_key == value).nonzero().squeeze(1)
        q_ids = perm[starts[sel, None] + torch.arange(m, device=mask.device)]
        k_ids = order[sel, :c] + k_base[sel, None]
        groups.append((q_ids, k_ids))
    return GatherPlan((b, h, nq, nk), tuple(groups))


_workspaces = threading.local()


def _workspace(numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A flat buffer of at least ``numel`` elements kept per thread between calls: the gathers write into it, since a
    fresh allocation of this size is page-faulted in on every call (on CPU that cost as much as the gather itself)."""
    buf = getattr(_workspaces, "buf", None)
    if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != device:
        with torch.inference_mode(False):  # a normal tensor: writable inside and outside inference mode
            buf = _workspaces.buf = torch.empty(numel, dtype=dtype, device=device)
    return buf[:numel]


def _block_rows(x: torch.Tensor, n: int, size: int) -> torch.Tensor:
    """``x`` ``(B, L, H, D)`` as rows of blocks ``(B * H * n, size, D)``, the last block zero-padded to ``size``."""
    b, length, h, d = x.shape
    x = x.transpose(1, 2)
    if n * size != length:
        x = F.pad(x, (0, 0, 0, n * size - length))
    return x.reshape(b * h * n, size, d)


def gathered_attention(q, k, v, mask, bq: int, bk: int, scale, plan: GatherPlan | None = None) -> torch.Tensor:
    """Attention of ``q`` ``(B, Lq, H, D)`` over the key blocks ``mask`` ``(B, H, nq, nk)`` selects, blocks of
    ``bq`` and ``bk`` tokens (the last ones may be partial: a ``-inf`` bias drops the padding keys where a row
    selects the last key block). ``plan``: :func:`gather_plan` of ``mask``, kept by a caller that reuses it."""
    batch, lq, heads, d = q.shape
    lk = k.shape[1]
    nq, nk = mask.shape[-2:]
    if plan is None:
        plan = gather_plan(mask)
    elif plan.shape != tuple(mask.shape):
        raise ValueError(f"gather plan built for a mask of {plan.shape}, used with {tuple(mask.shape)}")
    q_rows, k_rows, v_rows = _block_rows(q, nq, bq), _block_rows(k, nk, bk), _block_rows(v, nk, bk)
    tail = lk - (nk - 1) * bk  # real keys in the last key block
    out = q_rows.new_zeros(q_rows.shape)
    parts = []
    for q_ids, k_ids in plan.groups:
        step = max(1, GATHER_BYTES // (2 * k_ids.shape[1] * bk * d * q.element_size()))
        parts += [(q_ids[i : i + step], k_ids[i : i + step]) for i in range(0, len(q_ids), step)]
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    size = 0 if grad else max((k_ids.numel() * bk * d for _, k_ids in parts), default=0)
    k_buf, v_buf = _workspace(2 * size, q.dtype, q.device).chunk(2)
    for q_ids, k_ids in parts:
        (n, m), c = q_ids.shape, k_ids.shape[1]
        shape, used = (n, 1, c * bk, d), n * c * bk * d
        # 4-D (rows, 1, tokens, D): CPU's fused SDPA kernel takes 4-D inputs only (3-D falls back to the math path)
        if grad:  # out= does not record autograd
            ki, vi = (rows.index_select(0, k_ids.reshape(-1)).view(shape) for rows in (k_rows, v_rows))
        else:
            ki = torch.index_select(k_rows, 0, k_ids.reshape(-1), out=k_buf[:used].view(-1, bk, d)).view(shape)
            vi = torch.index_select(v_rows, 0, k_ids.reshape(-1), out=v_buf[:used].view(-1, bk, d)).view(shape)
        bias = None
        if tail < bk:  # the last key block is partial: mask its padding keys where a row selects it
            bias = torch.zeros(n, 1, 1, c * bk, dtype=q.dtype, device=q.device)
            last = (k_ids[:, -1] % nk == nk - 1).view(-1, 1, 1, 1)
            bias[..., (c - 1) * bk + tail :].masked_fill_(last, float("-inf"))
        qi = q_rows.index_select(0, q_ids.reshape(-1)).view(n, 1, m * bq, d)
        oi = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=bias, scale=scale)
        out.index_copy_(0, q_ids.reshape(-1), oi.view(n * m, bq, d))
    return out.view(batch, heads, nq * bq, d)[:, :, :lq].transpose(1, 2)
