"""Temporal Mask Reuse: delta = 0 is the base method, a huge delta keeps the first masks, reuse skips work."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import MEDIUM, run_pipe

from accel.attention import SVG2, XAttention, installed
from accel.attention.reuse import MaskReuse
from accel.methods.svg2 import SVG2Settings
from accel.methods.xattention import XAttentionSettings
from accel.telemetry import Recorder

XA = {"warmup_steps": 1, "block_size": 16, "stride": 4, "tau": 0.8, "dense_above": 1.0}  # every head sparse
SV = {"first_times_fp": 0.25, "first_layers_fp": 0.0, "top_p": 0.8, "query_clusters": 8, "key_clusters": 16}


def make(method: str, rec: Recorder | None = None, **tmr):
    if method == "xattention":
        return XAttention(XAttentionSettings(**XA, **tmr), 16, rec or Recorder(enabled=False))
    return SVG2(SVG2Settings(**SV, **tmr), (8, 16), rec or Recorder(enabled=False))


def generate(pipe, method):
    with installed(pipe.transformer, method, MEDIUM["num_inference_steps"]):
        return run_pipe(pipe, **MEDIUM)


@pytest.fixture(scope="module")
def base_videos(tiny_pipe):
    """Each base method's video (no TMR), shared by the tests that compare against it."""
    return {name: generate(tiny_pipe, make(name)) for name in ("xattention", "svg2")}


@pytest.mark.parametrize("name", ["xattention", "svg2"])
def test_delta_zero_reproduces_the_base_method_exactly(tiny_pipe, base_videos, name):
    rec = Recorder()
    tmr = generate(tiny_pipe, make(name, rec, tmr=True, tmr_delta=0.0))
    assert np.array_equal(base_videos[name], tmr)
    table, _ = rec.finish()
    refresh = table[table.event == "mask_refresh"]
    assert len(refresh) > 0 and (refresh["value"] == 1).all()


@pytest.mark.parametrize("name", ["xattention", "svg2"])
def test_huge_delta_keeps_the_first_sparse_masks(tiny_pipe, base_videos, name, monkeypatch):
    calls = []
    original = type(make(name)).predict

    def counting(self, q, k, layer, branch, thresholds, heads):
        calls.append((layer, branch, heads))
        return original(self, q, k, layer, branch, thresholds, heads)

    monkeypatch.setattr(type(make(name)), "predict", counting)
    rec = Recorder()
    out = generate(tiny_pipe, make(name, rec, tmr=True, tmr_delta=1e9))
    table, _ = rec.finish()
    first = int(table[table.event == "mask_refresh"]["step"].min())
    # prediction ran once per (layer, branch): at the first sparse step only, for all heads
    assert len(calls) == 4 * 2 and all(h is None for _, _, h in calls)
    refresh = table[table.event == "mask_refresh"]
    assert (refresh[refresh.step == first]["value"] == 1).all()
    assert (refresh[refresh.step > first]["value"] == 0).all() and (refresh.step > first).any()
    dens = table[table.event == "density"]
    dens = dens[dens.step >= first]
    # every later step uses exactly the first step's mask: same stored array and same per-head density
    for _, group in dens.groupby(["branch", "layer", "head"]):
        assert group["mask_ref"].nunique() == 1 and group["density"].nunique() == 1
    drift = table[table.event == "drift"]
    assert drift[drift.step > first]["value"].gt(0).all() and (drift["threshold"] == 1e9).all()
    # the cached masks applied to new Q/K/V still give a different video than re-predicting
    assert not np.array_equal(out, base_videos[name])


def test_reuse_rule_accumulates_drift_until_it_crosses_delta():
    reuse = MaskReuse(delta=1.0)
    thr = torch.full((2,), 0.9)
    q = torch.zeros(1, 4, 2, 3)
    k = torch.zeros(1, 4, 2, 3)
    first = reuse.decide(0, "cond", q, k, thr)
    assert first.refresh.all() and first.drift.isnan().all()
    reuse.commit(0, "cond", first, thr)
    moved = q.clone()
    moved[..., 0, :] += 0.2  # head 0 drifts 0.6 per call, head 1 stays
    d1 = reuse.decide(0, "cond", moved, k, thr)
    assert d1.heads == [] and d1.drift.tolist() == pytest.approx([0.6, 0.0])
    reuse.commit(0, "cond", d1, thr)
    d2 = reuse.decide(0, "cond", moved * 2, k, thr)  # 1.2 from the anchor: crosses delta
    assert d2.heads == [0]
    reuse.commit(0, "cond", d2, thr)
    d3 = reuse.decide(0, "cond", moved * 2, k, thr)
    assert d3.heads == [] and d3.drift[0] == 0  # the anchor moved with the refresh
    assert reuse.decide(0, "uncond", q, k, thr).refresh.all()  # branches are separate


def test_equal_drift_reuses_and_changed_threshold_refreshes():
    reuse = MaskReuse(delta=0.5)
    thr = torch.full((2,), 0.9)
    q, k = torch.zeros(1, 2, 2, 1), torch.zeros(1, 2, 2, 1)
    reuse.commit(0, "cond", reuse.decide(0, "cond", q, k, thr), thr)
    assert reuse.decide(0, "cond", q + 0.5, k, thr).heads == []  # drift == delta reuses
    assert reuse.decide(0, "cond", q, k, torch.tensor([0.9, 0.8])).heads == [1]


def test_layer_gating():
    thr = torch.full((5,), 0.9)
    q, k = torch.zeros(1, 2, 5, 1), torch.zeros(1, 2, 5, 1)
    few = q.clone()
    few[:, :, 0] = 1.0  # 1 of 5 heads (20%) drifts
    many = q.clone()
    many[:, :, :3] = 1.0  # 3 of 5 heads (60%)
    for lower, upper, moved, expected in [
        (0.4, 0.8, few, []),
        (0.0, 0.5, many, [0, 1, 2, 3, 4]),
        (0.4, 0.8, many, [0, 1, 2]),
    ]:
        reuse = MaskReuse(delta=0.5, gate_lower=lower, gate_upper=upper)
        reuse.commit(0, "cond", reuse.decide(0, "cond", q, k, thr), thr)
        assert reuse.decide(0, "cond", moved, k, thr).heads == expected


def test_partial_refresh_predicts_only_the_drifting_heads(monkeypatch):
    """Heads that reuse skip their scoring: prediction gets only the refreshing heads' Q/K."""
    method = make("xattention", tmr=True, tmr_delta=0.5)
    method.setup(num_layers=1, num_heads=3)
    seen = []
    original = XAttention.predict

    def spy(self, q, k, layer, branch, thresholds, heads):
        seen.append(heads)
        return original(self, q, k, layer, branch, thresholds, heads)

    monkeypatch.setattr(XAttention, "predict", spy)
    from accel.tracking import StepInfo

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 64, 3, 8, generator=gen) for _ in range(3))
    method.attend(q, k, v, 0, StepInfo(step=1, num_steps=4))
    q2 = q.clone()
    q2[:, :, 1] += 1.0  # only head 1 drifts (by 8 > 0.5)
    method.attend(q2, k, v, 0, StepInfo(step=2, num_steps=4))
    assert seen == [None, [1]]
    mask = method.states[(0, "cond")]
    fresh = method.predict(q2, k, 0, "cond", torch.full((3,), 0.8), None)
    assert torch.equal(mask[:, 1], fresh[:, 1])


def test_svg2_partial_refresh_reclusters_only_the_drifting_heads():
    from accel.tracking import StepInfo

    method = make("svg2", tmr=True, tmr_delta=0.5)
    method.setup(num_layers=1, num_heads=3)
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 96, 3, 8, generator=gen) for _ in range(3))
    method.attend(q, k, v, 0, StepInfo(step=1, num_steps=4))
    before = method.states[(0, "cond")]
    q2 = q.clone()
    q2[:, :, 2] = q2[:, :, 2].flip(1) + 1.0  # only head 2 drifts
    out = method.attend(q2, k, v, 0, StepInfo(step=2, num_steps=4))
    after = method.states[(0, "cond")]
    for name in ("q_perm", "k_perm", "q_offsets", "mask", "q_centroids"):
        old, new = getattr(before, name), getattr(after, name)
        assert torch.equal(old[:2], new[:2]), name  # reused heads keep their whole partition
    assert not torch.equal(before.q_perm[2], after.q_perm[2])
    # the reused heads' output is the cached partition applied to the current tokens
    reference = method.apply(q2, k, v, before, 0, torch.full((3,), 0.8), None)
    assert torch.allclose(out[:, :, :2], reference[:, :, :2], atol=1e-6)  # fp32 summation order only
