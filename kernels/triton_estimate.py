"""XAttention antidiagonal block scoring in Triton (same output as :func:`kernels.estimate.antidiagonal_block_scores`).

Two passes over the reduced ``(Lq/S) x (Lk/S)`` logits, neither of which stores them:

1. row statistics: for a tile of reduced query rows, stream over the reduced keys keeping the running
   max and sum of ``exp`` (online softmax) — one max and one sum per reduced row;
2. block sums: recompute the same logits tile by tile, normalise with the row statistics and sum the
   ``r x r`` sub-tiles (``r = block / stride``) straight into the ``(nq, nk)`` block score matrix.

A reduced logit is ``sum_m Q[i*S + S-1-m] . K[j*S + m]``: the inner loop over ``m`` is the reduction
dimension of a GEMM with ``S*D`` columns, so each pass costs ``1/S`` of a dense ``Q K^T``. Padding
tokens load as zeros (like the reference's zero padding), reduced keys past ``Lk`` get ``-inf``
and reduced rows past ``Lq`` contribute nothing.
"""

from __future__ import annotations

import math

import torch
import triton.language as tl

from kernels._jit import device, jitted, triton_interprets
from kernels.triton_attention import LOG2E, MAX_HEAD_DIM, _pow2, _program, launch_config


@device
def _reduced_logits(
    q_base, k_base, rows, cols, offs_d, d_ok, stride_ql, stride_kl, LQ, LK, qk_scale,
    S: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Scaled reduced logits ``(BLOCK_M, BLOCK_N)`` of reduced query ``rows`` against reduced key ``cols``: the sum
    over ``m`` of ``Q[i*S + S-1-m] . K[j*S + m]`` (one antidiagonal per ``S x S`` tile), as one GEMM with ``S*D``
    columns; padding tokens load as zeros, reduced keys past ``LK`` are ``-inf``."""
    s = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for m in range(0, S):
        q_tok = rows * S + (S - 1 - m)
        k_tok = cols * S + m
        qm = tl.load(
            q_base + q_tok[:, None] * stride_ql + offs_d[None, :], mask=(q_tok < LQ)[:, None] & d_ok[None, :], other=0.0
        )
        km = tl.load(
            k_base + k_tok[None, :] * stride_kl + offs_d[:, None], mask=(k_tok < LK)[None, :] & d_ok[:, None], other=0.0
        )
        if DOT_FP32:
            qm = qm.to(tl.float32)
            km = km.to(tl.float32)
        s = tl.dot(qm, km, s, input_precision=PRECISION)
    return tl.where((cols * S < LK)[None, :], s * qk_scale, float("-inf"))


def _estimate_stats(
    Q,
    K,
    M,
    L,
    stride_qb,
    stride_ql,
    stride_qh,
    stride_kb,
    stride_kl,
    stride_kh,
    stride_stat_bh,
    H,
    LQ,
    LK,
    RQ,
    RK,
    D,
    qk_scale,
    S: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_m, bh, b, h = _program(H)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    q_base = Q + b * stride_qb + h * stride_qh
    k_base = K + b * stride_kb + h * stride_kh
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start_n in range(0, RK, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        s = _reduced_logits(
            q_base, k_base, rows, cols, offs_d, d_ok, stride_ql, stride_kl, LQ, LK, qk_scale,
            S, BLOCK_M, BLOCK_N, DOT_FP32, PRECISION,
        )  # fmt: skip
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
        l_i = l_i * tl.exp2(m_i - m_sub) + tl.sum(tl.exp2(s - m_sub[:, None]), 1)
        m_i = m_new
    row_ok = rows < RQ
    tl.store(M + bh * stride_stat_bh + rows, m_i, mask=row_ok)
    tl.store(L + bh * stride_stat_bh + rows, l_i, mask=row_ok)


def _estimate_blocks(
    Q,
    K,
    M,
    L,
    OUT,
    stride_qb,
    stride_ql,
    stride_qh,
    stride_kb,
    stride_kl,
    stride_kh,
    stride_stat_bh,
    stride_out_bh,
    stride_out_q,
    H,
    LQ,
    LK,
    RQ,
    RK,
    NQ,
    NK,
    D,
    qk_scale,
    S: tl.constexpr,
    R: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_m, bh, b, h = _program(H)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    q_base = Q + b * stride_qb + h * stride_qh
    k_base = K + b * stride_kb + h * stride_kh
    row_ok = rows < RQ
    m_i = tl.load(M + bh * stride_stat_bh + rows, mask=row_ok, other=0.0)
    l_i = tl.load(L + bh * stride_stat_bh + rows, mask=row_ok, other=1.0)
    m_i = tl.where(m_i == float("-inf"), 0.0, m_i)
    inv_l = tl.where(row_ok & (rows * S < LQ) & (l_i > 0.0), 1.0 / l_i, 0.0)
    qb = pid_m * (BLOCK_M // R) + tl.arange(0, BLOCK_M // R)
    out_base = OUT + bh * stride_out_bh + qb[:, None] * stride_out_q
    for start_n in range(0, RK, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        s = _reduced_logits(
            q_base, k_base, rows, cols, offs_d, d_ok, stride_ql, stride_kl, LQ, LK, qk_scale,
            S, BLOCK_M, BLOCK_N, DOT_FP32, PRECISION,
        )  # fmt: skip
        p = tl.exp2(s - m_i[:, None]) * inv_l[:, None]
        blocks = tl.sum(tl.sum(tl.reshape(p, (BLOCK_M // R, R, BLOCK_N // R, R)), 3), 1)
        kb = start_n // R + tl.arange(0, BLOCK_N // R)
        tl.store(out_base + kb[None, :], blocks, mask=(qb < NQ)[:, None] & (kb < NK)[None, :])


def tune_configs(r: int) -> tuple[dict[str, int], ...]:
    """Spill-free tiles on sm_90a (AOT audit): the default, its 3-stage variant, and 64-row tiles on 4 warps (twice
    the programs: fewer idle SMs at 480p, where 128-row tiles fill 1.45 waves of an H200)."""
    t, s = max(128, r), max(64, r)
    return (
        {"block_m": t, "block_n": t, "num_warps": 8, "num_stages": 2},
        {"block_m": t, "block_n": t, "num_warps": 8, "num_stages": 3},
        {"block_m": s, "block_n": s, "num_warps": 4, "num_stages": 3},
    )


def estimate_config(interpret: bool, r: int) -> dict[str, int]:
    """Tile sizes in reduced rows/keys (multiples of ``r``) and launch settings."""
    if interpret:
        t = max(16, r)
        return {"block_m": t, "block_n": t, "num_warps": 4, "num_stages": 1}
    t = max(128, r)  # wide tiles: each (query chunk, key chunk) pair is reloaded once per tile of the other side
    return {"block_m": t, "block_n": t, "num_warps": 8, "num_stages": 2}


def supports(stride: int, block_size: int, head_dim: int) -> bool:
    """Whether the kernel handles this setting (``block/stride`` a power of two, head dim <= 256)."""
    r = block_size // stride
    return block_size % stride == 0 and r > 0 and r & (r - 1) == 0 and head_dim <= MAX_HEAD_DIM


def antidiagonal_block_scores_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    stride: int,
    block_size: int,
    scale: float | None = None,
    interpret: bool | None = None,
    **config: int,
) -> torch.Tensor:
    """Block scores ``(B, H, ceil(Lq/B), ceil(Lk/B))`` fp32, as the reference computes them."""
    interpret = triton_interprets() if interpret is None else interpret
    b, lq, h, d = q.shape
    lk = k.shape[1]
    if not supports(stride, block_size, d):
        raise NotImplementedError(f"triton estimation needs block/stride a power of two, got {block_size}/{stride}")
    r = block_size // stride
    nq, nk = math.ceil(lq / block_size), math.ceil(lk / block_size)
    rq, rk = nq * r, nk * r
    if interpret:
        q, k = q.float(), k.float()
    q, k = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k))
    scale = (1.0 / math.sqrt(d) if scale is None else scale) / stride
    stats = torch.empty(2, b * h, rq, device=q.device, dtype=torch.float32)
    out = torch.empty(b * h, nq, nk, device=q.device, dtype=torch.float32)
    qs = (q.stride(0), q.stride(1), q.stride(2))
    ks = (k.stride(0), k.stride(1), k.stride(2))
    fp32 = q.dtype == torch.float32

    def launch(cfg: dict[str, int]) -> None:
        grid = (math.ceil(rq / cfg["block_m"]), b * h)
        common = dict(
            S=stride, BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"], BLOCK_D=_pow2(d), DOT_FP32=interpret or fp32,
            PRECISION="ieee" if fp32 else "tf32", num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        )  # fmt: skip
        jitted(_estimate_stats)[grid](
            q, k, stats[0], stats[1], *qs, *ks, stats.stride(1), h, lq, lk, rq, rk, d, scale * LOG2E, **common
        )
        jitted(_estimate_blocks)[grid](
            q, k, stats[0], stats[1], out, *qs, *ks, stats.stride(1), out.stride(0), out.stride(1),
            h, lq, lk, rq, rk, nq, nk, d, scale * LOG2E, R=r, **common,
        )  # fmt: skip

    key = ("estimate", d, q.dtype, stride, r)
    launch(launch_config(key, estimate_config(interpret, r), interpret, config, launch, tune_configs(r)))
    return out.view(b, h, nq, nk)
