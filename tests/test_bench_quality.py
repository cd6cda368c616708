"""bench-quality: variants per model family, one scored row per (variant, prompt, seed), a summary table."""

from __future__ import annotations

import json

import pytest


def test_variants_follow_the_model_family():
    from accel.bench.quality import variants

    wan, sky = variants("tiny-wan"), variants("tiny-skyreels")
    assert next(iter(wan)) == "dense" and "flowcache-slow" not in wan
    assert {"xattention+tmr", "svg2+ebc", "fbc", "magcache"} <= set(wan)  # EBC tables ship for tiny-wan
    assert {"flowcache-slow", "flowcache-fast", "motioncache"} <= set(sky)
    assert wan["xattention+ebc"][1]["threshold_table"].endswith("tiny-wan-xattention.json")


def test_benchmark_rows_and_table(tmp_path):
    from accel.bench.quality import format_table, run_benchmark, summarize
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
    assert rows["colour_obj"].between(0, 1).all() and (rows["colour_obj"] >= rows["colour_ok"]).all()
    text = format_table(summary)
    assert text.splitlines()[0].split()[:4] == ["variant", "colour", "direction", "count"]
    assert {"col_obj", "dir_obj"} <= set(text.splitlines()[0].split())
    assert "xattention+tmr" in text
    with pytest.raises(ValueError, match="unknown variant"):
        run_benchmark("tiny-wan", ["flowcache-slow"], 1, (0,), store, size)


def test_summary_of_hand_made_rows():
    import pandas as pd

    from accel.bench.quality import summarize

    def row(variant, seed, ok, psnr, speedup):
        return {"variant": variant, "prompt": "p", "seed": seed, "colour_ok": ok, "direction_ok": ok,
                "count_ok": True, "all_ok": ok, "colour_obj": 1.0 if ok else 0.5, "direction_obj": 0.0,
                "flicker": 0.1, "psnr_db": psnr, "ssim": 0.9, "density": None, "wall_s": 2.0 / speedup,
                "speedup": speedup}  # fmt: skip

    rows = [row("dense", 0, True, 100.0, 1.0), row("dense", 1, False, 100.0, 1.0),
            row("fast", 0, True, 30.0, 2.0), row("fast", 1, False, 20.0, 8.0)]  # fmt: skip
    summary = summarize(pd.DataFrame(rows))
    assert summary.loc["dense", "all_ok"] == 0.5 and summary.loc["fast", "colour_obj"] == 0.75
    assert summary.loc["fast", "psnr_db"] == 25.0 and summary.loc["fast", "speedup"] == pytest.approx(4.0)  # geomean
    assert summary.loc["fast", "retained"] == 1.0  # keeps every check dense passes


def test_retained_counts_the_checks_dense_passes():
    import math

    import pandas as pd

    from accel.bench.quality import retained

    def row(variant, prompt, colour, direction, count):
        return {"variant": variant, "prompt": prompt, "seed": 0, "colour_ok": colour, "direction_ok": direction,
                "count_ok": count}  # fmt: skip

    df = pd.DataFrame(
        [
            row("dense", "a", True, False, True),  # dense passes 3 checks in all
            row("dense", "b", True, False, False),
            row("fast", "a", True, True, False),  # keeps colour of a (its direction pass is not counted)
            row("fast", "b", False, False, True),  # loses colour of b
            row("same", "a", True, False, True),
            row("same", "b", True, False, False),
        ]
    )
    out = retained(df)
    assert out["dense"] == 1.0 and out["same"] == 1.0
    assert out["fast"] == pytest.approx(1 / 3)
    none = df.assign(colour_ok=False, count_ok=False)
    assert math.isnan(retained(none)["fast"])  # dense passes nothing: undefined, not 0 or 100%
