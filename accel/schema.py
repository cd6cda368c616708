"""What a run folder holds, as the recorder writes it and :mod:`viz` reads it (numpy only, no torch).

* ``telemetry.parquet``: one tidy long table with the columns :data:`COLUMNS`, one row per decision;
  the ``event`` column holds an :class:`Event`.
* ``arrays.npz``: block masks bit-packed along their last axis (``np.packbits`` order), motion maps and
  other arrays, plus one JSON index under :data:`INDEX_KEY` that gives each array's :class:`ArrayKind`,
  logical shape and where it came from (step, branch, layer, chunk / group). Read it with
  :func:`read_index`; find arrays by their metadata with :func:`find_arrays`, never by parsing keys.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import numpy as np

# What the views read from config.json and metrics.json: a run whose values have other types is damaged.
CONFIG_TYPES: dict[str, type | tuple[type, ...]] = {
    "method": str, "model": str, "prompt": str, "label": str, "negative_prompt": str, "settings": dict,
    "seed": int, "fps": int, "height": int, "width": int, "frames": int, "steps": int, "guidance": (int, float),
    "kernels": str,
}  # fmt: skip
NUMERIC_METRICS = (
    "wall_s", "record_s", "record_loop_s", "save_s", "tokens", "layers", "heads", "density_mean",
    "density_mean_sparse", "mask_predict_s", "mask_skip_frac", "reuse_check_s", "chunk_computes", "chunk_reuses",
    "chunk_partials", "kernel_compile_s", "dense_head_frac",
)  # fmt: skip

COLUMNS = (
    "step", "timestep", "branch", "layer", "head", "chunk", "event", "value", "threshold", "density",
    "mask_ref", "seconds",
)  # fmt: skip
INDEX_KEY = "__index__"


class Event(StrEnum):
    """Every telemetry event name. What ``value``/``threshold``/``density`` mean for each is in its comment."""

    # sparse attention (accel.attention): one row per head
    DENSITY = "density"  # density: computed share of the head's query-key pairs; threshold: tau / top_p
    DENSE_WARMUP = "dense_warmup"  # one row per (step, layer) computed densely as warm-up
    # density-aware execution, per head: value 1 ran dense SDPA, 0 sparse; threshold: the limit; density: block work
    DENSE_HEAD = "dense_head"
    MASK_PREDICT = "mask_predict"  # value: heads that predicted a mask; seconds: time spent
    REUSE_CHECK = "reuse_check"  # seconds: time of the TMR drift check
    DRIFT = "drift"  # value: L1 drift of the head's pooled Q/K since its last refresh; threshold: delta
    MASK_REFRESH = "mask_refresh"  # value: 1 refreshed, 0 reused
    # chunk caches (accel.cache): one row per (schedule row, chunk, branch)
    CHUNK_COMPUTE = "chunk_compute"  # value: accumulator before the decision; threshold: the cache's
    CHUNK_REUSE = "chunk_reuse"
    CHUNK_PARTIAL = "chunk_partial"  # MotionCache recomputed a subset of the chunk's tokens
    CHUNK_DEFER = "chunk_defer"  # MotionCache skipped an update of too few tokens (accumulators kept)
    CHUNK_DONE = "chunk_done"  # the chunk finished; its K/V were frozen (commit pass)
    TOKENS_UPDATED = "tokens_updated"  # value: tokens recomputed by that decision
    KV_TOKENS = "kv_tokens"  # value: tokens in one layer's KV buffer; threshold: bytes of all buffers
    KV_COMPRESS = "kv_compress"  # value: tokens kept; threshold: tokens before compression
    # diffusers cache hooks (accel.cache.baselines): one row per transformer call
    BASELINE_BLOCKS = "baseline_blocks"  # value: blocks that computed something
    BASELINE_UNITS = "baseline_units"  # value: attn1/attn2/ffn units that computed


EVENTS = frozenset(Event)
CHUNK_DECISIONS = (Event.CHUNK_COMPUTE, Event.CHUNK_PARTIAL, Event.CHUNK_REUSE, Event.CHUNK_DEFER)


def check_events(names: Any) -> None:
    """Raise ``ValueError`` naming any entry of ``names`` that is not an :class:`Event` value."""
    unknown = sorted({str(n) for n in names} - EVENTS)
    if unknown:
        raise ValueError(f"unknown telemetry event(s) {', '.join(unknown)}; known: {', '.join(sorted(EVENTS))}")


class ArrayKind(StrEnum):
    """What an entry of ``arrays.npz`` holds (the ``kind`` of its index entry)."""

    BLOCK_MASK = "block_mask"  # bool (heads, nq, nk), bit-packed; fixed blocks (XAttention)
    CLUSTER_MASK = "cluster_mask"  # the same with q_offsets / k_offsets arrays (SVG2 clusters)
    TOKEN_COUNTS = "token_counts"  # int (latent frames, tokens per frame): MotionCache updates per token
    MOTION_WEIGHTS = "motion_weights"  # float (history, latent frames, tokens per frame): motion weights
    ARRAY = "array"


MASK_KINDS = (ArrayKind.BLOCK_MASK, ArrayKind.CLUSTER_MASK)


def mask_key(step: int, branch: str, layer: int, chunk: int | None = None) -> str:
    """Key of the mask recorded at ``(step, branch, chunk, layer)``."""
    where = f"{branch}/c{chunk:02d}" if chunk is not None else branch
    return f"mask/s{step:03d}/{where}/l{layer:02d}"


def offsets_key(name: str, key: str) -> str:
    """Key of a mask's ``q_offsets`` / ``k_offsets`` array."""
    return f"{name}/{key}"


def group_key(kind: ArrayKind, group: int, branch: str) -> str:
    """Key of a per-group array (MotionCache maps); group and branch are also in its index entry."""
    prefix = {ArrayKind.TOKEN_COUNTS: "motion_updates", ArrayKind.MOTION_WEIGHTS: "motion_weights"}[kind]
    return f"{prefix}/g{group:02d}/{branch}"


def read_index(arrays: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The index of a run's arrays (``{}`` when the run has none)."""
    if INDEX_KEY not in arrays:
        return {}
    return json.loads(str(arrays[INDEX_KEY]))


def find_arrays(index: Mapping[str, dict[str, Any]], kind: ArrayKind | tuple[ArrayKind, ...], **meta: Any) -> list[str]:
    """Keys of the arrays of ``kind`` whose index entries match every ``meta`` item, in key order."""
    kinds = {str(k) for k in (kind if isinstance(kind, tuple) else (kind,))}
    return sorted(
        key
        for key, entry in index.items()
        if entry.get("kind") in kinds and all(entry.get(name) == value for name, value in meta.items())
    )


def unpack_bits(packed: np.ndarray, n: int) -> np.ndarray:
    """Inverse of the recorder's bit packing for a last axis of length ``n``."""
    return np.unpackbits(packed, axis=-1, count=n).astype(bool)


def load_mask(arrays: Mapping[str, Any], key: str) -> np.ndarray:
    """A recorded mask as bool ``(heads, nq, nk)`` from a run's ``arrays.npz``."""
    shape = read_index(arrays)[key]["shape"]
    return unpack_bits(np.asarray(arrays[key]), shape[-1]).reshape(shape)
