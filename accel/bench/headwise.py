"""Ablation of the head-wise adaptive add-ons: base, +TMR, +EBC, +TMR+EBC over XAttention and SVG2.

``python -m accel.bench.headwise`` generates a dense reference and every mode with the same prompt
and seed on the embedded model (or ``--model``), then prints one row per mode: fraction of head mask
predictions skipped, mask-prediction time and its share of the denoising time, mean density after
warm-up, PSNR/SSIM against the dense run, wall time and speedup. EBC uses a calibrated table:
``assets/tables/<model>-<method>.json`` when shipped, else ``--table-<method> PATH``. On CPU the
attention runs through the pure-torch reference, so wall times show overheads, not GPU speedups.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from accel import methods, models
from accel.config import DEFAULT_MODEL, RunConfig
from accel.forms import DEFAULT_PROMPT
from accel.paths import shipped_table
from accel.runner import generate
from accel.runs import Run, RunStore
from viz.compare import versus

MODES = {"base": {}, "+TMR": {"tmr": True}, "+EBC": {"ebc": True}, "+TMR+EBC": {"tmr": True, "ebc": True}}


def mode_settings(mode: str, table: Path | None) -> dict | None:
    """Settings of one mode, or None if it needs a table that is missing."""
    flags = MODES[mode]
    settings = {"tmr": flags.get("tmr", False)}
    if flags.get("ebc"):
        if table is None:
            return None
        settings["threshold_table"] = str(table)
    return settings


def row(name: str, run: Run, dense: Run) -> dict:
    """One printed row: mask-prediction work and time, density, and the run against the dense one."""
    m = run.metrics
    q = versus(dense, run)
    denoise = m["stages"]["denoise_s"]
    return {
        "mode": name,
        "skipped": m.get("mask_skip_frac", 0.0),
        "predict_s": m.get("mask_predict_s", 0.0),
        "predict_share": m.get("mask_predict_s", 0.0) / denoise if denoise else float("nan"),
        "density": m.get("density_mean_sparse", 1.0),
        "psnr": q["psnr_db"],
        "ssim": q["ssim"],
        "wall_s": q["wall_s"],
        "speedup": q["speedup_wall"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    headwise = list(methods.calibratable())  # the head-wise sparse methods: TMR and EBC apply to each
    parser.add_argument("--methods", nargs="+", default=headwise, choices=headwise)
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--device")
    parser.add_argument("--table", action="append", default=[], metavar="METHOD=PATH",
                        help="a calibrated threshold table per method (default: the shipped one)")  # fmt: skip
    parser.add_argument("--out-dir", type=Path, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    tables = {}
    for given in args.table:
        method, sep, path = given.partition("=")
        if not sep or method not in headwise:
            parser.error(f"--table takes METHOD=PATH with METHOD one of {', '.join(headwise)}, got {given!r}")
        tables[method] = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(args.out_dir or tmp)
        common = {
            "prompt": args.prompt,
            "model": args.model,
            "seed": args.seed,
            "steps": args.steps,
            "device": args.device,
        }
        dense = generate(RunConfig(method="dense", **common), store)
        rows = [row("dense", dense, dense)]
        for method in args.methods:
            table = tables.get(method) or shipped_table(models.resolve(args.model).name, method)
            for mode in MODES:
                settings = mode_settings(mode, table)
                if settings is None:
                    print(f"skipping {method} {mode}: no calibrated table (pass --table {method}=PATH)")
                    continue
                run = generate(RunConfig(method=method, settings=settings, **common), store)
                rows.append(row(f"{method} {mode}", run, dense))
        header = f"{'mode':<22} {'skipped':>8} {'predict s':>9} {'share':>6} {'density':>8} {'PSNR':>7} {'SSIM':>6}"
        print(f"{header} {'wall s':>7} {'speedup':>7}")
        for r in rows:
            print(
                f"{r['mode']:<22} {r['skipped']:>8.2f} {r['predict_s']:>9.3f} {r['predict_share']:>6.1%} "
                f"{r['density']:>8.3f} {r['psnr']:>7.2f} {r['ssim']:>6.4f} {r['wall_s']:>7.2f} {r['speedup']:>7.2f}"
            )


if __name__ == "__main__":
    main()
