"""Recorder rows, bit-packed masks, the mask budget at real size, and the step tracker."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import run_pipe

from accel.bench.recorder import synthetic_run
from accel.schema import COLUMNS, load_mask, unpack_bits
from accel.telemetry import Recorder, RecordPolicy, even_steps, pack_bits
from accel.tracking import StepInfo, attach_tracker, detach_tracker


@pytest.mark.parametrize("n", [1, 7, 8, 13, 591])
def test_pack_bits_matches_numpy(n):
    mask = torch.rand(3, 5, n, generator=torch.Generator().manual_seed(n)) < 0.4
    packed = pack_bits(mask).numpy()
    assert np.array_equal(packed, np.packbits(mask.numpy(), axis=-1))
    assert np.array_equal(unpack_bits(packed, n), mask.numpy())


def test_rows_expand_per_head_and_masks_load_back():
    rec = Recorder()
    info = StepInfo(step=3, num_steps=10, timestep=700.0, branch="uncond")
    rec.begin(info, num_layers=2)
    mask = torch.rand(4, 6, 6) < 0.5
    key = rec.record_mask(1, mask)
    rec.log(
        "density",
        torch.tensor([0.1, 0.2, 0.3, 0.4]),
        layer=1,
        threshold=0.9,
        density=torch.tensor([0.1, 0.2, 0.3, 0.4]),
        mask_ref=key,
    )
    rec.log("dense_warmup", 1.0, layer=0)
    table, arrays = rec.finish()
    assert tuple(table.columns) == COLUMNS
    dens = table[table.event == "density"]
    assert dens["head"].tolist() == [0, 1, 2, 3]
    assert dens["density"].tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert (dens["threshold"] == 0.9).all() and (dens["step"] == 3).all() and (dens["branch"] == "uncond").all()
    assert np.array_equal(load_mask(arrays, key), mask.numpy())


def test_disabled_recorder_records_nothing():
    rec = Recorder(enabled=False)
    rec.log("density", 1.0)
    assert rec.record_mask(0, torch.ones(1, 2, 2, dtype=torch.bool)) is None
    table, arrays = rec.finish()
    assert table.empty and arrays == {}


def test_even_steps():
    assert even_steps(50, 5) == (0, 12, 24, 37, 49)
    assert even_steps(4, 10) == (0, 1, 2, 3)
    assert even_steps(10, 1) == (0,)


def test_mask_budget_thins_steps_from_first_masked_step():
    rec = Recorder(RecordPolicy(mask_budget_mb=0.01))  # 10 kB
    info = StepInfo(step=5, num_steps=20, branch="cond")
    rec.begin(info, num_layers=2)
    kept = []
    for step in range(5, 20):
        info.step = step
        for layer in range(2):
            for branch in ("cond", "uncond"):
                info.branch = branch
                if rec.record_mask(layer, torch.ones(2, 20, 20, dtype=torch.bool)):
                    kept.append(step)
    # a mask packs to 2*20*3 = 120 bytes; a step of 2 layers x 2 branches is 480 bytes -> 20 steps fit ... of 15
    assert sorted(set(kept)) == list(range(5, 20))
    rec2 = Recorder(RecordPolicy(mask_budget_mb=0.0015))  # 1500 B: 3 steps
    info2 = StepInfo(step=5, num_steps=20)
    rec2.begin(info2, num_layers=2)
    kept2 = set()
    for step in range(5, 20):
        info2.step = step
        if rec2.record_mask(0, torch.ones(2, 20, 20, dtype=torch.bool)):
            kept2.add(step)
    assert kept2 == {5, 12, 19}


@pytest.mark.slow
def test_real_size_run_folder_within_budget(tmp_path):
    """Wan2.1-1.3B at 720p: 75,600 tokens, 30 layers x 12 heads, 50 steps, 2 branches."""
    r = synthetic_run(tmp_path, tokens=75600)
    assert r["rows"] == 50 * 2 * 30 * 12 + 50 * 2 * 30
    assert 0 < r["masks"] < 50 * 2 * 30
    assert r["mb"] < 160  # random masks do not compress: this is the worst case; video comes on top


def test_tracker_sees_steps_and_branches(tiny_pipe):
    tracker = attach_tracker(tiny_pipe.transformer, num_steps=3)
    seen = []
    hook = tiny_pipe.transformer.blocks[0].attn1.register_forward_pre_hook(
        lambda *a: seen.append((tracker.info.step, tracker.info.branch, tracker.info.grid))
    )
    try:
        run_pipe(tiny_pipe)
    finally:
        hook.remove()
        detach_tracker(tiny_pipe.transformer)
    assert seen == [(s, b, (2, 4, 4)) for s in range(3) for b in ("cond", "uncond")]
