"""MotionCache: per-token, motion-weighted reuse for diffusion-forcing models (METHODS 4, SkyReels-V2 variant).

Per group and CFG branch, with ``k`` the group's own step:
``warmup`` left unset is the reference's 4 of 50 steps scaled to the run (2 of 20).

1. ``k < warmup``: full forward, store ``R = x_out - x_in`` and ``e0``.
2. ``k == warmup``: full forward, reset the per-token accumulator ``A = 0``, start phase 1.
3. Later steps: ``d`` = FlowCache's distance of ``e0`` (one scalar per group); ``A_i += d * w_i``
   (``w = 1`` in phase 1). Tokens with ``A_i >= thresh`` need an update; a spatial position updates in
   every frame of the group iff more than ``vote`` of its frames need it. If ``0 < n/L < min_update_ratio``
   the forward is skipped and nothing is reset (deferred); no token: ``x_out = x_in + R``; all tokens:
   full forward; otherwise only the selected tokens S go through all blocks (their Q/K/V only, the other
   tokens' K/V stay stale in the buffer), ``x_out[S]`` and ``R[S]`` are refreshed and ``A[S] = 0``.
4. Phase 1 lasts ``phase1_updates`` steps that updated anything (unset: the VBench setup's 6 of 50 steps scaled
   to the run, 2 of 20); then motion weights apply, recomputed
   after every step from the assembled block output ``h``:
   ``m[f,s] = mean_c|h[f,s] - h[f-1,s]| / (mean_c|h[f-1,s]| + 1e-8)`` (frame 0 against the stored last
   frame of group ``g-1``, stored once that group is past its own phase 1, as the reference stores it; in group 0
   frame 0 copies frame 1's value, and in a later group whose predecessor has stored nothing yet it is a constant,
   i.e. the floor, as the reference's ``_compute_weights_from_frame_diff``), min-max normalised per frame to
   ``[floor, 1]``.
A threshold <= 0 disables reuse (every step computes all tokens).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from accel.cache.chunked import GroupCache, GroupStep
from accel.cache.flowcache import FlowCache
from accel.cache.rescale import reference_steps
from accel.schema import ArrayKind, Event, group_key
from accel.telemetry import Recorder


@dataclass
class _TokenState:
    residual: torch.Tensor | None = None  # (B, L_g, D)
    e0_prev: torch.Tensor | None = None
    acc: torch.Tensor | None = None  # (B, L_g) per-token accumulator
    weights: torch.Tensor | None = None  # (B, f, HW) motion weights (None in phase 1)
    phase1_done: int = 0
    updates: torch.Tensor | None = None  # (f, HW) update counts, for the app
    weight_history: list[torch.Tensor] = field(default_factory=list)


def motion_weights(
    h: torch.Tensor, prev_last: torch.Tensor | None, floor: float, first_group: bool = True
) -> torch.Tensor:
    """Per-token motion weights ``(B, f, HW)`` in ``[floor, 1]`` from block outputs ``h`` ``(B, f, HW, C)``: each
    frame's relative L1 change from the frame before, min-max scaled per frame onto ``[floor, 1]``.

    Frame 0 follows the reference (``_compute_weights_from_frame_diff`` in ywlq/MotionCache,
    ``transformer_motion.py``): against the previous group's stored last frame ``prev_last`` when there is one; in
    the first group, frame 1's change; in a later group whose predecessor has not stored its last frame yet (groups
    on different timestep sequences), a constant, which the min-max maps to the floor.
    """
    b, f, s, _ = h.shape
    m = torch.empty(b, f, s, device=h.device, dtype=torch.float32)
    hf = h.float()
    if f > 1:
        m[:, 1:] = (hf[:, 1:] - hf[:, :-1]).abs().mean(-1) / (hf[:, :-1].abs().mean(-1) + 1e-8)
    if prev_last is not None:
        pl = prev_last.float()
        m[:, 0] = (hf[:, 0] - pl).abs().mean(-1) / (pl.abs().mean(-1) + 1e-8)
    elif first_group:
        m[:, 0] = m[:, 1] if f > 1 else 0.0
    else:
        m[:, 0] = 1.0
    lo, hi = m.amin(-1, keepdim=True), m.amax(-1, keepdim=True)
    return floor + (1 - floor) * (m - lo) / (hi - lo + 1e-8)


def vote(need: torch.Tensor, frames: int, share: float = 0.5) -> torch.Tensor:
    """Temporal consistency: ``need`` (B, f*HW) -> a position updates in all frames iff > ``share`` need it."""
    b = need.shape[0]
    per_pos = need.view(b, frames, -1).float().mean(1) > share  # (B, HW)
    return per_pos[:, None, :].expand(b, frames, per_pos.shape[-1]).reshape(b, -1)


class MotionCache(GroupCache):
    """Token-level reuse driven by the FlowCache distance and per-token motion weights."""

    name = "motioncache"

    def __init__(
        self,
        thresh: float = 0.1,
        warmup: int | None = None,
        phase1_updates: int | None = None,
        floor: float = 0.6,
        min_update_ratio: float = 0.4,
        vote_share: float = 0.5,
        coefficients: str = "1.3b",
        use_ret_steps: bool = True,
    ):
        self.thresh = thresh
        self.warmup = warmup
        self.phase1_updates = phase1_updates
        self.floor = floor
        self.min_update_ratio = min_update_ratio
        self.vote_share = vote_share
        self.metric = FlowCache(coefficients=coefficients, use_ret_steps=use_ret_steps)
        self.state: dict[tuple[int, str], _TokenState] = {}
        self.last_frame: dict[tuple[int, str], torch.Tensor] = {}

    def reset(self) -> None:
        self.state, self.last_frame = {}, {}

    def phase1(self, num_steps: int) -> int:
        """Updating steps of phase 1: ``phase1_updates``, or the reference's 6 of 50 scaled to the run."""
        return self.phase1_updates if self.phase1_updates is not None else reference_steps(6, num_steps)

    def _full(self, step: GroupStep, st: _TokenState) -> torch.Tensor:
        out = step.run_blocks(None)
        st.residual = out - step.emb.tokens
        step.log(Event.CHUNK_COMPUTE, None, self.thresh, step.emb.tokens.shape[1])
        return out

    def predict(self, step: GroupStep) -> torch.Tensor:
        group, branch, emb = step.group, step.branch, step.emb
        st = self.state.setdefault(step.key, _TokenState())
        fh, hh, wh = emb.shape
        b, length, _ = emb.tokens.shape
        if st.updates is None:
            st.updates = torch.zeros(fh, hh * wh, dtype=torch.int32)
        e0 = emb.e0.float()
        warmup = self.warmup if self.warmup is not None else reference_steps(4, step.num_steps)
        if self.thresh <= 0 or step.step <= warmup or st.residual is None or st.e0_prev is None:
            out = self._full(step, st)
            if step.step >= warmup or self.thresh <= 0:
                st.acc = torch.zeros(b, length, device=out.device)
            st.updates += 1
            need_n = length
        else:
            d = self.metric.distance(e0, st.e0_prev)
            w = st.weights.reshape(b, length) if st.weights is not None else 1.0
            st.acc = st.acc + d * w
            need = vote(st.acc >= self.thresh, fh, self.vote_share)
            need_n = int(need[0].sum())
            ratio = need_n / length
            if need_n == 0 or ratio < self.min_update_ratio:
                event = Event.CHUNK_REUSE if need_n == 0 else Event.CHUNK_DEFER
                step.log(event, float(st.acc.mean()), self.thresh, 0)
                out = emb.tokens + st.residual
                need_n = 0  # deferred: nothing updated, accumulators kept
            elif need_n == length:
                out = self._full(step, st)
                st.acc = torch.zeros_like(st.acc)
                st.updates += 1
            else:
                sel = need[0].nonzero().flatten()
                fresh = step.run_blocks(sel)
                out = emb.tokens + st.residual
                out[:, sel] = fresh
                st.residual[:, sel] = fresh - emb.tokens[:, sel]
                st.acc[:, sel] = 0.0
                st.updates.view(-1)[sel.cpu()] += 1
                step.log(Event.CHUNK_PARTIAL, float(st.acc.mean()), self.thresh, need_n)
        st.e0_prev = e0
        if step.step > warmup and need_n > 0 and st.weights is None:
            st.phase1_done += 1
        h = out.view(b, fh, hh * wh, -1)
        if st.phase1_done >= self.phase1(step.num_steps) and step.step >= warmup:
            st.weights = motion_weights(h, self.last_frame.get((group - 1, branch)), self.floor, group == 0)
            st.weight_history.append(st.weights[0].detach().to(torch.float16).cpu())
            self.last_frame[(group, branch)] = h[:, -1].detach()  # for group g+1, once past phase 1
        return out

    def export(self, recorder: Recorder) -> None:
        """Per-token update counts and motion-weight history as run arrays (for the app's motion views)."""
        for (group, branch), st in self.state.items():
            maps = {ArrayKind.TOKEN_COUNTS: st.updates}
            if st.weight_history:
                maps[ArrayKind.MOTION_WEIGHTS] = torch.stack(st.weight_history)
            for kind, array in maps.items():
                if array is not None:
                    key = group_key(kind, group, branch)
                    recorder.add_array(key, array, kind=kind, group=group, branch=branch)
