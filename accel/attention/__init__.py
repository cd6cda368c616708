"""Sparse attention methods for Wan-family self-attention, installed as diffusers attention processors."""

from __future__ import annotations

from accel.attention.base import AttentionMethod, BenchAttnProcessor, installed
from accel.attention.svg2 import SVG2
from accel.attention.xattention import XAttention, select_blocks
from accel.config import DenseSettings, MethodSettings, SVG2Settings, XAttentionSettings
from accel.models import ModelSpec
from accel.telemetry import Recorder

__all__ = ["SVG2", "AttentionMethod", "BenchAttnProcessor", "XAttention", "build_method", "installed", "select_blocks"]


def build_method(settings: MethodSettings, spec: ModelSpec, recorder: Recorder | None = None, seed: int = 0):
    """The attention method for ``settings`` with the model's block size and cluster counts filled in."""
    if isinstance(settings, DenseSettings):
        return AttentionMethod(recorder)
    delta = spec.tmr_delta.get(settings.method, 0.0)
    if isinstance(settings, XAttentionSettings):
        return XAttention(settings, spec.block_size, recorder, model=spec.name, tmr_delta=delta)
    if isinstance(settings, SVG2Settings):
        return SVG2(settings, spec.svg2_clusters, recorder, seed=seed, model=spec.name, tmr_delta=delta)
    raise TypeError(f"no attention method for {type(settings).__name__}")
