"""Commands on the run store: ``compare``, ``breakdown``, ``report``, ``runs`` (no model is loaded)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from accel.cli.common import STORE_HELP, CliError, Formatter, as_float, fmt_num, label, load_run, writable_output
from accel.runs import Run

COMPARE_EXAMPLES = """\
examples:
  python -m accel compare 20250101-120000-dense-1a2b3c 20250101-120100-xattention-tau0.8-4d5e6f
  python -m accel compare runs/A runs/B --json > quality.json

RUN_A is the reference: PSNR/SSIM are of B against A, and speedup = A wall time / B wall time."""


def add_parsers(sub) -> None:
    """The ``compare``, ``breakdown``, ``report`` and ``runs`` subcommands."""
    cmp_ = sub.add_parser(
        "compare",
        help="compare two runs frame by frame (PSNR, SSIM, speedup)",
        formatter_class=Formatter,
        description="Compare the frames of two runs (same size and frame count): per-frame PSNR and SSIM "
        "of RUN_B against the reference RUN_A, their means, and the speedup of B over A.",
        epilog=COMPARE_EXAMPLES,
    )
    cmp_.add_argument("run_a", metavar="RUN_A", help="Reference run: a run id in the store or a run folder path.")
    cmp_.add_argument("run_b", metavar="RUN_B", help="Run to evaluate: a run id in the store or a run folder path.")
    cmp_.add_argument("--out-dir", metavar="ROOT", help=STORE_HELP)
    cmp_.add_argument(
        "--json",
        action="store_true",
        help='Print one JSON object instead of the table (infinite PSNR, for identical frames, is the string "inf").',
    )
    cmp_.set_defaults(func=cmd_compare)

    bd = sub.add_parser(
        "breakdown",
        help="where a profiled run's time went, beside a dense reference (Amdahl view)",
        formatter_class=Formatter,
        description="Per transformer call: mask prediction, sparse attention, dense attention, cache bookkeeping "
        "and the rest, plus VAE and text encoding, for RUN and the reference REF (both generated with --profile); "
        "then the attention speedup against the transformer and end-to-end speedups, with Amdahl's bound.",
        epilog="examples:\n  python -m accel breakdown SPARSE_RUN DENSE_RUN",
    )
    bd.add_argument("run", metavar="RUN", help="A profiled run: a run id in the store or a run folder path.")
    bd.add_argument("ref", metavar="REF", help="The profiled dense reference run.")
    bd.add_argument("--out-dir", metavar="ROOT", help=STORE_HELP)
    bd.set_defaults(func=cmd_breakdown)

    rep = sub.add_parser(
        "report",
        help="write one HTML file with a run's video and every figure of the app",
        formatter_class=Formatter,
        description="Write a self-contained HTML report of RUN (opens offline): the video, headline numbers, "
        "motion overlay and the figures of the app's tabs that apply to the run (sparsity, mask reuse, chunk "
        "cache, motion, quality and speed against the store's dense run of the same prompt and seed, profile).",
        epilog="examples:\n  python -m accel report RUN_ID\n  python -m accel report RUN_ID --out report.html",
    )
    rep.add_argument("run", metavar="RUN", help="A run id in the store or a run folder path.")
    rep.add_argument("--out", metavar="FILE", help="HTML file to write. Default: ROOT/reports/<run id>.html.")
    rep.add_argument("--out-dir", metavar="ROOT", help=STORE_HELP)
    rep.set_defaults(func=cmd_report)

    runs = sub.add_parser(
        "runs",
        help="list stored runs, newest first",
        formatter_class=Formatter,
        description="List the complete runs of a run store, newest first: id, method label and wall time.",
        epilog="examples:\n  python -m accel runs\n  python -m accel runs --out-dir /data/bench-runs",
    )
    runs.add_argument("--out-dir", metavar="ROOT", help=STORE_HELP)
    runs.set_defaults(func=cmd_runs)


def cmd_compare(args: argparse.Namespace) -> int:
    """``compare``: per-frame PSNR/SSIM of B against the reference A, and the speedup of B over A."""
    from accel.runs import RunStore, to_jsonable
    from viz import speed
    from viz.compare import frame_quality, speedup

    store = RunStore(args.out_dir)
    a, b = load_run(store, args.run_a), load_run(store, args.run_b)
    q = frame_quality(a, b)
    wall_a, wall_b = as_float(a.metrics.get("wall_s")), as_float(b.metrics.get("wall_s"))
    gain = speedup(a, b, "wall")
    # against a dense reference, how far to trust the speedup (viz.speed: load of both sides, work bound, re-timing)
    against_dense = a.config.get("method") == "dense" and b.config.get("method") != "dense"
    timing = speed.table_note(b, a.info()) if against_dense else None

    def side(run: Run, wall: float | None) -> dict[str, Any]:
        return {"run_id": run.run_id, "path": str(run.path), "label": label(run), "wall_s": wall}

    if args.json:
        result = {
            "reference": "a",
            "a": side(a, wall_a),
            "b": side(b, wall_b),
            "frames": [
                {"frame": i, "psnr": p, "ssim": s} for i, (p, s) in enumerate(zip(q["psnr"], q["ssim"], strict=True))
            ],
            "psnr_mean": q["psnr_mean"],
            "ssim_mean": q["ssim_mean"],
            "speedup": gain,
            "timing": timing,
        }
        print(json.dumps(to_jsonable(result), indent=2, allow_nan=False))
        return 0
    for name, run, wall in (("A (reference)", a, wall_a), ("B", b, wall_b)):
        wall_txt = f"{wall:.2f} s" if wall is not None else "unknown"
        print(f"{name:<14} {run.run_id}  [{label(run)}, wall {wall_txt}]")
    print()
    print(f"{'frame':>6}  {'PSNR dB':>9}  {'SSIM':>7}")
    for i, (p, s) in enumerate(zip(q["psnr"], q["ssim"], strict=True)):
        print(f"{i:>6}  {fmt_num(p, 2):>9}  {fmt_num(s, 4):>7}")
    print(f"{'mean':>6}  {fmt_num(q['psnr_mean'], 2):>9}  {fmt_num(q['ssim_mean'], 4):>7}")
    print()
    if gain is None:
        print("speedup: unknown (a run has no wall time)")
    else:
        print(f"speedup: {gain:.2f}x (wall time of reference A / B = {wall_a:.2f} s / {wall_b:.2f} s)")
    if timing:
        print(f"timing: {timing}")
    return 0


def cmd_breakdown(args: argparse.Namespace) -> int:
    """``breakdown``: the phase table of RUN vs REF and the Amdahl numbers."""
    from accel.runs import RunStore
    from profiling.breakdown import compare

    store = RunStore(args.out_dir)
    table, amdahl = compare(load_run(store, args.run), load_run(store, args.ref))
    print(f"{'phase':<22} {'reference':>10} {'run':>10}")
    for name, row in table.iterrows():
        print(f"{name:<22} {row['reference']:>10.3f} {row['run']:>10.3f}")
    print()
    for key, value in amdahl.items():
        print(f"{key:<26} {value:.3f}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """``report``: one HTML file with the run's video and figures."""
    from accel.runs import RunStore
    from viz.report import write_report

    store = RunStore(args.out_dir)
    run = load_run(store, args.run)
    out = Path(args.out) if args.out else store.root / "reports" / f"{run.run_id}.html"
    if out.suffix.lower() not in (".html", ".htm"):
        raise CliError(f"--out must name an .html file, got {out}")
    print(write_report(run, writable_output(str(out), "--out"), store))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    """``runs``: the store's complete runs, newest first; a damaged run is listed with a warning line."""
    from accel.runs import RunStore

    store = RunStore(args.out_dir)
    infos = store.list(damaged=True)
    if not infos:
        print(f"no runs in {store.root}", file=sys.stderr)
        return 0
    rows = []
    for info in infos:
        wall = as_float(info.metrics.get("wall_s"))
        text = "DAMAGED" if info.damaged else label(info)
        rows.append((info.run_id, text, f"{wall:.2f} s" if wall is not None else "-"))
    w_id = max(len("ID"), *(len(r[0]) for r in rows))
    w_label = max(len("METHOD"), *(len(r[1]) for r in rows))
    print(f"{'ID':<{w_id}}  {'METHOD':<{w_label}}  {'WALL':>9}")
    for run_id, text, wall in rows:
        print(f"{run_id:<{w_id}}  {text:<{w_label}}  {wall:>9}")
    for info in infos:
        if info.damaged:
            print(f"warning: run {info.run_id} is damaged ({info.damaged}); it is skipped", file=sys.stderr)
    return 0
