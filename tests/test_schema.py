"""The run-folder schema: numpy-only readers, event names checked on both sides, array metadata."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from accel.schema import ArrayKind, Event, find_arrays, group_key, mask_key, read_index


def test_viz_and_schema_import_without_torch_or_diffusers():
    code = (
        "import sys, accel.schema, viz, viz.report, viz.common, viz.motion, viz.sparsity, viz.chunks, viz.reuse, "
        "viz.compare, viz.profile\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'triton') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_an_unknown_event_fails_the_recorder_and_the_reader(stored_runs):
    from accel.telemetry import Recorder
    from viz.common import events

    rec = Recorder()
    rec.log(Event.DENSITY, 1.0)
    rec.log("mask_refrsh", 1.0)  # a typo of an event name: not a silent empty figure later
    with pytest.raises(ValueError, match="mask_refrsh"):
        rec.finish()
    _, runs = stored_runs
    assert len(events(runs["xattention"], Event.MASK_REFRESH)) > 0
    with pytest.raises(ValueError, match="mask_refrsh"):
        events(runs["xattention"], "mask_refrsh")


def test_every_event_a_figure_reads_is_one_the_recorder_can_write():
    from viz import chunks

    assert set(chunks.EVENT_STATE) <= set(Event)
    assert Event("density") is Event.DENSITY
    assert str(Event.CHUNK_REUSE) == "chunk_reuse" == Event.CHUNK_REUSE


def test_keys_and_metadata_of_arrays():
    assert mask_key(3, "cond", 2) == "mask/s003/cond/l02"
    assert mask_key(3, "uncond", 12, chunk=1) == "mask/s003/uncond/c01/l12"
    assert group_key(ArrayKind.TOKEN_COUNTS, 2, "cond") == "motion_updates/g02/cond"
    index = {
        "motion_updates/g10/cond": {"kind": "token_counts", "group": 10, "branch": "cond"},
        "motion_updates/g02/cond": {"kind": "token_counts", "group": 2, "branch": "cond"},
        "motion_updates/g02/uncond": {"kind": "token_counts", "group": 2, "branch": "uncond"},
        "mask/s000/cond/l00": {"kind": "block_mask"},
    }
    assert find_arrays(index, ArrayKind.TOKEN_COUNTS, branch="cond") == [
        "motion_updates/g02/cond",
        "motion_updates/g10/cond",
    ]
    assert find_arrays(index, (ArrayKind.BLOCK_MASK, ArrayKind.CLUSTER_MASK)) == ["mask/s000/cond/l00"]
    assert read_index({}) == {}
    assert read_index({"__index__": np.array('{"a": {"kind": "array"}}')}) == {"a": {"kind": "array"}}


def test_motion_maps_carry_group_and_branch(stored_runs):
    _, runs = stored_runs
    index = read_index(runs["motion"].arrays)
    counts = find_arrays(index, ArrayKind.TOKEN_COUNTS)
    assert counts, "a MotionCache run records per-token update counts"
    for key in counts:
        assert {"group", "branch"} <= set(index[key])
        assert key == group_key(ArrayKind.TOKEN_COUNTS, index[key]["group"], index[key]["branch"])
