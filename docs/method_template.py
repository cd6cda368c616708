"""Temporal window attention: each query block attends to the key blocks within ``window`` latent frames of it, a
static pattern (no estimation) in the spirit of sliding-window video attention. Copy this file to
``accel/methods/<name>.py`` to add a method: the registry finds its ``METHOD``; the CLI flags, the app's widgets, the
benchmark variants and the Sparsity view follow with no other edit (``docs/architecture.md``, "The method contract").

Uncertain details are settings with a documented default: ``window`` (latent frames each side, default 1) and
``warmup_steps`` (leading dense steps, default 2). Runs on Wan2.1 only: in chunked runs a query chunk's tokens and
its keys (context + chunk) are different sequences, so a frame window would have to place both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from accel.methods import Method, installers
from accel.schema import Event
from accel.settings import MethodSettings, check_int, meta

if TYPE_CHECKING:
    import torch

    from accel.attention.base import AttentionMethod
    from accel.models import ModelSpec
    from accel.telemetry import Recorder
    from accel.tracking import StepInfo

# block size in tokens per model size (accel.model_specs.ModelSpec.size), as XAttention's
MODEL_DEFAULTS = {"tiny": {"block_size": 64}, "pocket": {"block_size": 16}, "1.3b": {"block_size": 128},
                  "14b": {"block_size": 128}}  # fmt: skip


@dataclass(frozen=True)
class WindowSettings(MethodSettings):
    """Temporal window attention: every block attends to the blocks within a few latent frames of it."""

    method: ClassVar[str] = "window"
    window: int = field(
        default=1, metadata=meta("Latent frames each side a block attends to (0: its own).", abbrev="w")
    )
    warmup_steps: int = field(default=2, metadata=meta("Leading denoising steps computed densely."))

    def check(self) -> None:
        check_int("window", self.window, 0)
        check_int("warmup_steps", self.warmup_steps, 0)

    def dense_steps(self, num_steps: int) -> int:
        return self.warmup_steps

    def attention_settings(self) -> MethodSettings:
        return self


def window_mask(window: int, heads: int, nq: int, nk: int, block: int, frame_tokens: int) -> torch.Tensor:
    """Bool ``(heads, nq, nk)``: blocks whose latent frames (``frame_tokens`` tokens each) come within ``window``
    frames of each other."""
    import torch

    def frames(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = torch.arange(n) * block
        return start // frame_tokens, (start + block - 1) // frame_tokens  # first and last frame of each block

    q_first, q_last = frames(nq)
    k_first, k_last = frames(nk)
    gap = torch.maximum(k_first[None, :] - q_last[:, None], q_first[:, None] - k_last[None, :])
    return (gap <= window).expand(heads, nq, nk)


def model_defaults(spec: ModelSpec) -> dict[str, Any]:
    return MODEL_DEFAULTS[spec.size]


def _build(
    settings: WindowSettings, spec: ModelSpec, recorder: Recorder | None = None, seed: int = 0
) -> AttentionMethod:
    from accel.attention.block_mask import BlockMaskAttention

    def mask(heads: int, nq: int, nk: int, block: int, info: StepInfo) -> torch.Tensor:
        _, h, w = info.grid
        return window_mask(settings.window, heads, nq, nk, block, h * w)

    block = model_defaults(spec)["block_size"]
    return BlockMaskAttention("window", mask, block, settings.dense_steps, recorder)


METHOD = Method(
    "window",
    WindowSettings,
    ("wan",),
    installers.attention,
    frozenset({Event.DENSITY, Event.DENSE_WARMUP}),
    lambda spec: {"window": {}, "window-w2": {"window": 2}},
    attention=_build,
    summary="static temporal window: each block attends to the blocks within a few latent frames",
    model_defaults=model_defaults,
    defaults_note=lambda spec: f"window block {model_defaults(spec)['block_size']}",
)
