"""Sparse attention methods for Wan-family self-attention, installed as diffusers attention processors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from accel.attention.base import AttentionMethod, BenchAttnProcessor, installed
from accel.attention.svg2 import SVG2
from accel.attention.xattention import XAttention, select_blocks
from accel.models import run_pipeline
from accel.settings import parallel_balance
from accel.target import Generation, Target

__all__ = ["SVG2", "AttentionMethod", "BenchAttnProcessor", "XAttention", "install_on_pipeline", "installed",
           "select_blocks"]  # fmt: skip


@contextmanager
def install_on_pipeline(target: Target, method: AttentionMethod | None = None) -> Iterator[Generation]:
    """``method`` on every ``attn1`` of diffusers' own pipeline (None, dense: diffusers' attention through the same
    processor, so the run is tracked the same way); yields the generation."""
    cfg, spec, pipe = target.cfg, target.spec, target.pipe
    method = method or AttentionMethod(target.recorder)
    with installed(pipe.transformer, method, cfg.steps, *parallel_balance(cfg.parallel)) as info:

        def run(progress):
            video = run_pipeline(pipe, cfg, spec, progress)
            extra = {"transformer_calls": info.call + 1}
            if method.balancer is not None:  # context parallelism: the head assignment and its imbalance
                extra["head_balance"] = method.balancer.summary()
            return video, extra

        yield run
