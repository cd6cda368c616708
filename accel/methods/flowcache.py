"""FlowCache (METHODS 3.1): per-chunk residual reuse for diffusion-forcing (autoregressive) models, accumulating the
rescaled change of the timestep modulation per chunk and branch; KV compression of clean chunks. The algorithm is
:mod:`accel.cache.flowcache` in the chunked runner (:mod:`accel.cache.chunked`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from accel.errors import ConfigError
from accel.methods import CACHE, Method, by_size, installers
from accel.methods.chunk_caches import KVSettings
from accel.settings import RESCALE_COEFFICIENTS, check_choice, check_int, meta

if TYPE_CHECKING:
    from accel.cache.flowcache import FlowCache
    from accel.models import ModelSpec

PRESETS = ("slow", "fast")
# Rescale polynomial and the slow / fast thresholds per model size, fitted on SkyReels-V2 1.3B / 14B. No fitted
# polynomial for the embedded models: the raw relative L1 of e0 (a degree-4 fit of the residual's change on 2,872
# step pairs, R^2 0.82, gave the same work-PSNR front). Their thresholds were measured in the seeds' setting
# (bench.chunked --preset seeds: 50 steps, 3 windows; docs/measurements/bench_chunked_seeds.txt): on the bench
# prompt slow 0.1 did 0.32 of the uncached block work at 29 dB, fast 0.16 0.26 at 27 dB on the pocket-skyreels they
# were chosen on (0.30 / 0.24 at 21 / 18 dB on the one fine-tuned since). At the default 20 steps they do about
# 0.50 / 0.40: a short schedule leaves less to skip.
EMBEDDED = {"coefficients": "none", "slow": 0.1, "fast": 0.16}
MODEL_DEFAULTS = {
    "tiny": EMBEDDED,
    "pocket": EMBEDDED,
    "1.3b": {"coefficients": "1.3b", "slow": 0.1, "fast": 0.15},
    "14b": {"coefficients": "14b", "slow": 0.1, "fast": 0.15},
}


@dataclass(frozen=True)
class FlowCacheSettings(KVSettings):
    """FlowCache: per-chunk residual reuse for diffusion-forcing (autoregressive) models (METHODS 3.1)."""

    method: ClassVar[str] = "flowcache"
    preset: str = field(
        default="slow",
        metadata=meta(
            "Threshold preset, slow or fast (0.1 / 0.15 on SkyReels-V2, 0.1 / 0.16 on the embedded models).",
            abbrev="",
            choices=PRESETS,
        ),
    )
    thresh: float | None = field(
        default=None,
        metadata=meta("Accumulator threshold; empty = the preset's value for the model; <= 0 disables reuse.",
                       abbrev="t"),
    )  # fmt: skip
    ret_steps: int | None = field(
        default=None,
        metadata=meta("Leading steps of each chunk always computed (warm-up); empty = the reference's 5 of 50 "
                       "steps scaled to the run (2 of 20), 1 without the ret-steps polynomial."),
    )  # fmt: skip
    coefficients: str | None = field(
        default=None,
        metadata=meta(
            "Rescale polynomial: 1.3b, 14b or none (raw relative L1); model default: the model's (the app shows it).",
            choices=RESCALE_COEFFICIENTS,
        ),
    )
    use_ret_steps: bool = field(default=True, metadata=meta("Use the ret-steps polynomial (else the non-ret one)."))

    def check(self) -> None:
        check_choice("preset", self.preset, PRESETS)
        if self.thresh is not None and not isinstance(self.thresh, (int, float)):
            raise ConfigError(f"thresh must be a number, got {self.thresh!r}")
        if self.ret_steps is not None:
            check_int("ret_steps", self.ret_steps, 0)
        self._check_kv()
        check_choice("coefficients", self.coefficients, RESCALE_COEFFICIENTS, optional=True)


model_defaults = by_size(MODEL_DEFAULTS)


def _build(s: FlowCacheSettings, spec: ModelSpec) -> FlowCache:
    from accel.cache.flowcache import FlowCache

    d = model_defaults(spec)
    thresh = s.thresh if s.thresh is not None else d[s.preset]
    return FlowCache(thresh, s.ret_steps, s.coefficients or d["coefficients"], s.use_ret_steps)


def _note(spec: ModelSpec) -> str:
    d = model_defaults(spec)
    poly = d["coefficients"] or "none (raw relative L1)"
    return f"FlowCache thresholds slow {d['slow']:g} / fast {d['fast']:g}, polynomial {poly}"


METHOD = Method(
    "flowcache",
    FlowCacheSettings,
    ("skyreels",),
    installers.chunked,
    CACHE,
    lambda spec: {"flowcache-slow": {"preset": "slow"}, "flowcache-fast": {"preset": "fast"}},
    order=30,
    colour="#2ca02c",
    cache=_build,
    summary="per-chunk residual reuse with accumulators on the timestep modulation; KV compression",
    model_defaults=model_defaults,
    defaults_note=_note,
)
