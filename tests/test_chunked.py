"""The chunked diffusion-forcing runner equals the full-window block-causal forward of the same model."""

from __future__ import annotations

import pytest
import torch

from accel.cache.chunked import ChunkedRunner
from accel.cache.group_model import GroupModel
from accel.cache.schedule import COMPUTE, DONE, WAITING, build_schedule
from accel.errors import ConfigError

PROMPT = "a red circle moves left over a blue background"


def test_schedule_matches_diffusers_and_handles_partial_groups():
    timesteps = torch.tensor([999, 900, 700, 400, 100])
    s = build_schedule(timesteps, latent_frames=7, causal_block_size=3, ar_step=2)
    assert s.frames == ((0, 3), (3, 6), (6, 7))  # the short last group is scheduled too
    assert s.rows == 5 + 2 * 2
    for g in range(3):  # every group takes exactly one step per timestep, in order
        steps = [s.step_of(r, g) for r in range(s.rows) if s.state(r, g) == COMPUTE]
        assert steps == list(range(5))
    assert s.state(0, 1) == WAITING and s.state(s.rows - 1, 0) == DONE
    assert s.finishing(4) == [0]


def test_group_pieces_equal_the_full_block_causal_forward(sky_pipe):
    """Group-by-group with the KV buffer reproduces one full forward of the model under its block mask."""
    tr = sky_pipe.transformer
    cbs = tr.config.num_frame_per_block
    assert cbs > 1
    gen = torch.Generator().manual_seed(0)
    frames = 3 * cbs
    x = torch.randn(1, tr.config.in_channels, frames, 8, 8, generator=gen)
    t = torch.tensor([[0] * cbs + [500] * cbs + [999] * cbs])
    ctx = torch.randn(1, 512, tr.config.text_dim, generator=gen)
    with torch.inference_mode():
        full = tr(hidden_states=x, timestep=t, encoder_hidden_states=ctx, enable_diffusion_forcing=True, fps=[1],
                  return_dict=False)[0]  # fmt: skip
    runner = ChunkedRunner(sky_pipe)
    originals = runner._install()
    outs = []
    try:
        with torch.inference_mode():
            for g in range(3):
                sl = slice(g * cbs, (g + 1) * cbs)
                outs.append(runner._forward(x[:, :, sl], t[:, sl], ctx, g, g * cbs, "cond", 0))
    finally:
        for block, proc in zip(tr.blocks, originals, strict=True):
            block.attn1.set_processor(proc)
    torch.testing.assert_close(torch.cat(outs, dim=2), full, atol=1e-5, rtol=1e-5)
    assert isinstance(runner.model, GroupModel)


@pytest.mark.parametrize("ar_step", [0, 2])
def test_uncached_runner_equals_the_diffusers_pipeline(sky_pipe, ar_step):
    cbs = sky_pipe.transformer.config.num_frame_per_block
    frames = (3 * cbs - 1) * 4 + 1  # 3 whole groups of latent frames
    common = {"height": 64, "width": 64, "num_frames": frames, "num_inference_steps": 4, "guidance_scale": 5.0}
    with torch.inference_mode():
        ref = sky_pipe(PROMPT, negative_prompt="blurry", generator=torch.Generator().manual_seed(3), ar_step=ar_step,
                       causal_block_size=cbs, output_type="latent", **common).frames  # fmt: skip
    runner = ChunkedRunner(sky_pipe, commit="clean-pass")
    got = runner.generate(PROMPT, "blurry", 64, 64, frames, 4, 5.0, seed=3, ar_step=ar_step, causal_block_size=cbs,
                          output_type="latent")  # fmt: skip
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    assert runner.stats["group_steps"] == 3 * 4
    assert runner.stats["commit_passes"] == 3 * 2  # every finished group, both branches
    # the seeds' commit: no extra pass, the last step's K/V stay; a different (still finite) video
    seeds = ChunkedRunner(sky_pipe)
    assert seeds.commit == "last-step"
    other = seeds.generate(PROMPT, "blurry", 64, 64, frames, 4, 5.0, seed=3, ar_step=ar_step, causal_block_size=cbs,
                           output_type="latent")  # fmt: skip
    assert seeds.stats["commit_passes"] == 0 and seeds.stats["group_steps"] == 3 * 4
    if ar_step == 0:  # synchronous: every group finishes in the last row, no one attends a committed group
        torch.testing.assert_close(other, ref, atol=1e-4, rtol=1e-4)
    else:  # later groups attend the earlier ones' last-step K/V instead of their clean pass
        assert torch.isfinite(other).all() and not torch.allclose(other, ref, atol=1e-3)


def test_trailing_partial_group_is_denoised(sky_pipe):
    cbs = sky_pipe.transformer.config.num_frame_per_block
    frames = (2 * cbs) * 4 + 1  # 2 * cbs + 1 latent frames: the last group has one frame
    runner = ChunkedRunner(sky_pipe)
    latents = runner.generate(PROMPT, "", 64, 64, frames, 3, 5.0, seed=0, ar_step=1, causal_block_size=cbs,
                              output_type="latent")  # fmt: skip
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
    assert latents.shape[2] == 2 * cbs + 1
    assert not torch.allclose(latents[:, :, -1], noise[:, :, -1])  # diffusers leaves this frame as noise
    assert torch.isfinite(latents).all()


def _run(pipe, cache, recorder=None, ar_step=2, steps=8):
    cbs = pipe.transformer.config.num_frame_per_block
    runner = ChunkedRunner(pipe, cache=cache, recorder=recorder)
    frames = (3 * cbs - 1) * 4 + 1
    out = runner.generate(PROMPT, "blurry", 64, 64, frames, steps, 5.0, seed=1, ar_step=ar_step,
                          causal_block_size=cbs, output_type="latent")  # fmt: skip
    return out, runner


@pytest.fixture(scope="module")
def uncached(sky_pipe):
    """The uncached chunked runner's latents at the settings of :func:`_run`, shared by the cache tests."""
    return _run(sky_pipe, None)[0]


def test_flowcache_threshold_zero_reproduces_the_uncached_runner(sky_pipe, uncached):
    from accel.cache.flowcache import FlowCache

    ref = uncached
    out, runner = _run(sky_pipe, FlowCache(thresh=0.0, ret_steps=2))
    assert torch.equal(out, ref)
    assert runner.stats.get("chunk_reuse", 0) == 0 and runner.stats["chunk_compute"] == 3 * 8 * 2


def test_flowcache_skips_group_steps_and_records_why(sky_pipe, uncached):
    from accel.cache.flowcache import FlowCache
    from accel.telemetry import Recorder

    rec = Recorder()
    ref = uncached
    out, runner = _run(sky_pipe, FlowCache(thresh=1e9, ret_steps=2, coefficients="none"), rec)
    table, _ = rec.finish()
    reuse = table[table.event == "chunk_reuse"]
    compute = table[table.event == "chunk_compute"]
    # per group and branch: ret steps 0, 1 and the last step are computed, the 5 in between reused
    assert len(compute) == 3 * 2 * 3 and len(reuse) == 3 * 2 * 5
    assert runner.stats["chunk_reuse"] == 30 and (reuse["threshold"] == 1e9).all()
    assert set(reuse["chunk"]) == {0, 1, 2} and set(reuse["branch"]) == {"cond", "uncond"}
    for _, g in reuse.groupby(["chunk", "branch"]):  # the raw accumulator grows while reusing
        assert (g["value"].diff().dropna() > 0).all()
    assert not torch.equal(out, ref) and torch.isfinite(out).all()
    assert len(table[table.event == "chunk_done"]) == 3 * 2


def test_skyreels_runs_are_stored_with_chunk_telemetry(sky_pipe, tmp_path):
    from accel.config import RunConfig
    from accel.errors import ConfigError
    from accel.runner import generate
    from accel.runs import RunStore

    store = RunStore(tmp_path)
    size = {"height": 64, "width": 64, "frames": 21, "steps": 6}
    dense = generate(RunConfig(prompt=PROMPT, model="tiny-skyreels", method="dense", **size), store)
    fast = generate(
        RunConfig(prompt=PROMPT, model="tiny-skyreels", method="flowcache", settings={"thresh": 0.5, "ret_steps": 2},
                  **size), store)  # fmt: skip
    m, d = fast.metrics, dense.metrics
    assert d["chunk_reuses"] == 0 and d["block_executions"] == d["block_executions_uncached"]
    assert m["chunk_reuses"] > 0 and m["block_executions"] < m["block_executions_uncached"]
    assert m["chunk_computes"] + m["chunk_reuses"] == 2 * m["group_steps"]
    t = fast.telemetry
    assert set(t.event) >= {"chunk_compute", "chunk_reuse", "chunk_done", "kv_tokens", "tokens_updated"}
    kv = t[t.event == "kv_tokens"]["value"]
    assert kv.is_monotonic_increasing and kv.iloc[-1] == 6 * 4 * 4  # all latent frames' tokens buffered
    assert fast.frames().shape == dense.frames().shape == (21, 64, 64, 3)
    with pytest.raises(ConfigError, match="diffusion-forcing"):
        generate(RunConfig(prompt=PROMPT, model="tiny-wan", method="flowcache", **size), store)


def test_motioncache_threshold_zero_reproduces_the_uncached_runner(sky_pipe, uncached):
    from accel.cache.motioncache import MotionCache

    ref = uncached
    out, runner = _run(sky_pipe, MotionCache(thresh=0.0, warmup=2, coefficients="none"))
    assert torch.equal(out, ref)
    assert runner.stats["chunk_compute"] == 3 * 8 * 2 and runner.stats.get("chunk_partial", 0) == 0


def test_subset_recompute_of_all_tokens_equals_the_full_forward(sky_pipe):
    """The gather-subset path is exact: S = every token gives the full block output."""
    runner = ChunkedRunner(sky_pipe)
    tr = sky_pipe.transformer
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(1, 16, 2, 8, 8, generator=gen)
    ctx = torch.randn(1, 512, tr.config.text_dim, generator=gen)
    t = torch.tensor([[500, 500]])
    originals = runner._install()
    try:
        with torch.inference_mode():
            emb, enc = runner.model.embed(x, t, ctx, 0)
            full = runner._run_blocks(emb, enc, None)
            subset = runner._run_blocks(emb, enc, torch.arange(emb.tokens.shape[1]))
    finally:
        for block, proc in zip(tr.blocks, originals, strict=True):
            block.attn1.set_processor(proc)
    torch.testing.assert_close(subset, full, atol=1e-5, rtol=1e-5)


def test_motioncache_recomputes_token_subsets_with_motion_weights(sky_pipe):
    from accel.cache.motioncache import MotionCache
    from accel.telemetry import Recorder

    rec = Recorder()
    cache = MotionCache(thresh=0.25, warmup=1, phase1_updates=1, min_update_ratio=0.1, coefficients="none")
    out, runner = _run(sky_pipe, cache, rec, steps=12)
    table, arrays = rec.finish()
    partial = table[table.event == "chunk_partial"]
    updated = table[(table.event == "tokens_updated") & (table.value > 0)]["value"]
    assert runner.stats.get("chunk_partial", 0) > 0 and len(partial) > 0
    full_tokens = 2 * 4 * 4
    assert (updated <= full_tokens).all() and (updated < full_tokens).any()
    assert runner.stats["tokens_recomputed"] < 3 * 12 * 2 * full_tokens
    weights = [k for k in arrays if k.startswith("motion_weights/")]
    counts = [k for k in arrays if k.startswith("motion_updates/")]
    assert len(counts) == 6 and weights
    w = arrays[weights[0]]
    assert w.min() >= 0.6 - 1e-3 and w.max() <= 1.0 + 1e-3
    assert torch.isfinite(out).all()


@pytest.mark.slow  # in the full suite, not the quick subset
def test_sparse_attention_composes_with_the_chunk_caches(sky_pipe, tmp_path):
    from accel.config import RunConfig
    from accel.runner import generate
    from accel.runs import RunStore
    from accel.schema import load_mask

    store = RunStore(tmp_path)
    size = {"height": 64, "width": 64, "frames": 21, "steps": 6}
    xa = {"warmup_steps": 1, "block_size": 16, "stride": 4}
    dense = generate(RunConfig(prompt=PROMPT, model="tiny-skyreels", method="dense", **size), store)
    full = generate(
        RunConfig(prompt=PROMPT, model="tiny-skyreels", method="xattention", settings={**xa, "tau": 1.0}, **size), store
    )
    assert abs(full.frames().astype(int) - dense.frames().astype(int)).max() <= 1  # tau = 1 is dense attention
    both = generate(
        RunConfig(prompt=PROMPT, model="tiny-skyreels", method="flowcache",
                  settings={"thresh": 0.5, "ret_steps": 2, "attention": "xattention", "attention_tmr": True},
                  **size), store)  # fmt: skip
    t = both.telemetry
    dens = t[t.event == "density"]
    assert set(dens["chunk"].dropna()) == {0, 1, 2} and (dens["density"] <= 1).all()
    assert {"mask_refresh", "drift", "chunk_reuse", "chunk_compute"} <= set(t.event)
    keys = [k for k in both.arrays if k.startswith("mask/")]
    assert keys and all("/c0" in k or "/c1" in k or "/c2" in k for k in keys)
    assert load_mask(both.arrays, keys[-1]).shape[0] == 6  # heads
    assert both.metrics["chunk_reuses"] > 0


def test_long_video_segments_equal_the_diffusers_pipeline(sky_pipe):
    """frames > base_num_frames with overlap_history: diffusers' segments, each window from a clean prefix."""
    cbs = sky_pipe.transformer.config.num_frame_per_block
    assert cbs == 2
    common = {"height": 64, "width": 64, "num_frames": 29, "num_inference_steps": 3, "guidance_scale": 5.0}
    long = {"base_num_frames": 13, "overlap_history": 5, "addnoise_condition": 0}  # 8 latent frames, windows of 4
    with torch.inference_mode():
        ref = sky_pipe(PROMPT, negative_prompt="", generator=torch.Generator().manual_seed(2), ar_step=1,
                       causal_block_size=cbs, output_type="latent", **common, **long).frames  # fmt: skip
    runner = ChunkedRunner(sky_pipe, commit="clean-pass")
    got = runner.generate(PROMPT, "", 64, 64, 29, 3, 5.0, seed=2, ar_step=1, causal_block_size=cbs,
                          output_type="latent", **long)  # fmt: skip
    assert got.shape == ref.shape == (1, 16, 8, 8, 8)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_addnoise_conditions_the_prefix_and_bad_windows_are_refused(sky_pipe):
    from accel.config import RunConfig
    from accel.errors import ConfigError

    long = {"base_num_frames": 13, "overlap_history": 5}
    runner = ChunkedRunner(sky_pipe)
    args = (PROMPT, "", 64, 64, 29, 3, 5.0)
    clean = runner.generate(*args, seed=2, ar_step=1, causal_block_size=2, output_type="latent", **long)
    noised = runner.generate(*args, seed=2, ar_step=1, causal_block_size=2, output_type="latent",
                             addnoise_condition=20, **long)  # fmt: skip
    assert torch.isfinite(noised).all()
    assert torch.equal(noised[:, :, :4], clean[:, :, :4])  # the first window has no prefix
    assert not torch.equal(noised[:, :, 4:], clean[:, :, 4:])  # later windows see a noised prefix
    with pytest.raises(ConfigError, match="overlap_history 13 must be smaller"):
        RunConfig(prompt=PROMPT, base_num_frames=13, overlap_history=13)
    with pytest.raises(ConfigError, match="addnoise_condition"):
        RunConfig(prompt=PROMPT, addnoise_condition=1000)


def test_chunk_cache_fills_in_the_models_motioncache_and_flowcache_defaults():
    from accel import models
    from accel.methods import build_cache as chunk_cache
    from accel.methods import flowcache, motioncache, settings_for

    pocket, real = models.resolve("pocket-skyreels"), models.resolve("skyreels-v2-df-1.3b")
    mc = settings_for("motioncache", {})
    for spec in (pocket, real):  # 6 of 50 steps, scaled to the run
        assert [chunk_cache(mc, spec).phase1(n) for n in (20, 50, 8)] == [2, 6, 1]
    assert chunk_cache(settings_for("motioncache", {"phase1_updates": 4}), pocket).phase1(50) == 4
    assert chunk_cache(mc, real).thresh == motioncache.model_defaults(real)["thresh"]
    assert (
        chunk_cache(settings_for("flowcache", {"preset": "fast"}), pocket).thresh
        == flowcache.model_defaults(pocket)["fast"]
    )
    assert chunk_cache(settings_for("xattention", {}), pocket) is None  # no reuse: every group step computes
    with pytest.raises(ConfigError, match="runs on SkyReels-V2 diffusion-forcing models, not on pocket-wan"):
        chunk_cache(mc, models.resolve("pocket-wan"))


def test_block_executions_count_recomputed_tokens():
    from accel.cache.chunked import work_metrics

    # 10 group steps x 2 branches, the last group of 16 tokens (a short chunk); 15 full recomputes of 32-token
    # chunks, 2 partial ones of 8 tokens, 3 reuses; 3 commit passes over 32, 32 and 16 tokens
    stats = {"group_steps": 10, "commit_passes": 3, "tokens_recomputed": 15 * 32 + 2 * 8, "commit_tokens": 80,
             "tokens_scheduled": 16 * 32 + 4 * 16, "chunk_compute": 15, "chunk_partial": 2,
             "chunk_reuse": 3}  # fmt: skip
    m = work_metrics([stats], layers=4, chunk_tokens=32)
    assert m["block_executions"] == (15 + 0.5 + 2.5) * 4 == 72.0
    assert m["block_executions_uncached"] == (16 + 2 + 2.5) * 4 == 82
    assert m["linear_flops_saved_frac"] == pytest.approx(1 - 72 / 82)
    assert (m["chunk_computes"], m["chunk_partials"], m["chunk_reuses"], m["chunk_defers"]) == (15, 2, 3, 0)
    # a long video's windows: the totals are the sums over them, and each window is reported
    two = work_metrics([stats, dict(stats, tokens_recomputed=stats["tokens_scheduled"])], layers=4, chunk_tokens=32)
    assert [s["block_executions"] for s in two["segments"]] == [72.0, 82.0]
    assert two["block_executions"] == 72 + 82 and two["block_executions_uncached"] == 2 * 82
    assert two["group_steps"] == sum(s["group_steps"] for s in two["segments"]) == 20


@pytest.mark.parametrize("frames", [17, 33])
def test_the_uncached_runner_saves_nothing_at_any_length(sky_pipe, frames):
    """A short last chunk (17 frames: 5 latent frames, chunks of 2, 2, 1) counts the same on both sides."""
    from accel.cache.chunked import work_metrics

    runner = ChunkedRunner(sky_pipe, commit="clean-pass")
    runner.generate(PROMPT, "", 32, 32, frames, 2, 5.0, seed=0, ar_step=1, causal_block_size=2, output_type="latent")
    m = work_metrics(runner.segments, 4, runner.chunk_tokens)
    assert m["linear_flops_saved_frac"] == 0.0 and m["block_executions"] == m["block_executions_uncached"]


def test_long_video_counts_every_segment(sky_pipe):
    """A 3-segment video reports all its group steps, not only the last window's."""
    from accel.cache.chunked import work_metrics
    from accel.cache.flowcache import FlowCache

    runner = ChunkedRunner(sky_pipe, cache=FlowCache(thresh=1e9, ret_steps=1, coefficients="none"))
    long = {"base_num_frames": 13, "overlap_history": 5}  # 37 frames: 10 latent frames, windows of 4, overlap 2
    runner.generate(PROMPT, "", 32, 32, 37, 4, 5.0, seed=0, ar_step=1, causal_block_size=2, output_type="latent",
                    **long)  # fmt: skip
    assert len(runner.segments) == 4
    m = work_metrics(runner.segments, 4, runner.chunk_tokens)
    assert m["group_steps"] == 2 * 4 + 3 * (1 * 4) == sum(s["group_steps"] for s in m["segments"])
    assert m["block_executions"] == pytest.approx(sum(s["block_executions"] for s in m["segments"]))
    assert 0 < m["block_executions"] < m["block_executions_uncached"]


def test_a_motioncache_runs_block_count_is_its_telemetry(stored_runs):
    """The stored metric equals what the run's own decisions add up to: tokens recomputed per chunk of
    32 tokens (2 latent frames of 4 x 4), plus one commit pass per finished chunk and branch, times 4 layers."""
    _, runs = stored_runs
    run = runs["motion"]
    t, m = run.telemetry, run.metrics
    tokens = t[t.event == "tokens_updated"]["value"].sum()
    commits = t[t.event == "chunk_done"]["value"].sum()  # 1 per commit pass, 0 where the last step's K/V stay
    assert m["block_executions"] == pytest.approx((tokens / 32 + commits) * 4)
    assert m["chunk_partials"] == (t.event == "chunk_partial").sum() and m["commit_passes"] == commits


def _reference_motion_weights(h, prev_last, floor, group):
    """The reference's frame-difference weights written out per frame and token (loops, float64)."""
    b, f, s, _ = h.shape
    out = torch.empty(b, f, s, dtype=torch.float64)
    for i in range(b):
        m = torch.empty(f, s, dtype=torch.float64)
        for t in range(f):
            before = h[i, t - 1] if t > 0 else prev_last[i] if prev_last is not None else None
            if before is not None:
                m[t] = (h[i, t] - before).abs().double().mean(-1) / (before.abs().double().mean(-1) + 1e-8)
        if prev_last is None:
            m[0] = m[1] if group == 0 else 1.0  # group 0: frame 1's map; later: a constant (the floor)
        for t in range(f):
            lo, hi = m[t].min(), m[t].max()
            out[i, t] = floor + (1 - floor) * (m[t] - lo) / (hi - lo + 1e-8)
    return out


def test_motion_weights_follow_the_reference_frame_zero_rule():
    from accel.cache.motioncache import motion_weights

    g = torch.Generator().manual_seed(0)
    h, prev = torch.randn(1, 3, 6, 4, generator=g), torch.randn(1, 6, 4, generator=g)
    for prev_last, group in ((None, 0), (None, 2), (prev, 2)):
        got = motion_weights(h, prev_last, 0.6, first_group=group == 0)
        torch.testing.assert_close(got.double(), _reference_motion_weights(h, prev_last, 0.6, group), atol=1e-5, rtol=0)
    later = motion_weights(h, None, 0.6, first_group=False)
    assert torch.allclose(later[0, 0], torch.full((6,), 0.6))  # no stored frame in a later group: the floor
    assert not torch.allclose(motion_weights(h, None, 0.6)[0, 0], later[0, 0])  # group 0 copies frame 1 instead
