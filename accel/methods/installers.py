"""The installers the attention methods and chunk caches share: each builds the method's sparse attention and chunk
cache from the registry and hands them to the implementation (imported here on first use)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from accel.methods import build_attention, build_cache
from accel.target import Generation, Target


@contextmanager
def attention(target: Target) -> Iterator[Generation]:
    """Attention processors on Wan's diffusers pipeline, or the chunked runner on a diffusion-forcing model."""
    if target.spec.family == "skyreels":
        with chunked(target) as run:
            yield run
        return
    from accel.attention import install_on_pipeline

    sparse = build_attention(target.cfg.settings, target.spec, target.recorder, target.cfg.seed)
    with install_on_pipeline(target, sparse) as run:
        yield run


@contextmanager
def chunked(target: Target) -> Iterator[Generation]:
    """A diffusion-forcing run through the chunked runner with the method's chunk cache and sparse attention."""
    from accel.cache.chunked import install

    cfg, spec = target.cfg, target.spec
    cache = build_cache(cfg.settings, spec)
    sparse = build_attention(cfg.settings, spec, target.recorder, cfg.seed)
    with install(target, sparse, cache) as run:
        yield run
