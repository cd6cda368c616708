"""XAttention (METHODS 1.1): strided antidiagonal block scoring, per query-block top-tau selection, block-sparse
attention; with Temporal Mask Reuse and Error-guided Budgeted Calibration (the head-wise add-ons). The algorithm is
:mod:`accel.attention.xattention`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from accel.errors import ConfigError
from accel.methods import by_size
from accel.methods.headwise import headwise_method
from accel.settings import HeadwiseSettings, check_int, check_unit, meta

if TYPE_CHECKING:
    from accel.attention.xattention import XAttention
    from accel.models import ModelSpec
    from accel.telemetry import Recorder

# Block size B and TMR refresh threshold per model size. Wan2.1 128 (the reference's); the TMR delta is on raw pooled
# Q/K drift, model-scale dependent: Wan2.1 30 is secondhand; a head's measured step-to-step drift on tiny-wan is
# ~1.4 (0.9-2.1), so the embedded models refresh after about two steps (3.0).
MODEL_DEFAULTS = {
    "tiny": {"block_size": 64, "tmr_delta": 3.0},
    "pocket": {"block_size": 16, "tmr_delta": 3.0},
    "1.3b": {"block_size": 128, "tmr_delta": 30.0},
    "14b": {"block_size": 128, "tmr_delta": 30.0},
}


def _check_tau(tau: float | tuple[float, ...]) -> None:
    values = tau if isinstance(tau, (list, tuple)) else [tau]
    if not values:
        raise ConfigError("tau table is empty")
    for t in values:
        if not isinstance(t, (int, float)) or isinstance(t, bool):
            raise ConfigError(f"tau must be a number or a list of numbers, got {t!r}")
        check_unit("tau", float(t))


@dataclass(frozen=True)
class XAttentionSettings(HeadwiseSettings):
    """XAttention: strided antidiagonal block scoring + per-row top-p block selection (METHODS 1.1)."""

    method: ClassVar[str] = "xattention"
    threshold_name: ClassVar[str] = "tau"
    tau: float | tuple[float, ...] = field(
        default=0.9,
        metadata=meta(
            "Cumulative block-score threshold per query block (0, 1]; 1 = dense. A list gives one per head "
            "(heads) or per layer and head (layers x heads, row-major).",
            abbrev="tau",
        ),
    )
    stride: int = field(default=8, metadata=meta("Antidiagonal stride S: scoring costs about 1/S of QK^T.", abbrev="s"))
    block_size: int | None = field(
        default=None,
        metadata=meta(
            "Block size B in tokens (multiple of stride); empty = the model's (Wan2.1 128; the app shows each).",
            abbrev="b",
        ),
    )
    warmup_steps: int = field(
        default=5, metadata=meta("Leading denoising steps computed densely (5 of 50 in the reference).", abbrev="w")
    )
    dense_above: float | None = field(
        default=None,
        metadata=meta(
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
        check_int("stride", self.stride, 1)
        if self.block_size is not None:
            check_int("block_size", self.block_size, 1)
            if self.block_size % self.stride:
                raise ConfigError(f"block_size {self.block_size} must be a multiple of stride {self.stride}")
        check_int("warmup_steps", self.warmup_steps, 0)
        if self.dense_above is not None:
            check_unit("dense_above", self.dense_above, open_low=False)
        self._check_headwise()

    def dense_steps(self, num_steps: int) -> int:
        return self.warmup_steps


model_defaults = by_size(MODEL_DEFAULTS)


def _build(
    settings: XAttentionSettings, spec: ModelSpec, recorder: Recorder | None = None, seed: int = 0
) -> XAttention:
    from accel.attention.xattention import XAttention

    d = model_defaults(spec)
    return XAttention(settings, d["block_size"], recorder, model=spec.name, tmr_delta=d["tmr_delta"])


METHOD = headwise_method(
    XAttentionSettings,
    _build,
    10,
    "strided antidiagonal block scoring, per query-block top-tau selection, block-sparse attention",
    model_defaults,
    lambda spec: "XAttention block {block_size}, TMR delta {tmr_delta:g}".format(**model_defaults(spec)),
    "#1f77b4",
)
