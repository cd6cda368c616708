"""A run's configuration: :class:`RunConfig` (model, method and its settings, prompt, sampling) and the run-level
limits and choices, validated on construction. A method's settings are declared in its module of
:mod:`accel.methods` on the bases of :mod:`accel.settings`; bad values raise :class:`ConfigError` with a one-line
message that says what is wrong and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from accel.errors import ConfigError
from accel.methods import settings_for
from accel.settings import (
    COMMIT_MODES,
    MethodSettings,
    check_choice,
    check_fields_finite,
    check_int,
    parse_parallel,
)

__all__ = ["COMMIT_MODES", "DEFAULT_MODEL", "FORCING", "KERNEL_BACKENDS", "MAX_FPS", "MAX_REPEATS", "SEED_LIMIT",
           "ConfigError", "RunConfig", "parse_parallel", "settings_for"]  # fmt: skip

# The app's and CLI's model when none is named: the trained pocket model under assets/ (accel.training.wan).
DEFAULT_MODEL = "pocket-wan"

KERNEL_BACKENDS = ("auto", "triton", "flex", "torch")  # accel.kernels.dispatch.BACKENDS (config imports no torch)
MAX_REPEATS = 20  # timing repeats of one run (RunConfig.repeats)
SEED_LIMIT = 2**63  # seeds are in [0, 2**63): what torch.Generator.manual_seed takes as a signed 64-bit integer
MAX_FPS = 240  # frame rate of the saved video (RunConfig.fps): beyond it a video of a few frames lasts no time
# the diffusion-forcing arguments of SkyReels-V2 runs (RunConfig fields; None / the first choice = default)
FORCING = ("ar_step", "causal_block_size", "base_num_frames", "overlap_history", "addnoise_condition", "kv_commit")


@dataclass(frozen=True)
class RunConfig:
    """One generation: model, method and its settings, prompt and sampling parameters.

    ``None`` for height/width/frames/steps/guidance means the model's default
    (see :class:`accel.models.ModelSpec`); :meth:`resolve` fills them in.
    """

    prompt: str
    model: str = DEFAULT_MODEL
    method: str = "dense"
    settings: MethodSettings | None = None  # None = the method's defaults
    negative_prompt: str = ""
    seed: int = 0
    height: int | None = None
    width: int | None = None
    frames: int | None = None
    steps: int | None = None
    guidance: float | None = None
    fps: int = 16
    ar_step: int | None = None
    causal_block_size: int | None = None
    base_num_frames: int | None = None
    overlap_history: int | None = None
    addnoise_condition: float | None = None
    kv_commit: str = "last-step"  # COMMIT_MODES: how chunked (SkyReels-V2) runs freeze a finished chunk's K/V
    device: str | None = None
    dtype: str | None = None
    kernels: str | None = None  # kernel backend (auto | triton | flex | torch); None = $ACCEL_KERNELS, else auto
    repeats: int = 1  # the generation runs this many times; its times are the median (the video is the first's)
    parallel: str | None = None  # context parallelism, "ulysses=N[,balance=...]": one process per rank (accel.parallel)

    def __post_init__(self) -> None:
        if self.settings is None or isinstance(self.settings, dict):
            object.__setattr__(self, "settings", settings_for(self.method, self.settings))
        elif self.settings.method != self.method:
            raise ConfigError(f"settings are for {self.settings.method!r} but the method is {self.method!r}")
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ConfigError("prompt must be a non-empty string")
        check_int("seed", self.seed, 0)
        if self.seed >= SEED_LIMIT:
            raise ConfigError(f"seed must be below 2**63 = {SEED_LIMIT}, got {self.seed}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None:
                check_int(name, value, 16)
                if value % 16:
                    lo, hi = value // 16 * 16, (value // 16 + 1) * 16
                    raise ConfigError(
                        f"{name} must be a multiple of 16 (VAE 8x and patch 2x), got {value}: use {lo} or {hi}"
                    )
        if self.frames is not None:
            check_int("frames", self.frames, 1)
            if (self.frames - 1) % 4:
                lo = (self.frames - 1) // 4 * 4 + 1
                raise ConfigError(
                    f"frames must be 4k+1 (VAE 4x temporal compression), got {self.frames}: use {lo} or {lo + 4}"
                )
        if self.steps is not None:
            check_int("steps", self.steps, 1)
        check_fields_finite(self)
        if self.guidance is not None and not (isinstance(self.guidance, (int, float)) and self.guidance >= 0):
            raise ConfigError(f"guidance must be a number >= 0, got {self.guidance!r}")
        check_int("fps", self.fps, 1)
        if self.fps > MAX_FPS:
            raise ConfigError(f"fps must be at most {MAX_FPS}, got {self.fps}")
        if self.ar_step is not None:
            check_int("ar_step", self.ar_step, 0)
        if self.causal_block_size is not None:
            check_int("causal_block_size", self.causal_block_size, 1)
        for name in ("base_num_frames", "overlap_history"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), 1)
        base, overlap = self.base_num_frames, self.overlap_history
        if base is not None and overlap is not None and overlap >= base:
            raise ConfigError(f"overlap_history {overlap} must be smaller than base_num_frames {base}")
        if self.addnoise_condition is not None and not 0 <= self.addnoise_condition < 1000:
            raise ConfigError(f"addnoise_condition must be in [0, 1000), got {self.addnoise_condition}")
        check_choice("kv_commit", self.kv_commit, COMMIT_MODES)
        check_int("repeats", self.repeats, 1)
        if self.repeats > MAX_REPEATS:
            raise ConfigError(f"repeats must be at most {MAX_REPEATS}, got {self.repeats}")
        if self.parallel is not None:
            parse_parallel(self.parallel)
        if self.dtype is not None and self.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.kernels is not None and self.kernels not in KERNEL_BACKENDS:
            raise ConfigError(f"kernels must be one of {', '.join(KERNEL_BACKENDS)}, got {self.kernels!r}")

    def forcing_given(self) -> list[str]:
        """The diffusion-forcing fields (:data:`FORCING`) set to anything but their default."""
        return [f.name for f in dataclasses.fields(self) if f.name in FORCING and getattr(self, f.name) != f.default]

    def resolve(self, defaults: dict[str, Any]) -> RunConfig:
        """A copy with every ``None`` sampling field replaced by ``defaults[field]`` (where the model has one)."""
        names = ("height", "width", "frames", "steps", "guidance", "ar_step", "causal_block_size", "base_num_frames",
                 "overlap_history", "addnoise_condition")  # fmt: skip
        filled = {k: defaults[k] for k in names if getattr(self, k) is None and k in defaults}
        return dataclasses.replace(self, **filled)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "settings"}
        data["settings"] = self.settings.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        data = dict(data)
        method = data.get("method", "dense")
        data["settings"] = settings_for(method, data.get("settings"))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def label(self) -> str:
        """Readable run label: method plus its non-default settings, e.g. ``xattention-tau0.8-w3``."""
        extra = self.settings.label()
        return f"{self.method}-{extra}" if extra else self.method

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
