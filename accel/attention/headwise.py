"""The flow shared by the sparse methods: per-head thresholds (EBC tables) and Temporal Mask Reuse.

A subclass says how to predict a "mask state" for a subset of heads (XAttention: a block mask;
SVG2: a whole partition), how to merge a subset into a cached state, and how to attend with a
state. This class decides per (step, layer, branch) which heads predict anew: all of them without
TMR; with TMR only those whose Q/K drift crossed delta, so reused heads genuinely skip their
prediction work. With every head refreshing it takes exactly the base path (delta = 0 == base).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from accel.attention.base import AttentionMethod
from accel.attention.reuse import MaskReuse
from accel.attention.thresholds import load_table, table_densities
from accel.errors import ConfigError
from accel.kernels import dispatch
from accel.kernels.block_sparse import uniform_density
from accel.schema import Event
from accel.settings import HeadwiseSettings
from accel.telemetry import Recorder
from accel.tracking import StepInfo
from profiling.ranges import named_range

DEFAULT_BRANCH = "*"


class HeadwiseSparse(AttentionMethod):
    """Base of XAttention and SVG2: thresholds per (branch, layer, head) and optional mask reuse."""

    keeps_state = False  # whether the base method needs last step's state (SVG2's warm start)

    def __init__(
        self, settings: HeadwiseSettings, recorder: Recorder | None = None, model: str = "", tmr_delta: float = 0.0
    ):
        super().__init__(recorder)
        self.settings = settings
        self.model = model
        delta = settings.tmr_delta if settings.tmr_delta is not None else tmr_delta
        self.reuse = MaskReuse(delta, settings.tmr_gate_lower, settings.tmr_gate_upper) if settings.tmr else None
        self.thresholds: dict[str, torch.Tensor] = {}
        self.states: dict[tuple[int, str], Any] = {}
        self.refs: dict[tuple[int, str], str | None] = {}

    # -- thresholds -----------------------------------------------------------------------------
    def uniform_thresholds(self) -> float | tuple[float, ...]:
        """The shared threshold setting (scalar, per head, or per layer x head)."""
        raise NotImplementedError

    def setup(self, num_layers: int, num_heads: int) -> None:
        super().setup(num_layers, num_heads)
        if self.reuse is not None and self.shard is not None:
            self.reuse.count = self.shard.sum  # layer gating counts refreshing heads over every rank
        if self.settings.threshold_table:
            self.thresholds = load_table(
                self.settings.threshold_table,
                method=self.name,
                key=self.settings.threshold_name,
                model=self.model,
                layers=num_layers,
                heads=num_heads,
            )
        else:
            self.thresholds = {DEFAULT_BRANCH: self._uniform_table(num_layers, num_heads)}

    def balance_auto(self) -> bool:
        return self.reuse is not None or bool(self.settings.threshold_table)

    def head_costs(self) -> np.ndarray | None:
        if not self.settings.threshold_table:
            return None
        return table_densities(self.settings.threshold_table, self.settings.threshold_name)

    def _uniform_table(self, num_layers: int, num_heads: int) -> torch.Tensor:
        """The (layers, heads) table of the shared threshold setting."""
        values = torch.tensor(self.uniform_thresholds(), dtype=torch.float32).reshape(-1)
        if values.numel() in (1, num_heads):
            return values.expand(num_layers, num_heads).clone()
        if values.numel() == num_layers * num_heads:
            return values.view(num_layers, num_heads)
        name = self.settings.threshold_name
        raise ConfigError(
            f"{name} has {values.numel()} values but the model has {num_heads} heads x {num_layers} layers: "
            f"give 1, {num_heads} or {num_layers * num_heads} values"
        )

    def dense_hint(self, device: torch.device) -> bool | None:
        """``dense=`` for the kernels' entry: ``False`` on Triton when every threshold (a host-side table: no sync)
        is below 1, so an all-true mask is rare and the kernel computes it as exactly; otherwise ``None`` (the entry
        looks, one host-device sync, and an all-true mask takes the dense path bit for bit)."""
        if dispatch.resolve(device) != "triton" or any(bool((t >= 1).any()) for t in self.thresholds.values()):
            return None
        return False

    def threshold(self, layer: int, branch: str, device: torch.device) -> torch.Tensor:
        """Per-head thresholds ``(H,)`` of ``layer`` for this CFG branch (a table may differ per branch); under
        context parallelism those of the heads this rank attends at ``layer``."""
        table = self.thresholds.get(branch)
        if table is None:  # a uniform setting (one table for all), or a table without uncond (the run warns)
            table = self.thresholds.get(DEFAULT_BRANCH, self.thresholds.get("cond"))
        row = table[layer] if self.shard is None else table[layer, list(self.shard.heads_of(layer))]
        return row.to(device)

    # -- what a subclass provides ---------------------------------------------------------------
    def is_dense_step(self, layer: int, info: StepInfo) -> bool:
        raise NotImplementedError

    def predict(self, q, k, layer: int, branch: str, thresholds: torch.Tensor, heads: list[int] | None) -> Any:
        """A fresh mask state for ``heads`` (None = all heads)."""
        raise NotImplementedError

    def probe_state(self, q, k, layer: int, branch: str, rows: list[int], thresholds: torch.Tensor, memory: dict):
        """A state for calibration probes: row ``p`` is head ``rows[p]`` of ``q, k`` ``(1, L, H, D)`` at
        ``thresholds[p]`` (a head may have several rows, one per candidate). ``memory`` is the calibration's
        per-(trajectory, layer) scratch space. By default the rows are predicted as heads of one call (XAttention's
        scores are deterministic, so a head's candidates share them)."""
        return self.predict(q[:, :, rows], k[:, :, rows], layer, branch, thresholds, None)

    def merge(self, cached: Any, heads: list[int], fresh: Any) -> Any:
        """``cached`` with the state of ``heads`` replaced by ``fresh``."""
        raise NotImplementedError

    def apply(self, q, k, v, state: Any, layer: int, thresholds: torch.Tensor, mask_ref: str | None) -> torch.Tensor:
        """Sparse attention with ``state``; logs per-head density."""
        raise NotImplementedError

    def split_state(self, state: Any) -> dict[str, torch.Tensor]:
        """``state`` as tensors with the heads on axis 1 (for moving heads between ranks)."""
        raise NotImplementedError

    def join_state(self, parts: dict[str, torch.Tensor]) -> Any:
        """The inverse of :meth:`split_state`."""
        raise NotImplementedError

    def fits(self, state: Any, q: torch.Tensor, k: torch.Tensor) -> bool:
        """Whether a cached ``state`` applies to ``q, k`` (the same batch, heads and query/key lengths)."""
        raise NotImplementedError

    def state_density(self, state: Any, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Computed fraction ``(B, H)`` of each head's query-key pairs under ``state``."""
        raise NotImplementedError

    def record(self, layer: int, state: Any) -> str | None:
        """Keep the state's mask in the run's arrays if the policy wants it; returns its key."""
        raise NotImplementedError

    # -- context parallelism: per-head state that moves with its heads (accel.balance) -----------------------------
    def head_state(self, layer):
        parts: dict[str, torch.Tensor] = {}
        for (lay, branch), state in self.states.items():
            if lay == layer and state is not None:
                parts.update({f"state/{branch}/{k}": v for k, v in self.split_state(state).items()})
        if self.reuse is not None:
            for branch, (qa, ka, ta) in self.reuse.anchors(layer).items():
                parts.update({f"anchor/{branch}/q": qa, f"anchor/{branch}/k": ka, f"anchor/{branch}/t": ta[None]})
        return parts

    def set_head_state(self, layer, parts):
        by: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        for name, value in parts.items():
            kind, branch, field = name.split("/")
            by.setdefault((kind, branch), {})[field] = value
        for (kind, branch), fields in by.items():
            if kind == "state":
                # its mask ref stays: the recorded parts carry their global heads, which the gathered run orders by
                self.states[(layer, branch)] = self.join_state(fields)
            else:
                self.reuse.set_anchor(layer, branch, (fields["q"], fields["k"], fields["t"][0]))

    # -- the flow -------------------------------------------------------------------------------
    def attend(self, q, k, v, layer, info):
        if self.is_dense_step(layer, info):
            return self.warmup_dense(q, k, v, layer)
        rec, key, heads_n = self.recorder, (layer, info.branch), q.shape[2]
        thr = self.threshold(layer, info.branch, q.device)
        cached = self.states.get(key)
        if cached is not None and not self.fits(cached, q, k):
            cached = None  # e.g. a chunk's KV context changed length: no mask to reuse, every head predicts
        decision = None
        if self.reuse is not None:
            with rec.timed(Event.REUSE_CHECK, layer=layer, device=q.device):
                decision = self.reuse.decide(layer, info.branch, q, k, thr)
                if cached is None:
                    decision = replace(decision, refresh=torch.ones_like(decision.refresh))
                heads = decision.heads
        shared_record = False  # context parallelism: a rank that reuses every head records when another refreshed
        if decision is not None and self.shard is not None and rec.wants_mask(layer):
            fresh_here = torch.tensor([float(cached is None or bool(heads))], device=q.device)
            shared_record = bool(self.shard.sum(fresh_here).item() > 0)
        if decision is None or cached is None or len(heads) == heads_n:
            with rec.timed(Event.MASK_PREDICT, layer=layer, device=q.device, value=heads_n):
                state = self.predict(q, k, layer, info.branch, thr, None)
            ref = self.record(layer, state)
        elif heads:
            with rec.timed(Event.MASK_PREDICT, layer=layer, device=q.device, value=len(heads)):
                fresh = self.predict(q, k, layer, info.branch, thr, heads)
            state = self.merge(cached, heads, fresh)
            ref = self.record(layer, state)
        else:
            state, ref = cached, self.refs.get(key)
            if shared_record:  # the mask of this step has every rank's heads, as a single process records it
                ref = self.record(layer, state)
        if decision is not None:
            self.reuse.commit(layer, info.branch, decision, thr)
            rec.log(Event.DRIFT, decision.drift, layer=layer, threshold=self.reuse.delta)
            rec.log(Event.MASK_REFRESH, decision.refresh.float(), layer=layer)
        if decision is not None or self.keeps_state:
            self.states[key], self.refs[key] = state, ref
        with named_range("attn.sparse"):
            return self.apply(q, k, v, state, layer, thr, ref)


class UniformBlockSparse(HeadwiseSparse):
    """A head-wise method whose state is a bool block mask ``(B, H, nq, nk)`` over uniform blocks of
    ``block_q x block_k`` tokens (XAttention, SpargeAttn): how such a state fits, merges, is recorded and measured."""

    block_q: int
    block_k: int

    def fits(self, state, q, k):
        b, lq, h, _ = q.shape
        return state.shape == (b, h, math.ceil(lq / self.block_q), math.ceil(k.shape[1] / self.block_k))

    def split_state(self, state):
        return {"mask": state}

    def join_state(self, parts):
        return parts["mask"]

    def merge(self, cached, heads, fresh):
        mask = cached.clone()
        mask[:, heads] = fresh
        return mask

    def record(self, layer, state):
        return self.recorder.record_mask(layer, state[0])

    def state_density(self, state, q, k):
        return uniform_density(state, self.block_q, self.block_k, q.shape[1], k.shape[1])
