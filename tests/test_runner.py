"""Whole runs through accel.runner.generate: run folders, telemetry after warm-up, failures leave nothing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import PROMPT
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from accel import runner
from accel.attention.xattention import XAttention
from accel.config import RunConfig
from accel.runs import RunStore
from accel.schema import load_mask
from accel.video import video_codec

SIZE = {"height": 128, "width": 128, "frames": 9, "steps": 4}  # 3 x 8 x 8 = 192 tokens


def _cfg(method: str, **settings) -> RunConfig:
    return RunConfig(prompt=PROMPT, method=method, settings=settings, device="cpu", **SIZE)


def _after_warmup(run):
    t = run.telemetry
    warm = t[t.event == "dense_warmup"][["step", "branch", "layer"]].drop_duplicates()
    dens = t[t.event == "density"].merge(warm, how="left", indicator=True)
    return dens[dens["_merge"] == "left_only"]


def test_xattention_run_folder(store, tiny_pipe):
    cfg = _cfg("xattention", tau=0.8, warmup_steps=1, block_size=16, stride=4, dense_above=1.0)  # every head sparse
    run = runner.generate(dataclasses.replace(cfg, kernels="torch"), store)
    reopened = RunStore(store.root).load(run.run_id)  # no model needed
    assert reopened.config["method"] == "xattention" and reopened.config["settings"]["tau"] == 0.8
    assert video_codec(reopened.video_path) == "h264"
    assert reopened.frames().shape == (9, 128, 128, 3)
    sparse = _after_warmup(reopened)
    assert len(sparse) == 3 * 2 * 4 * 6  # steps after warm-up x branches x layers x heads
    assert (sparse["density"] < 1).any() and (sparse["density"] <= 1).all()
    assert reopened.metrics["density_mean_sparse"] < 1
    assert reopened.metrics["mask_predictions"] == 3 * 2 * 4
    ref = sparse["mask_ref"].dropna().iloc[0]
    mask = load_mask(reopened.arrays, ref)
    assert mask.shape == (6, 12, 12)  # 192 tokens / 16
    row = sparse[sparse.mask_ref == ref].sort_values("head")
    assert np.allclose(mask.mean((1, 2)), row["density"].to_numpy(), atol=0.08)  # last block is short
    assert set(reopened.metrics["stages"]) == {"load_s", "text_encode_s", "denoise_s", "vae_decode_s"}
    assert "xattention" in reopened.run_id and "tau0.8" in reopened.run_id
    assert reopened.metrics["kernel_calls"]["block_sparse_attention/torch"] > 0  # which backend ran, counted
    assert reopened.metrics["kernel_backend"] == "torch" and reopened.config["kernels"] == "torch"


def test_a_backend_that_cannot_run_is_refused_before_loading(store, monkeypatch):
    from accel.errors import ConfigError
    from accel.kernels import flex

    monkeypatch.setattr(flex, "available", lambda: False)
    with pytest.raises(ConfigError, match=r"kernels=flex: .*cannot be compiled here"):
        runner.generate(dataclasses.replace(_cfg("xattention"), kernels="flex"), store)
    with pytest.raises(ConfigError, match="kernels must be one of auto, triton, flex, torch"):
        dataclasses.replace(_cfg("xattention"), kernels="cuda")


def test_svg2_run_folder(store, tiny_pipe):
    run = runner.generate(_cfg("svg2", top_p=0.8, first_times_fp=0.25, query_clusters=8, key_clusters=16), store)
    sparse = _after_warmup(run)
    assert len(sparse) > 0 and (sparse["density"] < 1).all()
    # the first step stays dense (floor(0.25 * 4) = 1), no layer (floor(0.03 * 4) = 0), as the reference rounds
    warm = run.telemetry[run.telemetry.event == "dense_warmup"]
    assert warm[warm.step > 0].empty and set(warm[warm.step == 0]["layer"]) == {0, 1, 2, 3}
    key = sparse["mask_ref"].dropna().iloc[0]
    assert load_mask(run.arrays, key).shape == (6, 8, 16)
    assert f"q_offsets/{key}" in run.arrays


def test_failure_during_generation_leaves_nothing(store, tiny_pipe, monkeypatch):
    def boom(self, *args):
        raise RuntimeError("kernel failed")

    monkeypatch.setattr(XAttention, "predict", boom)
    with pytest.raises(RuntimeError, match="kernel failed"):
        runner.generate(_cfg("xattention", warmup_steps=1), store)
    assert store.list() == []
    assert all(isinstance(b.attn1.processor, WanAttnProcessor) for b in tiny_pipe.transformer.blocks)


def test_failure_while_saving_leaves_no_run(store, tiny_pipe, monkeypatch):
    import accel.runs.writer

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(accel.runs.writer, "write_h264", broken)
    with pytest.raises(runner.RunError, match=r"could not save the run in .*: disk full; nothing was stored"):
        runner.generate(_cfg("dense"), store)
    assert store.list() == []
    assert not any(store.root.iterdir())


def test_repeats_time_every_pass_and_keep_the_first(store, tiny_pipe, monkeypatch):
    """``repeats``: the generation runs that many times; wall and stage times are medians over the timed passes (a
    profiled first pass is left out), the samples and the machine's load are stored, the video is the first's."""
    cfg = RunConfig(prompt=PROMPT, method="dense", device="cpu", height=32, width=32, frames=5, steps=2, repeats=3)
    passes = []
    real = runner._pass_times

    def counted(wall_s, times):
        passes.append(wall_s)
        return real(wall_s, times)

    monkeypatch.setattr(runner, "_pass_times", counted)
    run = runner.generate(cfg, store, profile=True)
    timing = run.metrics["timing"]
    assert len(passes) == 3 and timing["repeats"] == 3 and run.config["repeats"] == 3
    assert timing["wall_s"] == passes[1:] and timing["profiled_pass_wall_s"] == passes[0]
    assert run.metrics["wall_s"] == pytest.approx(np.median(passes[1:]))
    assert run.metrics["stages"]["denoise_s"] == pytest.approx(np.median(timing["denoise_s"]))
    assert timing["load"]["cpus"] >= 1 and timing["load"]["own_cores"] > 0
    once = runner.generate(dataclasses.replace(cfg, repeats=1), store)
    assert np.array_equal(once.frames(), run.frames())  # every pass draws the same video
    assert once.metrics["timing"]["wall_s"] == [once.metrics["wall_s"]]
    for bad in (0, 21, 1.5):
        with pytest.raises(ValueError, match="repeats"):
            dataclasses.replace(cfg, repeats=bad)
