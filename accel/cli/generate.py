"""``generate`` and ``calibrate``: the commands that load a model."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys

from accel import budget, methods, retime
from accel.cli.common import (
    STORE_HELP,
    CliError,
    Formatter,
    as_float,
    label,
    load_run,
    quiet_loading,
    writable_output,
)
from accel.cli.flags import (
    add_diffusion_forcing,
    add_hardware,
    add_sampling,
    add_setting_flags,
    floats,
    method_settings,
    model_help,
    sampling_kwargs,
)
from accel.config import DEFAULT_MODEL, RunConfig
from accel.methods import settings_for

GENERATE_EXAMPLES = """\
examples:
  python -m accel generate --prompt "a red fox runs through snow"
  python -m accel generate --prompt "a red fox" --method xattention --tau 0.8 --warmup-steps 2
  python -m accel generate --prompt "a red fox" --method xattention --tau 0.9,0.8,0.8,0.7,0.9,0.9
  python -m accel generate --model wan2.1-1.3b --device cuda --prompt "a red fox" --method svg2 --top-p 0.9

The run folder path is printed on the first line of stdout; progress goes to stderr."""

CALIBRATE_EXAMPLES = """\
examples:
  python -m accel calibrate --method xattention
  python -m accel calibrate --method svg2 --prompts-file prompts.txt --out tables/svg2
  python -m accel generate --method xattention --threshold-table calibration/<folder>/table.json --prompt "a fox"

Writes table.json (per CFG branch, one threshold per layer and head, with the measured errors and
sparsities), probes.parquet and trajectories.safetensors into the output folder."""


def add_parsers(sub) -> None:
    """The ``generate``, ``calibrate`` and ``retime`` subcommands."""
    gen = sub.add_parser(
        "generate",
        help="generate one video and store it as a run",
        formatter_class=Formatter,
        description="Generate one video with the chosen attention method and save it as a run folder "
        "(config, metrics, video, frames, telemetry, masks). Sizes left unset use the model's defaults.",
        epilog=GENERATE_EXAMPLES,
    )
    gen.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME|PATH", help=model_help())
    gen.add_argument(
        "--method", default="dense", choices=methods.names(), help="Self-attention method. Default: dense."
    )
    gen.add_argument("--prompt", required=True, metavar="TEXT", help="Text prompt (required).")
    gen.add_argument("--negative-prompt", default="", metavar="TEXT", help="Negative prompt. Default: empty.")
    add_sampling(gen)
    gen.add_argument("--fps", type=int, default=16, metavar="N", help="Frame rate of the saved video. Default: 16.")
    gen.add_argument(
        "--repeats", type=int, default=1, metavar="N",
        help="Run the generation N times (same video) and report the median time and the spread; the run keeps the "
        "first pass's video and telemetry. Benchmarks use 3 or more. Default: 1.",
    )  # fmt: skip
    add_diffusion_forcing(gen)
    hw = gen.add_argument_group("hardware and output")
    add_hardware(hw)
    hw.add_argument(
        "--parallel", metavar="ulysses=N[,balance=auto|on|off][,rebalance=X]", default=None,
        help="Context parallelism over N processes (Wan2.1; dense and the sparse attention methods): diffusers' "
        "Ulysses plan, each rank attends H/N heads over every token. Launch with torchrun --nproc_per_node N -m accel "
        "generate ... (gloo on CPU, NCCL with one GPU per rank); rank 0 writes the run. balance: which heads a rank "
        "attends, per layer, evened out by their densities (auto, the default: on with a per-head table or TMR; "
        "off: contiguous ranges); rebalance: the imbalance (slowest rank over the mean) past which a layer's heads "
        "are re-assigned mid-run (default 1.1). Default: one process.",
    )  # fmt: skip
    hw.add_argument("--out-dir", metavar="ROOT", help=STORE_HELP)
    hw.add_argument(
        "--mask-budget-mb",
        type=float,
        default=None,
        metavar="MB",
        help="Most megabytes of packed attention masks kept per run (spread evenly over the steps). Default: 120.",
    )
    hw.add_argument("--no-masks", action="store_true", help="Keep no attention masks (telemetry is still recorded).")
    budget.add_limits(hw)
    hw.add_argument(
        "--profile",
        action="store_true",
        help="Profile 2 transformer calls (after 1 wait + 1 warm-up) with torch.profiler: trace.json.gz, tb/, tables.",
    )
    add_setting_flags(gen)
    gen.set_defaults(func=cmd_generate)

    cal = sub.add_parser(
        "calibrate",
        help="per-head thresholds under a sparsity budget (Error-guided Budgeted Calibration)",
        formatter_class=Formatter,
        description="Save dense trajectories on calibration prompts, probe every head at each candidate "
        "threshold (that head sparse, all others dense), measure the band-weighted spectral error and the "
        "head's sparsity, and solve the per-head assignment with a MILP under the budget 'mean sparsity >= "
        "that of the uniform reference threshold', per CFG branch.",
        epilog=CALIBRATE_EXAMPLES,
    )
    cal.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME|PATH", help=model_help())
    cal.add_argument("--method", default="xattention", choices=list(methods.calibratable()), help="Base sparse method.")
    cal.add_argument(
        "--prompt", action="append", metavar="TEXT", help="A calibration prompt (repeatable). Default: 4 built-in."
    )
    cal.add_argument("--prompts-file", metavar="FILE", help="A text file with one calibration prompt per line.")
    cal.add_argument("--negative-prompt", default="", metavar="TEXT", help="Negative prompt. Default: empty.")
    add_sampling(cal)
    ebc = cal.add_argument_group("calibration")
    ebc.add_argument(
        "--samples-per-prompt",
        type=int,
        default=4,
        metavar="N",
        help="Sampled steps per prompt, one per equal part of the sparse steps. Default: 4.",
    )
    ebc.add_argument(
        "--candidates",
        type=floats,
        default=None,
        metavar="T,T,...",
        help="Candidate thresholds per head. Default: the method's, 0.85,0.9,0.95 (SpargeAttn 0.95,0.98,0.99).",
    )
    ebc.add_argument(
        "--reference",
        type=float,
        default=None,
        metavar="T",
        help="Uniform threshold whose mean sparsity is the budget (one of the candidates). Default: the method's "
        "default threshold, 0.9 (SpargeAttn 0.98).",
    )
    ebc.add_argument(
        "--band-weights",
        type=floats,
        default=(1.0, 0.5, 0.01, 0.01),
        metavar="LL,LH,HL,HH",
        help="Spectral band weights (temporal x spatial). Default: 1,0.5,0.01,0.01.",
    )
    ebc.add_argument(
        "--max-probe-batch",
        type=int,
        default=16,
        metavar="N",
        help="Most probes in one batched forward (lower it if memory is short). Default: 16.",
    )
    hw = cal.add_argument_group("hardware and output")
    add_hardware(hw)
    hw.add_argument("--out", metavar="DIR", help="Output folder. Default: calibration/<model>-<method>-<time>.")
    add_setting_flags(cal)
    cal.set_defaults(func=cmd_calibrate)

    rt = sub.add_parser(
        "retime",
        help="time a run and dense alternately in one process: a speedup that machine load cannot fake",
        formatter_class=Formatter,
        description="Load RUN's model once and time dense and RUN's method alternately for --rounds rounds (the "
        "side that goes first alternates), as the run itself was timed; print both sides' medians and the ratio, "
        "and add them to the run (retimed.json): its headline and report then show that ratio.",
        epilog="examples:\n  python -m accel retime RUN_ID\n  python -m accel retime RUN_ID --rounds 5",
    )
    rt.add_argument("run", metavar="RUN", help="A method's run: a run id in the store or a run folder path.")
    rt.add_argument("--rounds", type=int, default=retime.ROUNDS, metavar="N",
                    help=f"Passes per side, 1 to {retime.MAX_ROUNDS}. Default: {retime.ROUNDS}.")  # fmt: skip
    rt.add_argument("--out-dir", metavar="ROOT", help=STORE_HELP)
    budget.add_limits(rt)
    rt.set_defaults(func=cmd_retime)


def cmd_retime(args: argparse.Namespace) -> int:
    """``retime``: both sides' median times, the ratio and the load over the whole re-timing."""
    from statistics import median

    from accel.runs import RunStore

    err = sys.stderr
    run = load_run(RunStore(args.out_dir), args.run)
    quiet_loading()
    result = retime.retime(
        run, args.rounds, lambda i, n, what: print(f"{what}: step {i}/{n}", file=err, flush=True),
        limits=budget.limits_from(args),
    )  # fmt: skip
    for side in retime.SIDES:
        walls = result["wall_s"][side]
        print(f"{'dense' if side == 'dense' else label(run):<40} wall {median(walls):.3f} s "
              f"({min(walls):.3f}-{max(walls):.3f}), denoise {median(result['denoise_s'][side]):.3f} s")  # fmt: skip
    ratio = {k: median(result[k]["dense"]) / median(result[k]["run"]) for k in ("wall_s", "denoise_s")}
    other = (result.get("load") or {}).get("other_cores")
    busy = f"; other processes kept {other:.1f} cores busy" if isinstance(other, (int, float)) else ""
    print(f"speedup over dense: {ratio['wall_s']:.2f}x wall, {ratio['denoise_s']:.2f}x denoise "
          f"({args.rounds} rounds interleaved in one process{busy})")  # fmt: skip
    return 0


def timing_spread(metrics: dict) -> str:
    """`` (median of N, min-max a-b s)`` for a run timed more than once, else empty."""
    walls = (metrics.get("timing") or {}).get("wall_s") or []
    if len(walls) < 2:
        return ""
    return f" (median of {len(walls)}, {min(walls):.2f}-{max(walls):.2f} s)"


def cmd_generate(args: argparse.Namespace) -> int:
    """``generate``: validate everything, run the pipeline, print the run folder and a summary."""
    from accel import models
    from accel.runs import RunStore
    from accel.telemetry import RecordPolicy

    settings = settings_for(args.method, method_settings(args.method, args))
    cfg = RunConfig(
        prompt=args.prompt,
        model=args.model,
        method=args.method,
        settings=settings,
        **sampling_kwargs(args),
        fps=args.fps,
        ar_step=args.ar_step,
        causal_block_size=args.causal_block_size,
        base_num_frames=args.base_num_frames,
        overlap_history=args.overlap_history,
        addnoise_condition=args.addnoise_condition,
        kv_commit=args.kv_commit,
        device=args.device,
        dtype=args.dtype,
        kernels=args.kernels,
        repeats=args.repeats,
        parallel=args.parallel,
    )
    policy = RecordPolicy(masks=not args.no_masks)
    if args.mask_budget_mb is not None:
        if not (math.isfinite(args.mask_budget_mb) and args.mask_budget_mb >= 0):
            raise CliError(f"--mask-budget-mb must be a number >= 0, got {args.mask_budget_mb}")
        policy = dataclasses.replace(policy, mask_budget_mb=args.mask_budget_mb)
    spec = models.resolve(cfg.model)  # fail on a bad model before anything heavy
    models.check_available(spec)
    full = cfg.resolve(spec.defaults)
    store = RunStore(args.out_dir)
    err = sys.stderr if os.environ.get("RANK", "0") == "0" else open(os.devnull, "w")  # noqa: SIM115 (one per rank)
    print(
        f"{cfg.label()} on {spec.name}: {full.width}x{full.height}, {full.frames} frames, {full.steps} steps",
        file=err,
        flush=True,
    )
    tty = err.isatty()

    def progress(i: int, n: int) -> None:
        lead = "\r" if tty else ""
        print(f"{lead}step {i}/{n}", end="" if tty and i < n else "\n", file=err, flush=True)

    quiet_loading()
    from accel.runner import generate

    try:
        run = generate(cfg, store, policy, progress, profile=args.profile, limits=budget.limits_from(args))
    finally:
        if cfg.parallel:
            from accel.parallel import close

            close()
    if run is None:  # a rank other than 0 of a --parallel run: rank 0 reports
        return 0
    m = run.metrics
    for text in m.get("warnings") or []:
        print(f"warning: {text}", file=err)
    stages = m.get("stages", {})
    parts = [f"wall {m.get('wall_s', float('nan')):.2f} s" + timing_spread(m)]
    if "denoise_s" in stages:
        parts.append(f"denoise {stages['denoise_s']:.2f} s")
    if "tokens" in m:
        parts.append(f"{m['tokens']} tokens")
    density = as_float(m.get("density_mean_sparse"))
    if density is not None and args.method != "dense":
        parts.append(f"mean density after warm-up {density:.3f}")
    print(run.path)
    print(f"{label(run)}: " + ", ".join(parts))
    return 0


def read_prompts(path: str) -> list[str]:
    p = os.path.expanduser(path)
    if not os.path.isfile(p):
        raise CliError(f"prompts file {path} does not exist")
    if os.path.getsize(p) > 2**20:
        raise CliError(f"prompts file {path} is larger than 1 MiB")
    try:
        with open(p, encoding="utf-8") as fh:
            prompts = [line.strip() for line in fh if line.strip()]
    except UnicodeDecodeError as exc:
        raise CliError(f"prompts file {path} is not UTF-8 text (byte {exc.start}): one prompt per line") from None
    except OSError as exc:
        raise CliError(f"prompts file {path} cannot be read: {exc.strerror or exc}") from None
    if not prompts:
        raise CliError(f"prompts file {path} has no prompts")
    return prompts


def cmd_calibrate(args: argparse.Namespace) -> int:
    """``calibrate``: write a per-head threshold table for ``--method`` on ``--model``."""
    import time

    from accel import models
    from accel.ebc.spec import CalibrationSpec, default_prompts

    prompts = list(args.prompt or [])
    if args.prompts_file:
        prompts += read_prompts(args.prompts_file)
    prompts = prompts or list(default_prompts(args.model))
    base = RunConfig(
        prompt=prompts[0],
        model=args.model,
        method=args.method,
        settings=settings_for(args.method, method_settings(args.method, args)),
        **sampling_kwargs(args),
        device=args.device,
        dtype=args.dtype,
        kernels=args.kernels,
    )
    spec = CalibrationSpec(
        base=base,
        prompts=tuple(prompts),
        samples_per_prompt=args.samples_per_prompt,
        candidates=args.candidates,
        reference=args.reference,
        band_weights=args.band_weights,
        max_probe_batch=args.max_probe_batch,
    )
    mspec = models.resolve(spec.model)
    out = args.out or os.path.join(
        "calibration", f"{os.path.basename(mspec.name.rstrip('/'))}-{spec.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    writable_output(out, "--out", folder=True)  # before the trajectories, not after them
    quiet_loading()
    from accel.ebc.calibrate import calibrate

    path = calibrate(spec, out, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    with open(path, encoding="utf-8") as fh:
        table = json.load(fh)
    print(path)
    for branch, entry in table["branches"].items():
        print(
            f"{branch}: mean sparsity {entry['mean_sparsity']:.4f} (budget {entry['min_sparsity']:.4f}), "
            f"summed error {entry['objective']:.4g} vs uniform {spec.reference}: {entry['uniform_objective']:.4g}"
        )
    return 0
