"""XAttention on Wan self-attention (METHODS 1.1): antidiagonal block scoring + per-row top-p selection."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from accel.attention.headwise import UniformBlockSparse
from accel.errors import ConfigError
from accel.kernels import dispatch
from accel.kernels.block_sparse import backend_lookup, block_sparse_attention, block_work
from accel.kernels.estimate import antidiagonal_block_scores
from accel.schema import Event
from accel.telemetry import Recorder
from accel.tracking import StepInfo

if TYPE_CHECKING:
    from accel.methods.xattention import XAttentionSettings


def select_blocks(scores: torch.Tensor, tau: float | torch.Tensor, keep_first: bool = True) -> torch.Tensor:
    """Per query-block row, the shortest prefix of blocks (by score, descending) whose sum reaches ``tau * rowsum``.

    The block that crosses the threshold is kept. ``tau`` is a float, a per-head tensor ``(H,)`` or a
    per-(batch, head) tensor ``(B, H)``; ``tau >= 1`` keeps every block. Key block 0 is always kept
    (as in the reference). ``scores``: ``(B, H, nq, nk)``; returns bool of the same shape.
    """
    b, h = scores.shape[:2]
    tau_t = torch.as_tensor(tau, dtype=torch.float32, device=scores.device)
    if tau_t.numel() == 1:
        tau_t = tau_t.reshape(1, 1, 1, 1)
    elif tau_t.shape == (h,):
        tau_t = tau_t.view(1, h, 1, 1)
    elif tau_t.shape == (b, h):
        tau_t = tau_t.view(b, h, 1, 1)
    else:
        raise ValueError(f"tau of shape {tuple(tau_t.shape)} does not fit {b} x {h} (batch x heads)")
    ordered, order = scores.float().sort(dim=-1, descending=True)
    cum = ordered.cumsum(-1)
    before = cum - ordered
    keep = (before < tau_t * cum[..., -1:]) | (tau_t >= 1)
    mask = torch.zeros_like(keep).scatter_(-1, order, keep)
    if keep_first:
        mask[..., 0] = True
    return mask


class XAttention(UniformBlockSparse):
    """Block-sparse attention with masks from strided antidiagonal scores; +TMR and per-head tau tables."""

    name = "xattention"

    def __init__(
        self,
        settings: XAttentionSettings,
        block_size: int,
        recorder: Recorder | None = None,
        model: str = "",
        tmr_delta: float = 30.0,
    ):
        super().__init__(settings, recorder, model, tmr_delta)
        self.block_size = settings.block_size or block_size
        self.block_q = self.block_k = self.block_size
        self._lookups: dict[int, tuple[torch.Tensor, Any]] = {}
        self.stride = settings.stride
        if self.block_size % self.stride:
            raise ConfigError(f"block_size {self.block_size} must be a multiple of stride {self.stride}")

    def uniform_thresholds(self):
        return self.settings.tau

    def is_dense_step(self, layer: int, info: StepInfo) -> bool:
        return info.step < self.settings.dense_steps(info.num_steps)

    def predict(self, q, k, layer, branch, thresholds, heads):
        """Block mask ``(B, H', nq, nk)`` of ``heads`` (all when None)."""
        if heads is not None:
            q, k, thresholds = q[:, :, heads], k[:, :, heads], thresholds[heads]
        scores = antidiagonal_block_scores(q, k, self.stride, self.block_size)
        return select_blocks(scores, thresholds)

    def _lookup(self, backend: str, layer: int, state: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        """What ``backend`` builds from ``state`` (the torch gather plan, Triton's visit lists, FlexAttention's
        BlockMask), kept per layer while the mask is reused (TMR)."""
        kept = self._lookups.get(layer)
        if kept is None or kept[0] is not state:
            built = backend_lookup(backend, state, self.block_size, q.shape[1], k.shape[1])
            kept = self._lookups[layer] = (state, built)
        return kept[1]

    def dense_above(self, q: torch.Tensor, backend: str | None = None) -> float | None:
        """The block work above which a head runs dense SDPA: the setting, else the crossover of ``backend`` (default:
        the one ``q``'s device resolves to); None: off."""
        if self.settings.dense_above is not None:
            return self.settings.dense_above if self.settings.dense_above < 1 else None
        return dense_crossover(backend or dispatch.resolve(q.device), self.block_size, q.shape[1])

    def apply(self, q, k, v, state, layer, thresholds, mask_ref):
        backend = dispatch.resolve(q.device)
        density = self.state_density(state, q, k)  # (B, H)
        limit = self.dense_above(q, backend)
        dense = work = None
        n_dense = 0
        if limit is not None:  # heads cheaper on dense SDPA: the blocks the kernel would compute, padding included
            work = block_work(state, self.block_size, self.block_size, q.shape[1], k.shape[1]).amax(0)
            dense = work > limit
            n_dense = int(dense.sum())
        if n_dense == 0:
            lookup = self._lookup(backend, layer, state, q, k)
            out = block_sparse_attention(
                q, k, v, state, block_size=self.block_size, dense=self.dense_hint(q.device), lookup=lookup
            )
        elif n_dense == q.shape[2]:  # the same dense path as an all-true mask (bit for bit)
            out = block_sparse_attention(q, k, v, state, block_size=self.block_size, dense=True)
        else:
            out = _split_heads(q, k, v, state, dense, self.block_size, compiled=backend == "flex")
        density = density.mean(0)
        if dense is not None:
            self.recorder.log(Event.DENSE_HEAD, dense.float(), layer=layer, threshold=limit, density=work)
        self.log_density(layer, density, threshold=thresholds, mask_ref=mask_ref)
        return out


def dense_crossover(backend: str, block_size: int, tokens: int) -> float | None:
    """Block work (:func:`accel.kernels.block_sparse.block_work`) above which dense SDPA beats ``backend`` on a head, as
    measured by ``python -m accel.kernels.bench --device cpu --heads 6 --dim 32 --block B`` on 2 cores (None: off). From
    1,024 tokens both CPU backends win at work 0.25 and lose at 0.5 with blocks of 16-32 tokens (small query tiles run
    SDPA inefficiently), and win at 0.5 with blocks of 64-128; below 1,024 tokens (the default 320-token run) the torch
    path only wins at 0.1. Triton: not yet measured on a GPU, so off."""
    if backend == "triton":
        return None
    if tokens < 1024:
        return 0.1
    return 0.25 if block_size <= 32 else 0.45


def _split_heads(q, k, v, mask, dense: torch.Tensor, block_size: int, compiled: bool) -> torch.Tensor:
    """Dense SDPA for the ``dense`` heads (one batched call), block-sparse attention for the others. On a
    ``compiled`` backend (FlexAttention) the sparse call keeps every head (the dense ones with an empty mask: no
    work), so its shapes never change and it compiles once, not once per number of sparse heads; elsewhere it takes
    only the sparse heads."""
    if compiled:
        out = block_sparse_attention(q, k, v, mask & ~dense.view(1, -1, 1, 1), block_size=block_size, dense=False)
    else:
        out = torch.empty_like(q)
        sparse = ~dense
        out[:, :, sparse] = block_sparse_attention(
            q[:, :, sparse], k[:, :, sparse], v[:, :, sparse], mask[:, sparse], block_size=block_size, dense=False
        )
    qd, kd, vd = (x[:, :, dense].transpose(1, 2) for x in (q, k, v))
    out[:, :, dense] = torch.nn.functional.scaled_dot_product_attention(qd, kd, vd).transpose(1, 2)
    return out
