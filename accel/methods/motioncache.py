"""MotionCache (METHODS 4): per-token, motion-weighted reuse for diffusion-forcing models: only tokens whose
accumulated, motion-weighted change crossed the threshold recompute; KV compression of clean chunks. The algorithm
is :mod:`accel.cache.motioncache` in the chunked runner (:mod:`accel.cache.chunked`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from accel.methods import CACHE, Method, by_size, installers
from accel.methods.chunk_caches import KVSettings
from accel.schema import Event
from accel.settings import RESCALE_COEFFICIENTS, check_choice, check_int, check_unit, meta

if TYPE_CHECKING:
    from accel.cache.motioncache import MotionCache
    from accel.models import ModelSpec

# Per-token threshold, rescale polynomial (FlowCache's fits; none on the embedded models) and phase-1 length per
# model size (None: the VBench setup's 6 updating steps of 50, scaled to the run like the warm-ups).
MODEL_DEFAULTS = {
    "tiny": {"thresh": 0.1, "coefficients": "none", "phase1_updates": None},
    "pocket": {"thresh": 0.1, "coefficients": "none", "phase1_updates": None},
    "1.3b": {"thresh": 0.1, "coefficients": "1.3b", "phase1_updates": None},
    "14b": {"thresh": 0.1, "coefficients": "14b", "phase1_updates": None},
}


@dataclass(frozen=True)
class MotionCacheSettings(KVSettings):
    """MotionCache: per-token, motion-weighted reuse for diffusion-forcing models (METHODS 4)."""

    method: ClassVar[str] = "motioncache"
    thresh: float | None = field(
        default=None,
        metadata=meta("Per-token accumulator threshold; empty = the model's (0.1); <= 0: no reuse.",
                       abbrev="t"),
    )  # fmt: skip
    warmup: int | None = field(
        default=None,
        metadata=meta("Steps of each chunk computed fully before reuse starts; empty = the reference's 4 of 50 "
                       "steps scaled to the run (2 of 20)."),
    )  # fmt: skip
    phase1_updates: int | None = field(
        default=None,
        metadata=meta("Updating steps with uniform weights before motion weights apply; empty = the VBench setup's "
                       "6 of 50 steps scaled to the run (2 of 20; the reference demo uses 3)."),
    )  # fmt: skip
    floor: float = field(default=0.6, metadata=meta("Lowest motion weight; weights span [floor, 1] per frame."))
    min_update_ratio: float = field(
        default=0.4, metadata=meta("Defer (skip, keep accumulators) updates of fewer than this share of tokens.")
    )
    vote: float = field(default=0.5, metadata=meta("A position updates in all frames if more than this share need it."))
    coefficients: str | None = field(
        default=None,
        metadata=meta(
            "Rescale polynomial of the distance: 1.3b, 14b or none; empty = the model's.",
            choices=RESCALE_COEFFICIENTS,
        ),
    )

    def check(self) -> None:
        if self.warmup is not None:
            check_int("warmup", self.warmup, 0)
        if self.phase1_updates is not None:
            check_int("phase1_updates", self.phase1_updates, 0)
        for name in ("floor", "min_update_ratio", "vote"):
            check_unit(name, getattr(self, name), open_low=False)
        check_choice("coefficients", self.coefficients, RESCALE_COEFFICIENTS, optional=True)
        self._check_kv()


model_defaults = by_size(MODEL_DEFAULTS)


def _build(s: MotionCacheSettings, spec: ModelSpec) -> MotionCache:
    from accel.cache.motioncache import MotionCache

    d = model_defaults(spec)
    thresh = s.thresh if s.thresh is not None else d["thresh"]
    phase1 = s.phase1_updates if s.phase1_updates is not None else d["phase1_updates"]
    coefficients = s.coefficients or d["coefficients"]
    return MotionCache(thresh, s.warmup, phase1, s.floor, s.min_update_ratio, s.vote, coefficients)


METHOD = Method(
    "motioncache",
    MotionCacheSettings,
    ("skyreels",),
    installers.chunked,
    CACHE | {Event.CHUNK_PARTIAL, Event.CHUNK_DEFER},
    lambda spec: {"motioncache": {}},
    order=40,
    colour="#9467bd",
    cache=_build,
    summary="per-token, motion-weighted reuse: only tokens whose accumulator crossed the threshold recompute",
    model_defaults=model_defaults,
    defaults_note=lambda spec: f"MotionCache threshold {model_defaults(spec)['thresh']:g}",
)
