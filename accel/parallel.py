"""Context parallelism for Wan2.1: diffusers' own Ulysses plan, with the project's attention methods inside it.

``accel generate --parallel ulysses=N`` runs under ``torchrun --nproc_per_node N`` (one process per rank; gloo on
CPU, NCCL on CUDA). The transformer gets diffusers' ``ContextParallelConfig(ulysses_degree=N)`` through
``enable_parallelism`` and Wan's ``_cp_plan``: every rank holds ``L/N`` tokens between the attention layers, and
cross-attention runs diffusers' own Ulysses attention. The project's self-attention processor
(:class:`accel.attention.base.BenchAttnProcessor`) does the same Ulysses exchange itself around the method
(:func:`seq_to_heads`, :func:`heads_to_seq`: ``all_to_all_single`` over the config's Ulysses group), so each
method sees every token of its ``H/N`` heads, exactly what it needs: per-head thresholds are sliced by the rank's
global head range (:class:`Shard`), TMR's layer gating counts heads over the group (:meth:`Shard.sum`), and each
rank's telemetry carries global head ids and is gathered to rank 0 (:func:`gather_run`), which alone writes the run.

One workaround: ``enable_parallelism`` divides by ``torch.accelerator.device_count()``, which is 0 on CPU-only
torch, so :func:`enable` reports one device there (the gloo ranks are processes, not devices).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from accel.balance import contiguous
from accel.errors import ConfigError
from accel.schema import INDEX_KEY, MASK_KINDS
from accel.settings import parse_parallel


@dataclass(frozen=True)
class Shard:
    """This rank's part of a context-parallel run: its heads per layer and the Ulysses process group. Without an
    order for a layer the rank attends Ulysses' contiguous range ``[start, stop)``; with one (``orders[layer]``, the
    model's heads in rank-major order, :mod:`accel.balance`) it attends its slice of that order."""

    rank: int
    world: int
    heads: int  # the model's heads
    group: Any = None  # torch.distributed ProcessGroup of the Ulysses mesh
    orders: dict[int, tuple[int, ...]] = field(default_factory=dict, compare=False)  # layer -> balanced order

    @property
    def start(self) -> int:
        return self.rank * self.heads // self.world

    @property
    def stop(self) -> int:
        return (self.rank + 1) * self.heads // self.world

    def order_of(self, layer: int) -> tuple[int, ...]:
        """The model's heads in rank-major order at ``layer`` (Ulysses' own where no balanced order is set)."""
        return self.orders.get(layer) or contiguous(self.heads)

    def heads_of(self, layer: int) -> tuple[int, ...]:
        """The global ids of the heads this rank attends at ``layer``, in its local order."""
        return self.order_of(layer)[self.start : self.stop]

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` summed over the group's ranks (a copy; every rank gets the result)."""
        out = x.clone()
        dist.all_reduce(out, group=self.group)
        return out


def init(parallel: str, device: str | None) -> str:
    """Join (or check) the process group of a ``--parallel`` run; returns this rank's device. The world size must be
    the requested degree: launch with ``torchrun --nproc_per_node N``. Each CUDA rank takes ``cuda:LOCAL_RANK``."""
    _, degree = parse_parallel(parallel)
    cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if not dist.is_initialized():
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise ConfigError(
                f"--parallel {parallel} needs one process per rank: launch with "
                f"torchrun --nproc_per_node {degree} -m accel generate ..."
            )
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    world = dist.get_world_size()
    if world != degree:
        raise ConfigError(f"--parallel {parallel} needs {degree} processes, but {world} were launched")
    return f"cuda:{torch.cuda.current_device()}" if cuda else "cpu"


def total(x: float) -> float:
    """``x`` summed over every rank (e.g. CPU seconds: the sibling ranks are part of the run, not other load)."""
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([x], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def close() -> None:
    """Leave the process group (end of a ``--parallel`` command), once every rank got here: a rank that tears gloo
    down while another still talks to it can abort that one ("terminate called without an active exception")."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def describe(parallel: str) -> dict[str, Any]:
    """The run's parallel layout for its metrics: kind, degree and the process group's backend."""
    kind, degree = parse_parallel(parallel)
    return {"kind": kind, "degree": degree, "backend": str(dist.get_backend())}


def check_divisible(parallel: str, heads: int, tokens: int) -> None:
    """One clear error unless the heads and the sequence split evenly over the ranks (Ulysses exchanges equal parts)."""
    _, degree = parse_parallel(parallel)
    if heads % degree:
        raise ConfigError(f"--parallel {parallel}: the model's {heads} heads do not split over {degree} ranks")
    if tokens % degree:
        raise ConfigError(
            f"--parallel {parallel}: {tokens} video tokens do not split over {degree} ranks; change the size or frames"
        )


@contextmanager
def _one_device_on_cpu():
    """``torch.accelerator.device_count()`` as 1 where it is 0 (CPU-only torch), for diffusers' device choice."""
    if torch.accelerator.device_count() > 0:
        yield
        return
    with mock.patch.object(torch.accelerator, "device_count", lambda: 1):
        yield


def enable(transformer: torch.nn.Module, parallel: str) -> None:
    """diffusers' Ulysses context parallelism on ``transformer`` (once; a model keeps it for its lifetime)."""
    from diffusers import ContextParallelConfig

    if getattr(transformer, "_parallel_config", None) is not None:
        return
    if getattr(transformer, "_cp_plan", None) is None:
        raise ConfigError(
            f"--parallel: diffusers has no context-parallel plan (_cp_plan) for {type(transformer).__name__}"
        )
    _, degree = parse_parallel(parallel)
    with _one_device_on_cpu():
        transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=degree))


def shard_of(processor: Any, heads: int) -> Shard | None:
    """The :class:`Shard` of a processor diffusers configured for context parallelism (None without it)."""
    config = getattr(processor, "_parallel_config", None)
    cp = getattr(config, "context_parallel_config", None)
    if cp is None or cp.ulysses_degree < 2:
        return None
    mesh = cp._ulysses_mesh
    return Shard(mesh.get_local_rank(), cp.ulysses_degree, heads, mesh.get_group())


def seq_to_heads(x: torch.Tensor, shard: Shard) -> torch.Tensor:
    """``(B, L/N, H, D)`` on each rank -> ``(B, L, H/N, D)``: every token of this rank's heads."""
    b, lp, h, d = x.shape
    n = shard.world
    send = x.reshape(b, lp, n, h // n, d).permute(2, 0, 1, 3, 4).contiguous()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=shard.group)  # recv[j]: rank j's tokens of my heads
    return recv.permute(1, 0, 2, 3, 4).reshape(b, n * lp, h // n, d)


def heads_to_seq(x: torch.Tensor, shard: Shard) -> torch.Tensor:
    """The inverse of :func:`seq_to_heads`: ``(B, L, H/N, D)`` -> ``(B, L/N, H, D)``."""
    b, length, hl, d = x.shape
    n = shard.world
    send = x.reshape(b, n, length // n, hl, d).permute(1, 0, 2, 3, 4).contiguous()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=shard.group)  # recv[j]: my tokens of rank j's heads
    return recv.permute(1, 2, 0, 3, 4).reshape(b, length // n, n * hl, d)


def gather_run(table: pd.DataFrame, arrays: dict[str, np.ndarray]) -> tuple[pd.DataFrame, dict[str, np.ndarray]] | None:
    """Every rank's telemetry merged on rank 0 (None elsewhere). Per-head rows (global head ids) come from every
    rank; scalar rows (timings, warm-up marks, predictions counted per call) are rank 0's, since every rank runs the
    same steps and layers. Masks recorded under one key on every rank are stacked along heads in rank order."""
    parts: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object((table, arrays), parts, dst=0)
    if parts is None:
        return None
    tables = [parts[0][0]] + [t[t["head"].notna()] for t, _ in parts[1:]]
    merged = pd.concat(tables, ignore_index=True).sort_values("step", kind="stable", ignore_index=True)
    return merged, _merge_arrays([a for _, a in parts])


def _merge_arrays(per_rank: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Rank 0's arrays, with each mask (and its offsets) stacked over the ranks' heads in global head order (a
    balanced assignment, :mod:`accel.balance`, gives a rank heads that are not a contiguous range)."""
    out = dict(per_rank[0])
    if INDEX_KEY not in out:
        return out
    indexes = [json.loads(str(a[INDEX_KEY])) for a in per_rank]
    index = indexes[0]
    for key, meta in index.items():
        if meta.get("kind") not in MASK_KINDS or not all(key in a for a in per_rank):
            continue
        heads = [h for i in indexes for h in i[key].get("heads", ())]
        order = np.argsort(heads, kind="stable") if heads else None
        for name in (key, meta.get("q_offsets"), meta.get("k_offsets")):
            if name is not None:
                stacked = np.concatenate([a[name] for a in per_rank], axis=0)
                out[name] = stacked if order is None else stacked[order]
        meta["shape"][0] = sum(int(a[key].shape[0]) for a in per_rank)
    for meta in index.values():
        meta.pop("heads", None)  # rows are in global head order now
    out[INDEX_KEY] = np.array(json.dumps(index))
    return out


def permute_heads(x: torch.Tensor, order: tuple[int, ...] | None) -> torch.Tensor:
    """``x`` ``(B, L, H, D)`` with its heads in ``order`` (None: unchanged), before :func:`seq_to_heads`."""
    return x if order is None else x.index_select(2, torch.tensor(order, device=x.device))


def unpermute_heads(x: torch.Tensor, order: tuple[int, ...] | None) -> torch.Tensor:
    """The inverse of :func:`permute_heads`, after :func:`heads_to_seq`."""
    if order is None:
        return x
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[list(order)] = torch.arange(len(order))
    return x.index_select(2, inverse.to(x.device))
