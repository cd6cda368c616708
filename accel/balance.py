"""Balanced head assignment for Ulysses context parallelism (``--parallel ulysses=N,balance=auto|on|off``).

Ulysses gives rank ``r`` the heads ``[r H/N, (r+1) H/N)``; with head-wise budgets the step then waits for the rank
whose heads are densest. Attention is per head, so any assignment is exact: the processor permutes the heads of
Q, K, V before the all-to-all and inverts the permutation after it (:mod:`accel.attention.base`). An *order* is the
model's global heads in rank-major order: rank ``r`` attends ``order[r H/N : (r+1) H/N]``, one order per layer.

:func:`assign` is greedy (densest head first, to the least-loaded rank with room; ties: the lower rank), then
swaps heads out of the slowest rank while that lowers it; each rank's heads ascend (``accel.bench.parallel model``
uses the same rule). The costs are the per-head densities the run knows: the EBC table's (the density of each
head's chosen candidate at calibration) before the first sparse step, then the densities the layer measured at its
previous step (every rank's, gathered). :class:`Balancer` keeps an order per layer and changes it only when the
current order's imbalance (the slowest rank's load over the mean) passes ``rebalance`` (default 1.1, a setting)
and the new order lowers it; the method's per-head state (cached masks or partitions, TMR anchors) moves with its
heads, so a re-balanced run equals the one-process run. Each re-balance is an ``Event.REBALANCE`` row (value: the
imbalance it replaced; threshold: the new one). With ``balance=off`` the balancer only judges Ulysses' ranges, for
the run's metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from accel.schema import Event
from accel.settings import DEFAULT_REBALANCE

if TYPE_CHECKING:
    from accel.attention.base import AttentionMethod
    from accel.parallel import Shard
    from accel.tracking import StepInfo


def assign(costs: Sequence[float] | np.ndarray, world: int) -> tuple[int, ...]:
    """The balanced order of ``len(costs)`` heads over ``world`` ranks (rank-major; each rank's heads ascending):
    greedy (densest head first, to the least-loaded rank with room), then the best swap of two heads between the
    slowest rank and another, while one lowers that pair's larger load."""
    costs = np.asarray(costs, dtype=float)
    per = len(costs) // world
    loads, members = np.zeros(world), [[] for _ in range(world)]
    for h in np.argsort(-costs, kind="stable"):
        r = min((r for r in range(world) if len(members[r]) < per), key=lambda r: (loads[r], r))
        loads[r] += costs[h]
        members[r].append(int(h))
    while True:
        a = int(np.argmax(loads))
        best = None  # (the pair's new larger load, rank b, position in a, position in b)
        for b in range(world):
            for i, x in enumerate(members[a]):
                for j, y in enumerate(members[b]):
                    delta = costs[x] - costs[y]
                    top = max(loads[a] - delta, loads[b] + delta)
                    if b != a and top < loads[a] - 1e-12 and (best is None or top < best[0]):
                        best = (top, b, i, j)
        if best is None:
            break
        _, b, i, j = best
        x, y = members[a][i], members[b][j]
        members[a][i], members[b][j] = y, x
        loads[a] += costs[y] - costs[x]
        loads[b] += costs[x] - costs[y]
    return tuple(h for m in members for h in sorted(m))


def rank_loads(costs: Sequence[float] | np.ndarray, order: Sequence[int], world: int) -> np.ndarray:
    """Each rank's load: the sum of its heads' costs under ``order``."""
    return np.asarray(costs, dtype=float)[list(order)].reshape(world, -1).sum(1)


def imbalance(costs: Sequence[float] | np.ndarray, order: Sequence[int], world: int) -> float:
    """The slowest rank's load over the mean load (1.0: even; 1.0 when nothing is computed)."""
    loads = rank_loads(costs, order, world)
    mean = loads.mean()
    return float(loads.max() / mean) if mean > 0 else 1.0


def contiguous(heads: int) -> tuple[int, ...]:
    """Ulysses' own order: rank ``r`` attends its contiguous range."""
    return tuple(range(heads))


class Balancer:
    """The per-layer head orders of one rank's run and the rule that changes them (see the module docstring)."""

    def __init__(
        self, shard: Shard, rebalance: float = DEFAULT_REBALANCE, table: np.ndarray | None = None, moves: bool = True
    ):
        self.shard = shard
        self.rebalance = rebalance
        self.table = table  # (layers, heads) densities from an EBC table, or None
        self.moves = moves  # False (balance=off): Ulysses' contiguous ranges, judged for the run's metrics only
        self._seen: dict[int, int] = {}  # layer -> the step whose densities it last judged
        self.rebalances = 0
        self.judged: list[tuple[float, float]] = []  # (this order's imbalance, contiguous order's) per judgement

    def start(self, layers: int) -> None:
        """Orders from the table's densities (none without a table: Ulysses' contiguous ranges)."""
        if self.table is None or not self.moves:
            return
        for layer in range(min(layers, len(self.table))):
            self.shard.orders[layer] = assign(self.table[layer], self.shard.world)

    def order(self, layer: int, info: StepInfo, method: AttentionMethod) -> tuple[int, ...]:
        """The order ``layer`` attends in at this call: judged once per step on the densities the layer measured at
        its previous step (every rank's, gathered), re-balanced (state moved) if it passes the threshold."""
        shard = self.shard
        current = shard.order_of(layer)
        if self._seen.get(layer) == info.step:
            return current
        local = method.measured_density(layer)
        if local is None:
            return current
        self._seen[layer] = info.step
        parts = [torch.empty_like(local, dtype=torch.float32) for _ in range(shard.world)]
        dist.all_gather(parts, local.float().contiguous(), group=shard.group)
        dens = np.empty(shard.heads)
        dens[list(current)] = torch.cat(parts).cpu().numpy()  # rank-major in the current order -> global head ids
        order, now = current, imbalance(dens, current, shard.world)
        if self.moves and now > self.rebalance:
            candidate = assign(dens, shard.world)
            after = imbalance(dens, candidate, shard.world)
            if after < now:
                move_heads(method, layer, current, candidate)
                shard.orders[layer] = order = candidate
                self.rebalances += 1
                method.recorder.log(Event.REBALANCE, now, layer=layer, threshold=after)
                now = after
        self.judged.append((now, imbalance(dens, contiguous(shard.heads), shard.world)))
        return order

    def summary(self) -> dict[str, Any]:
        """What the run's metrics keep: the final orders and the mean imbalance judged, balanced and contiguous."""
        judged = np.array(self.judged) if self.judged else np.ones((1, 2))
        return {
            "balance": "on" if self.moves else "off",
            "rebalances": self.rebalances,
            "imbalance": round(float(judged[:, 0].mean()), 4),
            "imbalance_contiguous": round(float(judged[:, 1].mean()), 4),
            "orders": {str(layer): list(order) for layer, order in sorted(self.shard.orders.items())},
        }


def move_heads(method: AttentionMethod, layer: int, old: Sequence[int], new: Sequence[int]) -> None:
    """Hand the method's per-head state of ``layer`` from the ``old`` order to the ``new`` one: every rank's state is
    gathered (a rare event: only at a re-balance) and each rank keeps the rows of its new heads."""
    shard = method.shard
    assert shard is not None
    local = method.head_state(layer)
    if not local:
        return
    device = next(iter(local.values())).device
    parts: list[Any] = [None] * shard.world
    dist.all_gather_object(parts, {k: v.cpu() for k, v in local.items()}, group=shard.group)
    per = shard.heads // shard.world
    mine = new[shard.rank * per : (shard.rank + 1) * per]
    pos = torch.tensor([list(old).index(h) for h in mine])
    method.set_head_state(
        layer, {k: torch.cat([p[k] for p in parts], dim=1).index_select(1, pos).to(device) for k in local}
    )
