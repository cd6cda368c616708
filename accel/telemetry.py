"""The recorder every method writes its decisions to: one tidy long table plus packed arrays.

Rows have the columns of :data:`COLUMNS`; a value given as a 1-D tensor is one row per head.
Tensors stay on their device during the run and are copied out once, in :meth:`Recorder.finish`,
so recording costs no host synchronisation per call. Block masks are bit-packed on the device
(1 bit per block, ``np.packbits`` order) and stored in ``arrays.npz``; an index entry
(``__index__``, a JSON string) gives each array's logical shape and where it came from.

What is kept is set by :class:`RecordPolicy`. At real size (Wan2.1-1.3B at 720p: 591x591 blocks,
30 layers x 12 heads, 50 steps, 2 branches) every mask would be ~1.6 GB packed, so by default the
masks of evenly spaced steps are kept within ``mask_budget_mb``; scalar telemetry is always complete.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from accel.schema import COLUMNS, INDEX_KEY, ArrayKind, Event, check_events, mask_key, offsets_key
from accel.tracking import StepInfo
from profiling.ranges import named_range

RANGE_OF = {Event.MASK_PREDICT: "mask.predict", Event.REUSE_CHECK: "mask.reuse_check"}  # timed events -> ranges
_BIT_WEIGHTS: dict[torch.device, torch.Tensor] = {}


@dataclass(frozen=True)
class RecordPolicy:
    """What a run keeps besides the scalar telemetry (always complete)."""

    masks: bool = True
    mask_budget_mb: float = 120.0  # packed bytes before compression
    mask_steps: tuple[int, ...] | None = None  # explicit steps; None = evenly spaced within the budget
    mask_layers: tuple[int, ...] | None = None  # None = every layer
    mask_branches: tuple[str, ...] = ("cond", "uncond")


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor along its last axis into uint8, MSB first (same as ``np.packbits``).

    On CPU this is ``np.packbits`` (fast); on a GPU it stays on the device (no sync).
    """
    if mask.device.type == "cpu":
        return torch.from_numpy(np.packbits(mask.numpy().astype(bool, copy=False), axis=-1))
    n = mask.shape[-1]
    pad = (-n) % 8
    m = torch.nn.functional.pad(mask.to(torch.uint8), (0, pad)) if pad else mask.to(torch.uint8)
    weights = _BIT_WEIGHTS.get(m.device)
    if weights is None:
        weights = _BIT_WEIGHTS[m.device] = torch.tensor(
            [128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=m.device
        )
    return (m.view(*m.shape[:-1], -1, 8) * weights).sum(-1, dtype=torch.uint8)


def even_steps(num_steps: int, count: int) -> tuple[int, ...]:
    """``count`` evenly spaced steps in ``[0, num_steps)``, always with the first and the last."""
    if count >= num_steps:
        return tuple(range(num_steps))
    if count <= 1:
        return (0,) if count == 1 else ()
    return tuple(sorted({round(i * (num_steps - 1) / (count - 1)) for i in range(count)}))


class Recorder:
    """Collects telemetry rows and arrays for one run."""

    def __init__(self, policy: RecordPolicy | None = None, enabled: bool = True):
        self.policy = policy or RecordPolicy()
        self.enabled = enabled
        self.info = StepInfo()
        self.num_layers = 0
        self._rows: list[tuple] = []
        self._arrays: dict[str, Any] = {}
        self._index: dict[str, dict[str, Any]] = {}
        self._events: list[tuple[int, torch.cuda.Event, torch.cuda.Event]] = []
        self._mask_steps: set[int] | None = None
        self._planned = False
        self.loop_s = 0.0  # wall time spent inside the recorder during the run (rows, mask packing, arrays)
        self.heads_of: Callable[[int], Sequence[int]] | None = None  # context parallelism: a layer's global heads
        self.ranks = 1  # ... and how many ranks share the heads (masks are planned at their whole size)

    def begin(self, info: StepInfo, num_layers: int) -> None:
        """Bind the live :class:`StepInfo` of the run's tracker and the model's layer count."""
        self.info = info
        self.num_layers = num_layers

    # -- rows --------------------------------------------------------------------------------
    def log(
        self,
        event: Event,
        value: Any = None,
        *,
        layer: int | None = None,
        head: int | None = None,
        chunk: int | None = None,
        threshold: Any = None,
        density: Any = None,
        mask_ref: str | None = None,
        seconds: float | None = None,
    ) -> None:
        """One row, or one row per head when ``value``/``threshold``/``density`` is a 1-D tensor."""
        if not self.enabled:
            return
        t0 = time.perf_counter()
        i = self.info
        chunk = i.chunk if chunk is None else chunk
        if self.heads_of is not None and layer is not None and head is None:
            head = tuple(self.heads_of(layer))  # per-head values: this rank's global ids at this call
        self._rows.append(
            (i.step, i.timestep, i.branch, layer, head, chunk, event, value, threshold, density, mask_ref, seconds)
        )
        self.loop_s += time.perf_counter() - t0

    @contextmanager
    def timed(
        self, event: Event, *, layer: int | None = None, device: torch.device | None = None, value: Any = None
    ) -> Iterator[None]:
        """Log the wall time of the block as ``seconds`` (CUDA events on a GPU: no sync in the loop)."""
        with named_range(RANGE_OF.get(event, event)), self._timed(event, layer, device, value):
            yield

    @contextmanager
    def _timed(self, event: Event, layer: int | None, device: torch.device | None, value: Any) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        if device is not None and device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            stop.record()
            self.log(event, value, layer=layer)
            self._events.append((len(self._rows) - 1, start, stop))
        else:
            t0 = time.perf_counter()
            yield
            self.log(event, value, layer=layer, seconds=time.perf_counter() - t0)

    # -- arrays ------------------------------------------------------------------------------
    def wants_mask(self, layer: int) -> bool:
        """Whether the policy keeps the mask of ``layer`` at the current step and branch."""
        p = self.policy
        if not (self.enabled and p.masks) or self.info.branch not in p.mask_branches:
            return False
        if p.mask_layers is not None and layer not in p.mask_layers:
            return False
        return self._mask_steps is None or self.info.step in self._mask_steps

    def _plan_mask_steps(self, mask_bytes: int) -> None:
        """Choose the steps whose masks fit the budget, evenly spread from the first masked step on."""
        self._planned = True
        p = self.policy
        if p.mask_steps is not None:
            self._mask_steps = set(p.mask_steps)
            return
        layers = len(p.mask_layers) if p.mask_layers is not None else max(1, self.num_layers)
        per_step = mask_bytes * self.ranks * layers * len(p.mask_branches)
        affordable = p.mask_budget_mb * 1e6 // max(1, per_step)  # a float: a huge budget stays finite or inf
        first = max(0, self.info.step)
        remaining = max(1, self.info.num_steps - first)
        if affordable < remaining:
            self._mask_steps = {first + s for s in even_steps(remaining, int(affordable))}

    def record_mask(
        self,
        layer: int,
        mask: torch.Tensor,
        q_offsets: torch.Tensor | None = None,
        k_offsets: torch.Tensor | None = None,
        kind: ArrayKind = ArrayKind.BLOCK_MASK,
    ) -> str | None:
        """Keep a bool ``(heads, nq, nk)`` mask (and variable block offsets) if the policy wants it."""
        if not self._planned:
            self._plan_mask_steps(mask.shape[0] * mask.shape[1] * math.ceil(mask.shape[2] / 8))
        if not self.wants_mask(layer):
            return None
        t0 = time.perf_counter()
        i = self.info
        key = mask_key(i.step, i.branch, layer, i.chunk)
        self._arrays[key] = pack_bits(mask.bool())
        meta = {"kind": kind, "shape": list(mask.shape), "step": i.step, "branch": i.branch, "layer": layer,
                "chunk": i.chunk}  # fmt: skip
        if self.heads_of is not None:  # context parallelism: the global heads of the rows, for gather_run's merge
            meta["heads"] = list(self.heads_of(layer))
        for name, off in (("q_offsets", q_offsets), ("k_offsets", k_offsets)):
            if off is not None:
                meta[name] = offsets_key(name, key)
                self._arrays[meta[name]] = off.to(torch.int32)
        self._index[key] = meta
        self.loop_s += time.perf_counter() - t0
        return key

    def add_array(self, key: str, array: Any, kind: ArrayKind = ArrayKind.ARRAY, **meta: Any) -> None:
        """Any other array (motion maps, ...), kept on its device until :meth:`finish`; ``meta`` goes in its
        index entry (e.g. ``group`` and ``branch``, which readers match on)."""
        if self.enabled:
            self._arrays[key] = array
            self._index[key] = {"kind": str(kind), "shape": list(array.shape), **meta}

    # -- output ------------------------------------------------------------------------------
    def finish(self) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
        """The telemetry table and the arrays, copied to the host in one pass; an unknown event name raises."""
        check_events({row[6] for row in self._rows})
        if self._events:
            torch.cuda.synchronize()
            for row, start, stop in self._events:
                r = list(self._rows[row])
                r[-1] = start.elapsed_time(stop) / 1e3
                self._rows[row] = tuple(r)
            self._events.clear()
        table = _expand_rows(self._rows)
        arrays = {
            k: (v.detach().cpu().numpy() if torch.is_tensor(v) else np.asarray(v)) for k, v in self._arrays.items()
        }
        if self._index:
            arrays[INDEX_KEY] = np.array(json.dumps(self._index))
        return table, arrays


def _host(values: list[Any]) -> list[Any]:
    """Copy every tensor in ``values`` to the host with one transfer per device."""
    by_device: dict[torch.device, list[int]] = {}
    for n, v in enumerate(values):
        if torch.is_tensor(v):
            by_device.setdefault(v.device, []).append(n)
    out = list(values)
    for idx in by_device.values():
        flat = torch.cat([values[n].detach().float().reshape(-1) for n in idx]).cpu().numpy()
        pos = 0
        for n in idx:
            size = values[n].numel()
            out[n] = flat[pos : pos + size] if values[n].ndim else float(flat[pos])
            pos += size
    return out


def _expand_rows(rows: list[tuple]) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in COLUMNS})
    cols = list(zip(*rows, strict=True))
    value, threshold, density = (_host(list(cols[i])) for i in (7, 8, 9))
    out: dict[str, list[Any]] = {c: [] for c in COLUMNS}
    for n, row in enumerate(rows):
        fields = (value[n], threshold[n], density[n])
        width = max((len(f) for f in fields if isinstance(f, np.ndarray)), default=0)
        ids = row[4] if isinstance(row[4], tuple) else None  # a context-parallel rank's global head ids
        heads = (ids or range(width)) if width else [None if ids else row[4]]
        for h_pos, head in enumerate(heads):
            out["step"].append(row[0])
            out["timestep"].append(row[1])
            out["branch"].append(row[2])
            out["layer"].append(row[3])
            out["head"].append(head)
            out["chunk"].append(row[5])
            out["event"].append(row[6])
            for name, f in zip(("value", "threshold", "density"), fields, strict=True):
                out[name].append(float(f[h_pos]) if isinstance(f, np.ndarray) else f)
            out["mask_ref"].append(row[10])
            out["seconds"].append(row[11])
    df = pd.DataFrame(out)
    for c in ("step", "layer", "head", "chunk"):
        df[c] = df[c].astype("Int32")
    for c in ("timestep", "value", "threshold", "density", "seconds"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    for c in ("branch", "event", "mask_ref"):
        df[c] = df[c].astype("string")
    return df
