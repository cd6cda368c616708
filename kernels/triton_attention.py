"""Block-sparse FlashAttention forward in Triton: fixed blocks (XAttention) and variable-size clusters (SVG2).

Both kernels take ``q, k, v`` as ``(B, L, H, D)`` (any strides with a unit last stride) and keep an
online softmax over the key tiles they visit, accumulating in fp32. What to visit comes as a
compact lookup built from the bool block mask (:func:`build_lookup`): for each ``(batch*head,
query block)`` the ascending list of selected key blocks and their count. Rows whose block selects
nothing get zeros.

* :func:`fixed_block_sparse_attention`: blocks of ``block_q`` / ``block_k`` tokens (the last one may
  be short). One program per ``(query tile, batch*head)``; the key loop is flat over
  ``count * tiles_per_block`` tiles so the compiler can pipeline it.
* :func:`varlen_block_sparse_attention`: per-(B, H) offsets ``(B, H, n + 1)``. Query clusters are cut
  into tiles of ``BLOCK_M`` rows (:func:`query_tiles`); each walks one flat list of key tiles
  (:func:`key_tiles`: its selected key clusters merged into contiguous runs, each run cut into ``BLOCK_N``
  tiles), so the loop is a single pipelinable one and only the last tile of a run is partial (SVG2's ~33-token
  clusters would otherwise fill 64-wide tiles half). Empty clusters are skipped.

On CUDA the dot operands stay bf16/fp16; fp32 inputs are converted to bf16 with a warning (once), since fp32
dots compile to a 10 KB register spill on sm_90a, and the output is returned in fp32. Under the interpreter
(CPU) everything is fp32 and the operands of ``tl.dot`` are cast to fp32.

Launch settings: :func:`default_config` under the interpreter and when tuning is off (``ACCEL_AUTOTUNE=0``);
on CUDA the first call of each ``(kernel, head dim, dtype, block sizes)`` times every :data:`TUNE_CONFIGS` entry
(the tiles that compile for sm_90a without spills, ``python -m accel.kernels.aot``) on its own inputs with
``triton.testing.do_bench`` and keeps the fastest for the process. A ``config`` passed by the caller wins.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable

import torch
import triton
import triton.language as tl

from accel.kernels._jit import device, jitted, triton_interprets
from accel.kernels.block_offsets import build_lookup

LOG2E = 1.4426950408889634
MAX_HEAD_DIM = 256
ENV_AUTOTUNE = "ACCEL_AUTOTUNE"
# spill-free on sm_90a for the fixed-block kernel at head dims 64 and 128 (`python -m accel.kernels.aot`; 128x128/4w and
# 128x64/4w spill); the variable-size kernel spills at 128x128 (255 registers, 40 B stack) and skips it
TUNE_CONFIGS: tuple[dict[str, int], ...] = (
    {"block_m": 128, "block_n": 64, "num_warps": 8, "num_stages": 3},
    {"block_m": 128, "block_n": 64, "num_warps": 8, "num_stages": 2},
    {"block_m": 128, "block_n": 64, "num_warps": 8, "num_stages": 4},
    {"block_m": 128, "block_n": 128, "num_warps": 8, "num_stages": 2},
    {"block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 3},
    {"block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 4},
)
_TUNED: dict[tuple, dict[str, int]] = {}


def tune_configs(kernel: str) -> tuple[dict[str, int], ...]:
    """The launch settings the autotuner times for ``kernel`` (``fixed`` or ``varlen``)."""
    if kernel == "varlen":
        return tuple(c for c in TUNE_CONFIGS if (c["block_m"], c["block_n"]) != (128, 128))
    return TUNE_CONFIGS


@device
def _program(H):
    """This program's row-tile index, its ``batch * heads`` index, and that batch (int64: B*L*H*D may exceed
    2**31) and head."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    return pid_m, bh, (bh // H).to(tl.int64), bh % H


@device
def _attend_tile(
    acc, m_i, l_i, q, k_base, v_base, k_lo, k_hi, offs_d, d_ok, stride_kl, stride_vl, qk_scale,
    BLOCK_N: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """One key tile of the online softmax (FlashAttention-2): scores of the query rows ``q`` against the ``BLOCK_N``
    keys from ``k_lo`` (those from ``k_hi`` on masked out), the running max ``m_i`` and sum ``l_i`` rescaled, ``P V``
    accumulated in fp32 (log2 domain: ``qk_scale`` includes log2(e))."""
    offs_n = k_lo + tl.arange(0, BLOCK_N)
    n_ok = offs_n < k_hi
    kt = tl.load(k_base + offs_n[None, :] * stride_kl + offs_d[:, None], mask=n_ok[None, :] & d_ok[:, None], other=0.0)
    if DOT_FP32:
        kt = kt.to(tl.float32)
    s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
    s = tl.where(n_ok[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_sub)
    p = tl.exp2(s - m_sub[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(v_base + offs_n[:, None] * stride_vl + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
    if DOT_FP32:
        acc = tl.dot(p, v.to(tl.float32), acc * alpha[:, None], input_precision=PRECISION)
    else:
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
    return acc, m_new, l_i


@device
def _load_rows(base, offs_m, m_ok, offs_d, d_ok, stride_l, DOT_FP32: tl.constexpr):
    """Rows ``offs_m`` of one head (zeros out of range), in fp32 where the dots are."""
    rows = tl.load(base + offs_m[:, None] * stride_l + offs_d[None, :], mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    return rows.to(tl.float32) if DOT_FP32 else rows


@device
def _store_rows(out_base, acc, l_i, offs_m, m_ok, offs_d, d_ok, stride_ol):
    """The normalised output rows (zeros where no key was visited) in the output's dtype."""
    out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    out_ptrs = out_base + offs_m[:, None] * stride_ol + offs_d[None, :]
    tl.store(out_ptrs, out.to(out_base.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])


def _fixed_fwd(
    Q,
    K,
    V,
    Out,
    LUT,
    CNT,
    stride_qb,
    stride_ql,
    stride_qh,
    stride_kb,
    stride_kl,
    stride_kh,
    stride_vb,
    stride_vl,
    stride_vh,
    stride_ob,
    stride_ol,
    stride_oh,
    stride_lut_bh,
    stride_lut_q,
    stride_cnt_bh,
    H,
    LQ,
    LK,
    D,
    qk_scale,
    BS_Q: tl.constexpr,
    BS_K: tl.constexpr,
    TILES_Q: tl.constexpr,
    TILES_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_m, bh, b, h = _program(H)
    qblk = pid_m // TILES_Q
    q_lo = qblk * BS_Q + (pid_m % TILES_Q) * BLOCK_M
    q_hi = tl.minimum(qblk * BS_Q + BS_Q, LQ)
    offs_m = q_lo + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < q_hi
    d_ok = offs_d < D
    q = _load_rows(Q + b * stride_qb + h * stride_qh, offs_m, m_ok, offs_d, d_ok, stride_ql, DOT_FP32)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    lut = LUT + bh * stride_lut_bh + qblk * stride_lut_q
    cnt = tl.load(CNT + bh * stride_cnt_bh + qblk)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for t in range(0, cnt * TILES_K):
        kblk = tl.load(lut + t // TILES_K)
        k_lo = kblk * BS_K + (t % TILES_K) * BLOCK_N
        k_hi = tl.minimum(kblk * BS_K + BS_K, LK)
        acc, m_i, l_i = _attend_tile(
            acc, m_i, l_i, q, k_base, v_base, k_lo, k_hi, offs_d, d_ok, stride_kl, stride_vl, qk_scale,
            BLOCK_N, DOT_FP32, PRECISION,
        )  # fmt: skip
    _store_rows(Out + b * stride_ob + h * stride_oh, acc, l_i, offs_m, m_ok, offs_d, d_ok, stride_ol)


def _varlen_fwd(
    Q,
    K,
    V,
    Out,
    QOFF,
    TILE_C,
    TILE_S,
    KT_LO,
    KT_HI,
    CNT,
    stride_qb,
    stride_ql,
    stride_qh,
    stride_kb,
    stride_kl,
    stride_kh,
    stride_vb,
    stride_vl,
    stride_vh,
    stride_ob,
    stride_ol,
    stride_oh,
    stride_qoff_bh,
    stride_tile_bh,
    stride_kt_bh,
    stride_kt_q,
    stride_cnt_bh,
    H,
    D,
    qk_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_m, bh, b, h = _program(H)
    cluster = tl.load(TILE_C + bh * stride_tile_bh + pid_m)
    valid = cluster >= 0
    cluster = tl.maximum(cluster, 0)
    q_lo = tl.load(TILE_S + bh * stride_tile_bh + pid_m)
    q_end = tl.load(QOFF + bh * stride_qoff_bh + cluster + 1)
    q_hi = tl.where(valid, tl.minimum(q_end, q_lo + BLOCK_M), q_lo)
    cnt = tl.where(valid, tl.load(CNT + bh * stride_cnt_bh + cluster), 0)
    offs_m = q_lo + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < q_hi
    d_ok = offs_d < D
    q = _load_rows(Q + b * stride_qb + h * stride_qh, offs_m, m_ok, offs_d, d_ok, stride_ql, DOT_FP32)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    kt = bh * stride_kt_bh + cluster * stride_kt_q
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for t in range(0, cnt):  # one flat list of key tiles: the selected clusters merged into runs, cut in BLOCK_N
        k_lo = tl.load(KT_LO + kt + t)
        k_hi = tl.load(KT_HI + kt + t)
        acc, m_i, l_i = _attend_tile(
            acc, m_i, l_i, q, k_base, v_base, k_lo, k_hi, offs_d, d_ok, stride_kl, stride_vl, qk_scale,
            BLOCK_N, DOT_FP32, PRECISION,
        )  # fmt: skip
    _store_rows(Out + b * stride_ob + h * stride_oh, acc, l_i, offs_m, m_ok, offs_d, d_ok, stride_ol)


# -- host side ----------------------------------------------------------------------------------------


def key_tiles(
    mask: torch.Tensor, k_off: torch.Tensor, block_n: int, length: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each query cluster's key work as one flat list of tiles, without a host-device sync.

    ``mask`` bool ``(G, nq, nk)``, ``k_off`` ``(G, nk + 1)`` offsets of ``length`` key tokens. Adjacent selected
    key clusters are contiguous tokens (the clusters are laid out in order; an empty one does not break a run), so
    they merge into runs; each run is cut into tiles of ``block_n`` tokens (only its last tile is partial).
    Returns ``lo``, ``hi`` int32 ``(G, nq, W)`` (a tile covers ``[lo, min(lo + block_n, hi))``) and ``count``
    int32 ``(G, nq)``, with ``W = (nk + 1) // 2 + length // block_n``, an upper bound (runs are separated by a
    gap, and each run needs at most one more tile than its share of full ones).
    """
    g, nq, nk = mask.shape
    sizes = k_off.diff(dim=-1)[:, None, :]  # (G, 1, nk)
    sel = mask | (sizes == 0)  # an empty cluster holds no token: runs merge across it
    pos = torch.arange(nk, device=mask.device)
    starts = sel & ~torch.nn.functional.pad(sel[..., :-1], (1, 0))
    gap = torch.where(sel, nk, pos)  # the first unselected cluster at or after j ends the run through j
    run_end = gap.flip(-1).cummin(-1).values.flip(-1)
    tok_lo = k_off[:, None, :-1].expand(g, nq, nk)
    tok_hi = k_off.gather(1, run_end.reshape(g, -1)).view(g, nq, nk)
    tiles = torch.where(starts, (tok_hi - tok_lo + block_n - 1) // block_n, 0)
    cum = tiles.cumsum(-1)
    width = max(1, (nk + 1) // 2 + length // block_n)
    slot = torch.arange(width, device=mask.device).expand(g, nq, width).contiguous()
    run = torch.searchsorted(cum.contiguous(), slot, right=True).clamp_max(nk - 1)
    first = cum.gather(-1, run) - tiles.gather(-1, run)
    lo = tok_lo.gather(-1, run) + (slot - first) * block_n
    hi = tok_hi.gather(-1, run)
    return lo.to(torch.int32).contiguous(), hi.to(torch.int32).contiguous(), cum[..., -1].to(torch.int32).contiguous()


def query_tiles(q_off: torch.Tensor, block_m: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut variable-size query blocks into tiles of at most ``block_m`` rows, without a host-device sync.

    ``q_off``: ``(G, n + 1)`` offsets of ``length`` tokens. Returns ``(cluster, start)`` int32 ``(G, T)`` with
    ``T = n + length // block_m``, an upper bound on the tiles any group needs (each block needs at most one
    more tile than its share of full ones); padding tiles have ``cluster == -1`` and write nothing.
    """
    g, n1 = q_off.shape
    n = n1 - 1
    sizes = q_off.diff(dim=-1)
    per = (sizes + block_m - 1) // block_m
    cum = per.cumsum(-1)
    total = max(1, n + length // block_m)
    t = torch.arange(total, device=q_off.device, dtype=cum.dtype).expand(g, total).contiguous()
    cl = torch.searchsorted(cum.contiguous(), t, right=True)
    valid = cl < n
    clc = cl.clamp_max(max(n - 1, 0))
    first = cum.gather(1, clc) - per.gather(1, clc)
    start = q_off.gather(1, clc) + (t - first) * block_m
    cluster = torch.where(valid, cl, torch.full_like(cl, -1))
    start = torch.where(valid, start, torch.zeros_like(start))
    return cluster.to(torch.int32).contiguous(), start.to(torch.int32).contiguous()


def _pow2(x: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(int(x)))


def _prepare(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, interpret: bool):
    """Unit last stride; fp32 under the interpreter, bf16 for fp32 inputs on a GPU. Returns tensors, dot flags and
    the output dtype."""
    d = q.shape[-1]
    if d > MAX_HEAD_DIM or k.shape[-1] != d or v.shape[-1] != d:
        raise NotImplementedError(f"triton block-sparse attention needs equal head dims <= {MAX_HEAD_DIM}")
    out_dtype = q.dtype
    if interpret:
        q, k, v = q.float(), k.float(), v.float()
    elif q.dtype not in (torch.float16, torch.bfloat16, torch.float32) or not (q.dtype == k.dtype == v.dtype):
        raise NotImplementedError(f"triton block-sparse attention needs one of fp16/bf16/fp32, got {q.dtype}")
    elif q.dtype == torch.float32:
        warnings.warn(
            "triton block-sparse attention: fp32 inputs run in bf16 on the GPU (fp32 dots spill on sm_90a); "
            "the output is fp32. Pass bf16/fp16 tensors to avoid the conversion.",
            stacklevel=3,
        )
        q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    fp32 = q.dtype == torch.float32
    return q, k, v, fp32, ("ieee" if fp32 else "tf32"), out_dtype


def default_config(head_dim: int, interpret: bool) -> dict[str, int]:
    """Tile sizes and launch settings: small under the interpreter, FlashAttention-2-like on GPU."""
    if interpret:
        return {"block_m": 16, "block_n": 16, "num_warps": 4, "num_stages": 1}
    # 128x64 on 8 warps for every head dim: on 4 warps head dim 64 spills at 480p (255 registers; 127 on 8 warps)
    return {"block_m": 128, "block_n": 64, "num_warps": 8, "num_stages": 3}


def launch_config(key: tuple, base: dict[str, int], interpret: bool, config: dict[str, int],
                  launch: Callable[[dict[str, int]], None],
                  candidates: tuple[dict[str, int], ...] = TUNE_CONFIGS) -> dict[str, int]:  # fmt: skip
    """The settings of one launch: the caller's ``config`` over ``base``, or on CUDA the fastest of ``candidates``
    for ``key``, timed once per process by calling ``launch(cfg)`` on the call's own inputs."""
    base = {**base, **config}
    if interpret or config or os.environ.get(ENV_AUTOTUNE, "1") == "0":
        return base
    if key not in _TUNED:
        from triton.testing import do_bench

        times = []
        for cfg in candidates:
            try:
                times.append((do_bench(lambda c=cfg: launch(c), warmup=5, rep=20), cfg))
            except (triton.runtime.errors.OutOfResources, RuntimeError):
                continue  # a tile this GPU cannot hold
        _TUNED[key] = min(times, key=lambda t: t[0])[1] if times else base
    return _TUNED[key]


def _strides(*xs: torch.Tensor) -> list[int]:
    return [s for x in xs for s in (x.stride(0), x.stride(1), x.stride(2))]


def fixed_block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    block_q: int,
    block_k: int,
    scale: float | None = None,
    interpret: bool | None = None,
    lookup: tuple[torch.Tensor, torch.Tensor] | None = None,
    **config: int,
) -> torch.Tensor:
    """Block-sparse attention over fixed blocks; ``mask`` bool ``(B, H, ceil(Lq/block_q), ceil(Lk/block_k))``.

    No dense shortcut: an all-true mask runs the kernel too. ``lookup`` (from :func:`build_lookup`)
    skips rebuilding the visit lists; ``config`` overrides the tuned or default launch settings.
    """
    interpret = triton_interprets() if interpret is None else interpret
    batch, lq, heads, d = q.shape
    lk = k.shape[1]
    nq, nk = math.ceil(lq / block_q), math.ceil(lk / block_k)
    if mask.shape != (batch, heads, nq, nk):
        raise ValueError(f"mask {tuple(mask.shape)} does not match {(batch, heads, nq, nk)}")
    q, k, v, fp32, precision, out_dtype = _prepare(q, k, v, interpret)
    lut, count = lookup if lookup is not None else build_lookup(mask)
    out = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    scale = 1.0 / math.sqrt(d) if scale is None else scale

    def launch(cfg: dict[str, int]) -> None:
        # tiles: a power-of-two block is split into tiles that divide it; any other block gets one padded tile
        bm = min(cfg["block_m"], block_q) if block_q & (block_q - 1) == 0 else cfg["block_m"]
        bn = min(cfg["block_n"], block_k) if block_k & (block_k - 1) == 0 else cfg["block_n"]
        bm, bn = max(16, bm), max(16, bn)
        if block_q > bm and block_q % bm:
            bm = _pow2(block_q)
        if block_k > bn and block_k % bn:
            bn = _pow2(block_k)
        tiles_q, tiles_k = max(1, block_q // bm), max(1, block_k // bn)
        jitted(_fixed_fwd)[(nq * tiles_q, batch * heads)](
            q, k, v, out, lut, count, *_strides(q, k, v, out), lut.stride(0), lut.stride(1), count.stride(0),
            heads, lq, lk, d, scale * LOG2E,
            BS_Q=block_q, BS_K=block_k, TILES_Q=tiles_q, TILES_K=tiles_k, BLOCK_M=bm, BLOCK_N=bn,
            BLOCK_D=_pow2(d), DOT_FP32=interpret or fp32, PRECISION=precision,
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        )  # fmt: skip

    launch(
        launch_config(("fixed", d, q.dtype, block_q, block_k), default_config(d, interpret), interpret, config, launch)
    )
    return out.to(out_dtype)


def varlen_block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    q_offsets: torch.Tensor,
    k_offsets: torch.Tensor,
    scale: float | None = None,
    interpret: bool | None = None,
    **config: int,
) -> torch.Tensor:
    """Block-sparse attention over variable-size blocks; offsets ``(B, H, n + 1)`` (broadcastable) as the reference."""
    interpret = triton_interprets() if interpret is None else interpret
    batch, _, heads, d = q.shape
    nq, nk = mask.shape[-2:]
    q, k, v, fp32, precision, out_dtype = _prepare(q, k, v, interpret)
    g = batch * heads
    q_off = q_offsets.to(device=q.device, dtype=torch.long).expand(batch, heads, nq + 1).reshape(g, nq + 1)
    k_off = k_offsets.to(device=q.device, dtype=torch.long).expand(batch, heads, nk + 1).reshape(g, nk + 1)
    m = mask.reshape(g, nq, nk)
    q_off32 = q_off.to(torch.int32).contiguous()
    out = torch.zeros(q.shape, device=q.device, dtype=q.dtype)
    scale = 1.0 / math.sqrt(d) if scale is None else scale

    def launch(cfg: dict[str, int]) -> None:
        cluster, start = query_tiles(q_off, cfg["block_m"], q.shape[1])
        lo, hi, count = key_tiles(m, k_off, cfg["block_n"], k.shape[1])
        jitted(_varlen_fwd)[(cluster.shape[1], g)](
            q, k, v, out, q_off32, cluster, start, lo, hi, count, *_strides(q, k, v, out),
            q_off32.stride(0), cluster.stride(0), lo.stride(0), lo.stride(1), count.stride(0), heads, d,
            scale * LOG2E,
            BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"], BLOCK_D=_pow2(d), DOT_FP32=interpret or fp32,
            PRECISION=precision, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        )  # fmt: skip

    base = default_config(d, interpret)
    launch(launch_config(("varlen", d, q.dtype), base, interpret, config, launch, tune_configs("varlen")))
    return out.to(out_dtype)
