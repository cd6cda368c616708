"""Block-sparse attention over variable-size blocks: the single entry point every sparse method uses.

Layout follows diffusers' attention dispatch: ``q, k, v`` are ``(B, L, H, D)``. A block mask
``mask[b, h, i, j]`` says whether query block ``i`` attends to key block ``j``. Block
boundaries are given as offsets ``(B, H, n + 1)`` (or anything broadcastable to it, e.g. ``(n + 1,)``)
so both fixed blocks (XAttention: :func:`uniform_offsets`) and per-head cluster sizes (SVG2, after
its permutation) use the same call. Query rows whose block selects no key get a zero output,
as FlashAttention-style kernels return.

:func:`block_sparse_attention` dispatches (see :mod:`accel.kernels.dispatch`): the Triton kernels of
:mod:`accel.kernels.triton_attention` (fixed blocks when both offsets are uniform, the variable-size kernel
otherwise), FlexAttention (:mod:`accel.kernels.flex`, fixed blocks), or torch:
:func:`accel.kernels.gathered.gathered_attention` for fixed blocks (identical rows of query blocks together, one
batched SDPA per shape of gathered blocks) and the loop :func:`_reference` for variable-size blocks.

The offsets helpers (:func:`uniform_offsets`, :func:`block_token_ids`) live in :mod:`accel.kernels.block_offsets`,
below both this module and the backends, and are re-exported here.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from accel.kernels import dispatch
from accel.kernels.block_offsets import block_token_ids, uniform_offsets
from accel.kernels.gathered import GATHER_BYTES, GatherPlan, gather_plan, gathered_attention

__all__ = [
    "GATHER_BYTES",
    "backend_lookup",
    "block_sparse_attention",
    "block_token_ids",
    "block_work",
    "mask_density",
    "uniform_density",
    "uniform_offsets",
]


def _full_offsets(
    off: torch.Tensor | None, batch: int, heads: int, length: int, nblocks: int, device, on_device: bool = False
) -> torch.Tensor:
    """``off`` as ``(B, H, n + 1)`` long, checked to end at ``length``: on the host, or with ``on_device`` by a
    device-side assert (no host sync; a bad end fails the launch)."""
    if off is None:
        if length % nblocks:
            raise ValueError(f"without offsets, length {length} must split evenly into {nblocks} blocks")
        off = uniform_offsets(length, length // nblocks, device)
    off = off.to(device=device, dtype=torch.long)
    if off.shape[-1] != nblocks + 1:
        raise ValueError(f"offsets have {off.shape[-1] - 1} blocks but the mask has {nblocks}")
    if on_device:
        torch._assert_async((off[..., -1] == length).all(), f"offsets must end at the sequence length {length}")
    elif int(off[..., -1].min()) != length or int(off[..., -1].max()) != length:
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


@functools.lru_cache(maxsize=64)
def _pair_shares(lq: int, lk: int, block_q: int, block_k: int, device: torch.device) -> torch.Tensor:
    sizes_q = uniform_offsets(lq, block_q, device).diff().float()
    sizes_k = uniform_offsets(lk, block_k, device).diff().float()
    return torch.outer(sizes_q, sizes_k) / (lq * lk)


def uniform_density(mask: torch.Tensor, block_q: int, block_k: int, lq: int, lk: int) -> torch.Tensor:
    """:func:`mask_density` of a mask over :func:`uniform_offsets` blocks ``(B, H)``, from a per-shape table of each
    block's share of the pairs (one product and one sum per call)."""
    return (mask * _pair_shares(lq, lk, block_q, block_k, mask.device)).sum((-2, -1))


def block_work(mask: torch.Tensor, block_q: int, block_k: int, lq: int, lk: int) -> torch.Tensor:
    """Share ``(B, H)`` of the dense product a fixed-block kernel computes for ``mask``: every selected block at its
    full size, so a partial last block costs as much as a whole one (above 1 when the padding outweighs the skips;
    :func:`mask_density` counts the real pairs instead). This is what dense SDPA is weighed against."""
    return mask.sum((-2, -1), dtype=torch.float32) * (block_q * block_k / (lq * lk))


def backend_lookup(
    backend: str, mask: torch.Tensor, block_size: int | tuple[int, int], lq: int, lk: int, batch: int = 1
) -> object:
    """What ``backend`` (a resolved one: ``torch``, ``flex`` or ``triton``) builds from a fixed-block ``mask``
    (``(B, H, nq, nk)``, or ``(H, nq, nk)`` for every one of ``batch`` items) before it runs, for a caller that
    reuses the mask to keep and pass as ``lookup=``: the torch backend's gather plan, FlexAttention's BlockMask,
    Triton's visit lists."""
    mask = mask.to(torch.bool)
    if mask.ndim == 3:
        mask = mask.unsqueeze(0).expand(batch, *mask.shape)
    bq, bk = (block_size, block_size) if isinstance(block_size, int) else block_size
    if backend == "flex":
        from accel.kernels import flex

        return flex.block_mask(mask, bq, bk, lq, lk)
    if backend == "triton":
        from accel.kernels.block_offsets import build_lookup

        return build_lookup(mask)
    return gather_plan(mask)


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    q_offsets: torch.Tensor | None = None,
    k_offsets: torch.Tensor | None = None,
    scale: float | None = None,
    *,
    block_size: int | tuple[int, int] | None = None,
    varlen: bool = False,
    dense: bool | None = None,
    lookup: object = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Attention of ``q`` over ``k, v`` restricted to the selected blocks; returns ``(B, Lq, H, D)``.

    ``mask`` is bool ``(B, H, nq, nk)`` (a ``(H, nq, nk)`` mask is broadcast over the batch).
    A mask that selects every block takes the exact dense path (``scaled_dot_product_attention``
    without a mask), so a fully dense setting reproduces dense attention bit for bit. ``backend``
    (``auto``/``triton``/``torch``) overrides :func:`accel.kernels.dispatch.use_backend` and ``ACCEL_KERNELS``.

    What the caller knows spares the host-device syncs of finding it out (none is left on the Triton path, so a
    transformer call can be captured in a CUDA graph): ``block_size`` (one int, or query and key sizes) says the
    blocks are :func:`uniform_offsets` (offsets are then neither needed nor checked); ``varlen`` says the offsets
    are not uniform (the variable-size kernel runs without looking at them; on CUDA their last entry is checked
    by a device-side assert instead of on the host); ``dense`` says whether every
    block is selected (``None``: look, one sync); ``lookup`` is what the backend builds from ``mask``
    (:func:`accel.kernels.triton_attention.build_lookup` for Triton, :func:`accel.kernels.flex.block_mask` for flex,
    :func:`accel.kernels.gathered.gather_plan` for torch; :func:`backend_lookup` builds the right one), kept by a
    caller that reuses the mask.
    """
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError("q, k, v must be (B, L, H, D)")
    batch, lq, heads, _ = q.shape
    lk = k.shape[1]
    if mask.ndim == 3:
        mask = mask.unsqueeze(0)
    mask = mask.to(device=q.device, dtype=torch.bool).expand(batch, heads, *mask.shape[-2:])
    nq, nk = mask.shape[-2:]
    if bool(mask.all()) if dense is None else dense:
        dispatch.record("block_sparse_attention", "dense")
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale)
        return out.transpose(1, 2)
    if block_size is not None:
        bq, bk = (block_size, block_size) if isinstance(block_size, int) else block_size
        if (nq, nk) != (math.ceil(lq / bq), math.ceil(lk / bk)):
            raise ValueError(f"mask has {nq} x {nk} blocks, but blocks of {bq} x {bk} tokens make "
                             f"{math.ceil(lq / bq)} x {math.ceil(lk / bk)}")  # fmt: skip
    chosen = dispatch.resolve(q.device, backend)
    if chosen == "triton" and not _triton_supports(q, k, v):
        if dispatch.requested_backend(backend) == "triton":
            raise NotImplementedError(
                f"triton block-sparse attention: unsupported dtype {q.dtype} or head dim {q.shape[-1]}"
            )
        chosen = "torch"
    if varlen and chosen == "triton" and q.device.type != "cpu":  # on CPU the host checks cost nothing
        if q_offsets is None or k_offsets is None:
            raise ValueError("varlen=True needs q_offsets and k_offsets")
        q_off = _full_offsets(q_offsets, batch, heads, lq, nq, q.device, on_device=True)
        k_off = _full_offsets(k_offsets, batch, heads, lk, nk, q.device, on_device=True)
        bq = bk = None
    elif block_size is None:
        q_off = _full_offsets(q_offsets, batch, heads, lq, nq, q.device)
        k_off = _full_offsets(k_offsets, batch, heads, lk, nk, q.device)
        bq, bk = (None, None) if varlen else (_uniform_block(q_off, lq), _uniform_block(k_off, lk))
    else:
        q_off = uniform_offsets(lq, bq, q.device).expand(batch, heads, nq + 1)
        k_off = uniform_offsets(lk, bk, q.device).expand(batch, heads, nk + 1)
    dispatch.record("block_sparse_attention", chosen)
    if chosen == "torch":
        if bq is not None and bk is not None:
            plan = lookup if isinstance(lookup, GatherPlan) else None  # another backend's lookup: plan here
            return gathered_attention(q, k, v, mask, bq, bk, scale, plan=plan)
        return _reference(q, k, v, mask, q_off, k_off, scale)
    if chosen == "flex":
        from accel.kernels import flex

        if bq is None or bk is None:  # clusters: a fixed grid over the permuted tokens
            blocks = lookup if lookup is not None else flex.cluster_block_mask(mask, q_off, k_off, lq, lk)
            grid = blocks.BLOCK_SIZE[0]
            return flex.flex_block_sparse_attention(q, k, v, mask, grid, grid, scale, blocks=blocks)
        return flex.flex_block_sparse_attention(q, k, v, mask, bq, bk, scale, blocks=lookup)
    from accel.kernels import triton_attention

    if bq is not None and bk is not None:
        return triton_attention.fixed_block_sparse_attention(q, k, v, mask, bq, bk, scale, lookup=lookup)
    return triton_attention.varlen_block_sparse_attention(q, k, v, mask, q_off, k_off, scale)


def _triton_supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    dtypes = (torch.float16, torch.bfloat16, torch.float32)
    same = q.dtype == k.dtype == v.dtype and q.shape[-1] == k.shape[-1] == v.shape[-1]
    return same and q.dtype in dtypes and q.shape[-1] <= 256


def _uniform_block(off: torch.Tensor, length: int) -> int | None:
    """The block size when ``off`` (``(B, H, n + 1)``, possibly expanded) is :func:`uniform_offsets` for every head."""
    n = off.shape[-1] - 1
    if n < 1:
        return None
    flat = off.reshape(-1, n + 1)
    if all(s == 0 for s in off.stride()[:-1]):
        flat = flat[:1]  # one set of offsets broadcast to every (batch, head)
    size = int(flat[0, 1])
    if size <= 0 or math.ceil(length / size) != n:
        return None
    return size if torch.equal(flat, uniform_offsets(length, size, off.device).expand_as(flat)) else None


def _reference(q, k, v, mask, q_off, k_off, scale):
    """Pure-torch reference that visits only the selected blocks, like the kernel does.

    For each query block index ``i`` (batched over batch and heads): gather that block's query
    tokens and the tokens of its selected key blocks, padded to the longest head, and run
    ``scaled_dot_product_attention`` with a small key-padding bias. Work scales with density and
    nothing of size ``Lq x Lk`` is materialised.
    """
    batch, lq, heads, d = q.shape
    lk = k.shape[1]
    nq = mask.shape[2]
    dev = q.device
    # rows of (B*H*L, D) so that per-head token gathers are plain row selections
    q_rows = q.transpose(1, 2).reshape(-1, d)
    k_rows = k.transpose(1, 2).reshape(-1, d)
    v_rows = v.transpose(1, 2).reshape(-1, d)
    q_base = (torch.arange(batch * heads, device=dev) * lq).view(batch, heads, 1)
    k_base = (torch.arange(batch * heads, device=dev) * lk).view(batch, heads, 1)
    kid = block_token_ids(k_off, lk)  # (B, H, Lk)
    q_start, q_size = q_off[..., :-1], q_off.diff(dim=-1)  # (B, H, nq)
    out = torch.zeros_like(q_rows)
    for i in range(nq):
        mq = int(q_size[..., i].max())
        key_sel = torch.gather(mask[:, :, i], 2, kid)  # (B, H, Lk): token j lies in a selected key block
        counts = key_sel.sum(-1, keepdim=True)  # (B, H, 1)
        mk = int(counts.max())
        if mq == 0 or mk == 0:
            continue  # no query tokens, or every head's row is empty: the output stays zero
        # the selected key tokens of each head first, in order (stable sort of the complement)
        k_idx = torch.sort((~key_sel).to(torch.uint8), dim=-1, stable=True).indices[..., :mk] + k_base
        k_pad = torch.arange(mk, device=dev) >= counts  # (B, H, mk)
        bias = torch.zeros(batch, heads, 1, mk, dtype=q.dtype, device=dev)
        bias.masked_fill_(k_pad[:, :, None], float("-inf"))
        ar = torch.arange(mq, device=dev)
        q_valid = (ar < q_size[..., i, None]) & (counts > 0)  # (B, H, mq)
        q_idx = (q_start[..., i, None] + ar).clamp_max(lq - 1) + q_base
        qi = q_rows.index_select(0, q_idx.reshape(-1)).view(batch, heads, mq, d)
        ki = k_rows.index_select(0, k_idx.reshape(-1)).view(batch, heads, mk, d)
        vi = v_rows.index_select(0, k_idx.reshape(-1)).view(batch, heads, mk, d)
        oi = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=bias, scale=scale)
        keep = q_valid.reshape(-1)
        out.index_copy_(0, q_idx.reshape(-1)[keep], oi.reshape(-1, d)[keep])
    return out.view(batch, heads, lq, d).transpose(1, 2)
