"""Baselines (METHODS 5): a diffusers cache hook — FirstBlockCache, PAB, FasterCache, MagCache or TaylorSeer — on
diffusers' own pipeline, its skipped blocks counted. The hooks' configuration is :mod:`accel.cache.baselines`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from accel.errors import ConfigError
from accel.methods import FAMILIES, Method, by_size
from accel.schema import Event
from accel.settings import MethodSettings, check_choice, meta
from accel.target import Generation, Target

if TYPE_CHECKING:
    pass

BASELINE_NAMES = ("fbc", "pab", "fastercache", "magcache", "taylorseer", "seacache")
# baselines that cannot run on a family, and why
NOT_ON = {
    ("seacache", "skyreels"): "diffusers' SkyReels-V2 pipeline gives the cache context no step index or sigma, so "
    "SeaCache would compute every step (diffusers 0.42)",
}
# FBC's threshold: 0.05 (ParaAttention's video setting) never skipped on the embedded models. Measured on the app's
# default prompt at the models' defaults (docs/measurements/fbc_embedded.txt): 0.1 skips 15% of blocks on pocket-wan
# at 39 dB and 23% on pocket-skyreels at 36 dB against dense.
MODEL_DEFAULTS = {"tiny": {"fbc": 0.1}, "pocket": {"fbc": 0.1}, "1.3b": {"fbc": 0.05}, "14b": {"fbc": 0.05}}


@dataclass(frozen=True)
class BaselineSettings(MethodSettings):
    """A diffusers cache hook as a baseline (FirstBlockCache, PAB, FasterCache, MagCache, TaylorSeer, SeaCache;
    METHODS 5)."""

    method: ClassVar[str] = "baseline"
    cache: str = field(
        default="fbc",
        metadata=meta(
            "fbc, pab, fastercache, magcache, taylorseer or seacache (diffusers hooks; seacache: Wan2.1 only).",
            abbrev="",
            choices=BASELINE_NAMES,
        ),
    )
    threshold: float | None = field(
        default=None,
        metadata=meta("FBC / MagCache / SeaCache threshold; empty = the baseline's default (FBC: 0.05, 0.1 on the "
                       "embedded models, where 0.05 never skips; SeaCache 0.25).", abbrev="t"),
    )  # fmt: skip

    def check(self) -> None:
        check_choice("cache", self.cache, BASELINE_NAMES)
        if self.threshold is not None and not (isinstance(self.threshold, (int, float)) and self.threshold >= 0):
            raise ConfigError(f"threshold must be a number >= 0, got {self.threshold!r}")


model_defaults = by_size(MODEL_DEFAULTS)


@contextmanager
def _install(target: Target) -> Iterator[Generation]:
    from accel.cache.baselines import install

    s = target.cfg.settings
    threshold = s.threshold
    if threshold is None and s.cache == "fbc" and target.spec.embedded:  # diffusers' own default elsewhere
        threshold = model_defaults(target.spec)["fbc"]
    with install(target, threshold) as run:
        yield run


def _parallel(settings: BaselineSettings) -> str | None:
    """PAB, FasterCache and TaylorSeer decide by step alone, so every rank decides alike (tested); FirstBlockCache
    decides from data each rank holds only a share of, and diffusers' MagCache hook cannot run split."""
    if settings.cache == "fbc":
        return ("FirstBlockCache decides from the first block's residual, of which each rank holds only its share "
                "of the tokens, so ranks could skip different blocks")  # fmt: skip
    if settings.cache == "seacache":
        return "SeaCache's indicator filters the latent input, which is not verified to be whole on every rank"
    if settings.cache == "magcache":
        return ("diffusers' MagCache hook subtracts the transformer's unsplit input from the split output of the "
                "last block (diffusers 0.42), and its calibrated ratios would be per rank")  # fmt: skip
    return None


METHOD = Method(
    "baseline",
    BaselineSettings,
    FAMILIES,
    _install,
    frozenset({Event.BASELINE_BLOCKS, Event.BASELINE_UNITS}),
    lambda spec: {name: {"cache": name} for name in BASELINE_NAMES if (name, spec.family) not in NOT_ON},
    order=90,
    colour="#8c564b",
    summary="a diffusers cache hook: FirstBlockCache, PAB, FasterCache, MagCache, TaylorSeer or SeaCache",
    refuses=lambda settings, spec: NOT_ON.get((settings.cache, spec.family)),
    parallel=_parallel,
    model_defaults=model_defaults,
    defaults_note=lambda spec: f"FirstBlockCache threshold {model_defaults(spec)['fbc']:g}",
)
