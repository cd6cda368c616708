"""Synthetic-truth quality benchmark: every method at its defaults on held-out procedural prompts.

For each variant (a method with its default settings, or an add-on such as +TMR / +EBC) and each
(prompt, seed), a run is generated and stored, its video is scored against the prompt alone by
:mod:`accel.synthetic.scoring` (colour, direction, object count, flicker), and compared with the dense run of the
same prompt and seed (PSNR / SSIM, speedup). ``python -m accel bench-quality`` prints one row per variant;
``col_obj`` / ``dir_obj`` are the per-object rates, which still tell partly right videos apart.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from accel import methods, models
from accel.config import RunConfig
from accel.errors import ConfigError
from accel.runs import RunStore
from accel.synthetic.procedural import BASIC_DIRECTIONS, BASIC_SHAPES, held_out_prompts
from accel.synthetic.scoring import score_video
from viz.compare import versus

MAX_PROMPTS = 64  # held-out prompts per benchmark: each runs every variant on every seed
MAX_RUNS = 2000  # generations per benchmark (variants x prompts x seeds)

Variant = tuple[str, dict[str, Any]]


def variants(model: str) -> dict[str, Variant]:
    """Every variant that applies to ``model``'s family (:func:`accel.methods.variants`), dense first."""
    return methods.variants(models.resolve(model))


def run_benchmark(
    model: str,
    names: Sequence[str] | None = None,
    prompts: int = 8,
    seeds: Sequence[int] = (0,),
    store: RunStore | None = None,
    sampling: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> pd.DataFrame:
    """One row per (variant, prompt, seed): scores, quality against dense, timings."""
    table = variants(model)
    names = list(names or table)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ConfigError(f"unknown variant(s) {', '.join(unknown)} for {model}; known: {', '.join(table)}")
    if not 1 <= prompts <= MAX_PROMPTS:
        raise ConfigError(f"prompts must be 1 to {MAX_PROMPTS}, got {prompts}")
    names = ["dense", *[n for n in names if n != "dense"]]  # dense first: the reference of every comparison
    total = len(names) * prompts * len(seeds)
    if total > MAX_RUNS:
        raise ConfigError(
            f"{len(names)} variants x {prompts} prompts x {len(seeds)} seeds is {total} generations; at most "
            f"{MAX_RUNS}: fewer prompts, seeds or --variants"
        )
    log(f"{len(names)} variants x {prompts} prompts x {len(seeds)} seeds = {total} generations")
    store = store or RunStore()
    from accel.runner import generate  # heavy import, only when the benchmark runs

    rows, dense, t0 = [], {}, time.perf_counter()
    texts = held_out_prompts(prompts, shapes=BASIC_SHAPES, directions=BASIC_DIRECTIONS)
    for name in names:
        method, settings = table[name]
        for prompt in texts:
            for seed in seeds:
                cfg = RunConfig(prompt=prompt, model=model, method=method, settings=settings, seed=seed,
                                **(sampling or {}))  # fmt: skip
                run = generate(cfg, store)
                score = score_video(run.frames(), prompt)
                if name == "dense":
                    dense[(prompt, seed)] = run
                q = versus(dense[(prompt, seed)], run)
                rows.append(
                    {
                        "variant": name, "prompt": prompt, "seed": seed, "run": run.run_id,
                        "colour_ok": score.colour_ok, "direction_ok": score.direction_ok, "count_ok": score.count_ok,
                        "all_ok": score.colour_ok and score.direction_ok and score.count_ok,
                        "colour_obj": score.colour_frac, "direction_obj": score.direction_frac,
                        "flicker": score.flicker, "psnr_db": q["psnr_db"], "ssim": q["ssim"],
                        "wall_s": q["wall_s"], "speedup": q["speedup_wall"],
                        "density": run.metrics.get("density_mean_sparse"),
                    }
                )  # fmt: skip
                done = len(rows)
                left = (time.perf_counter() - t0) / done * (total - done)  # dense first: an over-estimate
                log(f"[{done}/{total}, about {left / 60:.0f} min left] {name:<16} seed {seed} {prompt!r}: "
                    f"{'ok' if rows[-1]['all_ok'] else 'miss'}")  # fmt: skip
    return pd.DataFrame(rows)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per variant: accuracies, accuracy retained against dense, quality, time and speedup."""
    agg = df.groupby("variant", sort=False).agg(
        colour=("colour_ok", "mean"),
        direction=("direction_ok", "mean"),
        count=("count_ok", "mean"),
        all_ok=("all_ok", "mean"),
        colour_obj=("colour_obj", "mean"),
        direction_obj=("direction_obj", "mean"),
        flicker=("flicker", "mean"),
        psnr_db=("psnr_db", "mean"),
        ssim=("ssim", "mean"),
        density=("density", "mean"),
        wall_s=("wall_s", "mean"),
        speedup=("speedup", lambda s: statistics.geometric_mean(s.tolist())),
    )
    agg.insert(4, "retained", retained(df))
    return agg


RETAINED_CHECKS = ("colour_ok", "direction_ok", "count_ok")


def retained(df: pd.DataFrame) -> pd.Series:
    """Accuracy retained per variant: of the checks (colour, direction, count of each prompt and seed) that the
    dense run passes, the fraction the variant passes too; NaN without a dense run or when dense passes none.

    A ratio of all-correct rates would be undefined whenever dense gets few videos fully right; this keeps
    every check dense passes and counts what the variant loses (a check dense fails is not counted either way).
    """
    keys = ["prompt", "seed"]
    checks = list(RETAINED_CHECKS)
    dense = df[df["variant"] == "dense"].set_index(keys)[checks].astype(float)
    out = {}
    for name, rows in df.groupby("variant", sort=False):
        ref = dense.reindex(pd.MultiIndex.from_frame(rows[keys])).fillna(0.0).to_numpy()
        got = rows[checks].to_numpy(dtype=float)
        passed = ref.sum()  # 0 without a dense run too: its checks reindex to zeros
        out[name] = float((ref * got).sum() / passed) if passed else float("nan")
    return pd.Series(out)


def format_table(summary: pd.DataFrame) -> str:
    """The summary as a fixed-width text table (percentages for accuracies)."""
    cols = ["colour", "direction", "count", "all_ok", "retained", "colour_obj", "direction_obj", "flicker", "psnr_db",
            "ssim", "density", "wall_s", "speedup"]  # fmt: skip
    short = {"colour_obj": "col_obj", "direction_obj": "dir_obj"}
    width = max([16, *(len(str(n)) + 1 for n in summary.index)])
    head = f"{'variant':<{width}}" + "".join(f"{short.get(c, c):>10}" for c in cols)
    lines = [head]
    for name, row in summary.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            if pd.isna(v):
                cells.append(f"{'-':>10}")
            elif c in ("colour", "direction", "count", "all_ok", "retained", "colour_obj", "direction_obj"):
                cells.append(f"{v:>10.0%}")
            elif c == "speedup":
                cells.append(f"{v:>9.2f}x")
            else:
                cells.append(f"{v:>10.3f}" if c in ("ssim", "density", "flicker") else f"{v:>10.2f}")
        lines.append(f"{name:<{width}}" + "".join(cells))
    return "\n".join(lines)
