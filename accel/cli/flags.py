"""Command-line flags built from the settings (every method's fields) and the shared sampling options."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from accel import methods
from accel.cli.common import CliError
from accel.config import DEFAULT_MODEL, KERNEL_BACKENDS
from accel.errors import ConfigError
from accel.fields import FieldSpec, all_field_specs
from accel.models import SIZE_PRESETS
from accel.settings import COMMIT_MODES

SETTING_PREFIX = "setting_"
SIZE_FIELDS = ("height", "width", "frames", "steps", "guidance")


@dataclass
class SettingFlag:
    """One ``--flag`` serving the settings field ``name`` of one or more methods."""

    spec: FieldSpec  # of the first method that has the field
    methods: list[str] = field(default_factory=list)
    defaults: dict[str, Any] = field(default_factory=dict)
    helps: dict[str, str] = field(default_factory=dict)  # each method's help of the field

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def flag(self) -> str:
        return self.spec.flag

    def parse(self, text: str) -> Any:
        """argparse's view of :meth:`FieldSpec.parse`: a bad value is an ``ArgumentTypeError`` with its message."""
        try:
            return self.spec.parse(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None


def setting_flags() -> dict[str, SettingFlag]:
    """One flag per settings field name across all methods (a shared name serves every method that has it)."""
    flags: dict[str, SettingFlag] = {}
    for spec in all_field_specs():
        flag = flags.setdefault(spec.name, SettingFlag(spec))
        flag.methods.append(spec.method)
        flag.defaults[spec.method] = spec.default
        flag.helps[spec.method] = spec.help
    return flags


def flag_help(flag: SettingFlag) -> str:
    """The flag's help: its one text with each method's default, or each method's own help where they differ."""
    if len(flag.methods) == 1:
        return f"{flag.spec.help} Default: {flag.spec.shown(flag.defaults[flag.methods[0]])}."
    if len(set(flag.helps.values())) == 1:
        default = ", ".join(f"{flag.spec.shown(v)} ({m})" for m, v in flag.defaults.items())
        return f"{flag.spec.help} Default: {default}. [methods: {', '.join(flag.methods)}]"
    return " ".join(f"{m}: {flag.helps[m]} Default: {flag.spec.shown(flag.defaults[m])}." for m in flag.methods)


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """Every method's settings as flags, grouped by the first method that has them."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for flag in setting_flags().values():
        owner = flag.methods[0]
        if owner not in groups:
            doc = (methods.get(owner).settings.__doc__ or "").strip().splitlines()[0]
            groups[owner] = parser.add_argument_group(f"{owner} settings", f"{doc} Used with --method {owner}.")
        groups[owner].add_argument(
            flag.flag,
            dest=SETTING_PREFIX + flag.name,
            type=flag.parse,
            metavar=flag.spec.metavar,
            default=argparse.SUPPRESS,
            help=flag_help(flag).replace("%", "%%"),
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


def model_help() -> str:
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


def defaults_help() -> str:
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


def add_sizes(parser: argparse.ArgumentParser) -> None:
    """The sampling sizes (unset = the model's defaults): generate, calibrate and bench-quality."""
    size = parser.add_argument_group("sampling", defaults_help())
    size.add_argument(
        "--height", type=int, metavar="PX", help="Height in pixels, a multiple of 16. Default: the model's."
    )
    size.add_argument(
        "--width", type=int, metavar="PX", help="Width in pixels, a multiple of 16. Default: the model's."
    )
    size.add_argument(
        "--frames", type=int, metavar="N", help="Number of frames, 4k+1 (5, 9, ..., 81). Default: the model's."
    )
    size.add_argument(
        "--size-preset",
        choices=SIZE_PRESETS,
        help="Named size: default (the model's) or bench (pocket models: over 2,000 tokens per call, where "
        "attention dominates: 256x256x33 for pocket-wan). --height/--width/--frames still override it.",
    )
    size.add_argument("--steps", type=int, metavar="N", help="Denoising steps. Default: the model's.")
    size.add_argument(
        "--guidance",
        type=float,
        metavar="SCALE",
        help="Classifier-free guidance scale (0 = off). Default: the model's.",
    )


def add_sampling(parser: argparse.ArgumentParser) -> None:
    """Seed and the sampling sizes shared by generate and calibrate (unset = the model's defaults)."""
    parser.add_argument(
        "--seed", type=int, default=0, metavar="INT", help="Random seed of the initial noise. Default: 0."
    )
    add_sizes(parser)


def add_diffusion_forcing(parser: argparse.ArgumentParser) -> None:
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
    df.add_argument(
        "--kv-commit",
        choices=COMMIT_MODES,
        default=COMMIT_MODES[0],
        help="How a finished chunk's K/V are frozen: last-step keeps those of its last denoising step (the "
        "FlowCache and MotionCache implementations); clean-pass forwards it once more at timestep 0 (diffusers' "
        "pipeline, one more pass per chunk). Default: last-step.",
    )


def add_hardware(group) -> None:
    group.add_argument(
        "--device", metavar="DEVICE", help="Torch device, e.g. cpu, cuda, cuda:1. Default: cuda if available, else cpu."
    )
    group.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        help="Transformer dtype (the VAE stays float32). Default: bfloat16 on CUDA, float32 on CPU.",
    )
    group.add_argument(
        "--kernels",
        choices=KERNEL_BACKENDS,
        help="Block-sparse attention backend: triton (CUDA; CPU only under TRITON_INTERPRET=1), flex (PyTorch "
        "FlexAttention, compiled once per shape), torch (pure torch). Default: $ACCEL_KERNELS, else auto "
        "(Triton on CUDA, torch on CPU).",
    )


def floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def preset_sizes(args: argparse.Namespace) -> dict[str, Any]:
    """The sizes given (``SIZE_FIELDS``), unset ones filled from ``--size-preset`` (unset ones mean the model's)."""
    sizes = {name: getattr(args, name) for name in SIZE_FIELDS}
    if getattr(args, "size_preset", None):
        from accel import models

        preset = models.size_preset(models.resolve(args.model), args.size_preset)
        sizes.update({k: v for k, v in preset.items() if sizes.get(k) is None})
    return sizes


def sampling_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling fields generate and calibrate both pass on (unset ones mean the model's defaults)."""
    return {"negative_prompt": args.negative_prompt, "seed": args.seed, **preset_sizes(args)}
