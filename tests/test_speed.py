"""How far a speedup is trusted (viz.speed) and the interleaved re-timing that replaces a suspect one (accel.retime)."""

from __future__ import annotations

import json

import pytest

from accel import retime
from accel.config import RunConfig
from accel.errors import UserError
from accel.forms import DEFAULT_PROMPT
from accel.runs import DamagedRunError, RunNotFoundError
from viz import panels, speed

SMALL = {"prompt": DEFAULT_PROMPT, "model": "tiny-wan", "height": 64, "width": 64, "frames": 5, "steps": 3, "seed": 3}


def test_the_work_bound_is_what_the_method_skipped_at_most():
    assert speed.work_bound({}, "dense").ratio == 1.0
    every_head_dense = {"density_mean_sparse": 0.4, "attn_calls": 10, "dense_head_frac": 1.0}
    assert speed.work_bound(every_head_dense, "xattention").why == "every head ran dense SDPA"
    # 2 of 10 calls dense warm-up; 60% of the work skipped on the rest at most: 1 / (1 - 0.8 * 0.6)
    sparse = {"density_mean_sparse": 0.4, "attn_calls": 10, "attn_calls_dense": 2, "dense_head_frac": 0.0}
    assert speed.work_bound(sparse, "xattention").ratio == pytest.approx(1 / (1 - 0.8 * 0.6))
    half_heads_dense = {**sparse, "dense_head_frac": 0.5}  # those heads skip nothing: at most 50% skipped
    assert speed.work_bound(half_heads_dense, "xattention").ratio == pytest.approx(1 / (1 - 0.8 * 0.5))
    assert speed.work_bound({"density_mean_sparse": 1.0, "attn_calls": 4}, "svg2").ratio == 1.0
    chunked = {"block_executions": 25.0, "block_executions_uncached": 100.0}
    assert speed.work_bound(chunked, "flowcache").ratio == pytest.approx(4.0)
    whole_blocks = {"block_executions": 30.0, "block_executions_possible": 60.0, "unit_executions": 90,
                    "unit_executions_possible": 180}  # fmt: skip
    assert speed.work_bound(whole_blocks, "baseline").ratio == pytest.approx(2.0)
    some_units = {**whole_blocks, "unit_executions": 120}  # blocks that ran some units: their costs are not known
    assert speed.work_bound(some_units, "baseline") is None
    assert speed.work_bound({}, "xattention") is None


def test_other_cores_reads_the_cpu_counters_else_the_load_average():
    assert speed.other_cores({"timing": {"load": {"other_cores": 1.25, "loadavg_start": 9.0}}}) == 1.25
    assert speed.other_cores({"timing": {"load": {"loadavg_start": 3.0, "loadavg_end": 2.0, "own_cores": 1.0}}}) == 2
    assert speed.other_cores({"wall_s": 1.0}) is None


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A dense run and an XAttention run of one small video (every head dense at this size) in a new store."""
    from accel.runner import generate
    from accel.runs import RunStore

    store = RunStore(tmp_path_factory.mktemp("speed") / "runs")
    dense = generate(RunConfig(method="dense", **SMALL), store)
    method = generate(RunConfig(method="xattention", **SMALL), store)
    return store, dense, method


def test_a_run_that_did_dense_s_work_reads_as_equal_to_dense(pair):
    store, dense, method = pair
    assert method.metrics["frames_sha256"] == dense.metrics["frames_sha256"]  # the same video
    v = speed.verdict(store, method)
    assert v.equal_to_dense and v.same_video and v.bound.ratio == 1.0
    text = panels.headline(store, method)
    assert "none: this run did dense's work" in text and "other processes' busy cores while timed" in text
    reference = panels.headline(store, dense)
    assert "dense reference" in reference and "speedup vs dense" not in reference


def test_a_re_timing_replaces_the_ratio_and_a_damaged_one_is_named(pair):
    store, dense, method = pair
    with pytest.raises(UserError, match="is a dense run"):
        retime.retime(dense)
    with pytest.raises(UserError, match="rounds must be"):
        retime.retime(method, rounds=0)
    steps = []
    result = retime.retime(method, rounds=2, progress=lambda i, n, what: steps.append(what))
    assert result["order"] == ["dense", "run", "run", "dense"]  # the side that goes first alternates
    assert all(len(result[k][side]) == 2 for k in ("wall_s", "denoise_s") for side in retime.SIDES)
    assert steps[0].startswith("warm-up: dense") and "round 1 of 2: dense" in steps and steps[-1].startswith("round 2")
    again = store.load(method.run_id)
    assert retime.retimed(again) == json.loads((method.path / retime.FILE).read_text())
    rows = dict(speed.rows(store, again))
    assert "speedup vs dense (re-timed in one process)" in rows
    assert "both sides alike" in rows["other processes' busy cores while re-timed"]
    (method.path / retime.FILE).write_text(json.dumps({**result, "rounds": 3}))
    with pytest.raises(DamagedRunError, match=r"retimed.json.*not 3 passes"):
        retime.retimed(store.load(method.run_id))
    (method.path / retime.FILE).write_text(json.dumps({**result, "wall_s": {"run": [0.1, -1], "dense": [1, 1]}}))
    with pytest.raises(DamagedRunError, match=r"retimed.json"):
        panels.headline(store, store.load(method.run_id))
    (method.path / retime.FILE).unlink()


def test_only_known_files_are_added_to_a_complete_run(pair):
    store, dense, _ = pair
    with pytest.raises(ValueError, match="not a file a stored run may gain"):
        store.amend(dense.run_id, "metrics.json", {})
    with pytest.raises(RunNotFoundError):
        store.amend("20990101-000000-dense-abcdef", retime.FILE, {})
    with pytest.raises(UserError, match="refusing"):
        store.amend("/etc", retime.FILE, {})
    assert not any(p.name.startswith(".") for p in dense.path.iterdir() if p.name != ".owner")


def test_the_headline_says_how_a_profiled_run_was_timed(stored_runs):
    store, runs = stored_runs
    dense = dict(panels.headline_rows(store, runs["dense"]))["wall time"]  # 3 repeats, the first one profiled
    assert "median of 2 passes" in dense and "the profiled first pass" in dense and "is left out" in dense
    assert "timed while profiling" in dict(panels.headline_rows(store, runs["xattention"]))["wall time"]


def test_the_cli_re_times_a_run_and_compare_says_how_far_to_trust_it(pair, capsys):
    from accel.cli import main

    store, dense, method = pair
    assert main(["retime", dense.run_id, "--out-dir", str(store.root)]) == 2  # a dense run: nothing to time against
    assert "is a dense run" in capsys.readouterr().err
    assert main(["retime", method.run_id, "--rounds", "1", "--out-dir", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert "speedup over dense:" in out and "1 rounds interleaved in one process" in out
    assert main(["compare", dense.run_id, method.run_id, "--out-dir", str(store.root)]) == 0
    timing = capsys.readouterr().out.splitlines()[-1]  # equal work: as much, or a ratio flagged as noise
    assert timing in ("timing: did dense's work: no speedup to expect",) or timing.startswith("timing: ⚠ ")
    (method.path / retime.FILE).unlink()
