"""KV-cache compression for chunked generation: importance minus redundancy (METHODS 3.2).

Over the keys of clean (fully denoised) chunks, per layer and per head:
1. importance ``imp_j = mean_i softmax_j(q_i k_j / sqrt(d))`` over the clean keys (queries in chunks
   to bound memory), then ``max_pool1d`` (kernel 7, padding 3, stride 1) along the keys;
2. redundancy ``red_j = softmax_j(sum_{i != j} cos(k_i, k_j) / L)`` in O(L·D) from the sum of the unit
   keys: ``(k̂_j · sum_i k̂_i - 1) / L`` (no L x L matrix; the reference zeroes the diagonal of the cosine
   matrix and takes the mean over all L keys, so it divides by L, not L - 1);
3. ``score = λ·imp − (1−λ)·red`` (λ = 0.07); keep the top-k per head, at token, frame or chunk
   granularity (a block's score is its mean), in their original order.
The queries are those of the next active chunk at its current step, as in the reference (the runner
compresses just before that chunk attends).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from accel.settings import check_kv_compression

_MAX_SCORE_ELEMS = 1 << 25


@dataclass(frozen=True)
class KVCompression:
    """How clean K/V are compressed: budget in chunks' worth of tokens, λ, granularity."""

    budget_chunks: int = 1
    lam: float = 0.07
    granularity: str = "token"

    def __post_init__(self) -> None:
        check_kv_compression(self.budget_chunks, self.lam, self.granularity)


def importance(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Mean attention each key receives from the queries, max-pooled along the keys; (B, H, Lk)."""
    b, lq, h, d = q.shape
    lk = k.shape[1]
    qt, kt = q.transpose(1, 2).float(), k.transpose(1, 2).float()
    total = torch.zeros(b, h, lk, device=q.device)
    step = max(1, _MAX_SCORE_ELEMS // max(1, b * h * lk))
    for s in range(0, lq, step):
        probs = torch.softmax(torch.matmul(qt[:, :, s : s + step], kt.transpose(-1, -2)) / math.sqrt(d), dim=-1)
        total += probs.sum(2)
    imp = (total / lq).reshape(b * h, 1, lk)
    return F.max_pool1d(imp, kernel_size=7, stride=1, padding=3).reshape(b, h, lk)


def redundancy(k: torch.Tensor) -> torch.Tensor:
    """Softmax over keys of each key's summed cosine similarity to the others over L; (B, H, Lk), O(L·D)."""
    unit = F.normalize(k.transpose(1, 2).float(), dim=-1)  # (B, H, L, D)
    length = unit.shape[2]
    mean_cos = ((unit * unit.sum(2, keepdim=True)).sum(-1) - 1.0) / length
    return torch.softmax(mean_cos, dim=-1)


def select(
    q: torch.Tensor, k: torch.Tensor, keep: int, lam: float = 0.07, granularity: str = "token", block: int = 1
) -> torch.Tensor:
    """Indices ``(B, H, keep')`` of the kept keys per head, ascending (``keep'`` = ``keep`` rounded to blocks)."""
    score = lam * importance(q, k) - (1 - lam) * redundancy(k)  # (B, H, L)
    length = k.shape[1]
    if granularity == "token" or block <= 1:
        return score.topk(min(keep, length), dim=-1).indices.sort(-1).values
    nblocks = length // block
    if nblocks == 0:
        return torch.arange(length, device=k.device).expand(*score.shape[:2], length)
    # whole blocks only: a trailing partial block (a short last chunk) is never a candidate
    block_score = score[..., : nblocks * block].reshape(*score.shape[:2], nblocks, block).mean(-1)
    chosen = block_score.topk(max(1, min(nblocks, keep // block)), dim=-1).indices.sort(-1).values
    return (chosen[..., None] * block + torch.arange(block, device=k.device)).flatten(-2)


def gather_heads(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x`` (B, L, H, D) gathered per head at ``idx`` (B, H, K) -> (B, K, H, D)."""
    xt = x.transpose(1, 2)
    return torch.gather(xt, 2, idx[..., None].expand(-1, -1, -1, xt.shape[-1])).transpose(1, 2)
