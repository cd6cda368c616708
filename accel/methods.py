"""The method registry: one record per method, the one place that says what a method is and how it runs.

A :class:`Method` gives the settings class (its fields become CLI flags and app widgets), the model families
it runs on, how it is installed for a generation (a context manager over a :class:`Target` that yields the
function producing the video), what builds its self-attention and its chunk cache, the telemetry events it
writes (:class:`accel.schema.Event`, which the :mod:`viz` figures read) and its benchmark variants. The
runner, the CLI, the app, calibration and the benchmarks all read this table; adding a method is one new
module plus one entry in :data:`REGISTRY`.

This module imports no torch: the builders and installers import their modules when called.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from accel.config import (
    BASELINE_NAMES,
    BaselineSettings,
    ConfigError,
    DenseSettings,
    FlowCacheSettings,
    MethodSettings,
    MotionCacheSettings,
    RunConfig,
    SVG2Settings,
    XAttentionSettings,
)
from accel.paths import shipped_table
from accel.schema import Event

if TYPE_CHECKING:
    import numpy as np

    from accel.attention.base import AttentionMethod
    from accel.cache.chunked import GroupCache
    from accel.models import ModelSpec
    from accel.telemetry import Recorder

# Wan2.1 text-to-video; SkyReels-V2 diffusion forcing (chunked, autoregressive)
FAMILY_NAMES = {"wan": "Wan2.1", "skyreels": "SkyReels-V2 diffusion-forcing"}
FAMILIES = tuple(FAMILY_NAMES)
ProgressFn = Callable[[int, int], None]
Generation = Callable[["ProgressFn | None"], "tuple[np.ndarray, dict[str, Any]]"]  # -> frames (F,H,W,3), metrics


@dataclass(frozen=True)
class Target:
    """What a method is installed on for one generation: the loaded pipeline, the resolved run and its recorder."""

    pipe: Any
    cfg: RunConfig
    spec: ModelSpec
    recorder: Recorder


AttentionBuilder = Callable[[MethodSettings, "ModelSpec", "Recorder | None", int], "AttentionMethod"]
CacheBuilder = Callable[[MethodSettings, "ModelSpec"], "GroupCache"]
Installer = Callable[[Target], AbstractContextManager[Generation]]


@dataclass(frozen=True)
class Method:
    """One acceleration method (or the dense reference)."""

    name: str
    settings: type[MethodSettings]
    families: tuple[str, ...]
    install: Installer
    events: frozenset[Event]
    variants: Callable[[ModelSpec], dict[str, dict[str, Any]]]  # benchmark variant name -> settings
    attention: AttentionBuilder | None = None  # its sparse self-attention (None: diffusers' own)
    cache: CacheBuilder | None = None  # its chunk cache in chunked runs (None: every group step computes)
    threshold: str | None = None  # the per-head setting EBC calibrates (tau, top_p)
    summary: str = ""
    parallel: Callable[[Any], str | None] = lambda settings: "it has no context-parallel support"  # why not, or None

    def check_model(self, spec: ModelSpec) -> None:
        """Refuse a model family the method does not run on."""
        if spec.family not in self.families:
            runs_on = " or ".join(FAMILY_NAMES[f] for f in self.families)
            raise ConfigError(f"{self.name} runs on {runs_on} models, not on {spec.name} ({FAMILY_NAMES[spec.family]})")

    def check_parallel(self, cfg: RunConfig, spec: ModelSpec) -> None:
        """Refuse ``--parallel`` where the run would be wrong or unsupported, never silently."""
        if cfg.parallel is None:
            return
        if spec.family != "wan":
            raise ConfigError(
                f"--parallel runs Wan2.1 models only: diffusers has no context-parallel plan for SkyReels-V2, and the "
                f"chunked runner would need one that splits each window's tokens and a KV cache per rank holding its "
                f"head slice ({spec.name})"
            )
        why = self.parallel(cfg.settings)
        if why:
            raise ConfigError(f"{cfg.label()} does not run under --parallel: {why}; run it on one process")


# -- builders: each imports its module on first use --------------------------------------------------------
def _xattention(settings, spec, recorder=None, seed=0):
    from accel.attention.xattention import XAttention

    return XAttention(
        settings, spec.block_size, recorder, model=spec.name, tmr_delta=spec.tmr_delta.get("xattention", 0.0)
    )


def _svg2(settings, spec, recorder=None, seed=0):
    from accel.attention.svg2 import SVG2

    return SVG2(
        settings, spec.svg2_clusters, recorder, seed=seed, model=spec.name, tmr_delta=spec.tmr_delta.get("svg2", 0.0)
    )


def _flowcache(s: FlowCacheSettings, spec):
    from accel.cache.flowcache import FlowCache

    fc = spec.flowcache
    thresh = s.thresh if s.thresh is not None else fc[s.preset]
    return FlowCache(thresh, s.ret_steps, s.coefficients or fc["coefficients"], s.use_ret_steps)


def _motioncache(s: MotionCacheSettings, spec):
    from accel.cache.motioncache import MotionCache

    fc = spec.flowcache
    thresh = s.thresh if s.thresh is not None else fc["motion"]
    phase1 = s.phase1_updates if s.phase1_updates is not None else fc["phase1_updates"]
    coefficients = s.coefficients or fc["coefficients"]
    return MotionCache(thresh, s.warmup, phase1, s.floor, s.min_update_ratio, s.vote, coefficients)


# -- installers ------------------------------------------------------------------------------------------
@contextmanager
def _attention_install(target: Target) -> Iterator[Generation]:
    """Attention processors on Wan's diffusers pipeline, or the chunked runner on a diffusion-forcing model."""
    if target.spec.family == "skyreels":
        with _chunked_install(target) as run:
            yield run
        return
    from accel.attention import install_on_pipeline

    with install_on_pipeline(target) as run:
        yield run


def _chunked_install(target: Target) -> AbstractContextManager[Generation]:
    from accel.cache.chunked import install

    return install(target)


def _hook_install(target: Target) -> AbstractContextManager[Generation]:
    from accel.cache.baselines import install

    return install(target)


# -- benchmark variants ----------------------------------------------------------------------------------
def _headwise_variants(method: str) -> Callable[[ModelSpec], dict[str, dict[str, Any]]]:
    """base, +TMR, and +EBC / +TMR+EBC where a calibrated table ships for the model."""

    def variants(spec: ModelSpec) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {method: {}, f"{method}+tmr": {"tmr": True}}
        table = shipped_table(spec.name, method)
        if table is not None:
            out[f"{method}+ebc"] = {"threshold_table": str(table)}
            out[f"{method}+tmr+ebc"] = {"tmr": True, "threshold_table": str(table)}
        return out

    return variants


# -- context parallelism: None where a method runs under it, else why not ----------------------------------------
def _parallel_ok(settings: MethodSettings) -> str | None:
    return None


def _baseline_parallel(settings: BaselineSettings) -> str | None:
    """PAB, FasterCache and TaylorSeer decide by step alone, so every rank decides alike (tested); FirstBlockCache
    decides from data each rank holds only a share of, and diffusers' MagCache hook cannot run split."""
    if settings.cache == "fbc":
        return ("FirstBlockCache decides from the first block's residual, of which each rank holds only its share "
                "of the tokens, so ranks could skip different blocks")  # fmt: skip
    if settings.cache == "magcache":
        return ("diffusers' MagCache hook subtracts the transformer's unsplit input from the split output of the "
                "last block (diffusers 0.42), and its calibrated ratios would be per rank")  # fmt: skip
    return None


# -- events ------------------------------------------------------------------------------------------------
CHUNKED = frozenset({Event.CHUNK_COMPUTE, Event.TOKENS_UPDATED, Event.CHUNK_DONE, Event.KV_TOKENS})
SPARSE = frozenset({Event.DENSITY, Event.DENSE_WARMUP, Event.DENSE_HEAD, Event.MASK_PREDICT})
TMR = frozenset({Event.REUSE_CHECK, Event.DRIFT, Event.MASK_REFRESH})
CACHE = CHUNKED | SPARSE | TMR | {Event.CHUNK_REUSE, Event.KV_COMPRESS}  # a cache may compose sparse attention


def _sparse_attention(settings: type[MethodSettings], build: AttentionBuilder, threshold: str, summary: str) -> Method:
    """A head-wise sparse attention method: +TMR and +EBC variants, every family, EBC calibrates ``threshold``."""
    name = settings.method
    return Method(
        name,
        settings,
        FAMILIES,
        _attention_install,
        SPARSE | TMR | CHUNKED,
        _headwise_variants(name),
        attention=build,
        threshold=threshold,
        summary=summary,
        parallel=_parallel_ok,
    )


REGISTRY: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "dense",
            DenseSettings,
            FAMILIES,
            _attention_install,
            CHUNKED,
            lambda spec: {"dense": {}},
            summary="diffusers' own attention (bit-identical output); the reference",
            parallel=_parallel_ok,
        ),
        _sparse_attention(
            XAttentionSettings,
            _xattention,
            "tau",
            "strided antidiagonal block scoring, per query-block top-tau selection, block-sparse attention",
        ),
        _sparse_attention(
            SVG2Settings,
            _svg2,
            "top_p",
            "k-means on Q and K per head, size-weighted top-p cluster pairs, semantic permutation",
        ),
        Method(
            "flowcache",
            FlowCacheSettings,
            ("skyreels",),
            _chunked_install,
            CACHE,
            lambda spec: {"flowcache-slow": {"preset": "slow"}, "flowcache-fast": {"preset": "fast"}},
            cache=_flowcache,
            summary="per-chunk residual reuse with accumulators on the timestep modulation; KV compression",
        ),
        Method(
            "motioncache",
            MotionCacheSettings,
            ("skyreels",),
            _chunked_install,
            CACHE | {Event.CHUNK_PARTIAL, Event.CHUNK_DEFER},
            lambda spec: {"motioncache": {}},
            cache=_motioncache,
            summary="per-token, motion-weighted reuse: only tokens whose accumulator crossed the threshold recompute",
        ),
        Method(
            "baseline",
            BaselineSettings,
            FAMILIES,
            _hook_install,
            frozenset({Event.BASELINE_BLOCKS, Event.BASELINE_UNITS}),
            lambda spec: {name: {"cache": name} for name in BASELINE_NAMES},
            summary="a diffusers cache hook: FirstBlockCache, PAB, FasterCache, MagCache or TaylorSeer",
            parallel=_baseline_parallel,
        ),
    )
}


def get(name: str) -> Method:
    """The record of method ``name``; an unknown name is a :class:`ConfigError` that lists the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(REGISTRY)}") from None


def calibratable() -> dict[str, str]:
    """Methods EBC can calibrate, with the name of their per-head threshold setting."""
    return {m.name: m.threshold for m in REGISTRY.values() if m.threshold}


def build_attention(
    settings: MethodSettings, spec: ModelSpec, recorder: Recorder | None = None, seed: int = 0
) -> AttentionMethod | None:
    """The sparse self-attention ``settings`` run or compose with (model block size and clusters filled in);
    None where diffusers' own attention runs."""
    inner = settings.attention_settings()
    if inner is None:
        return None
    builder = get(inner.method).attention
    if builder is None:
        raise ConfigError(f"{inner.method} is not a self-attention method")
    return builder(inner, spec, recorder, seed)


def build_cache(settings: MethodSettings, spec: ModelSpec) -> GroupCache:
    """The chunk cache of a chunked run: the method's own with the model's defaults filled in, else none."""
    from accel.cache.chunked import GroupCache

    record = get(settings.method)
    record.check_model(spec)
    return record.cache(settings, spec) if record.cache is not None else GroupCache()


def variants(spec: ModelSpec) -> dict[str, tuple[str, dict[str, Any]]]:
    """Every benchmark variant that runs on ``spec``'s family: name -> (method, settings), registry order."""
    return {
        name: (m.name, settings)
        for m in REGISTRY.values()
        if spec.family in m.families
        for name, settings in m.variants(spec).items()
    }
