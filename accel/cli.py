"""Command line: ``python -m accel generate | compare | runs``.

Method flags (``--tau``, ``--stride``, ...) are built from the settings dataclasses in
:mod:`accel.config`, so a new setting shows up here with its help text and default. Errors the user
can act on (bad settings, missing models, unknown runs) print one ``error: ...`` line and exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from accel import methods
from accel.config import DEFAULT_MODEL, RunConfig, settings_for
from accel.errors import UserError, one_line

if TYPE_CHECKING:
    from accel.runs import Run, RunInfo, RunStore

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
SETTING_PREFIX = "setting_"

GENERATE_EXAMPLES = """\
examples:
  python -m accel generate --prompt "a red fox runs through snow"
  python -m accel generate --prompt "a red fox" --method xattention --tau 0.8 --warmup-steps 2
  python -m accel generate --prompt "a red fox" --method xattention --tau 0.9,0.8,0.8,0.7,0.9,0.9
  python -m accel generate --model wan2.1-1.3b --device cuda --prompt "a red fox" --method svg2 --top-p 0.9

The run folder path is printed on the first line of stdout; progress goes to stderr."""

COMPARE_EXAMPLES = """\
examples:
  python -m accel compare 20250101-120000-dense-1a2b3c 20250101-120100-xattention-tau0.8-4d5e6f
  python -m accel compare runs/A runs/B --json > quality.json

RUN_A is the reference: PSNR/SSIM are of B against A, and speedup = A wall time / B wall time."""


class CliError(UserError, ValueError):
    """Bad command-line input detected by the CLI itself."""


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are a single ``error: ...`` line (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {message} (see '{self.prog} --help')\n")


class _Formatter(argparse.HelpFormatter):
    """Wraps descriptions line by line but keeps indented lines (examples) and blank lines as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines = []
        for line in text.splitlines():
            if not line.strip() or line.startswith(" "):
                lines.append(indent + line)
            else:
                lines.append(
                    textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False)
                )
        return "\n".join(lines)

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


# -- method settings as flags ------------------------------------------------------------------


@dataclasses.dataclass
class _SettingFlag:
    """One ``--flag`` serving the settings field ``name`` of one or more methods."""

    name: str
    parse: Callable[[str], Any]
    metavar: str
    help: str
    methods: list[str] = dataclasses.field(default_factory=list)
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _scalar(kind: type, text: str) -> Any:
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(text)
    return kind(text)


def _value_parser(tp: Any) -> tuple[Callable[[str], Any], str]:
    """A string parser and metavar for a settings field type (int, float, bool, optional, tuple of scalars)."""
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    optional = type(None) in args
    scalars = [a for a in args if a in (int, float, bool, str)]
    seqs = [typing.get_args(a)[0] for a in args if typing.get_origin(a) in (tuple, list)]
    if not scalars and not seqs:
        raise TypeError(f"no command-line parser for settings type {tp!r}")
    scalar = scalars[0] if scalars else None
    metavar = (scalar or seqs[0]).__name__.upper()
    if seqs:
        metavar = f"{metavar}[,{seqs[0].__name__.upper()}...]" if scalar else f"{metavar},..."
    if optional:
        metavar += "|none"
    expected = {int: "an integer", float: "a number", bool: "true or false", str: "a path"}

    def parse(text: str) -> Any:
        s = text.strip()
        if optional and s.lower() in ("none", ""):
            return None
        try:
            if seqs and ("," in s or scalar is None):
                return tuple(_scalar(seqs[0], part.strip()) for part in s.split(",") if part.strip())
            return _scalar(scalar, s)
        except ValueError:
            what = expected[scalar or seqs[0]]
            if seqs:
                what += f" or a comma-separated list of {expected[seqs[0]].split(' ', 1)[1]}s"
            if optional:
                what += " or 'none'"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None

    return parse, metavar


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def setting_flags() -> dict[str, _SettingFlag]:
    """One flag per settings field name across all methods (a shared name serves every method that has it)."""
    flags: dict[str, _SettingFlag] = {}
    for method, cls in ((name, m.settings) for name, m in methods.REGISTRY.items()):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name not in flags:
                parse, metavar = _value_parser(hints[f.name])
                flags[f.name] = _SettingFlag(f.name, parse, metavar, f.metadata.get("help", ""))
            flags[f.name].methods.append(method)
            flags[f.name].defaults[method] = _field_default(f)
    return flags


def _fmt_default(value: Any) -> str:
    if value is None:
        return "none (model default)"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    flags = setting_flags()
    groups: dict[str, argparse._ArgumentGroup] = {}
    for flag in flags.values():
        owner = flag.methods[0]
        if owner not in groups:
            cls = methods.get(owner).settings
            doc = (cls.__doc__ or "").strip().splitlines()[0]
            groups[owner] = parser.add_argument_group(f"{owner} settings", f"{doc} Used with --method {owner}.")
        if len(flag.methods) == 1:
            default = _fmt_default(flag.defaults[owner])
            also = ""
        else:
            default = ", ".join(f"{_fmt_default(v)} ({m})" for m, v in flag.defaults.items())
            also = f" [methods: {', '.join(flag.methods)}]"
        groups[owner].add_argument(
            flag.flag,
            dest=SETTING_PREFIX + flag.name,
            type=flag.parse,
            metavar=flag.metavar,
            default=argparse.SUPPRESS,
            help=f"{flag.help} Default: {default}.{also}".replace("%", "%%"),
        )


def method_settings(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line for ``method``; a flag of another method is an error."""
    flags = setting_flags()
    given = {k[len(SETTING_PREFIX) :]: v for k, v in vars(args).items() if k.startswith(SETTING_PREFIX)}
    wrong = [name for name in given if method not in flags[name].methods]
    if wrong:
        parts = [f"{flags[n].flag} is a setting of {' and '.join(flags[n].methods)}" for n in wrong]
        raise CliError(f"{'; '.join(parts)}, not of --method {method}")
    return given


# -- parser ------------------------------------------------------------------------------------


def _model_help() -> str:
    from accel.models import ALIASES, REGISTRY

    aliases: dict[str, list[str]] = {}
    for alias, target in ALIASES.items():
        aliases.setdefault(target, []).append(alias)
    names = [f"{name} (alias {', '.join(aliases[name])})" if name in aliases else name for name in REGISTRY]
    return (
        f"Model: a registered name ({'; '.join(names)}), a local diffusers folder holding model_index.json, "
        "or a hub id org/name (taken from the local cache, downloaded unless HF_HUB_OFFLINE=1). "
        f"Default: {DEFAULT_MODEL}, the embedded pocket model trained on procedural clips (runs anywhere)."
    )


def _defaults_help() -> str:
    from accel.models import REGISTRY

    seen: dict[str, list[str]] = {}
    for name, spec in REGISTRY.items():
        d = spec.defaults
        text = f"{d['width']}x{d['height']}, {d['frames']} frames, {d['steps']} steps, guidance {d['guidance']}"
        seen.setdefault(text, []).append(name)
    listed = "; ".join(f"{' and '.join(names)}: {text}" for text, names in seen.items())
    return (
        f"Each option left unset takes the model's default ({listed}; unregistered local folders and hub ids: "
        "those of their family, Wan2.1 480p or SkyReels-V2 540p)."
    )


def _prog() -> str:
    return "accel" if os.path.basename(sys.argv[0] or "") == "accel" else "python -m accel"


def build_parser() -> argparse.ArgumentParser:
    """The ``accel`` argument parser with its three subcommands."""
    fmt = _Formatter
    parser = _Parser(
        prog=_prog(),
        formatter_class=fmt,
        description="Lab bench for training-free acceleration of video diffusion transformers (Wan2.1): "
        "generate videos with dense or sparse attention, then compare runs for quality and speed.",
        epilog="examples:\n"
        '  python -m accel generate --prompt "a red fox" --steps 10\n'
        '  python -m accel generate --prompt "a red fox" --steps 10 --method xattention --tau 0.8\n'
        "  python -m accel runs\n"
        "  python -m accel compare DENSE_RUN_ID SPARSE_RUN_ID\n\n"
        "Run 'python -m accel COMMAND --help' for the options of each command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    store_help = "Run store folder. Default: $ACCEL_RUNS_DIR if set, else ./runs."

    gen = sub.add_parser(
        "generate",
        help="generate one video and store it as a run",
        formatter_class=fmt,
        description="Generate one video with the chosen attention method and save it as a run folder "
        "(config, metrics, video, frames, telemetry, masks). Sizes left unset use the model's defaults.",
        epilog=GENERATE_EXAMPLES,
    )
    gen.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME|PATH", help=_model_help())
    gen.add_argument(
        "--method", default="dense", choices=list(methods.REGISTRY), help="Self-attention method. Default: dense."
    )
    gen.add_argument("--prompt", required=True, metavar="TEXT", help="Text prompt (required).")
    gen.add_argument("--negative-prompt", default="", metavar="TEXT", help="Negative prompt. Default: empty.")
    _add_sampling(gen)
    gen.add_argument("--fps", type=int, default=16, metavar="N", help="Frame rate of the saved video. Default: 16.")
    _add_diffusion_forcing(gen)
    hw = gen.add_argument_group("hardware and output")
    _add_hardware(hw)
    hw.add_argument("--out-dir", metavar="ROOT", help=store_help)
    hw.add_argument(
        "--mask-budget-mb",
        type=float,
        default=None,
        metavar="MB",
        help="Most megabytes of packed attention masks kept per run (spread evenly over the steps). Default: 120.",
    )
    hw.add_argument("--no-masks", action="store_true", help="Keep no attention masks (telemetry is still recorded).")
    hw.add_argument(
        "--profile",
        action="store_true",
        help="Profile 2 transformer calls (after 1 wait + 1 warm-up) with torch.profiler: trace.json.gz, tb/, tables.",
    )
    _add_setting_flags(gen)
    gen.set_defaults(func=cmd_generate)

    _add_calibrate(sub)

    cmp_ = sub.add_parser(
        "compare",
        help="compare two runs frame by frame (PSNR, SSIM, speedup)",
        formatter_class=fmt,
        description="Compare the frames of two runs (same size and frame count): per-frame PSNR and SSIM "
        "of RUN_B against the reference RUN_A, their means, and the speedup of B over A.",
        epilog=COMPARE_EXAMPLES,
    )
    cmp_.add_argument("run_a", metavar="RUN_A", help="Reference run: a run id in the store or a run folder path.")
    cmp_.add_argument("run_b", metavar="RUN_B", help="Run to evaluate: a run id in the store or a run folder path.")
    cmp_.add_argument("--out-dir", metavar="ROOT", help=store_help)
    cmp_.add_argument(
        "--json",
        action="store_true",
        help='Print one JSON object instead of the table (infinite PSNR, for identical frames, is the string "inf").',
    )
    cmp_.set_defaults(func=cmd_compare)

    bd = sub.add_parser(
        "breakdown",
        help="where a profiled run's time went, beside a dense reference (Amdahl view)",
        formatter_class=fmt,
        description="Per transformer call: mask prediction, sparse attention, dense attention, cache bookkeeping "
        "and the rest, plus VAE and text encoding, for RUN and the reference REF (both generated with --profile); "
        "then the attention speedup against the transformer and end-to-end speedups, with Amdahl's bound.",
        epilog="examples:\n  python -m accel breakdown SPARSE_RUN DENSE_RUN",
    )
    bd.add_argument("run", metavar="RUN", help="A profiled run: a run id in the store or a run folder path.")
    bd.add_argument("ref", metavar="REF", help="The profiled dense reference run.")
    bd.add_argument("--out-dir", metavar="ROOT", help=store_help)
    bd.set_defaults(func=cmd_breakdown)

    bq = sub.add_parser(
        "bench-quality",
        help="score every method on held-out synthetic prompts (colour, direction, count) with speed",
        formatter_class=fmt,
        description="Generate each variant (dense, XAttention, SVG2, +TMR, +EBC, the chunk caches on SkyReels-V2, "
        "the diffusers baselines) at its defaults on held-out procedural prompts and seeds, score the videos "
        "against the prompts with opencv (colour, direction, object count, flicker) and against the dense run "
        "of the same seed (PSNR, SSIM), and print one row per variant with wall time and speedup.",
        epilog="examples:\n  python -m accel bench-quality --prompts 4 --seeds 0,1\n"
        "  python -m accel bench-quality --model tiny-skyreels --variants dense,flowcache-slow,motioncache",
    )
    bq.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME|PATH", help=f"Model. Default: {DEFAULT_MODEL}.")
    bq.add_argument("--variants", metavar="A,B,...", help="Variants to run (dense is always run). Default: all "
                    "that apply to the model.")  # fmt: skip
    bq.add_argument("--prompts", type=int, default=8, metavar="N", help="Held-out prompts. Default: 8.")
    bq.add_argument("--seeds", default="0", metavar="S,S,...", help="Seeds per prompt. Default: 0.")
    _add_sizes(bq)
    bq.add_argument("--csv", metavar="FILE", help="Also write every (variant, prompt, seed) row to this CSV.")
    bq.add_argument("--out-dir", metavar="ROOT", help=store_help)
    bq.set_defaults(func=cmd_bench_quality)

    rep = sub.add_parser(
        "report",
        help="write one HTML file with a run's video and every figure of the app",
        formatter_class=fmt,
        description="Write a self-contained HTML report of RUN (opens offline): the video, headline numbers, "
        "motion overlay and the figures of the app's tabs that apply to the run (sparsity, mask reuse, chunk "
        "cache, motion, quality and speed against the store's dense run of the same prompt and seed, profile).",
        epilog="examples:\n  python -m accel report RUN_ID\n  python -m accel report RUN_ID --out report.html",
    )
    rep.add_argument("run", metavar="RUN", help="A run id in the store or a run folder path.")
    rep.add_argument("--out", metavar="FILE", help="HTML file to write. Default: ROOT/reports/<run id>.html.")
    rep.add_argument("--out-dir", metavar="ROOT", help=store_help)
    rep.set_defaults(func=cmd_report)

    runs = sub.add_parser(
        "runs",
        help="list stored runs, newest first",
        formatter_class=fmt,
        description="List the complete runs of a run store, newest first: id, method label and wall time.",
        epilog="examples:\n  python -m accel runs\n  python -m accel runs --out-dir /data/bench-runs",
    )
    runs.add_argument("--out-dir", metavar="ROOT", help=store_help)
    runs.set_defaults(func=cmd_runs)
    return parser


SIZE_FIELDS = ("height", "width", "frames", "steps", "guidance")


def _add_sizes(parser: argparse.ArgumentParser) -> None:
    """The sampling sizes (unset = the model's defaults): generate, calibrate and bench-quality."""
    size = parser.add_argument_group("sampling", _defaults_help())
    size.add_argument(
        "--height", type=int, metavar="PX", help="Height in pixels, a multiple of 16. Default: the model's."
    )
    size.add_argument(
        "--width", type=int, metavar="PX", help="Width in pixels, a multiple of 16. Default: the model's."
    )
    size.add_argument(
        "--frames", type=int, metavar="N", help="Number of frames, 4k+1 (5, 9, ..., 81). Default: the model's."
    )
    size.add_argument("--steps", type=int, metavar="N", help="Denoising steps. Default: the model's.")
    size.add_argument(
        "--guidance",
        type=float,
        metavar="SCALE",
        help="Classifier-free guidance scale (0 = off). Default: the model's.",
    )


def _add_sampling(parser: argparse.ArgumentParser) -> None:
    """Seed and the sampling sizes shared by generate and calibrate (unset = the model's defaults)."""
    parser.add_argument(
        "--seed", type=int, default=0, metavar="INT", help="Random seed of the initial noise. Default: 0."
    )
    _add_sizes(parser)


def _add_diffusion_forcing(parser: argparse.ArgumentParser) -> None:
    df = parser.add_argument_group("diffusion forcing (SkyReels-V2 models; unset = the model's default)")
    flags = (
        ("--ar-step", int, "N", "Steps each chunk lags the previous one (0 = synchronous)."),
        ("--causal-block-size", int, "N", "Latent frames per chunk; a short last chunk is denoised too."),
        ("--base-num-frames", int, "N", "Frames of one window; longer videos go in segments with --overlap-history."),
        ("--overlap-history", int, "N", "Frames each long-video segment takes over from the previous one."),
        ("--addnoise-condition", float, "T", "Noise level (timestep) added to a segment's prefix, e.g. 20."),
    )
    for flag, kind, metavar, text in flags:
        df.add_argument(flag, type=kind, metavar=metavar, help=text)


def _add_hardware(group) -> None:
    group.add_argument(
        "--device", metavar="DEVICE", help="Torch device, e.g. cpu, cuda, cuda:1. Default: cuda if available, else cpu."
    )
    group.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        help="Transformer dtype (the VAE stays float32). Default: bfloat16 on CUDA, float32 on CPU.",
    )


CALIBRATE_EXAMPLES = """\
examples:
  python -m accel calibrate --method xattention
  python -m accel calibrate --method svg2 --prompts-file prompts.txt --out tables/svg2
  python -m accel generate --method xattention --threshold-table calibration/<folder>/table.json --prompt "a fox"

Writes table.json (per CFG branch, one threshold per layer and head, with the measured errors and
sparsities), probes.parquet and trajectories.safetensors into the output folder."""


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _add_calibrate(sub) -> None:
    cal = sub.add_parser(
        "calibrate",
        help="per-head thresholds under a sparsity budget (Error-guided Budgeted Calibration)",
        formatter_class=_Formatter,
        description="Save dense trajectories on calibration prompts, probe every head at each candidate "
        "threshold (that head sparse, all others dense), measure the band-weighted spectral error and the "
        "head's sparsity, and solve the per-head assignment with a MILP under the budget 'mean sparsity >= "
        "that of the uniform reference threshold', per CFG branch.",
        epilog=CALIBRATE_EXAMPLES,
    )
    cal.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME|PATH", help=_model_help())
    cal.add_argument("--method", default="xattention", choices=["xattention", "svg2"], help="Base sparse method.")
    cal.add_argument(
        "--prompt", action="append", metavar="TEXT", help="A calibration prompt (repeatable). Default: 4 built-in."
    )
    cal.add_argument("--prompts-file", metavar="FILE", help="A text file with one calibration prompt per line.")
    cal.add_argument("--negative-prompt", default="", metavar="TEXT", help="Negative prompt. Default: empty.")
    _add_sampling(cal)
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
        type=_floats,
        default=(0.85, 0.90, 0.95),
        metavar="T,T,...",
        help="Candidate thresholds per head. Default: 0.85,0.9,0.95.",
    )
    ebc.add_argument(
        "--reference",
        type=float,
        default=0.90,
        metavar="T",
        help="Uniform threshold whose mean sparsity is the budget (one of the candidates). Default: 0.9.",
    )
    ebc.add_argument(
        "--band-weights",
        type=_floats,
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
    _add_hardware(hw)
    hw.add_argument("--out", metavar="DIR", help="Output folder. Default: calibration/<model>-<method>-<time>.")
    _add_setting_flags(cal)
    cal.set_defaults(func=cmd_calibrate)


# -- commands ----------------------------------------------------------------------------------


def _quiet_loading() -> None:
    """Silence the library progress bars shown while a model loads; the CLI prints its own progress."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _sampling_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling fields generate and calibrate both pass on (unset ones mean the model's defaults)."""
    return {name: getattr(args, name) for name in ("negative_prompt", "seed", *SIZE_FIELDS)}


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
        **_sampling_kwargs(args),
        fps=args.fps,
        ar_step=args.ar_step,
        causal_block_size=args.causal_block_size,
        base_num_frames=args.base_num_frames,
        overlap_history=args.overlap_history,
        addnoise_condition=args.addnoise_condition,
        device=args.device,
        dtype=args.dtype,
    )
    policy = RecordPolicy(masks=not args.no_masks)
    if args.mask_budget_mb is not None:
        if not (math.isfinite(args.mask_budget_mb) and args.mask_budget_mb >= 0):
            raise CliError(f"--mask-budget-mb must be a number >= 0, got {args.mask_budget_mb}")
        policy = dataclasses.replace(policy, mask_budget_mb=args.mask_budget_mb)
    spec = models.resolve(cfg.model)  # fail on a bad model before anything heavy
    full = cfg.resolve(spec.defaults)
    store = RunStore(args.out_dir)
    err = sys.stderr
    print(
        f"{cfg.label()} on {spec.name}: {full.width}x{full.height}, {full.frames} frames, {full.steps} steps",
        file=err,
        flush=True,
    )
    tty = err.isatty()

    def progress(i: int, n: int) -> None:
        lead = "\r" if tty else ""
        print(f"{lead}step {i}/{n}", end="" if tty and i < n else "\n", file=err, flush=True)

    _quiet_loading()
    from accel.runner import generate

    run = generate(cfg, store, policy, progress, profile=args.profile)
    m = run.metrics
    stages = m.get("stages", {})
    parts = [f"wall {m.get('wall_s', float('nan')):.2f} s"]
    if "denoise_s" in stages:
        parts.append(f"denoise {stages['denoise_s']:.2f} s")
    if "tokens" in m:
        parts.append(f"{m['tokens']} tokens")
    density = _float(m.get("density_mean_sparse"))
    if density is not None and args.method != "dense":
        parts.append(f"mean density after warm-up {density:.3f}")
    print(run.path)
    print(f"{_label(run)}: " + ", ".join(parts))
    return 0


def _read_prompts(path: str) -> list[str]:
    p = os.path.expanduser(path)
    if not os.path.isfile(p):
        raise CliError(f"prompts file {path} does not exist")
    if os.path.getsize(p) > 2**20:
        raise CliError(f"prompts file {path} is larger than 1 MiB")
    with open(p, encoding="utf-8") as fh:
        prompts = [line.strip() for line in fh if line.strip()]
    if not prompts:
        raise CliError(f"prompts file {path} has no prompts")
    return prompts


def cmd_calibrate(args: argparse.Namespace) -> int:
    """``calibrate``: write a per-head threshold table for ``--method`` on ``--model``."""
    import time

    from accel import models
    from accel.attention.calibrate import DEFAULT_PROMPTS, CalibrationSpec

    prompts = list(args.prompt or [])
    if args.prompts_file:
        prompts += _read_prompts(args.prompts_file)
    base = RunConfig(
        prompt=(prompts or DEFAULT_PROMPTS)[0],
        model=args.model,
        method=args.method,
        settings=settings_for(args.method, method_settings(args.method, args)),
        **_sampling_kwargs(args),
        device=args.device,
        dtype=args.dtype,
    )
    spec = CalibrationSpec(
        base=base,
        prompts=tuple(prompts) or DEFAULT_PROMPTS,
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
    _quiet_loading()
    from accel.attention.calibrate import calibrate

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


def _load_run(store: RunStore, ref: str) -> Run:
    """A run by id in ``store`` or by folder path (anything with a path separator, or an existing folder)."""
    if os.sep in ref or "/" in ref or (not (store.root / ref).exists() and os.path.isdir(ref)):
        return store.load(os.path.abspath(os.path.expanduser(ref)))
    return store.load(ref)


def _label(run: Run | RunInfo) -> str:
    """The method label of a :class:`Run` or :class:`RunInfo` (from its config, else from its id)."""
    return str(run.config.get("label") or run.label)


def _fmt_num(value: float, digits: int) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else str(value)


def cmd_compare(args: argparse.Namespace) -> int:
    """``compare``: per-frame PSNR/SSIM of B against the reference A, and the speedup of B over A."""
    from accel.metrics import compare_videos
    from accel.runs import RunStore, to_jsonable

    store = RunStore(args.out_dir)
    a, b = _load_run(store, args.run_a), _load_run(store, args.run_b)
    fa, fb = a.frames(), b.frames()
    if fa.shape != fb.shape:
        raise CliError(
            f"frame shapes differ: A {a.run_id} has {fa.shape}, B {b.run_id} has {fb.shape} (F, H, W, C); "
            "compare runs of the same size and frame count"
        )
    q = compare_videos(fa, fb)
    wall_a, wall_b = _float(a.metrics.get("wall_s")), _float(b.metrics.get("wall_s"))
    speedup = wall_a / wall_b if wall_a is not None and wall_b else None

    def side(run: Run, wall: float | None) -> dict[str, Any]:
        return {"run_id": run.run_id, "path": str(run.path), "label": _label(run), "wall_s": wall}

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
            "speedup": speedup,
        }
        print(json.dumps(to_jsonable(result), indent=2, allow_nan=False))
        return 0
    for name, run, wall in (("A (reference)", a, wall_a), ("B", b, wall_b)):
        wall_txt = f"{wall:.2f} s" if wall is not None else "unknown"
        print(f"{name:<14} {run.run_id}  [{_label(run)}, wall {wall_txt}]")
    print()
    print(f"{'frame':>6}  {'PSNR dB':>9}  {'SSIM':>7}")
    for i, (p, s) in enumerate(zip(q["psnr"], q["ssim"], strict=True)):
        print(f"{i:>6}  {_fmt_num(p, 2):>9}  {_fmt_num(s, 4):>7}")
    print(f"{'mean':>6}  {_fmt_num(q['psnr_mean'], 2):>9}  {_fmt_num(q['ssim_mean'], 4):>7}")
    print()
    if speedup is None:
        print("speedup: unknown (a run has no wall time)")
    else:
        print(f"speedup: {speedup:.2f}x (wall time of reference A / B = {wall_a:.2f} s / {wall_b:.2f} s)")
    return 0


def cmd_breakdown(args: argparse.Namespace) -> int:
    """``breakdown``: the phase table of RUN vs REF and the Amdahl numbers."""
    from accel.runs import RunStore
    from profiling.breakdown import compare

    store = RunStore(args.out_dir)
    table, amdahl = compare(_load_run(store, args.run), _load_run(store, args.ref))
    print(f"{'phase':<22} {'reference':>10} {'run':>10}")
    for name, row in table.iterrows():
        print(f"{name:<22} {row['reference']:>10.3f} {row['run']:>10.3f}")
    print()
    for key, value in amdahl.items():
        print(f"{key:<26} {value:.3f}")
    return 0


def cmd_bench_quality(args: argparse.Namespace) -> int:
    """``bench-quality``: the synthetic-truth benchmark table."""
    from accel.bench.quality import format_table, run_benchmark, summarize
    from accel.runs import RunStore

    _quiet_loading()
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise CliError(f"--seeds must be integers separated by commas, got {args.seeds!r}") from None
    sampling = {k: getattr(args, k) for k in SIZE_FIELDS if getattr(args, k) is not None}
    names = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    rows = run_benchmark(args.model, names, args.prompts, seeds or [0], RunStore(args.out_dir), sampling,
                         log=lambda line: print(line, file=sys.stderr))  # fmt: skip
    if args.csv:
        rows.to_csv(args.csv, index=False)
    print(format_table(summarize(rows)))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """``report``: one HTML file with the run's video and figures."""
    from accel.runs import RunStore
    from viz.report import write_report

    store = RunStore(args.out_dir)
    run = _load_run(store, args.run)
    out = Path(args.out) if args.out else store.root / "reports" / f"{run.run_id}.html"
    if out.suffix.lower() not in (".html", ".htm"):
        raise CliError(f"--out must name an .html file, got {out}")
    print(write_report(run, out, store))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    """``runs``: the store's complete runs, newest first."""
    from accel.runs import RunStore

    store = RunStore(args.out_dir)
    infos = store.list()
    if not infos:
        print(f"no runs in {store.root}", file=sys.stderr)
        return 0
    rows = []
    for info in infos:
        wall = _float(info.metrics.get("wall_s"))
        rows.append((info.run_id, _label(info), f"{wall:.2f} s" if wall is not None else "-"))
    w_id = max(len("ID"), *(len(r[0]) for r in rows))
    w_label = max(len("METHOD"), *(len(r[1]) for r in rows))
    print(f"{'ID':<{w_id}}  {'METHOD':<{w_label}}  {'WALL':>9}")
    for run_id, label, wall in rows:
        print(f"{run_id:<{w_id}}  {label:<{w_label}}  {wall:>9}")
    return 0


# -- entry point -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(None if argv is None else list(argv))
        except SystemExit as exc:  # --help (0) or a usage error (2), already printed
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE
        return int(args.func(args))
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # stdout closed early, e.g. piped into head
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except UserError as exc:  # anything else is a bug or a broken environment: its traceback is kept
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
