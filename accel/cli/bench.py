"""``bench-quality``: the synthetic-truth benchmark table."""

from __future__ import annotations

import argparse
import sys

from accel.cli.common import STORE_HELP, CliError, Formatter, quiet_loading, writable_output
from accel.cli.flags import add_sizes, preset_sizes
from accel.config import DEFAULT_MODEL


def add_parsers(sub) -> None:
    """The ``bench-quality`` subcommand."""
    bq = sub.add_parser(
        "bench-quality",
        help="score every method on held-out synthetic prompts (colour, direction, count) with speed",
        formatter_class=Formatter,
        description="Generate each variant (dense, every sparse attention with its +TMR / +EBC modes, the caches, "
        "the diffusers baselines: the registry's variants for the model) at its defaults on held-out procedural "
        "prompts and seeds, score the videos against the prompts with opencv (colour, direction, object count, "
        "flicker) and against the dense run of the same seed (PSNR, SSIM), and print one row per variant with wall "
        "time and speedup.",
        epilog="examples:\n  python -m accel bench-quality --prompts 4 --seeds 0,1\n"
        "  python -m accel bench-quality --model tiny-skyreels --variants dense,flowcache-slow,motioncache",
    )
    bq.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME|PATH", help=f"Model. Default: {DEFAULT_MODEL}.")
    bq.add_argument("--variants", metavar="A,B,...", help="Variants to run (dense is always run). Default: all "
                    "that apply to the model.")  # fmt: skip
    bq.add_argument("--prompts", type=int, default=8, metavar="N", help="Held-out prompts. Default: 8.")
    bq.add_argument("--seeds", default="0", metavar="S,S,...", help="Seeds per prompt. Default: 0.")
    add_sizes(bq)
    bq.add_argument("--csv", metavar="FILE", help="Also write every (variant, prompt, seed) row to this CSV.")
    bq.add_argument("--out-dir", metavar="ROOT", help=STORE_HELP)
    bq.set_defaults(func=cmd_bench_quality)


def cmd_bench_quality(args: argparse.Namespace) -> int:
    """``bench-quality``: the synthetic-truth benchmark table."""
    from accel.bench.quality import format_table, run_benchmark, summarize
    from accel.runs import RunStore

    csv = writable_output(args.csv, "--csv") if args.csv else None  # before the benchmark, not after it
    quiet_loading()
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise CliError(f"--seeds must be integers separated by commas, got {args.seeds!r}") from None
    sampling = {k: v for k, v in preset_sizes(args).items() if v is not None}
    names = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    rows = run_benchmark(args.model, names, args.prompts, seeds or [0], RunStore(args.out_dir), sampling,
                         log=lambda line: print(line, file=sys.stderr))  # fmt: skip
    if csv is not None:
        rows.to_csv(csv, index=False)
    print(format_table(summarize(rows)))
    return 0
