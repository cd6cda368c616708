"""What a calibration runs: the base run, prompts, steps, candidates and band weights (:class:`CalibrationSpec`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from accel import models
from accel.config import RunConfig
from accel.errors import ConfigError
from accel.methods import calibratable

# Calibration prompts for real checkpoints: natural captions like the seeds' evaluation prompts.
DEFAULT_PROMPTS = (
    "a red circle moves quickly left over a blue background",
    "a small boat drifts on a calm lake at sunset",
    "a dog runs across a green field",
    "clouds move slowly over snowy mountains",
)
# For the embedded models: their word-level tokenizer only knows the procedural grammar, so natural captions
# would be mostly unknown words. The app's default prompt plus training-split clips 0, 5 and 9 of
# accel.synthetic.procedural (no held-out combination, so bench-quality's prompts stay unseen).
GRAMMAR_PROMPTS = (
    "a red circle moves quickly left over a blue background",
    "a yellow circle and a blue star move slowly left over a horizontal gradient purple background",
    "a white triangle moves slowly down over a vertical gradient yellow background while the camera pans down",
    "a green square moves quickly down and a purple diamond moves slowly to the upper left over a vertical "
    "gradient blue background",
)
Progress = Callable[[str], None]


def default_prompts(model: str) -> tuple[str, ...]:
    """The calibration prompts used when none are given: the grammar's for embedded models, else captions."""
    from accel import models

    return GRAMMAR_PROMPTS if models.resolve(model).embedded else DEFAULT_PROMPTS


def _default_base() -> RunConfig:
    return RunConfig(prompt=DEFAULT_PROMPTS[0], method="xattention")


@dataclass(frozen=True)
class CalibrationSpec:
    """What to calibrate and how; the defaults follow METHODS 1.4.

    ``base`` gives the model, the sparse base method with its settings, and the sampling (sizes, steps,
    guidance, seed, device); its prompt is replaced by each calibration prompt in turn.
    """

    base: RunConfig = field(default_factory=_default_base)
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    samples_per_prompt: int = 4
    candidates: tuple[float, ...] | None = None  # None: the method's (HeadwiseSettings.ebc_candidates)
    reference: float | None = None  # None: the method's (HeadwiseSettings.ebc_reference)
    band_weights: tuple[float, float, float, float] = (1.0, 0.5, 0.01, 0.01)
    low_freq: float = 0.25
    max_probe_batch: int = 16

    @property
    def model(self) -> str:
        return self.base.model

    @property
    def method(self) -> str:
        return self.base.method

    def __post_init__(self) -> None:
        if self.method not in calibratable():
            raise ConfigError(
                f"calibration needs a sparse base method ({', '.join(calibratable())}), got {self.method!r}"
            )
        if not self.prompts or not all(isinstance(p, str) and p.strip() for p in self.prompts):
            raise ConfigError("calibration needs at least one non-empty prompt")
        settings = type(self.base.settings)
        if self.candidates is None:
            object.__setattr__(self, "candidates", settings.ebc_candidates)
        if self.reference is None:
            object.__setattr__(self, "reference", settings.ebc_reference)
        cands = tuple(float(c) for c in self.candidates)
        if len(cands) < 2 or len(set(cands)) != len(cands) or not all(0 < c <= 1 for c in cands):
            raise ConfigError(f"candidates must be at least two distinct values in (0, 1], got {self.candidates}")
        if not any(math.isclose(self.reference, c) for c in cands):
            raise ConfigError(f"the reference threshold {self.reference} must be one of the candidates {cands}")
        weights = self.band_weights
        if len(weights) != 4 or not all(math.isfinite(w) and w >= 0 for w in weights) or not sum(weights) > 0:
            raise ConfigError(
                f"band_weights must be four finite numbers >= 0, not all 0 (LL, LH, HL, HH), got {weights}"
            )
        family = models.resolve(self.model).family
        if family != "wan":  # the probes patch plain self-attention; diffusion forcing attends over chunks
            raise ConfigError(
                f"calibration runs on Wan2.1 models; {self.model} is a {family} (diffusion-forcing) model: calibrate "
                "the Wan2.1 model it is based on, or use the method's shared threshold"
            )
        if not 0 < self.low_freq < 0.5:
            raise ConfigError(f"low_freq must be in (0, 0.5), got {self.low_freq}")
        for name in ("samples_per_prompt", "max_probe_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        object.__setattr__(self, "candidates", cands)

    def run_config(self, prompt: str | None = None) -> RunConfig:
        """The base run for one prompt, with the method's own shared thresholds (no TMR, no table)."""
        settings = dataclasses.replace(self.base.settings, tmr=False, threshold_table=None)
        return dataclasses.replace(self.base, prompt=prompt or self.prompts[0], settings=settings)
