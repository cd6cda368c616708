"""Run configuration and per-method settings, validated on construction.

Every method's settings are a dataclass whose fields carry ``help`` metadata, so the CLI and
the app build their flags and widgets (with defaults and tooltips) from one place. Bad values
raise :class:`ConfigError` with a one-line message that says what is wrong and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from accel.errors import UserError

# The app's and CLI's model when none is named: the trained pocket model under assets/ (accel.training.wan).
DEFAULT_MODEL = "pocket-wan"


class ConfigError(UserError, ValueError):
    """A setting is out of range or inconsistent; the message is meant for the user as is."""


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


def _check_unit(name: str, value: float, *, open_low: bool = True) -> None:
    low_ok = value > 0 if open_low else value >= 0
    if not (low_ok and value <= 1):
        raise ConfigError(f"{name} must be in {'(0' if open_low else '[0'}, 1], got {value}")


def _check_choice(name: str, value: object, choices: tuple[str, ...], optional: bool = False) -> None:
    if (value is None and optional) or value in choices:
        return
    raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _check_finite(name: str, value: object) -> None:
    """Every float (also inside a list or tuple) must be finite: ``inf`` and ``nan`` are never settings."""
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{name} must be a finite number, got {v}")


def _check_fields_finite(obj: object) -> None:
    for f in dataclasses.fields(obj):
        _check_finite(f.name, getattr(obj, f.name))


def _check_int(name: str, value: int, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class MethodSettings:
    """Base of every method's settings."""

    method: ClassVar[str] = ""

    def __post_init__(self) -> None:
        _check_fields_finite(self)
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
                value = "table"
            parts.append(f"{abbrev}{value}")
        return "-".join(parts)


@dataclass(frozen=True)
class DenseSettings(MethodSettings):
    """Full attention through diffusers' own attention dispatch (the reference)."""

    method: ClassVar[str] = "dense"


def _check_tau(tau: float | tuple[float, ...]) -> None:
    values = tau if isinstance(tau, (list, tuple)) else [tau]
    if not values:
        raise ConfigError("tau table is empty")
    for t in values:
        if not isinstance(t, (int, float)) or isinstance(t, bool):
            raise ConfigError(f"tau must be a number or a list of numbers, got {t!r}")
        _check_unit("tau", float(t))


@dataclass(frozen=True)
class HeadwiseSettings(MethodSettings):
    """Head-wise adaptive add-ons shared by the sparse methods: Temporal Mask Reuse and calibrated tables."""

    tmr: bool = field(
        default=False,
        metadata=_help(
            "Temporal Mask Reuse: keep a head's mask while its pooled Q/K drift stays <= delta.", abbrev="tmr"
        ),
    )
    tmr_delta: float | None = field(
        default=None,
        metadata=_help(
            "TMR refresh threshold on the raw L1 drift of pooled Q and K; empty = the model's default "
            "(raw drift is model-scale dependent: Wan2.1 30 / 8; the app shows each model's beside it).",
            abbrev="d",
        ),
    )
    tmr_gate_lower: float = field(
        default=0.0,
        metadata=_help("Layer gating: if fewer than this fraction of a layer's heads want a refresh, none refresh."),
    )
    tmr_gate_upper: float = field(
        default=1.0,
        metadata=_help("Layer gating: if more than this fraction of a layer's heads want a refresh, all refresh."),
    )
    threshold_table: str | None = field(
        default=None,
        metadata=_help(
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
        _check_unit("tmr_gate_lower", self.tmr_gate_lower, open_low=False)
        _check_unit("tmr_gate_upper", self.tmr_gate_upper, open_low=False)
        if self.tmr_gate_lower > self.tmr_gate_upper:
            raise ConfigError(
                f"tmr_gate_lower {self.tmr_gate_lower} must not exceed tmr_gate_upper {self.tmr_gate_upper}"
            )
        if self.threshold_table is not None and not str(self.threshold_table).strip():
            raise ConfigError("threshold_table must be a path to a calibration table")


@dataclass(frozen=True)
class XAttentionSettings(HeadwiseSettings):
    """XAttention: strided antidiagonal block scoring + per-row top-p block selection (METHODS 1.1)."""

    method: ClassVar[str] = "xattention"
    tau: float | tuple[float, ...] = field(
        default=0.9,
        metadata=_help(
            "Cumulative block-score threshold per query block (0, 1]; 1 = dense. A list gives one per head "
            "(heads) or per layer and head (layers x heads, row-major).",
            abbrev="tau",
        ),
    )
    stride: int = field(
        default=8, metadata=_help("Antidiagonal stride S: scoring costs about 1/S of QK^T.", abbrev="s")
    )
    block_size: int | None = field(
        default=None,
        metadata=_help(
            "Block size B in tokens (multiple of stride); empty = the model's (Wan2.1 128; the app shows each).",
            abbrev="b",
        ),
    )
    warmup_steps: int = field(
        default=5, metadata=_help("Leading denoising steps computed densely (5 of 50 in the reference).", abbrev="w")
    )
    dense_above: float | None = field(
        default=None,
        metadata=_help(
            "Density-aware execution: a head whose blocks cost more than this share of dense attention (selected "
            "blocks at full size, a partial last block counted whole) runs dense SDPA (exact, and faster there); "
            "empty = the kernel backend's measured crossover (CPU: 0.1 below 1,024 tokens, else 0.25 for blocks up to "
            "32 tokens and 0.45 above; Triton: off); 1 = off.",
            abbrev="da",
        ),
    )

    def check(self) -> None:
        if isinstance(self.tau, list):
            object.__setattr__(self, "tau", tuple(float(t) for t in self.tau))
        _check_tau(self.tau)
        _check_int("stride", self.stride, 1)
        if self.block_size is not None:
            _check_int("block_size", self.block_size, 1)
            if self.block_size % self.stride:
                raise ConfigError(f"block_size {self.block_size} must be a multiple of stride {self.stride}")
        _check_int("warmup_steps", self.warmup_steps, 0)
        if self.dense_above is not None:
            _check_unit("dense_above", self.dense_above, open_low=False)
        self._check_headwise()

    def dense_steps(self, num_steps: int) -> int:
        return self.warmup_steps


@dataclass(frozen=True)
class SVG2Settings(HeadwiseSettings):
    """Sparse-VideoGen2: k-means semantic permutation + size-weighted top-p cluster pairs (METHODS 1.2)."""

    method: ClassVar[str] = "svg2"
    top_p: float = field(
        default=0.9, metadata=_help("Cumulative share of the size-weighted cluster-pair map kept per query cluster.")
    )
    query_clusters: int | None = field(
        default=None,
        metadata=_help(
            "Query clusters qc per head; empty = the model's (Wan2.1 300; the app shows each).", abbrev="qc"
        ),
    )
    key_clusters: int | None = field(
        default=None,
        metadata=_help("Key clusters kc per head; empty = the model's (Wan2.1 1000; the app shows each).", abbrev="kc"),
    )
    min_kc_ratio: float = field(
        default=0.10, metadata=_help("Always keep at least floor(ratio * kc) key clusters per query cluster.")
    )
    first_times_fp: float = field(
        default=0.2,
        metadata=_help("Leading fraction of denoising steps computed densely: floor(fraction x steps).", abbrev="ft"),
    )
    first_layers_fp: float = field(
        default=0.03,
        metadata=_help(
            "Leading fraction of layers computed densely: floor(fraction x layers) as the reference rounds "
            "(0.03: 0 of 30 layers, 1 of 40).",
            abbrev="fl",
        ),
    )
    kmeans_init_iters: int = field(default=50, metadata=_help("k-means iterations on the first sparse step."))
    kmeans_warm_iters: int = field(
        default=2, metadata=_help("k-means iterations on later steps, warm-started from the last centroids.")
    )

    def check(self) -> None:
        _check_unit("top_p", self.top_p)
        for name in ("query_clusters", "key_clusters"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        _check_unit("min_kc_ratio", self.min_kc_ratio, open_low=False)
        _check_unit("first_times_fp", self.first_times_fp, open_low=False)
        _check_unit("first_layers_fp", self.first_layers_fp, open_low=False)
        _check_int("kmeans_init_iters", self.kmeans_init_iters, 1)
        _check_int("kmeans_warm_iters", self.kmeans_warm_iters, 1)
        self._check_headwise()

    def dense_steps(self, num_steps: int) -> int:
        """``floor(first_times_fp * steps)``, as the reference rounds (0.2 of 50 steps -> 10)."""
        return math.floor(self.first_times_fp * num_steps + 1e-9)

    def dense_layers(self, num_layers: int) -> int:
        """``floor(first_layers_fp * layers)``, as the reference rounds: 0.03 of 30 layers -> 0, of 40 -> 1."""
        return math.floor(self.first_layers_fp * num_layers + 1e-9)


FLOWCACHE_COEFFICIENTS = ("1.3b", "14b", "none")


KV_GRANULARITIES = ("token", "frame", "chunk")
CHUNK_ATTENTIONS = ("dense", "xattention", "svg2")
BASELINE_NAMES = ("fbc", "pab", "fastercache", "magcache", "taylorseer")
PRESETS = ("slow", "fast")


def check_kv_compression(budget_chunks: int, lam: float, granularity: str) -> None:
    """The KV-compression knobs: a budget of >= 1 chunk, lambda in [0, 1], a known granularity."""
    _check_int("kv_budget_chunks", budget_chunks, 1)
    _check_unit("kv_lambda", lam, open_low=False)
    _check_choice("kv_granularity", granularity, KV_GRANULARITIES)


@dataclass(frozen=True)
class KVSettings(MethodSettings):
    """KV-cache compression of clean chunks, shared by the chunk caches (METHODS 3.2)."""

    kv_compress: bool = field(
        default=False, metadata=_help("Compress the K/V of clean chunks (importance - redundancy).", abbrev="kv")
    )
    kv_budget_chunks: int = field(default=1, metadata=_help("Clean K/V kept, in chunks' worth of tokens."))
    kv_lambda: float = field(default=0.07, metadata=_help("Weight of importance against redundancy in [0, 1]."))
    kv_granularity: str = field(
        default="token", metadata=_help("Keep tokens, whole frames or whole chunks.", choices=KV_GRANULARITIES)
    )
    attention: str = field(
        default="dense",
        metadata=_help(
            "Self-attention inside the chunks: dense, xattention or svg2 (their defaults).",
            choices=CHUNK_ATTENTIONS,
            abbrev="+",
            hide_default=True,
        ),
    )
    attention_tmr: bool = field(
        default=False, metadata=_help("Temporal Mask Reuse for that sparse attention.", abbrev="tmr")
    )

    def attention_settings(self) -> MethodSettings | None:
        if self.attention == "dense":
            return None
        return settings_for(self.attention, {"tmr": self.attention_tmr})

    def _check_kv(self) -> None:
        _check_choice("attention", self.attention, CHUNK_ATTENTIONS)
        check_kv_compression(self.kv_budget_chunks, self.kv_lambda, self.kv_granularity)


@dataclass(frozen=True)
class FlowCacheSettings(KVSettings):
    """FlowCache: per-chunk residual reuse for diffusion-forcing (autoregressive) models (METHODS 3.1)."""

    method: ClassVar[str] = "flowcache"
    preset: str = field(
        default="slow",
        metadata=_help(
            "Threshold preset, slow or fast (0.1 / 0.15 on SkyReels-V2, 0.1 / 0.16 on the embedded models).",
            abbrev="",
            choices=PRESETS,
        ),
    )
    thresh: float | None = field(
        default=None,
        metadata=_help("Accumulator threshold; empty = the preset's value for the model; <= 0 disables reuse.",
                       abbrev="t"),
    )  # fmt: skip
    ret_steps: int | None = field(
        default=None,
        metadata=_help("Leading steps of each chunk always computed (warm-up); empty = the reference's 5 of 50 "
                       "steps scaled to the run (2 of 20), 1 without the ret-steps polynomial."),
    )  # fmt: skip
    coefficients: str | None = field(
        default=None,
        metadata=_help(
            "Rescale polynomial: 1.3b, 14b or none (raw relative L1); model default: the model's (the app shows it).",
            choices=FLOWCACHE_COEFFICIENTS,
        ),
    )
    use_ret_steps: bool = field(default=True, metadata=_help("Use the ret-steps polynomial (else the non-ret one)."))

    def check(self) -> None:
        _check_choice("preset", self.preset, PRESETS)
        if self.thresh is not None and not isinstance(self.thresh, (int, float)):
            raise ConfigError(f"thresh must be a number, got {self.thresh!r}")
        if self.ret_steps is not None:
            _check_int("ret_steps", self.ret_steps, 0)
        self._check_kv()
        _check_choice("coefficients", self.coefficients, FLOWCACHE_COEFFICIENTS, optional=True)


@dataclass(frozen=True)
class MotionCacheSettings(KVSettings):
    """MotionCache: per-token, motion-weighted reuse for diffusion-forcing models (METHODS 4)."""

    method: ClassVar[str] = "motioncache"
    thresh: float | None = field(
        default=None,
        metadata=_help("Per-token accumulator threshold; empty = the model's (0.1); <= 0: no reuse.",
                       abbrev="t"),
    )  # fmt: skip
    warmup: int | None = field(
        default=None,
        metadata=_help("Steps of each chunk computed fully before reuse starts; empty = the reference's 4 of 50 "
                       "steps scaled to the run (2 of 20)."),
    )  # fmt: skip
    phase1_updates: int | None = field(
        default=None,
        metadata=_help("Updating steps with uniform weights before motion weights apply; empty = the VBench setup's "
                       "6 of 50 steps scaled to the run (2 of 20; the reference demo uses 3)."),
    )  # fmt: skip
    floor: float = field(default=0.6, metadata=_help("Lowest motion weight; weights span [floor, 1] per frame."))
    min_update_ratio: float = field(
        default=0.4, metadata=_help("Defer (skip, keep accumulators) updates of fewer than this share of tokens.")
    )
    vote: float = field(
        default=0.5, metadata=_help("A position updates in all frames if more than this share need it.")
    )
    coefficients: str | None = field(
        default=None,
        metadata=_help(
            "Rescale polynomial of the distance: 1.3b, 14b or none; empty = the model's.",
            choices=FLOWCACHE_COEFFICIENTS,
        ),
    )

    def check(self) -> None:
        if self.warmup is not None:
            _check_int("warmup", self.warmup, 0)
        if self.phase1_updates is not None:
            _check_int("phase1_updates", self.phase1_updates, 0)
        for name in ("floor", "min_update_ratio", "vote"):
            _check_unit(name, getattr(self, name), open_low=False)
        _check_choice("coefficients", self.coefficients, FLOWCACHE_COEFFICIENTS, optional=True)
        self._check_kv()


@dataclass(frozen=True)
class BaselineSettings(MethodSettings):
    """A diffusers cache hook as a baseline (FirstBlockCache, PAB, FasterCache, MagCache, TaylorSeer; METHODS 5)."""

    method: ClassVar[str] = "baseline"
    cache: str = field(
        default="fbc",
        metadata=_help(
            "fbc, pab, fastercache, magcache or taylorseer (diffusers hooks).", abbrev="", choices=BASELINE_NAMES
        ),
    )
    threshold: float | None = field(
        default=None,
        metadata=_help("FBC / MagCache threshold; empty = the baseline's default (FBC: 0.05, 0.1 on the embedded "
                       "models, where 0.05 never skips).", abbrev="t"),
    )  # fmt: skip

    def check(self) -> None:
        _check_choice("cache", self.cache, BASELINE_NAMES)
        if self.threshold is not None and not (isinstance(self.threshold, (int, float)) and self.threshold >= 0):
            raise ConfigError(f"threshold must be a number >= 0, got {self.threshold!r}")


def settings_for(method: str, values: dict[str, Any] | None = None) -> MethodSettings:
    """Validated settings of ``method`` (a name in :data:`accel.methods.REGISTRY`) from a plain dict."""
    from accel import methods  # the registry imports the settings classes above

    return methods.get(method).settings.from_dict(values)


KERNEL_BACKENDS = ("auto", "triton", "flex", "torch")  # accel.kernels.dispatch.BACKENDS (config imports no torch)
# How a finished chunk's K/V are frozen in chunked diffusion-forcing runs (accel.cache.chunked): the K/V of its
# last denoising step (both seed implementations) or one more pass at timestep 0 (diffusers' full window).
COMMIT_MODES = ("last-step", "clean-pass")
MAX_REPEATS = 20  # timing repeats of one run (RunConfig.repeats)
SEED_LIMIT = 2**63  # seeds are in [0, 2**63): what torch.Generator.manual_seed takes as a signed 64-bit integer
MAX_FPS = 240  # frame rate of the saved video (RunConfig.fps): beyond it a video of a few frames lasts no time
# the diffusion-forcing arguments of SkyReels-V2 runs (RunConfig fields; None / the first choice = default)
FORCING = ("ar_step", "causal_block_size", "base_num_frames", "overlap_history", "addnoise_condition", "kv_commit")
PARALLEL_KINDS = ("ulysses",)  # context parallelism the attention methods support (RunConfig.parallel)


def parse_parallel(text: str) -> tuple[str, int]:
    """``"ulysses=N"`` -> ``("ulysses", N)`` with N >= 2; anything else is one :class:`ConfigError`. Ring attention
    is refused: it needs an attention backend that returns the log-sum-exp (not diffusers' ``native``, so never on
    CPU), and the sparse methods would have to merge partial block-sparse outputs across ranks."""
    kind, _, degree = str(text).partition("=")
    kind = kind.strip().lower()
    if kind == "ring":
        raise ConfigError(
            "parallel ring is not supported: ring attention needs an attention backend that returns the log-sum-exp "
            "(flash or cuDNN, never on CPU) and the sparse methods cannot split a head's keys across ranks; use "
            "ulysses=N"
        )
    if kind not in PARALLEL_KINDS or not degree.strip().isdigit() or int(degree) < 2:
        raise ConfigError(f"parallel must be ulysses=N with N >= 2 (torchrun --nproc_per_node N), got {text!r}")
    return kind, int(degree)


@dataclass(frozen=True)
class RunConfig:
    """One generation: model, method and its settings, prompt and sampling parameters.

    ``None`` for height/width/frames/steps/guidance means the model's default
    (see :class:`accel.models.ModelSpec`); :meth:`resolve` fills them in.
    """

    prompt: str
    model: str = DEFAULT_MODEL
    method: str = "dense"
    settings: MethodSettings | None = None  # None = the method's defaults
    negative_prompt: str = ""
    seed: int = 0
    height: int | None = None
    width: int | None = None
    frames: int | None = None
    steps: int | None = None
    guidance: float | None = None
    fps: int = 16
    ar_step: int | None = None
    causal_block_size: int | None = None
    base_num_frames: int | None = None
    overlap_history: int | None = None
    addnoise_condition: float | None = None
    kv_commit: str = "last-step"  # COMMIT_MODES: how chunked (SkyReels-V2) runs freeze a finished chunk's K/V
    device: str | None = None
    dtype: str | None = None
    kernels: str | None = None  # kernel backend (auto | triton | flex | torch); None = $ACCEL_KERNELS, else auto
    repeats: int = 1  # the generation runs this many times; its times are the median (the video is the first's)
    parallel: str | None = None  # context parallelism, "ulysses=N": one process per rank (accel.parallel)

    def __post_init__(self) -> None:
        if self.settings is None or isinstance(self.settings, dict):
            object.__setattr__(self, "settings", settings_for(self.method, self.settings))
        elif self.settings.method != self.method:
            raise ConfigError(f"settings are for {self.settings.method!r} but the method is {self.method!r}")
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ConfigError("prompt must be a non-empty string")
        _check_int("seed", self.seed, 0)
        if self.seed >= SEED_LIMIT:
            raise ConfigError(f"seed must be below 2**63 = {SEED_LIMIT}, got {self.seed}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None:
                _check_int(name, value, 16)
                if value % 16:
                    lo, hi = value // 16 * 16, (value // 16 + 1) * 16
                    raise ConfigError(
                        f"{name} must be a multiple of 16 (VAE 8x and patch 2x), got {value}: use {lo} or {hi}"
                    )
        if self.frames is not None:
            _check_int("frames", self.frames, 1)
            if (self.frames - 1) % 4:
                lo = (self.frames - 1) // 4 * 4 + 1
                raise ConfigError(
                    f"frames must be 4k+1 (VAE 4x temporal compression), got {self.frames}: use {lo} or {lo + 4}"
                )
        if self.steps is not None:
            _check_int("steps", self.steps, 1)
        _check_fields_finite(self)
        if self.guidance is not None and not (isinstance(self.guidance, (int, float)) and self.guidance >= 0):
            raise ConfigError(f"guidance must be a number >= 0, got {self.guidance!r}")
        _check_int("fps", self.fps, 1)
        if self.fps > MAX_FPS:
            raise ConfigError(f"fps must be at most {MAX_FPS}, got {self.fps}")
        if self.ar_step is not None:
            _check_int("ar_step", self.ar_step, 0)
        if self.causal_block_size is not None:
            _check_int("causal_block_size", self.causal_block_size, 1)
        for name in ("base_num_frames", "overlap_history"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        base, overlap = self.base_num_frames, self.overlap_history
        if base is not None and overlap is not None and overlap >= base:
            raise ConfigError(f"overlap_history {overlap} must be smaller than base_num_frames {base}")
        if self.addnoise_condition is not None and not 0 <= self.addnoise_condition < 1000:
            raise ConfigError(f"addnoise_condition must be in [0, 1000), got {self.addnoise_condition}")
        _check_choice("kv_commit", self.kv_commit, COMMIT_MODES)
        _check_int("repeats", self.repeats, 1)
        if self.repeats > MAX_REPEATS:
            raise ConfigError(f"repeats must be at most {MAX_REPEATS}, got {self.repeats}")
        if self.parallel is not None:
            parse_parallel(self.parallel)
        if self.dtype is not None and self.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.kernels is not None and self.kernels not in KERNEL_BACKENDS:
            raise ConfigError(f"kernels must be one of {', '.join(KERNEL_BACKENDS)}, got {self.kernels!r}")

    def forcing_given(self) -> list[str]:
        """The diffusion-forcing fields (:data:`FORCING`) set to anything but their default."""
        return [f.name for f in dataclasses.fields(self) if f.name in FORCING and getattr(self, f.name) != f.default]

    def resolve(self, defaults: dict[str, Any]) -> RunConfig:
        """A copy with every ``None`` sampling field replaced by ``defaults[field]`` (where the model has one)."""
        names = ("height", "width", "frames", "steps", "guidance", "ar_step", "causal_block_size", "base_num_frames",
                 "overlap_history", "addnoise_condition")  # fmt: skip
        filled = {k: defaults[k] for k in names if getattr(self, k) is None and k in defaults}
        return dataclasses.replace(self, **filled)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "settings"}
        data["settings"] = self.settings.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        data = dict(data)
        method = data.get("method", "dense")
        data["settings"] = settings_for(method, data.get("settings"))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def label(self) -> str:
        """Readable run label: method plus its non-default settings, e.g. ``xattention-tau0.8-w3``."""
        extra = self.settings.label()
        return f"{self.method}-{extra}" if extra else self.method

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
