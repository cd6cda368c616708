"""Figures of run folders (viz): each view shows what the run's telemetry says."""

from __future__ import annotations

import math

import numpy as np
import pytest

from accel.errors import UserError


def test_masks_and_densities_follow_the_telemetry(stored_runs):
    from viz import sparsity

    _, r = stored_runs
    run = r["xattention"]
    idx = sparsity.mask_index(run)
    assert len(idx) and set(idx["branch"]) == {"cond", "uncond"} and idx["step"].min() == 2
    first = idx.iloc[0]
    img = sparsity.mask_image(run, first["key"], 0)
    assert img.shape == (first["nq"], first["nk"]) and set(np.unique(img)) <= {0.0, 1.0}
    fig = sparsity.head_masks(run, int(first["step"]), int(first["layer"]), "cond")
    assert len(fig.data) == run.metrics["heads"]
    # titles carry each head's density as logged
    t = run.telemetry
    d = t[(t.event == "density") & (t.step == first["step"]) & (t.layer == first["layer"]) & (t.branch == "cond")]
    assert fig.layout.annotations[0].text == f"head 0 · {float(d[d['head'] == 0]['density'].iloc[0]):.2f}"
    assert sparsity.warmup_structure(run) == ([0, 1], [])  # XAttention: whole warm-up steps, no dense layers
    assert sparsity.warmup_note(run) == "dense warm-up: steps 0-1 (every layer)"
    assert fig.layout.xaxis.title.text == "key block" and fig.layout.yaxis2.scaleanchor == "x2"  # square panels
    assert fig.data[0].showscale and list(fig.data[0].colorbar.ticktext) == ["skipped", "computed"]
    dens = sparsity.density_heatmaps(run)
    assert len(dens.data) == run.metrics["heads"] and len(dens.layout.shapes) == run.metrics["heads"]
    marked = sparsity.density_heatmaps(run, mark=(3, 1))  # the step and layer whose masks are shown
    outlines = [s for s in marked.layout.shapes if s.line.color == "#ff2d55"]
    assert len(outlines) == run.metrics["heads"] and (outlines[0].x0, outlines[0].y1) == (2.5, 1.5)
    z = np.asarray(dens.data[0].z, dtype=float)
    assert z.shape == (run.metrics["layers"], run.config["steps"]) and np.allclose(z[:, :2], 1.0)
    # SVG2 cluster masks are drawn at token scale
    svg = r["svg2"]
    steps, layers = sparsity.warmup_structure(svg)  # its first steps at every layer, its first layers at every step
    t = svg.telemetry
    warm = t[t.event == "dense_warmup"][["step", "layer"]].drop_duplicates()
    assert len(warm) == len(steps) * svg.metrics["layers"] + len(layers) * (svg.config["steps"] - len(steps))
    assert steps == [0] and layers == [0]  # 0.3 of 6 steps, 0.25 of 4 layers (both floored)
    assert sparsity.warmup_note(svg) == "dense warm-up: step 0 (every layer); layer 0 (every step)"
    sidx = sparsity.mask_index(svg)
    assert sidx["q_offsets"].notna().all()
    assert sparsity.mask_image(svg, sidx.iloc[0]["key"], 1).shape == (192, 192)
    assert "no mask recorded" in sparsity.head_masks(svg, 99, 0).layout.annotations[0].text


def test_reuse_grid_cells_map_back_to_their_heads(stored_runs):
    from viz import reuse

    _, r = stored_runs
    run = r["xattention"]
    grid = reuse.reuse_matrix(run, "cond")
    t = run.telemetry
    refresh = t[(t.event == "mask_refresh") & (t.branch == "cond")]
    assert grid.notna().sum().sum() == len(refresh)
    assert grid.loc[0].isna().all()  # warm-up steps made no decision
    img = reuse.reuse_grid_image(run, "cond", cell=8)
    assert img.shape == (len(grid) * 8, grid.shape[1] * 8, 3)
    step, layer, head, decision = reuse.cell_at(run, x=8 * 7 + 3, y=8 * 4 + 3, branch="cond", cell=8)
    assert (step, layer, head) == (int(grid.index[4]), *map(int, grid.columns[7]))
    assert decision == grid.iat[4, 7] or (math.isnan(decision) and math.isnan(grid.iat[4, 7]))
    assert reuse.cell_at(run, 10_000, 0, "cond", 8) is None
    key = reuse.mask_in_effect(run, step, layer, head, "cond")
    assert key is not None and key.startswith("mask/s") and int(key[6:9]) <= step
    outlined = reuse.reuse_grid_image(run, "cond", cell=8, highlight=(4, 7))
    assert (outlined[32, 56:64] == (255, 214, 0)).all() and (outlined[:, :48] == img[:, :48]).all()
    fig = reuse.drift_curves(run, [(0, 0), (1, 2)])
    assert [tr.name for tr in fig.data] == ["l0h0", "l0h0 refreshed", "l1h2", "l1h2 refreshed"]  # all in the legend
    assert fig.data[0].line.color == fig.data[1].marker.color != fig.data[2].line.color == fig.data[3].marker.color
    assert any(s.y0 == 3.0 for s in fig.layout.shapes)  # the delta line
    assert "no Temporal Mask Reuse" in reuse.reuse_grid(r["svg2"]).layout.annotations[0].text


def test_chunk_timeline_states_and_kv(stored_runs):
    from viz import chunks

    _, r = stored_runs
    run = r["motion"]
    states = chunks.chunk_states(run, "cond")
    t = run.telemetry
    decided = t[t.event.isin(list(chunks.EVENT_STATE)) & (t.branch == "cond")]
    assert states.isin(["compute", "partial", "reuse"]).sum().sum() == len(decided)
    assert states.iloc[0, -1] == "waiting" and states.iloc[-1, 0] == "done"
    assert set(states.stack()) <= set(chunks.STATES)
    fig = chunks.chunk_timeline(run)
    assert np.asarray(fig.data[0].z).shape == (states.shape[1], states.shape[0])
    assert len(chunks.kv_buffer(run).data[0].x) == len(t[t.event == "kv_tokens"])
    assert "no chunk cache" in chunks.chunk_timeline(r["dense"]).layout.annotations[0].text


def test_motion_heatmaps_over_frames(stored_runs):
    from viz import images, motion

    _, r = stored_runs
    run = r["motion"]
    assert motion.token_maps(run, "weights").shape == (6, 4, 4)
    maps = motion.token_maps(run, "updates")
    assert maps.shape == (6, 4, 4) and maps.max() >= 1
    frame = run.frames()[9]
    over = motion.motion_overlay(run, 9, "method")  # 64-px frames enlarged 6x, a colour bar and a caption
    assert over.shape == (384 + images.CAPTION_PX, 384 + 64, 3) and over.dtype == np.uint8
    assert not np.array_equal(over[:384:6, :384:6], frame)  # the heat is blended in
    bar = over[:384, 388:402]  # the colour bar's ramp runs from bright (top) to dark
    assert bar[5].astype(int).sum() != bar[-5].astype(int).sum()
    assert motion.latent_frame(0) == 0 and motion.latent_frame(4) == 1 and motion.latent_frame(5) == 2
    flow = motion.motion_map(r["dense"], 3, "flow")
    assert flow.shape == r["dense"].frames().shape[1:3] and flow.min() >= 0 and flow.max() <= 1
    assert motion.motion_map(r["dense"], 3, "method") is None
    with pytest.raises(ValueError, match="frame"):
        motion.motion_map(run, 999)
    counts = motion.update_counts(run)
    assert len(counts.data) == 6 and (counts.data[0].zmin, counts.data[0].zmax) == (
        maps.min(),
        max(maps.max(), maps.min() + 1),
    )


def test_compare_quality_and_pareto(stored_runs):
    from viz import compare, images

    store, r = stored_runs
    ref = compare.dense_reference(store, r["xattention"])
    assert ref is not None and ref.run_id == r["dense"].run_id
    assert compare.dense_reference(store, r["motion"]).run_id == r["sky_dense"].run_id
    both = compare.side_by_side([r["dense"], r["xattention"], r["svg2"]])
    band = images.CAPTION_PX  # 128-px panels enlarged 2x, a caption band under each
    assert both.shape == (9, 256 + band, 3 * 256, 3)
    assert np.array_equal(both[:, :256:2, 256:512:2], r["xattention"].frames())  # pixels kept, in their panel
    assert both[:, 256:, :, :].std() > 0  # the captions are drawn
    diff, gain = compare.difference_video(r["dense"], r["dense"])
    assert diff.shape == (9, 256 + band, 256 + 64, 3) and gain == 64.0  # the panel, its colour bar, a caption
    assert compare.difference_video(r["dense"], r["svg2"], gain=2.0)[1] == 2.0
    table = compare.quality(r["dense"], [r["dense"], r["svg2"]])
    assert table.loc[0, "psnr_db"] == compare.PSNR_CAP and table.loc[0, "speedup_wall"] == pytest.approx(1.0)
    a, b = (x.frames().astype(np.float64) for x in (r["dense"], r["svg2"]))
    mse = ((a - b) ** 2).mean(axis=(1, 2, 3))  # PSNR written out: the mean over frames of 10 log10(255^2 / MSE)
    assert table.loc[1, "psnr_db"] == pytest.approx(np.mean(10 * np.log10(255.0**2 / mse)))
    assert 0 < table.loc[1, "ssim"] < 1 and compare.quality(r["dense"], [r["dense"]]).loc[0, "ssim"] == 1.0
    wall = r["dense"].metrics["wall_s"] / r["svg2"].metrics["wall_s"]
    assert table.loc[1, "speedup_wall"] == pytest.approx(wall)
    with pytest.raises(UserError, match="frame shapes differ"):
        compare.side_by_side([r["dense"], r["motion"]])
    curves = compare.quality_curves(r["dense"], [r["xattention"], r["svg2"]])
    legend = {t.legendgroup: t.line.color for t in curves.data if t.showlegend is not False}
    assert len(set(legend.values())) == 2  # one colour per run, and its SSIM line (no legend entry) wears it
    assert all(t.line.color == legend[t.legendgroup] for t in curves.data)
    fig = compare.pareto(store, r["xattention"])
    points = sum(len(tr.x) for tr in fig.data if tr.mode == "markers" and "noise" not in tr.name)
    others = [i for i in compare.comparable_runs(store, r["xattention"]) if i.run_id != ref.run_id]
    assert points == 2 * len(others) >= 4  # xattention, svg2 (and any app-made run) vs dense: wall and denoise
    lo, hi, n = compare.noise_band(store, ref.path)
    walls = r["dense"].metrics["timing"]["wall_s"]
    assert n >= 2 and lo == pytest.approx(np.median(walls) / max(walls)) and lo <= 1.0 <= hi
    assert len(fig.layout.shapes) >= 2 and any("dense noise band" in (t.name or "") for t in fig.data)
    low, high = compare.speedup_range(ref.path, r["dense"].path)
    assert (low, high) == pytest.approx((lo, hi)) and compare.speedup(ref.path, r["dense"].path) == 1.0


def test_profile_views_and_report(stored_runs, tmp_path):
    from viz import panels, profile
    from viz.report import all_figures, write_report

    store, r = stored_runs
    assert profile.is_profiled(r["xattention"]) and not profile.is_profiled(r["svg2"])
    assert len(profile.range_chart(r["xattention"]).data[0].y) > 3
    fig, phases, amdahl = profile.breakdown_chart(r["xattention"], r["dense"])
    assert len(fig.data) == len(profile.PHASES) and amdahl["attention_fraction"] > 0
    # the profiler records sparse steps of a method with dense warm-up
    assert phases.set_index("phase").loc["attn_sparse_ms", "run"] > 0
    assert profile.times(0.00412) == "0.00412x" and profile.times(1.234) == "1.23x"
    *_, memory, _, _, _, _, profiled = panels.profile_panel(store, r["xattention"])
    assert profiled and list(memory["what"]) == ["cuda peak", "cpu peak"]  # megabytes, not "..._bytes"
    ranges, kernels, memory, _, phases, amdahl, trace, profiled = panels.profile_panel(store, r["svg2"])[2:]
    assert not profiled and trace is None
    for table in (ranges, kernels, memory, phases, amdahl):  # a note, not placeholder columns 1 2 3
        assert list(table.columns) == ["note"] and len(table) == 1
    figs = all_figures(r["xattention"], store)
    assert {"Sparsity: masks", "Mask reuse: refresh grid", "Compare: speed vs quality",
            "Profile: breakdown vs dense"} <= set(figs)  # fmt: skip
    out = write_report(r["motion"], tmp_path / "report.html", store)
    text = out.read_text()
    assert "data:video/mp4;base64," in text and "Chunk cache: timeline" in text and "Motion: token updates" in text
    assert '<script src="http' not in text and "plotly" in text  # plotly.js embedded: the report opens offline
    assert "<table class='headline'><tr><th>wall time</th>" in text and "tokens recomputed" in text
    assert "speedup vs dense" in text and '"wall_s"' not in text  # a formatted table, not raw JSON


def test_runs_report_the_time_spent_recording(stored_runs):
    """Every run states what its telemetry cost (what it is worth is measured by ``accel.bench.recorder``)."""
    _, r = stored_runs
    for run in (r["xattention"], r["dense"]):
        m = run.metrics
        assert 0 <= m["record_loop_s"] <= m["wall_s"] and m["record_s"] >= 0
    assert r["xattention"].metrics["record_loop_s"] > 0  # it logged rows and masks


def test_chunk_bench_rows_count_work_and_the_first_windows_psnr(stored_runs):
    from accel.bench.chunked import first_window_psnr, table
    from viz.compare import PSNR_CAP, versus

    _, r = stored_runs
    dense, motion = r["sky_dense"], r["motion"]
    assert first_window_psnr(dense, dense) == PSNR_CAP  # identical frames, capped as everywhere
    one_window = first_window_psnr(motion, dense)  # a 21-frame video is one window: the whole-video PSNR
    assert one_window == pytest.approx(versus(dense, motion)["psnr_db"]) and one_window < PSNR_CAP
    header, uncached, cached = table([("uncached", dense), ("motioncache", motion)], dense)
    assert "PSNR w1" in header and " 0.0% " in uncached and " 1.000 " in uncached
    assert f" {one_window:.2f} " in cached


def test_headlines_speak_each_methods_terms(stored_runs):
    """MotionCache reports tokens recomputed (not FlowCache's chunk steps), every run its device and kernel
    backend, the TMR reuse rate says which branches it counts, and the Runs table lists device and backend."""
    from viz import panels

    store, r = stored_runs
    motion = panels.headline(store, r["motion"])
    m = r["motion"].metrics
    assert f"| tokens recomputed | {m['tokens_recomputed']:,} of {m['tokens_scheduled']:,} |" in motion
    assert "block work saved" in motion and "chunk steps reused" not in motion
    xa = panels.headline(store, r["xattention"])
    assert "both CFG branches" in xa and "| kernel backend | " in xa and "cpu" in xa
    table = panels.runs_table(store)
    assert {"device", "kernels"} <= set(table.columns) and (table["device"] == "cpu").all()
