"""Named profiler ranges that cost nothing when no profiler is running.

Methods wrap their phases in :func:`named_range` with the names in :data:`RANGES`; only while a
:class:`profiling.profiler.RunProfiler` is active do they become ``torch.profiler.record_function``
ranges (a plain ``record_function`` costs microseconds even with no profiler attached).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

RANGES = (
    "text.encode", "vae.decode", "denoise.step", "layer", "mask.predict", "mask.reuse_check", "attn.sparse",
    "attn.dense", "cache.decide", "cache.recompute", "kv.compress",
)  # fmt: skip
_ACTIVE = False


def set_active(active: bool) -> None:
    global _ACTIVE
    _ACTIVE = active


def is_active() -> bool:
    return _ACTIVE


@contextlib.contextmanager
def named_range(name: str) -> Iterator[None]:
    """A ``record_function`` range while profiling, else nothing."""
    if not _ACTIVE:
        yield
        return
    with torch.profiler.record_function(name):
        yield
