"""What a run folder holds, as the recorder writes it and :mod:`viz` reads it (numpy only, no torch).

* ``telemetry.parquet``: one tidy long table with the columns :data:`COLUMNS`, one row per decision;
  the ``event`` column holds an :class:`Event`.
* ``arrays.npz``: block masks bit-packed along their last axis (``np.packbits`` order), motion maps and
  other arrays, plus one JSON index under :data:`INDEX_KEY` that gives each array's :class:`ArrayKind`,
  logical shape and where it came from (step, branch, layer, chunk / group). Read it with
  :func:`read_index`; find arrays by their metadata with :func:`find_arrays`, never by parsing keys.
  An index or array other than the recorder writes is an error naming the file (:func:`read_index`,
  :func:`read_array`, :func:`load_mask`).
* ``config.json`` / ``metrics.json``: what the views read, and the types they assume, are declared in
  :data:`CONFIG_FIELDS` and :data:`METRIC_FIELDS` (:mod:`accel.runs` checks them when it reads a run).
"""

from __future__ import annotations

import json
import math
import reprlib
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any

import numpy as np

# A check of one stored value: None if it is fine, else why not, as the text that follows the value's name
# (``" is 'a', not a number"``, ``"[1] is -2, not an integer >= 1"``, ``".kind is missing"``).
Check = Callable[[Any], str | None]
NON_FINITE = ("inf", "-inf", "nan")  # how strict JSON holds non-finite floats (accel.runs.to_jsonable)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _not(value: Any, what: str) -> str:
    return f" is {reprlib.repr(value)}, not {what}"


def number(above: float | None = None) -> Check:
    """A JSON number (or one of :data:`NON_FINITE`), greater than ``above`` if given."""
    what = "a number" if above is None else f"a number > {above:g}"

    def check(value: Any) -> str | None:
        ok = (_is_int(value) or isinstance(value, float)) or (isinstance(value, str) and value in NON_FINITE)
        ok = ok and (above is None or float(value) > above)
        return None if ok else _not(value, what)

    return check


def integer(least: int | None = None) -> Check:
    """An integer (not a bool), at least ``least`` if given."""
    what = "an integer" if least is None else f"an integer >= {least}"
    return lambda value: None if _is_int(value) and (least is None or value >= least) else _not(value, what)


def text(value: Any) -> str | None:
    """A string."""
    return None if isinstance(value, str) else _not(value, "a string")


def list_of(item: Check, length: int | None = None) -> Check:
    """A list (of ``length`` items if given) whose every item passes ``item``."""
    what = "a list" if length is None else f"a list of {length}"

    def check(value: Any) -> str | None:
        if not isinstance(value, list) or (length is not None and len(value) != length):
            return _not(value, what)
        return next((f"[{i}]{why}" for i, v in enumerate(value) if (why := item(v)) is not None), None)

    return check


def record(required: Mapping[str, Check] | None = None, optional: Mapping[str, Check] | None = None) -> Check:
    """An object with every ``required`` field (not null) and the ``optional`` ones null or absent or valid; other
    fields are free."""
    required, optional = dict(required or {}), dict(optional or {})

    def check(value: Any) -> str | None:
        if not isinstance(value, dict):
            return _not(value, "an object")
        for name, field in {**optional, **required}.items():
            if value.get(name) is None:
                if name in required:
                    return f".{name} is missing"
            elif (why := field(value[name])) is not None:
                return f".{name}{why}"
        return None

    return check


def map_of(item: Check) -> Check:
    """An object whose every value passes ``item``."""

    def check(value: Any) -> str | None:
        if not isinstance(value, dict):
            return _not(value, "an object")
        return next((f".{k}{why}" for k, v in value.items() if (why := item(v)) is not None), None)

    return check


# What the views read from config.json and metrics.json, and the type they assume: a run whose values break it is
# damaged (a null or absent value is fine: the views treat it as not recorded).
CONFIG_FIELDS: dict[str, Check] = {
    "method": text, "model": text, "prompt": text, "label": text, "negative_prompt": text, "settings": record(),
    "seed": integer(), "fps": integer(1), "height": integer(1), "width": integer(1), "frames": integer(1),
    "steps": integer(1), "guidance": number(), "kernels": text,
}  # fmt: skip
# numbers of metrics.json whose NON_FINITE strings become floats when read
NUMERIC_METRICS = (
    "wall_s", "record_s", "record_loop_s", "save_s", "tokens", "layers", "heads", "density_mean",
    "density_mean_sparse", "mask_predict_s", "mask_skip_frac", "reuse_check_s", "chunk_computes", "chunk_reuses",
    "chunk_partials", "kernel_compile_s", "dense_head_frac", "tokens_recomputed", "tokens_scheduled",
    "block_executions", "block_executions_uncached",
)  # fmt: skip
SECONDS = list_of(number(above=0))  # timed passes: every speedup divides by them
METRIC_FIELDS: dict[str, Check] = {
    **dict.fromkeys(NUMERIC_METRICS, number()),
    "wall_s": number(above=0),
    "stages": map_of(number()),
    "timing": record(
        optional={
            "wall_s": SECONDS,
            "denoise_s": SECONDS,
            "repeats": integer(1),
            "profiled_pass_wall_s": number(),
            "load": record(),
        }
    ),
    "grid": list_of(integer(1), length=3),  # latent frames, token rows, token columns
    "warnings": list_of(text),
    "parallel": record({"kind": text, "degree": integer(2), "backend": text}),  # accel.parallel.describe
    "head_balance": record(  # accel.balance.Balancer.summary
        {"balance": text, "imbalance": number(), "imbalance_contiguous": number(), "rebalances": integer(0)},
        optional={"orders": map_of(list_of(integer(0)))},
    ),
    "device": text,
    "dtype": text,
    "kernel_backend": text,
    "kernel_calls": map_of(integer(0)),  # "<op>/<backend>": calls
    "frames_sha256": text,  # of the uint8 frames: two runs with equal hashes made the same video
}

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
    # context parallelism (accel.balance): one row per re-balanced layer; value: the imbalance it replaced (slowest
    # rank over the mean), threshold: the new order's
    REBALANCE = "rebalance"
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


_MASK_ENTRY = {"shape": list_of(integer(0), length=3), "step": integer(), "branch": text, "layer": integer()}
_MAP_ENTRY = {"group": integer(), "branch": text}
# what each kind of index entry must hold (every entry: a string ``kind``; ``shape``, where given, a list of sizes)
INDEX_FIELDS: dict[str, Check] = {
    ArrayKind.BLOCK_MASK: record(_MASK_ENTRY, {"chunk": integer()}),
    ArrayKind.CLUSTER_MASK: record(_MASK_ENTRY, {"chunk": integer(), "q_offsets": text, "k_offsets": text}),
    ArrayKind.TOKEN_COUNTS: record({**_MAP_ENTRY, "shape": list_of(integer(0), length=2)}),
    ArrayKind.MOTION_WEIGHTS: record({**_MAP_ENTRY, "shape": list_of(integer(0), length=3)}),
}
_ANY_ENTRY = record({"kind": text}, {"shape": list_of(integer(0))})


class ArraysError(ValueError):
    """arrays.npz holds an index or an array other than the recorder writes (a mapping without ``damaged``)."""


def _damaged(arrays: Mapping[str, Any], reason: str) -> Exception:
    """The error for a bad index or array: the mapping's own ``damaged(reason)`` where it has one (a run's
    arrays.npz gives a DamagedRunError naming the run and the file), else :class:`ArraysError`."""
    make = getattr(arrays, "damaged", None)
    return make(reason) if callable(make) else ArraysError(f"arrays.npz: {reason}")


def read_index(arrays: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The index of a run's arrays (``{}`` when the run has none); one that is not JSON, or whose entries lack
    what :data:`INDEX_FIELDS` asks of their kind, is an error naming the file (see :func:`_damaged`)."""
    if INDEX_KEY not in arrays:
        return {}
    try:
        index = json.loads(str(arrays[INDEX_KEY]))
    except (ValueError, RecursionError) as exc:
        raise _damaged(arrays, f"{INDEX_KEY} is not JSON ({str(exc)[:80]})") from None
    if not isinstance(index, dict):
        raise _damaged(arrays, f"{INDEX_KEY}{_not(index, 'an object')}")
    for key, entry in index.items():
        why = _ANY_ENTRY(entry)
        if why is None and entry["kind"] in INDEX_FIELDS:
            why = INDEX_FIELDS[entry["kind"]](entry)
        if why is not None:
            raise _damaged(arrays, f"{INDEX_KEY} entry {key!r}{why}")
    return index


def read_array(arrays: Mapping[str, Any], key: str, index: Mapping[str, dict[str, Any]] | None = None) -> np.ndarray:
    """Array ``key``, which must exist and have the shape its index entry gives (if it has one)."""
    if key not in arrays:
        raise _damaged(arrays, f"array {key!r} is missing")
    array = np.asarray(arrays[key])
    shape = (read_index(arrays) if index is None else index).get(key, {}).get("shape")
    if shape is not None and list(array.shape) != shape:
        raise _damaged(arrays, f"array {key!r} has shape {list(array.shape)}, its index entry says {shape}")
    return array


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
    """A recorded mask as bool ``(heads, nq, nk)`` from a run's ``arrays.npz``; a key without a mask entry, or
    packed bits of another shape than the entry's, is an error naming the file (see :func:`_damaged`)."""
    entry = read_index(arrays).get(key)
    if entry is None or entry["kind"] not in MASK_KINDS:
        raise _damaged(arrays, f"no mask {key!r} in the index")
    shape = entry["shape"]
    packed = read_array(arrays, key, {})
    want = [*shape[:-1], math.ceil(shape[-1] / 8)]
    if packed.dtype != np.uint8 or list(packed.shape) != want:
        raise _damaged(arrays, f"mask {key!r} holds {packed.dtype} {list(packed.shape)}; its shape {shape} packs to "
                       f"uint8 {want}")  # fmt: skip
    return unpack_bits(packed, shape[-1]).reshape(shape)
