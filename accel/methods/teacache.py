"""TeaCache (ali-vilab/TeaCache, its Wan2.1 variant): skip the whole block stack while the rescaled change of the
timestep embedding, accumulated per CFG branch, stays under a threshold, reusing the stack's last residual. The
algorithm is :mod:`accel.cache.teacache`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from accel.errors import ConfigError
from accel.methods import Method
from accel.schema import Event
from accel.settings import RESCALE_COEFFICIENTS, MethodSettings, check_choice, check_int, meta
from accel.target import Generation, Target

if TYPE_CHECKING:
    from accel.models import ModelSpec

PRESETS = ("slow", "fast")
# Thresholds (slow, fast) by (model size, use_ret_steps) from TeaCache4Wan2.1's README, and the polynomial of each
# size (teacache_generate.py). The embedded models have no fitted polynomial: the raw relative L1 of e. On pocket-wan
# at its defaults (docs/measurements/teacache_embedded.txt) 0.1 skips 12 of 40 calls at 47.4 dB against dense and
# 0.2 skips 24 at 27.6 dB (0.05 skips none).
THRESHOLDS = {
    ("1.3b", False): {"slow": 0.05, "fast": 0.08},
    ("1.3b", True): {"slow": 0.05, "fast": 0.10},
    ("14b", False): {"slow": 0.14, "fast": 0.20},
    ("14b", True): {"slow": 0.10, "fast": 0.20},
}
EMBEDDED = {"coefficients": "none", "slow": 0.1, "fast": 0.2}


@dataclass(frozen=True)
class TeaCacheSettings(MethodSettings):
    """TeaCache: whole-step reuse of the block stack's residual, driven by the timestep embedding (Wan2.1)."""

    method: ClassVar[str] = "teacache"
    preset: str = field(
        default="slow",
        metadata=meta("Threshold preset, slow or fast (the reference's per model; the app shows each).", abbrev="",
                      choices=PRESETS),
    )  # fmt: skip
    thresh: float | None = field(
        default=None,
        metadata=meta("Accumulator threshold; empty = the preset's value for the model; <= 0 disables reuse.",
                      abbrev="t"),
    )  # fmt: skip
    use_ret_steps: bool = field(
        default=False,
        metadata=meta("Compare the projected modulation e0 with the ret-steps polynomial and compute the first 5 of 50 "
                      "steps (the reference's --use_ret_steps); off: the timestep embedding e, the first and the "
                      "last step computed.", abbrev="ret"),
    )  # fmt: skip
    ret_steps: int | None = field(
        default=None,
        metadata=meta("Leading steps always computed; empty = the reference's (5 of 50 scaled to the run with "
                      "ret-steps, else 1)."),
    )  # fmt: skip
    coefficients: str | None = field(
        default=None,
        metadata=meta("Rescale polynomial: 1.3b, 14b or none (raw relative L1); empty = the model's.",
                      choices=RESCALE_COEFFICIENTS),
    )  # fmt: skip

    def check(self) -> None:
        check_choice("preset", self.preset, PRESETS)
        if self.thresh is not None and not isinstance(self.thresh, (int, float)):
            raise ConfigError(f"thresh must be a number, got {self.thresh!r}")
        if self.ret_steps is not None:
            check_int("ret_steps", self.ret_steps, 0)
        check_choice("coefficients", self.coefficients, RESCALE_COEFFICIENTS, optional=True)


def model_defaults(spec: ModelSpec, use_ret_steps: bool = False) -> dict[str, Any]:
    """Polynomial and threshold presets on ``spec`` (with or without ret-steps)."""
    if spec.size in ("tiny", "pocket"):
        return dict(EMBEDDED)
    return {"coefficients": spec.size, **THRESHOLDS[(spec.size, use_ret_steps)]}


@contextmanager
def _install(target: Target) -> Iterator[Generation]:
    from accel.cache.teacache import install

    s: TeaCacheSettings = target.cfg.settings
    d = model_defaults(target.spec, s.use_ret_steps)
    thresh = s.thresh if s.thresh is not None else d[s.preset]
    with install(target, thresh, s.coefficients or d["coefficients"], s.use_ret_steps, s.ret_steps) as run:
        yield run


def _note(spec: ModelSpec) -> str:
    d = model_defaults(spec)
    return f"TeaCache thresholds slow {d['slow']:g} / fast {d['fast']:g}, polynomial {d['coefficients']}"


METHOD = Method(
    "teacache",
    TeaCacheSettings,
    ("wan",),
    _install,
    frozenset({Event.BASELINE_BLOCKS, Event.BASELINE_UNITS}),
    lambda spec: {"teacache-slow": {"preset": "slow"}, "teacache-fast": {"preset": "fast"}},
    order=50,
    colour="#e377c2",
    summary="whole-step reuse of the block stack's residual while the rescaled timestep-embedding change stays small",
    model_defaults=model_defaults,
    defaults_note=_note,
)
