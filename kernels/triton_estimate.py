"""XAttention antidiagonal block scoring in Triton (as :func:`accel.kernels.estimate.antidiagonal_block_scores`).

ONE pass over the reduced ``(Lq/S) x (Lk/S)`` logits, which are never stored:

1. :func:`_estimate_partials`, one program per (tile of reduced query rows, batch*head), streams over the reduced
   keys once with an online softmax (running row max ``m`` and sum ``l``, log2 domain). After key tile ``t`` it
   writes, for each row, the sums of ``exp2(s - m_t)`` over each group of ``r = block/stride`` keys (the partial
   block sums of that tile, unnormalised) and ``m_t``, the running max it used; at the end the final max ``m`` and
   ``1/l`` (0 for reduced rows past ``Lq``). Scratch, fp32: partials ``(B*H, rq, nt*block_n/r)`` (``nt`` key tiles
   cover ``>= nk`` block columns), maxima ``(B*H, rq, nt)``, stats ``(B*H, 2, rq)``.
2. A combine with plain torch ops on the scratch (no ``Q K^T``): each partial times ``exp2(m_t - m) / l`` (the
   online-softmax correction, <= 1), then the ``r`` rows of each query block summed into ``(B*H, nq, nk)``.

Scratch size: at Wan2.1 480p (32,760 tokens, 12 heads, block 128) stride 8 gives ``rq = 4096`` reduced rows x 256
block columns = 50 MB of partials per batch element (+6 MB maxima at 128-wide key tiles, 12 MB at 64), stride 16
half that: half the size of that shape's bf16 ``Q`` (100 MB), acceptable. The combine streams it once (a
read-modify-write and a read, ~150 MB: ~30 us at an H200's bandwidth, an estimate not yet measured).

A reduced logit is ``sum_m Q[i*S + S-1-m] . K[j*S + m]``: the inner loop over ``m`` is the reduction dimension of a
GEMM with ``S*D`` columns, so the pass costs ``1/S`` of a dense ``Q K^T`` (the two-pass version recomputed it for
the row statistics, ``2/S``). Padding tokens load as zeros (like the reference's zero padding), reduced keys past
``Lk`` get ``-inf`` and reduced rows past ``Lq`` contribute nothing.
"""

from __future__ import annotations

import math

import torch
import triton.language as tl

from accel.kernels._jit import device, jitted, triton_interprets
from accel.kernels.triton_attention import LOG2E, MAX_HEAD_DIM, _pow2, _program, launch_config


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


def _estimate_partials(
    Q,
    K,
    PART,
    MT,
    STATS,
    stride_qb,
    stride_ql,
    stride_qh,
    stride_kb,
    stride_kl,
    stride_kh,
    stride_part_bh,
    stride_part_q,
    stride_mt_bh,
    stride_mt_q,
    stride_stat_bh,
    H,
    LQ,
    LK,
    RQ,
    RK,
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
    """The one pass over the reduced logits of ``BLOCK_M`` reduced query rows: per key tile ``t``, the row sums of
    ``exp2(s - m_t)`` over each group of ``R`` keys into ``PART[bh, row, t*BLOCK_N/R + c]`` and ``m_t`` (the running
    row max after tile ``t``) into ``MT[bh, row, t]``; at the end the final max and ``1/sum`` (0 for reduced rows
    past ``LQ``) into ``STATS[bh, 0|1, row]``."""
    pid_m, bh, b, h = _program(H)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    q_base = Q + b * stride_qb + h * stride_qh
    k_base = K + b * stride_kb + h * stride_kh
    row_ok = rows < RQ
    bh64 = bh.to(tl.int64)
    part_base = PART + bh64 * stride_part_bh + rows[:, None] * stride_part_q
    mt_base = MT + bh64 * stride_mt_bh + rows * stride_mt_q
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
        p = tl.exp2(s - m_sub[:, None])
        l_i = l_i * tl.exp2(m_i - m_sub) + tl.sum(p, 1)
        m_i = m_new
        kb = start_n // R + tl.arange(0, BLOCK_N // R)
        tl.store(part_base + kb[None, :], tl.sum(tl.reshape(p, (BLOCK_M, BLOCK_N // R, R)), 2), mask=row_ok[:, None])
        tl.store(mt_base + start_n // BLOCK_N, m_sub, mask=row_ok)
    m_fin = tl.where(m_i == float("-inf"), 0.0, m_i)
    inv_l = tl.where(row_ok & (rows * S < LQ) & (l_i > 0.0), 1.0 / l_i, 0.0)
    stat_base = STATS + bh64 * stride_stat_bh + rows
    tl.store(stat_base, m_fin, mask=row_ok)
    tl.store(stat_base + RQ, inv_l, mask=row_ok)


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
    out = torch.empty(b * h, nq, nk, device=q.device, dtype=torch.float32)
    qs = (q.stride(0), q.stride(1), q.stride(2))
    ks = (k.stride(0), k.stride(1), k.stride(2))
    fp32 = q.dtype == torch.float32

    def launch(cfg: dict[str, int]) -> None:
        bn = cfg["block_n"]
        if bn % r:
            raise ValueError(f"block_n {bn} must be a multiple of block/stride {r}")
        nt = math.ceil(rk / bn)  # key tiles per reduced row
        nkp = nt * (bn // r)  # block columns the key tiles cover (>= nk)
        part = torch.empty(b * h, rq, nkp, device=q.device, dtype=torch.float32)
        mt = torch.empty(b * h, rq, nt, device=q.device, dtype=torch.float32)
        stats = torch.empty(b * h, 2, rq, device=q.device, dtype=torch.float32)
        grid = (math.ceil(rq / cfg["block_m"]), b * h)
        jitted(_estimate_partials)[grid](
            q, k, part, mt, stats, *qs, *ks, part.stride(0), part.stride(1), mt.stride(0), mt.stride(1),
            stats.stride(0), h, lq, lk, rq, rk, d, scale * LOG2E,
            S=stride, R=r, BLOCK_M=cfg["block_m"], BLOCK_N=bn, BLOCK_D=_pow2(d), DOT_FP32=interpret or fp32,
            PRECISION="ieee" if fp32 else "tf32", num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        )  # fmt: skip
        # combine (no logits): rescale each tile's partials to the row's final max, normalise, sum r rows per block
        scale_t = torch.exp2(mt - stats[:, 0, :, None]) * stats[:, 1, :, None]  # (b*h, rq, nt), <= 1/l
        part.view(b * h, rq, nt, bn // r).mul_(scale_t[..., None])
        torch.sum(part.view(b * h, nq, r, nkp)[..., :nk], 2, out=out)

    key = ("estimate", d, q.dtype, stride, r)
    launch(launch_config(key, estimate_config(interpret, r), interpret, config, launch, tune_configs(r)))
    return out.view(b, h, nq, nk)
