"""TeaCache for Wan2.1: its decisions against a hand-written reference, per CFG branch, on diffusers' pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import PROMPT, WAN

from accel.cache.rescale import COEFFICIENTS
from accel.cache.teacache import BranchState, rule
from accel.config import RunConfig
from accel.errors import ConfigError


def _reference_decisions(tensors, thresh, coefficients, use_ret_steps, num_steps):
    """teacache_forward's schedule for one branch, written out: forced steps, the accumulated rescaled relative L1
    (skip while below the threshold), the accumulator reset on every computed step."""
    poly = np.poly1d(COEFFICIENTS[(coefficients, use_ret_steps)])
    ret = max(1, round(5 * num_steps / 50)) if use_ret_steps else 1
    acc, prev, out = 0.0, None, []
    for step, cur in enumerate(tensors):
        forced = step < ret or (not use_ret_steps and step == num_steps - 1) or prev is None
        if not forced:
            rel = ((cur - prev).abs().mean() / prev.abs().mean()).item()
            acc += poly(rel)
        compute = forced or acc >= thresh
        if compute:
            acc = 0.0
        out.append(compute)
        prev = cur
    return out


@pytest.mark.parametrize("use_ret_steps", [False, True])
def test_decisions_follow_the_reference_schedule(use_ret_steps):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(2, 64, generator=g).abs() + 0.5
    steps, scale, tensors = 20, 1.0, []
    for _ in range(steps):  # relative changes of 0.5-4% a step, where the polynomials are near the thresholds
        tensors.append(base * scale)
        scale *= 1 + 0.005 + 0.035 * torch.rand(1, generator=g).item()
    decide = rule(0.05, "1.3b", use_ret_steps, None, steps)
    st = BranchState()
    got = []
    for i, t in enumerate(tensors):
        computed = decide.decide(st, t, i, steps)
        got.append(computed)
        if computed:
            st.residual = torch.zeros(1)  # a computed step stores a residual
    assert got == _reference_decisions(tensors, 0.05, "1.3b", use_ret_steps, steps)
    assert not all(got) and any(got[1:-1])  # the schedule both skips and recomputes
    off = rule(0.0, "1.3b", use_ret_steps, None, steps)  # threshold <= 0: every step computes
    st = BranchState()
    assert all(off.decide(st, t, i, steps) for i, t in enumerate(tensors))


@pytest.mark.slow  # a whole generation: in the full suite, not the quick subset
def test_teacache_skips_whole_steps_per_branch_and_leaves_the_pipeline_dense(store):
    from accel.runner import generate

    dense = generate(RunConfig(prompt=PROMPT, model="tiny-wan", method="dense", **WAN), store)
    off = generate(RunConfig(prompt=PROMPT, model="tiny-wan", method="teacache", settings={"thresh": 0}, **WAN), store)
    assert off.metrics["frames_sha256"] == dense.metrics["frames_sha256"]  # nothing skipped: dense's frames
    assert off.metrics["block_executions"] == off.metrics["block_executions_possible"]
    run = generate(RunConfig(prompt=PROMPT, model="tiny-wan", method="teacache", settings={"thresh": 10.0}, **WAN),
                   store)  # fmt: skip
    m = run.metrics
    skipped = m["teacache_skipped_calls"]
    assert set(skipped) == {"cond", "uncond"} and skipped["cond"] == skipped["uncond"] > 0  # one state per branch
    # every skipped call skips every block: block executions fall by the skipped calls' share
    assert m["block_executions"] == pytest.approx(
        m["block_executions_possible"] * (1 - sum(skipped.values()) / m["calls"])
    )
    assert set(run.telemetry["event"].dropna()) == {"baseline_blocks", "baseline_units"}
    assert np.isfinite(run.frames()).all()
    again = generate(RunConfig(prompt=PROMPT, model="tiny-wan", method="dense", **WAN), store)
    assert again.metrics["frames_sha256"] == dense.metrics["frames_sha256"]  # the hooks are gone


def test_teacache_runs_on_wan_only():
    from accel.runner import checked

    with pytest.raises(ConfigError, match=r"teacache runs on Wan2\.1 models, not on tiny-skyreels"):
        checked(RunConfig(prompt=PROMPT, model="tiny-skyreels", method="teacache"))
