"""Sliding Tile Attention (hao-ai-lab/FastVideo): tokens in tiles of ``(t, h, w)`` latent tokens, every query tile
attending to the key tiles of a 3-D window around it, per head. The algorithm is :mod:`accel.attention.sta`.

Reference setting (Wan2.1-T2V-14B at 768x1280x69, 18x48x80 tokens): tiles (6, 8, 8), per-(step, layer, head)
windows from a search against full attention (``assets/mask_strategy_wan.json``, not readable in the stored copy of
the repository), the first 12 of 50 steps dense (the Wan search script's ``skip_time_steps``; the pipeline default is
15). Without that file the bench's default is one window for every head, (3, 3, 3) tiles, one of the reference's
six Wan candidates and the only one local on all three axes; a table in the reference's format can be given. The
embedded models' tiles are (1, 4, 4): 16 tokens, their block size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from accel.errors import ConfigError
from accel.methods import BALANCE, Method, by_size, installers, parallel_ok
from accel.schema import Event
from accel.settings import MethodSettings, check_int, meta, scaled_steps

if TYPE_CHECKING:
    from accel.attention.base import AttentionMethod
    from accel.models import ModelSpec
    from accel.telemetry import Recorder

REFERENCE_DENSE_STEPS = 12  # of 50
MODEL_DEFAULTS = {"tiny": {"tile": (1, 4, 4)}, "pocket": {"tile": (1, 4, 4)}, "1.3b": {"tile": (6, 8, 8)},
                  "14b": {"tile": (6, 8, 8)}}  # fmt: skip


def _check_triple(name: str, value: Any) -> tuple[int, int, int]:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise ConfigError(f"{name} must be three integers (frames, height, width), got {value!r}")
    for v in value:
        check_int(name, v, 1)
    return tuple(value)


@dataclass(frozen=True)
class STASettings(MethodSettings):
    """Sliding Tile Attention: tiles of latent tokens, each attending to the tiles of a 3-D window around it."""

    method: ClassVar[str] = "sta"
    window: tuple[int, ...] = field(
        default=(3, 3, 3),
        metadata=meta("Window in tiles (frames, height, width), every head; odd sizes are centred, shifted inward at "
                      "the borders.", abbrev="win", join="x"),
    )  # fmt: skip
    tile: tuple[int, ...] | None = field(
        default=None,
        metadata=meta("Tile in latent tokens (frames, height, width); empty = the model's (Wan2.1 6,8,8; embedded "
                      "1,4,4). A grid it does not divide gets smaller last tiles (the bench's extension)."),
    )  # fmt: skip
    window_table: str | None = field(
        default=None,
        metadata=meta("Per-(step, layer, head) windows in the reference's mask-strategy JSON "
                      "({'step_layer_head': [kt, kh, kw]}); missing entries take --window.", abbrev="tab",
                      flag_only=True),
    )  # fmt: skip
    warmup_steps: int | None = field(
        default=None,
        metadata=meta("Leading denoising steps computed densely; empty = the reference's 12 of 50 scaled to the run.",
                      abbrev="w"),
    )  # fmt: skip

    def check(self) -> None:
        object.__setattr__(self, "window", _check_triple("window", self.window))
        if self.tile is not None:
            object.__setattr__(self, "tile", _check_triple("tile", self.tile))
        if self.window_table is not None and not str(self.window_table).strip():
            raise ConfigError("window_table must be a path to a window table")
        if self.warmup_steps is not None:
            check_int("warmup_steps", self.warmup_steps, 0)

    def dense_steps(self, num_steps: int) -> int:
        return self.warmup_steps if self.warmup_steps is not None else scaled_steps(REFERENCE_DENSE_STEPS, num_steps)

    def attention_settings(self) -> MethodSettings:
        return self


model_defaults = by_size(MODEL_DEFAULTS)


def _build(settings: STASettings, spec: ModelSpec, recorder: Recorder | None = None, seed: int = 0) -> AttentionMethod:
    from accel.attention.sta import SlidingTileAttention, load_windows

    table = load_windows(settings.window_table) if settings.window_table else {}

    def windows(step: int, layer: int, heads: int) -> list[tuple[int, int, int]]:
        return [table.get((step, layer, h), settings.window) for h in range(heads)]

    tile = settings.tile or model_defaults(spec)["tile"]
    return SlidingTileAttention(tile, windows, settings.dense_steps, recorder)


METHOD = Method(
    "sta",
    STASettings,
    ("wan",),
    installers.attention,
    frozenset({Event.DENSITY, Event.DENSE_WARMUP}) | BALANCE,
    lambda spec: {"sta": {}},
    order=27,
    attention=_build,
    parallel=parallel_ok,  # windows are per global head (the rank's heads get theirs), so a rank's share is exact
    summary="tiles of latent tokens, each attending to the tiles of a 3-D window around it, per head",
    model_defaults=model_defaults,
    defaults_note=lambda spec: "STA tile {}".format(",".join(map(str, model_defaults(spec)["tile"]))),
    colour="#bcbd22",
)
