"""Method settings: the base every method's settings derive from, the shared head-wise sparse-attention add-ons,
the range checks, and choice lists shared by runs and implementations.

Every method's settings are a frozen dataclass whose fields carry ``help`` metadata (:func:`meta`), so the CLI and
the app build their flags and widgets (with defaults and tooltips) from one place; field metadata vocabulary:
``help``, ``choices``, ``abbrev`` (the field's short name in run labels, shown even at its default),
``hide_default`` (leave it out of the label at its default after all) and ``flag_only`` (the label shows the
abbreviation alone, e.g. ``ebc`` for a table path) and ``join`` (a list's label: its items joined, e.g. ``3x3x3``,
not ``table``). Bad values raise :class:`ConfigError` with a one-line message
that says what is wrong and what is allowed. This module imports nothing of the project but :mod:`accel.errors`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from accel.errors import ConfigError

__all__ = [
    "BALANCE_MODES", "COMMIT_MODES", "DEFAULT_REBALANCE", "KV_GRANULARITIES", "PARALLEL_KINDS", "RESCALE_COEFFICIENTS",
    "ConfigError", "HeadwiseSettings", "MethodSettings", "check_choice", "check_fields_finite", "check_int",
    "check_kv_compression", "check_unit", "meta", "parallel_balance", "parse_parallel", "scaled_steps",
]  # fmt: skip

# How a finished chunk's K/V are frozen in chunked diffusion-forcing runs (accel.cache.chunked): the K/V of its
# last denoising step (both seed implementations) or one more pass at timestep 0 (diffusers' full window).
COMMIT_MODES = ("last-step", "clean-pass")
KV_GRANULARITIES = ("token", "frame", "chunk")
# the rescale polynomials of the TeaCache family's accumulated distance (accel.cache.rescale)
RESCALE_COEFFICIENTS = ("1.3b", "14b", "none")
BALANCE_MODES = ("auto", "on", "off")  # --parallel ulysses=N,balance=... (accel.balance)
DEFAULT_REBALANCE = 1.1  # the imbalance past which a balanced layer's heads are re-assigned
PARALLEL_KINDS = ("ulysses",)  # context parallelism the attention methods support (RunConfig.parallel)


def meta(text: str, **extra: Any) -> dict[str, Any]:
    """A settings field's metadata: its help text and any of ``choices``, ``abbrev``, ``hide_default``,
    ``flag_only`` (see the module docstring)."""
    return {"help": text, **extra}


def check_unit(name: str, value: float, *, open_low: bool = True) -> None:
    low_ok = value > 0 if open_low else value >= 0
    if not (low_ok and value <= 1):
        raise ConfigError(f"{name} must be in {'(0' if open_low else '[0'}, 1], got {value}")


def check_choice(name: str, value: object, choices: tuple[str, ...], optional: bool = False) -> None:
    if (value is None and optional) or value in choices:
        return
    raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def check_finite(name: str, value: object) -> None:
    """Every float (also inside a list or tuple) must be finite: ``inf`` and ``nan`` are never settings."""
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{name} must be a finite number, got {v}")


def check_fields_finite(obj: object) -> None:
    for f in dataclasses.fields(obj):
        check_finite(f.name, getattr(obj, f.name))


def check_int(name: str, value: int, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class MethodSettings:
    """Base of every method's settings."""

    method: ClassVar[str] = ""

    def __post_init__(self) -> None:
        check_fields_finite(self)
        self.check()

    def check(self) -> None:
        """Range and consistency checks of a method's settings (after every float was found finite)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> MethodSettings:
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown setting(s) {', '.join(unknown)} for method {cls.method!r}; "
                f"known: {', '.join(sorted(known)) or 'none'}"
            )
        return cls(**values)

    def dense_steps(self, num_steps: int) -> int:
        """Leading denoising steps this method computes densely (its warm-up); 0 for methods without one."""
        return 0

    def attention_settings(self) -> MethodSettings | None:
        """Settings of the sparse self-attention this method runs or composes with (None: diffusers' own)."""
        return None

    def label(self) -> str:
        """Short text of the settings for run labels: the main knobs (those with an ``abbrev``) always,
        the others when they differ from their default."""
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            shown_by_default = "abbrev" in f.metadata and not f.metadata.get("hide_default")
            if value is None or value is False or (value == f.default and not shown_by_default):
                continue
            abbrev = f.metadata.get("abbrev", f.name)
            if value is True or f.metadata.get("flag_only"):
                parts.append(abbrev)
                continue
            if isinstance(value, (list, tuple)):
                value = f.metadata["join"].join(map(str, value)) if "join" in f.metadata else "table"
            parts.append(f"{abbrev}{value}")
        return "-".join(parts)


@dataclass(frozen=True)
class HeadwiseSettings(MethodSettings):
    """Head-wise adaptive add-ons shared by the sparse methods: Temporal Mask Reuse and calibrated tables."""

    threshold_name: ClassVar[str] = ""  # the per-head threshold setting EBC calibrates (tau, top_p)
    # EBC's default candidate thresholds and the uniform reference among them whose sparsity is the budget (METHODS
    # 1.4: 0.85 / 0.9 / 0.95 around XAttention's and SVG2's default 0.9; a method with another default sets its own)
    ebc_candidates: ClassVar[tuple[float, ...]] = (0.85, 0.90, 0.95)
    ebc_reference: ClassVar[float] = 0.90

    tmr: bool = field(
        default=False,
        metadata=meta(
            "Temporal Mask Reuse: keep a head's mask while its pooled Q/K drift stays <= delta.", abbrev="tmr"
        ),
    )
    tmr_delta: float | None = field(
        default=None,
        metadata=meta(
            "TMR refresh threshold on the raw L1 drift of pooled Q and K; empty = the model's default "
            "(raw drift is model-scale dependent: Wan2.1 30 / 8; the app shows each model's beside it).",
            abbrev="d",
        ),
    )
    tmr_gate_lower: float = field(
        default=0.0,
        metadata=meta("Layer gating: if fewer than this fraction of a layer's heads want a refresh, none refresh."),
    )
    tmr_gate_upper: float = field(
        default=1.0,
        metadata=meta("Layer gating: if more than this fraction of a layer's heads want a refresh, all refresh."),
    )
    threshold_table: str | None = field(
        default=None,
        metadata=meta(
            "Error-guided Budgeted Calibration: a per-head threshold table from `python -m accel calibrate` "
            "(replaces the shared threshold).",
            abbrev="ebc",
            flag_only=True,
        ),
    )

    def attention_settings(self) -> MethodSettings:
        return self

    def _check_headwise(self) -> None:
        if self.tmr_delta is not None and not (isinstance(self.tmr_delta, (int, float)) and self.tmr_delta >= 0):
            raise ConfigError(f"tmr_delta must be a number >= 0, got {self.tmr_delta!r}")
        check_unit("tmr_gate_lower", self.tmr_gate_lower, open_low=False)
        check_unit("tmr_gate_upper", self.tmr_gate_upper, open_low=False)
        if self.tmr_gate_lower > self.tmr_gate_upper:
            raise ConfigError(
                f"tmr_gate_lower {self.tmr_gate_lower} must not exceed tmr_gate_upper {self.tmr_gate_upper}"
            )
        if self.threshold_table is not None and not str(self.threshold_table).strip():
            raise ConfigError("threshold_table must be a path to a calibration table")


def scaled_steps(count: int, num_steps: int, of: int = 50) -> int:
    """``count`` steps of a reference's ``of``-step schedule scaled to ``num_steps`` (rounded half up)."""
    return math.floor(count * num_steps / of + 0.5)


def check_kv_compression(budget_chunks: int, lam: float, granularity: str) -> None:
    """The KV-compression knobs: a budget of >= 1 chunk, lambda in [0, 1], a known granularity."""
    check_int("kv_budget_chunks", budget_chunks, 1)
    check_unit("kv_lambda", lam, open_low=False)
    check_choice("kv_granularity", granularity, KV_GRANULARITIES)


def parse_parallel(text: str) -> tuple[str, int]:
    """``"ulysses=N[,balance=auto|on|off][,rebalance=X]"`` -> ``("ulysses", N)`` with N >= 2; anything else is one
    :class:`ConfigError` (the options: :func:`parallel_balance`). Ring attention is refused: it needs an attention
    backend that returns the log-sum-exp (not diffusers' ``native``, so never on CPU), and the sparse methods would
    have to merge partial block-sparse outputs across ranks."""
    head, *_ = str(text).split(",")
    kind, _, degree = head.partition("=")
    kind = kind.strip().lower()
    if kind == "ring":
        raise ConfigError(
            "parallel ring is not supported: ring attention needs an attention backend that returns the log-sum-exp "
            "(flash or cuDNN, never on CPU) and the sparse methods cannot split a head's keys across ranks; use "
            "ulysses=N"
        )
    if kind not in PARALLEL_KINDS or not degree.strip().isdigit() or int(degree) < 2:
        raise ConfigError(f"parallel must be ulysses=N with N >= 2 (torchrun --nproc_per_node N), got {text!r}")
    parallel_balance(text)
    return kind, int(degree)


def parallel_balance(text: str | None) -> tuple[str, float]:
    """The head-assignment options of a ``--parallel`` value: ``balance`` (``auto``, the default: on when the method
    has a per-head threshold table or TMR; ``on``; ``off``: Ulysses' contiguous ranges) and ``rebalance``, the
    imbalance (slowest rank over the mean, > 1) past which a layer's heads are re-assigned (default 1.1). Without
    ``--parallel`` (None): ``off`` and the default."""
    if text is None:
        return "off", DEFAULT_REBALANCE
    options: dict[str, str] = {}
    for part in str(text).split(",")[1:]:
        key, sep, value = (p.strip().lower() for p in part.partition("="))
        if not sep or key not in ("balance", "rebalance") or key in options:
            raise ConfigError(
                f"parallel options are balance=auto|on|off and rebalance=X (each once), got {part.strip()!r} "
                f"in {text!r}"
            )
        options[key] = value
    balance = options.get("balance", "auto")
    check_choice("parallel balance", balance, BALANCE_MODES)
    try:
        rebalance = float(options.get("rebalance", DEFAULT_REBALANCE))
    except ValueError:
        raise ConfigError(f"parallel rebalance must be a number > 1, got {options['rebalance']!r}") from None
    if not rebalance > 1:
        raise ConfigError(
            f"parallel rebalance must be a number > 1 (an imbalance: slowest rank over the mean), got {rebalance}"
        )
    return balance, rebalance
