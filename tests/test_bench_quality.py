"""bench-quality: variants per model family, one scored row per (variant, prompt, seed), a summary table."""

from __future__ import annotations

import json

import pytest


def test_variants_follow_the_model_family():
    from accel.bench_quality import variants

    wan, sky = variants("tiny-wan"), variants("tiny-skyreels")
    assert next(iter(wan)) == "dense" and "flowcache-slow" not in wan
    assert {"xattention+tmr", "svg2+ebc", "fbc", "magcache"} <= set(wan)  # EBC tables ship for tiny-wan
    assert {"flowcache-slow", "flowcache-fast", "motioncache"} <= set(sky)
    assert wan["xattention+ebc"][1]["threshold_table"].endswith("tiny-wan-xattention.json")


def test_benchmark_rows_and_table(tmp_path):
    from accel.bench_quality import format_table, run_benchmark, summarize
    from accel.runs import RunStore

    store = RunStore(tmp_path / "runs")
    size = {"height": 64, "width": 64, "frames": 5, "steps": 3, "guidance": 0.0}  # guidance 0: CFG off
    rows = run_benchmark("tiny-wan", ["xattention+tmr"], 1, (0, 1), store, size, log=lambda _: None)
    assert len(rows) == 4 and list(rows["variant"].unique()) == ["dense", "xattention+tmr"]  # dense added first
    dense = rows[rows["variant"] == "dense"]
    assert (dense["psnr_db"] == 100.0).all() and (dense["speedup"] == 1.0).all()
    assert len(store.list()) == 4 and rows["run"].nunique() == 4
    configs = [json.loads((store.root / r / "config.json").read_text()) for r in rows["run"]]
    assert all(c["guidance"] == 0.0 for c in configs)  # sampling settings reach every run
    summary = summarize(rows)
    assert list(summary.index) == ["dense", "xattention+tmr"]
    assert summary.loc["dense", "all_ok"] == rows[rows["variant"] == "dense"]["all_ok"].mean()
    assert rows["colour_obj"].between(0, 1).all() and (rows["colour_obj"] >= rows["colour_ok"]).all()
    text = format_table(summary)
    assert text.splitlines()[0].split()[:4] == ["variant", "colour", "direction", "count"]
    assert {"col_obj", "dir_obj"} <= set(text.splitlines()[0].split())
    assert "xattention+tmr" in text
    with pytest.raises(ValueError, match="unknown variant"):
        run_benchmark("tiny-wan", ["flowcache-slow"], 1, (0,), store, size)
