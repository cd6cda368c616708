"""SpargeAttn (thu-ml/SpargeAttn): training-free block selection from pooled Q and K, cumulative top-p over the
pooled softmax, self-similarity judgement; with Temporal Mask Reuse and Error-guided Budgeted Calibration (HASTE on
SpargeAttn: EBC calibrates its per-head ``cdf_threshold``). The algorithm is :mod:`accel.attention.sparge`.

Defaults are the reference's CDF API (``spas_sage2_attn_meansim_cuda``): ``simthreshd1`` 0.6, ``cdfthreshd`` 0.98,
query blocks of 128 and key blocks of 64 tokens (its non-sm90 layout); every step sparse (the reference has no dense
warm-up). The TMR delta is XAttention's (secondhand for Wan2.1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from accel.methods import by_size
from accel.methods.headwise import headwise_method
from accel.settings import HeadwiseSettings, check_int, check_unit, meta

if TYPE_CHECKING:
    from accel.attention.sparge import SpargeAttention
    from accel.models import ModelSpec
    from accel.telemetry import Recorder

MODEL_DEFAULTS = {
    "tiny": {"blocks": (64, 64), "tmr_delta": 3.0},
    "pocket": {"blocks": (16, 16), "tmr_delta": 3.0},
    "1.3b": {"blocks": (128, 64), "tmr_delta": 30.0},
    "14b": {"blocks": (128, 64), "tmr_delta": 30.0},
}


@dataclass(frozen=True)
class SpargeSettings(HeadwiseSettings):
    """SpargeAttn: pooled-score cumulative selection of key blocks, blocks that are not self-similar always kept."""

    method: ClassVar[str] = "sparge"
    threshold_name: ClassVar[str] = "cdf_threshold"
    ebc_candidates: ClassVar[tuple[float, ...]] = (0.95, 0.98, 0.99)  # around its default: 0.85 is near-empty rows
    ebc_reference: ClassVar[float] = 0.98
    cdf_threshold: float | tuple[float, ...] = field(
        default=0.98,
        metadata=meta("Cumulative pooled probability kept per query block (the crossing block is not); 1 = dense. A "
                      "list gives one per head or per layer and head.", abbrev="cdf"),
    )  # fmt: skip
    sim_threshold: float = field(
        default=0.6,
        metadata=meta("A block whose mean token cosine similarity is at most this is not self-similar and always "
                      "computed (1: every block, dense).", abbrev="sim"),
    )  # fmt: skip
    warmup_steps: int = field(default=0, metadata=meta("Leading denoising steps computed densely.", abbrev="w"))

    def check(self) -> None:
        if isinstance(self.cdf_threshold, list):
            object.__setattr__(self, "cdf_threshold", tuple(float(t) for t in self.cdf_threshold))
        values = self.cdf_threshold if isinstance(self.cdf_threshold, tuple) else (self.cdf_threshold,)
        for t in values:
            check_unit("cdf_threshold", float(t))
        if not -1 <= self.sim_threshold <= 1:
            from accel.errors import ConfigError

            raise ConfigError(f"sim_threshold must be in [-1, 1], got {self.sim_threshold}")
        check_int("warmup_steps", self.warmup_steps, 0)
        self._check_headwise()

    def dense_steps(self, num_steps: int) -> int:
        return self.warmup_steps


model_defaults = by_size(MODEL_DEFAULTS)


def _build(
    settings: SpargeSettings, spec: ModelSpec, recorder: Recorder | None = None, seed: int = 0
) -> SpargeAttention:
    from accel.attention.sparge import SpargeAttention

    d = model_defaults(spec)
    return SpargeAttention(settings, d["blocks"], recorder, model=spec.name, tmr_delta=d["tmr_delta"])


METHOD = headwise_method(
    SpargeSettings,
    _build,
    22,
    "pooled Q/K block scores, cumulative top-p selection, blocks that are not self-similar always computed",
    model_defaults,
    lambda spec: "SpargeAttn blocks {}x{}, TMR delta {:g}".format(
        *model_defaults(spec)["blocks"], model_defaults(spec)["tmr_delta"]
    ),
    "#7f7f7f",
)
