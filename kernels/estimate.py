"""XAttention block-importance estimation by strided antidiagonal scoring (reference implementation).

For stride ``S`` and block size ``B`` (a multiple of ``S``): keys are regrouped as
``K~[j] = concat_m K[j*S + m]`` and queries reversed inside each group,
``Q~[i] = concat_m Q[i*S + S-1-m]``, so ``Q~[i] . K~[j]`` is the sum of one antidiagonal of the
``S x S`` tile ``(i, j)`` of ``Q K^T``. Logits are scaled by ``1 / (sqrt(D) * S)``, softmaxed over
all reduced keys of a reduced query row, and summed into ``B x B`` blocks. The sequence is
zero-padded to a multiple of ``B``; reduced keys made only of padding are excluded from the softmax
and padded reduced queries contribute nothing. Cost: about ``1/S`` of a dense ``Q K^T``.
"""

from __future__ import annotations

import math

import torch

_MAX_LOGIT_ELEMS = 1 << 26


def _regroup(x: torch.Tensor, stride: int, padded: int, reverse: bool) -> torch.Tensor:
    b, length, h, d = x.shape
    if padded > length:
        x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, padded - length))
    x = x.view(b, padded // stride, stride, h, d)
    if reverse:
        x = x.flip(2)
    return x.permute(0, 3, 1, 2, 4).reshape(b, h, padded // stride, stride * d)


def antidiagonal_block_scores(
    q: torch.Tensor, k: torch.Tensor, stride: int, block_size: int, scale: float | None = None
) -> torch.Tensor:
    """Block scores ``(B, H, ceil(Lq/B), ceil(Lk/B))`` from ``q, k`` of shape ``(B, L, H, D)``.

    Each reduced query row sums to one over the keys, so a block row sums to (at most) ``B/S``.
    """
    if block_size % stride:
        raise ValueError(f"block_size {block_size} must be a multiple of stride {stride}")
    b, lq, h, d = q.shape
    lk = k.shape[1]
    nq, nk = math.ceil(lq / block_size), math.ceil(lk / block_size)
    r = block_size // stride
    qr = _regroup(q.float(), stride, nq * block_size, reverse=True)
    kr = _regroup(k.float(), stride, nk * block_size, reverse=False)
    scale = (1.0 / math.sqrt(d) if scale is None else scale) / stride
    key_valid = torch.arange(nk * r, device=q.device) * stride < lk
    query_valid = torch.arange(nq * r, device=q.device) * stride < lq
    out = torch.empty(b, h, nq, nk, device=q.device, dtype=torch.float32)
    rows_per_chunk = max(r, (_MAX_LOGIT_ELEMS // max(1, b * h * nk * r)) // r * r)
    for start in range(0, nq * r, rows_per_chunk):
        stop = min(nq * r, start + rows_per_chunk)
        logits = torch.matmul(qr[:, :, start:stop], kr.transpose(-1, -2)) * scale
        logits = logits.masked_fill(~key_valid, float("-inf"))
        probs = torch.softmax(logits, dim=-1) * query_valid[start:stop, None]
        probs = probs.view(b, h, (stop - start) // r, r, nk, r).sum(dim=(3, 5))
        out[:, :, start // r : stop // r] = probs
    return out
