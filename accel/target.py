"""What a method is installed on and what its installer yields: the interface between the runner and a method's
implementation (:mod:`accel.attention`, :mod:`accel.cache`). Imports nothing of the project at run time, so the
implementations depend on it and not on the registry (:mod:`accel.methods`)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from accel.config import RunConfig
    from accel.models import ModelSpec
    from accel.telemetry import Recorder

ProgressFn = Callable[[int, int], None]  # (step done, steps in all)
Generation = Callable[["ProgressFn | None"], "tuple[np.ndarray, dict[str, Any]]"]  # -> frames (F,H,W,3), metrics


@dataclass(frozen=True)
class Target:
    """What a method is installed on for one generation: the loaded pipeline, the resolved run and its recorder."""

    pipe: Any
    cfg: RunConfig
    spec: ModelSpec
    recorder: Recorder


Installer = Callable[[Target], AbstractContextManager[Generation]]
