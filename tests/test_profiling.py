"""Profiled runs: trace, TensorBoard logdir, tables; named ranges in the trace; zero cost when off."""

from __future__ import annotations

import gzip
import json

import pandas as pd
import pytest
import torch
from conftest import PROMPT

from accel.config import RunConfig
from accel.runner import generate
from profiling import ranges


def test_named_ranges_cost_nothing_when_profiling_is_off(monkeypatch):
    assert not ranges.is_active()
    monkeypatch.setattr(torch.profiler, "record_function", lambda name: (_ for _ in ()).throw(AssertionError(name)))
    with ranges.named_range("attn.sparse"):  # would raise if it touched record_function
        pass


def test_profiled_run_writes_trace_tensorboard_and_tables(store, tiny_pipe):
    cfg = RunConfig(prompt=PROMPT, method="xattention", settings={"warmup_steps": 1, "tmr": True, "tmr_delta": 0.0,
                    "block_size": 16, "stride": 4}, height=128, width=128, frames=9, steps=4)  # fmt: skip
    run = generate(cfg, store, profile=True)
    assert run.metrics["profile"].startswith("trace.json.gz")
    with gzip.open(run.path / "trace.json.gz", "rt") as fh:
        trace = json.load(fh)
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {"denoise.step", "layer", "mask.predict", "mask.reuse_check", "attn.sparse"} <= names
    assert "attn.dense" not in names  # the window skips the dense warm-up: it records a sparse step
    assert list((run.path / "tb").glob("*/*.pt.trace.json"))  # what torch-tb-profiler reads
    rng = pd.read_parquet(run.path / "profile_ranges.parquet")
    assert (rng["total_ms"] / 1e3 <= run.metrics["wall_s"]).all() and rng["share_of_wall"].between(0, 1).all()
    steps = rng.set_index("name").loc["denoise.step"]
    assert steps["calls"] == 2  # the active window: 2 transformer calls
    layer_ms = rng.set_index("name").loc["layer", "total_ms"]
    assert layer_ms <= steps["total_ms"]  # blocks run inside the transformer call
    kernels = pd.read_parquet(run.path / "profile_kernels.parquet")
    assert len(kernels) > 0 and abs(kernels["share"].sum() - 1) < 1e-6
    assert json.loads((run.path / "profile_memory.json").read_text())["cpu_peak_bytes"] > 0
    assert not ranges.is_active()


def test_a_run_shorter_than_the_schedule_keeps_its_outputs(store, tiny_pipe, tmp_path):
    from profiling.profiler import RunProfiler

    run = generate(RunConfig(prompt=PROMPT, height=64, width=64, frames=5, steps=1, guidance=1.0), store, profile=True)
    # one transformer call, still in the profiler's warm-up: torch hands over what it has when the run ends
    assert run.video_path is not None and (run.path / "trace.json.gz").is_file()
    assert run.metrics["profile"].startswith("trace.json.gz")
    # a run that ends while the profiler still waits has no trace: the run keeps its other outputs and a note
    model = tiny_pipe.transformer
    with RunProfiler(tmp_path / "work", wait=3) as profiler:
        profiler.attach(model)
        generate_one_call(tiny_pipe)
    out = tmp_path / "run"
    out.mkdir()
    assert profiler.save(out, 1.0).startswith("not captured") and not any(out.iterdir())


@pytest.mark.slow
def test_tensorboard_started_by_the_project_lists_the_run(store, tiny_pipe):
    import time
    import urllib.request

    from profiling import tensorboard

    run = generate(RunConfig(prompt=PROMPT, height=64, width=64, frames=5, steps=2), store, profile=True)
    port = tensorboard.start(run.path / "tb")
    try:
        assert tensorboard.start(run.path / "tb") == port  # one process per app
        url = f"http://127.0.0.1:{port}/data/plugin/pytorch_profiler/runs"
        runs: list = []
        for _ in range(60):
            runs = json.loads(urllib.request.urlopen(url, timeout=5).read())["runs"]
            if runs:
                break
            time.sleep(1)
        assert runs == [run.config["label"]]
    finally:
        proc = tensorboard._PROC
        tensorboard.stop()
    assert proc is not None and proc.poll() is not None  # cleaned up


@pytest.mark.slow  # a whole generation: in the full suite, not the quick subset
def test_breakdown_against_the_dense_reference(store, tiny_pipe):
    from profiling.breakdown import compare

    size = {"height": 128, "width": 128, "frames": 9, "steps": 4}
    dense = generate(RunConfig(prompt=PROMPT, **size), store, profile=True)
    xa = generate(RunConfig(prompt=PROMPT, method="xattention", settings={"warmup_steps": 1, "block_size": 16,
                            "stride": 4}, **size), store, profile=True)  # fmt: skip
    table, amdahl = compare(xa, dense)
    ref, run = table["reference"], table["run"]
    assert ref["attn_sparse_ms"] == 0 and ref["mask_predict_ms"] == 0 and ref["attn_dense_ms"] > 0
    assert run["attn_sparse_ms"] > 0 and run["mask_predict_ms"] > 0 and run["attn_dense_ms"] == 0  # calls 2-3: sparse
    for col in (ref, run):  # the phases add up to the transformer call
        parts = col[["mask_predict_ms", "attn_sparse_ms", "attn_dense_ms", "cache_bookkeeping_ms", "other_ms"]].sum()
        assert parts == pytest.approx(col["transformer_call_ms"], rel=1e-6)
    assert 0 < amdahl["attention_fraction"] < 1
    f, s = amdahl["attention_fraction"], amdahl["attention_speedup"]
    assert amdahl["transformer_speedup_bound"] == pytest.approx(1 / ((1 - f) + f / s))


def generate_one_call(pipe) -> None:
    """One transformer call of the pipeline at test size."""
    import torch

    with torch.inference_mode():
        pipe(PROMPT, height=64, width=64, num_frames=5, num_inference_steps=1, guidance_scale=1.0, output_type="latent")
