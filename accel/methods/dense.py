"""Dense: full attention through diffusers' own attention dispatch, the reference every method is compared with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from accel.methods import CHUNKED, FAMILIES, Method, installers, parallel_ok
from accel.settings import MethodSettings


@dataclass(frozen=True)
class DenseSettings(MethodSettings):
    """Full attention through diffusers' own attention dispatch (the reference)."""

    method: ClassVar[str] = "dense"


METHOD = Method(
    "dense",
    DenseSettings,
    FAMILIES,
    installers.attention,
    CHUNKED,
    lambda spec: {"dense": {}},
    order=0,
    colour="#555555",
    summary="diffusers' own attention (bit-identical output); the reference",
    parallel=parallel_ok,
)
