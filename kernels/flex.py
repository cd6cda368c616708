"""Block-sparse attention through PyTorch's FlexAttention: a compiled block-sparse kernel on CPU (inductor's C++)
and on GPU (inductor's Triton), the third backend beside :mod:`kernels.triton_attention` and the torch reference.

The ``BlockMask`` is built straight from the bool block mask, never from a token mask: the selected blocks that
lie wholly inside the sequences are *full* blocks (no ``mask_mod`` evaluated in them), and the selected blocks of
the last, partial key block are *partial* ones whose ``mask_mod`` drops the padding keys. The ``mask_mod`` also
encodes block membership, so the eager (uncompiled) path, which ignores the block structure, computes the same
thing. Rows whose block selects nothing return zeros, as the other backends.

``flex_attention`` is compiled once per process (``torch.compile``, static shapes: a new sequence length
recompiles, a new mask never does); compiling needs a C++ compiler on CPU (:func:`available`). The seconds spent
compiling are kept in :data:`compile_seconds` so they can be shown apart from steady-state attention time.
"""

from __future__ import annotations

import functools
import shutil
import time

import torch

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
    from torch.nn.attention.flex_attention import BlockMask

    from kernels.triton_attention import build_lookup

    b, h, nq, nk = mask.shape
    tail = lk % block_k != 0  # the last key block is partial: its keys past lk are padding
    full = mask.clone() if tail else mask
    if tail:
        full[..., -1] = False
    partial = mask & ~full
    lut_full, count_full = build_lookup(full)
    lut_part, count_part = build_lookup(partial)

    def selected(batch, head, q_idx, kv_idx):
        return mask[batch, head, q_idx // block_q, kv_idx // block_k] & (kv_idx < lk)

    return BlockMask.from_kv_blocks(
        count_part.view(b, h, nq),
        lut_part.reshape(b, h, nq, nk).contiguous(),
        count_full.view(b, h, nq),
        lut_full.reshape(b, h, nq, nk).contiguous(),
        BLOCK_SIZE=(block_q, block_k),
        mask_mod=selected,
        seq_lengths=(lq, lk),
    )


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
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    if not compiled:
        from torch.nn.attention.flex_attention import flex_attention

        return flex_attention(qt, kt, vt, block_mask=blocks, scale=scale).transpose(1, 2)
    key = (b, h, lq, lk, d, q.dtype, q.device.type, block_q, block_k)
    t0 = time.perf_counter()
    out = _compiled()(qt, kt, vt, block_mask=blocks, scale=scale)
    if key not in compile_seconds:
        compile_seconds[key] = time.perf_counter() - t0
    return out.transpose(1, 2)
