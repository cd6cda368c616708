"""Radial Attention (mit-han-lab/radial-attention): a static spatio-temporal energy-decay block mask, the same for
every head, layer and step, on the block-sparse kernels, with the reference's dense first steps and layers. The mask
is :mod:`accel.attention.radial`; it runs through :class:`accel.attention.block_mask.BlockMaskAttention`.

Reference settings (its Wan2.1 scripts, ``scripts/wan_t2v_inference.sh``: 14B at 768x1280x69): decay 0.2, layer 0
dense, the first 12 of 50 steps dense, 128-token blocks. No setting was tuned for 1.3B or 480p: the bench keeps
those values and scales the dense steps to the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from accel.methods import BALANCE, Method, by_size, installers, parallel_ok
from accel.schema import Event
from accel.settings import MethodSettings, check_int, check_unit, meta, scaled_steps

if TYPE_CHECKING:
    import torch

    from accel.attention.base import AttentionMethod
    from accel.models import ModelSpec
    from accel.telemetry import Recorder
    from accel.tracking import StepInfo

REFERENCE_DENSE_STEPS = 12  # of 50 (scripts/wan_t2v_inference.sh --dense_timesteps 12)
# block size in tokens per model size (ModelSpec.size): the reference's 128 on Wan2.1, XAttention's on the embedded
MODEL_DEFAULTS = {"tiny": {"block_size": 64}, "pocket": {"block_size": 16}, "1.3b": {"block_size": 128},
                  "14b": {"block_size": 128}}  # fmt: skip


@dataclass(frozen=True)
class RadialSettings(MethodSettings):
    """Radial Attention: a static energy-decay mask; the in-frame window halves as the temporal distance doubles."""

    method: ClassVar[str] = "radial"
    decay: float = field(
        default=0.2, metadata=meta("Decay factor of the window (the reference's decay_factor; 1 = widest).", abbrev="")
    )
    warmup_steps: int | None = field(
        default=None,
        metadata=meta("Leading denoising steps computed densely; empty = the reference's 12 of 50 scaled to the run "
                      "(5 of 20).", abbrev="w"),
    )  # fmt: skip
    dense_layers: int = field(default=1, metadata=meta("Leading layers computed densely (the reference's 1)."))

    def check(self) -> None:
        check_unit("decay", self.decay)
        if self.warmup_steps is not None:
            check_int("warmup_steps", self.warmup_steps, 0)
        check_int("dense_layers", self.dense_layers, 0)

    def dense_steps(self, num_steps: int) -> int:
        return self.warmup_steps if self.warmup_steps is not None else scaled_steps(REFERENCE_DENSE_STEPS, num_steps)

    def attention_settings(self) -> MethodSettings:
        return self


model_defaults = by_size(MODEL_DEFAULTS)


def _build(
    settings: RadialSettings, spec: ModelSpec, recorder: Recorder | None = None, seed: int = 0
) -> AttentionMethod:
    from accel.attention.block_mask import BlockMaskAttention
    from accel.attention.radial import radial_mask

    def mask(heads: int, nq: int, nk: int, block: int, info: StepInfo) -> torch.Tensor:
        frames, h, w = info.grid
        return radial_mask(frames, h * w, settings.decay, block).expand(heads, nq, nk)

    block = model_defaults(spec)["block_size"]
    return BlockMaskAttention("radial", mask, block, settings.dense_steps, recorder, settings.dense_layers)


METHOD = Method(
    "radial",
    RadialSettings,
    ("wan",),
    installers.attention,
    frozenset({Event.DENSITY, Event.DENSE_WARMUP}) | BALANCE,
    lambda spec: {"radial": {}},
    order=25,
    attention=_build,
    parallel=parallel_ok,  # one static mask for every head, so a rank's share of heads is exact
    summary="static energy-decay mask: frame neighbours dense, the in-frame window halving as frames get farther",
    model_defaults=model_defaults,
    defaults_note=lambda spec: f"Radial block {model_defaults(spec)['block_size']}",
    colour="#17becf",
)
