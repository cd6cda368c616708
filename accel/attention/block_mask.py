"""Sparse self-attention with a static block mask: the pattern depends on the call's shape only (a temporal window,
an energy decay, tiles), never on Q and K, so it costs no estimation. A method module gives the pattern as a
function and builds :class:`BlockMaskAttention` around it (see ``docs/method_template.py``)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from accel.attention.base import AttentionMethod
from accel.kernels import dispatch
from accel.kernels.block_sparse import backend_lookup, block_sparse_attention, uniform_density
from accel.telemetry import Recorder
from accel.tracking import StepInfo

# (heads, query blocks, key blocks, tokens per block, the call) -> bool (heads, query blocks, key blocks)
MaskFn = Callable[[int, int, int, int, StepInfo], torch.Tensor]


class StaticLookups:
    """The backends' lookups (:func:`accel.kernels.block_sparse.backend_lookup`) of static masks, built once per
    mask, call shape and backend and passed as ``lookup=``; a mask is known by identity while the cache holds it."""

    def __init__(self) -> None:
        self._kept: dict[tuple, tuple[torch.Tensor, object]] = {}

    def get(self, mask: torch.Tensor, block_size: int, q: torch.Tensor, k: torch.Tensor) -> object:
        backend = dispatch.resolve(q.device)
        key = (id(mask), block_size, q.shape[0], q.shape[1], k.shape[1], backend)
        kept = self._kept.get(key)
        if kept is None or kept[0] is not mask:
            kept = self._kept[key] = (mask, backend_lookup(backend, mask, block_size, q.shape[1], k.shape[1],
                                                           q.shape[0]))  # fmt: skip
        return kept[1]


class BlockMaskAttention(AttentionMethod):
    """Block-sparse attention over uniform blocks of ``block_size`` tokens under ``mask_fn``'s pattern, dense on the
    first ``dense_steps(num_steps)`` denoising steps and in the first ``dense_layers`` layers. Logs an
    :attr:`Event.DENSITY` row per call (the share of query-key pairs each head computes) and records the mask (the
    Sparsity view draws both). The pattern is built once per call shape and branch-independent; an all-true mask
    takes the kernels' exact dense path."""

    def __init__(
        self,
        name: str,
        mask_fn: MaskFn,
        block_size: int,
        dense_steps: Callable[[int], int] = lambda num_steps: 0,
        recorder: Recorder | None = None,
        dense_layers: int = 0,
    ):
        super().__init__(recorder)
        self.name = name
        self.mask_fn = mask_fn
        self.block_size = block_size
        self.dense_steps = dense_steps
        self.dense_layers = dense_layers
        self._masks: dict[tuple, torch.Tensor] = {}
        self._lookups = StaticLookups()
        self._full: dict[int, bool] = {}

    def mask(self, q: torch.Tensor, k: torch.Tensor, info: StepInfo) -> torch.Tensor:
        """The bool ``(heads, nq, nk)`` pattern of this call's shape (cached per shape)."""
        heads, b = q.shape[2], self.block_size
        nq, nk = math.ceil(q.shape[1] / b), math.ceil(k.shape[1] / b)
        key = (heads, nq, nk, info.grid, q.device)
        if key not in self._masks:
            mask = self.mask_fn(heads, nq, nk, b, info).to(device=q.device, dtype=torch.bool)
            if mask.shape != (heads, nq, nk):
                raise ValueError(f"{self.name}: mask of shape {tuple(mask.shape)}, expected {(heads, nq, nk)}")
            self._masks[key] = mask
            self._full[id(mask)] = bool(mask.all())  # the masks stay in self._masks: their ids are not reused
        return self._masks[key]

    def attend(self, q, k, v, layer, info):
        if info.step < self.dense_steps(info.num_steps) or layer < self.dense_layers:
            return self.warmup_dense(q, k, v, layer)
        mask = self.mask(q, k, info)
        ref = self.recorder.record_mask(layer, mask)
        lookup = self._lookups.get(mask, self.block_size, q, k)
        out = block_sparse_attention(
            q, k, v, mask, block_size=self.block_size, dense=self._full[id(mask)], lookup=lookup
        )
        density = uniform_density(mask, self.block_size, self.block_size, q.shape[1], k.shape[1])
        self.log_density(layer, density, mask_ref=ref)
        return out
