"""XAttention block-importance estimation by strided antidiagonal scoring (reference implementation).

For stride ``S`` and block size ``B`` (a multiple of ``S``): keys are regrouped as
``K~[j] = concat_m K[j*S + m]`` and queries reversed inside each group,
``Q~[i] = concat_m Q[i*S + S-1-m]``, so ``Q~[i] . K~[j]`` is the sum of one antidiagonal of the
``S x S`` tile ``(i, j)`` of ``Q K^T``. Logits are scaled by ``1 / (sqrt(D) * S)``, softmaxed over
all reduced keys of a reduced query row, and summed into ``B x B`` blocks. The sequence is
zero-padded to a multiple of ``B``; reduced keys made only of padding are excluded from the softmax
and padded reduced queries contribute nothing. Cost: about ``1/S`` of a dense ``Q K^T``.

:func:`antidiagonal_block_scores` dispatches (see :mod:`accel.kernels.dispatch`) to the Triton kernel of
:mod:`accel.kernels.triton_estimate` or to the chunked torch reference below.
"""

from __future__ import annotations

import math

import torch

from accel.kernels import dispatch

_MAX_LOGIT_ELEMS = 1 << 26
_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _regroup(x: torch.Tensor, stride: int, padded: int, reverse: bool) -> torch.Tensor:
    b, length, h, d = x.shape
    if padded > length:
        x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, padded - length))
    x = x.view(b, padded // stride, stride, h, d)
    if reverse:
        x = x.flip(2)
    return x.permute(0, 3, 1, 2, 4).reshape(b, h, padded // stride, stride * d)


def antidiagonal_block_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    stride: int,
    block_size: int,
    scale: float | None = None,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Block scores ``(B, H, ceil(Lq/B), ceil(Lk/B))`` fp32 from ``q, k`` of shape ``(B, L, H, D)``.

    Each reduced query row sums to one over the keys, so a block row sums to (at most) ``B/S``.
    ``backend`` (``auto``/``triton``/``torch``) overrides :func:`accel.kernels.dispatch.use_backend` and
    ``ACCEL_KERNELS``.
    """
    if block_size % stride:
        raise ValueError(f"block_size {block_size} must be a multiple of stride {stride}")
    chosen = dispatch.resolve(q.device, backend)
    if chosen == "triton":
        from accel.kernels import triton_estimate

        if triton_estimate.supports(stride, block_size, q.shape[-1]) and q.dtype in _TRITON_DTYPES:
            dispatch.record("antidiagonal_block_scores", "triton")
            return triton_estimate.antidiagonal_block_scores_triton(q, k, stride, block_size, scale)
        if dispatch.requested_backend(backend) == "triton":
            raise NotImplementedError(
                f"triton estimation: block/stride {block_size}/{stride} must be a power of two, head dim <= 256, "
                f"dtype fp16/bf16/fp32 (got {q.dtype})"
            )
    dispatch.record("antidiagonal_block_scores", "torch")
    return _reference(q, k, stride, block_size, scale)


def _reference(q: torch.Tensor, k: torch.Tensor, stride: int, block_size: int, scale: float | None) -> torch.Tensor:
    """Chunked pure-torch scoring (fp32); never materialises more than ``_MAX_LOGIT_ELEMS`` logits at once."""
    b, lq, h, d = q.shape
    lk = k.shape[1]
    nq, nk = math.ceil(lq / block_size), math.ceil(lk / block_size)
    r = block_size // stride
    qr = _regroup(q.float(), stride, nq * block_size, reverse=True)
    kr = _regroup(k.float(), stride, nk * block_size, reverse=False)
    scale = (1.0 / math.sqrt(d) if scale is None else scale) / stride
    key_pad = torch.arange(nk * r, device=q.device) * stride >= lk if nk * block_size > lk else None
    query_valid = (torch.arange(nq * r, device=q.device) * stride < lq).float() if nq * block_size > lq else None
    out = torch.empty(b, h, nq, nk, device=q.device, dtype=torch.float32)
    rows_per_chunk = max(r, (_MAX_LOGIT_ELEMS // max(1, b * h * nk * r)) // r * r)
    for start in range(0, nq * r, rows_per_chunk):
        stop = min(nq * r, start + rows_per_chunk)
        logits = torch.matmul(qr[:, :, start:stop], kr.transpose(-1, -2)).mul_(scale)
        if key_pad is not None:  # reduced keys made only of padding
            logits.masked_fill_(key_pad, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if query_valid is not None:  # padded reduced queries contribute nothing
            probs.mul_(query_valid[start:stop, None])
        out[:, :, start // r : stop // r] = probs.view(b, h, (stop - start) // r, r, nk, r).sum(dim=(3, 5))
    return out
