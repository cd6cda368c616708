"""SpargeAttn's training-free block selection (thu-ml/SpargeAttn, ``spas_sage_attn/utils.py``:
``get_block_map_meansim``), as a head-wise sparse method, so Temporal Mask Reuse and EBC compose with it.

Per head, with query blocks of ``bq`` and key blocks of ``bk`` tokens and K smoothed by its mean over tokens
(``smooth_k``):

1. each block's mean token (pooling; a partial last block by its own length);
2. a block is self-similar when the mean cosine similarity of its tokens (all pairs, itself included) is above
   ``sim_threshold`` (a partial last block over its own tokens: the reference's kernel divides its zero-padded rows
   by a zero norm there, which likely leaves it "not self-similar", i.e. always computed);
3. the softmax over key blocks of the pooled scores ``q_i . k_j / sqrt(D)``, key blocks that are not self-similar
   left out;
4. per query block, the blocks (by probability, descending) whose cumulative probability is at most
   ``cdf_threshold``: the block that crosses it is not kept (``searchsorted(..., right=True)``); at least the top one;
5. every key block that is not self-similar is kept for every query block, and a query block that is not
   self-similar keeps every key block.

The reference computes the softmax and the cumulative sum in bf16/fp16; here in fp32. Its CUDA kernels can also
skip a block's P.V product (``pvthreshd``, 50 by default: practically never); the bench's kernels do not.
``cdf_threshold >= 1`` keeps every block.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from accel.attention.headwise import UniformBlockSparse
from accel.kernels.block_sparse import block_sparse_attention
from accel.telemetry import Recorder
from accel.tracking import StepInfo

if TYPE_CHECKING:
    from accel.methods.sparge import SpargeSettings


def _blocks(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` ``(B, L, H, D)`` as ``(B, H, n, block, D)`` zero-padded, and each block's token count ``(n,)``."""
    b, length, h, d = x.shape
    n = math.ceil(length / block)
    padded = F.pad(x.float().permute(0, 2, 1, 3), (0, 0, 0, n * block - length))
    counts = torch.full((n,), float(block), device=x.device)
    counts[-1] = length - (n - 1) * block
    return padded.view(b, h, n, block, d), counts


def pooled(x: torch.Tensor, block: int) -> torch.Tensor:
    """Each block's mean token ``(B, H, n, D)``."""
    blocks, counts = _blocks(x, block)
    return blocks.sum(3) / counts[:, None]


def self_similar(x: torch.Tensor, block: int, threshold: torch.Tensor) -> torch.Tensor:
    """Whether each block's mean pairwise cosine similarity (itself included) is above ``threshold`` ``(H,)``:
    bool ``(B, H, n)``."""
    blocks, counts = _blocks(x, block)
    unit = F.normalize(blocks, dim=-1)  # padded rows stay zero
    summed = unit.sum(3)  # the sum of all pairs' cosines is |sum of unit rows|^2
    mean_cos = (summed * summed).sum(-1) / counts**2
    return mean_cos > threshold.view(1, -1, 1)


def select_blocks(q: torch.Tensor, k: torch.Tensor, block_q: int, block_k: int, cdf: torch.Tensor,
                  sim: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Block mask ``(B, H, nq, nk)`` of ``q, k`` ``(B, L, H, D)`` with per-head ``cdf`` and ``sim`` thresholds."""
    k = k - k.mean(1, keepdim=True)  # smooth_k: the pooled scores' softmax is unchanged, self-similarity is not
    sim_q, sim_k = self_similar(q, block_q, sim), self_similar(k, block_k, sim)
    scores = pooled(q, block_q) @ pooled(k, block_k).transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~sim_k[:, :, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a row with no self-similar key block: all zero
    ordered, order = probs.sort(-1, descending=True)
    thr = cdf.to(probs).view(1, -1, 1, 1)
    keep = (ordered.cumsum(-1) <= thr) | (thr >= 1)
    keep[..., 0] = True  # at least the top block
    mask = torch.zeros_like(keep).scatter_(-1, order, keep)
    mask |= ~sim_k[:, :, None, :]
    mask |= ~sim_q[:, :, :, None]
    return mask


class SpargeAttention(UniformBlockSparse):
    """Block-sparse attention with SpargeAttn's block selection; +TMR and per-head cdf tables (EBC)."""

    name = "sparge"

    def __init__(
        self,
        settings: SpargeSettings,
        blocks: tuple[int, int],
        recorder: Recorder | None = None,
        model: str = "",
        tmr_delta: float = 0.0,
    ):
        super().__init__(settings, recorder, model, tmr_delta)
        self.block_q, self.block_k = blocks

    def uniform_thresholds(self):
        return self.settings.cdf_threshold

    def is_dense_step(self, layer: int, info: StepInfo) -> bool:
        return info.step < self.settings.dense_steps(info.num_steps)

    def predict(self, q, k, layer, branch, thresholds, heads):
        if heads is not None:
            q, k, thresholds = q[:, :, heads], k[:, :, heads], thresholds[heads]
        sim = torch.full_like(thresholds, float(self.settings.sim_threshold))
        return select_blocks(q, k, self.block_q, self.block_k, thresholds, sim)

    def apply(self, q, k, v, state, layer, thresholds, mask_ref):
        blocks = (self.block_q, self.block_k)
        out = block_sparse_attention(q, k, v, state, block_size=blocks, dense=self.dense_hint(q.device))
        density = self.state_density(state, q, k).mean(0)
        self.log_density(layer, density, threshold=thresholds, mask_ref=mask_ref)
        return out
