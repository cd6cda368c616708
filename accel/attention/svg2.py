"""Sparse-VideoGen2 on Wan self-attention (METHODS 1.2): semantic permutation by k-means.

Per (CFG branch, layer, head): Euclidean k-means on Q and separately on K (random data points as
initial centres and ``kmeans_init_iters`` iterations on the first sparse step; warm start from
this layer's previous centroids with ``kmeans_warm_iters`` afterwards). The cluster-pair map
``p_ij = |K_j| e^{s_ij} / sum_j' |K_j'| e^{s_ij'}`` with ``s = Cq Ck^T / sqrt(D)`` is thresholded per
query cluster at ``top_p`` (keeping the crossing element and at least ``floor(min_kc_ratio * kc)``
clusters). Q is permuted by query labels and K/V by key labels so clusters are contiguous,
attention runs over the (query cluster, key cluster) tiles, and the output is permuted back.
Queries and keys are clustered with their own lengths: in chunked generation (METHODS 2) a group's
keys are its cached context plus itself, longer than its queries.

Dense warm-up: steps ``< floor(first_times_fp * steps)`` and layers ``< floor(first_layers_fp * layers)``
(:meth:`accel.methods.svg2.SVG2Settings.dense_steps` / ``dense_layers``).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import torch

from accel.attention.headwise import HeadwiseSparse
from accel.kernels.block_sparse import block_sparse_attention, mask_density
from accel.schema import ArrayKind
from accel.telemetry import Recorder
from accel.tracking import StepInfo

if TYPE_CHECKING:
    from accel.methods.svg2 import SVG2Settings

_MAX_DIST_ELEMS = 1 << 26


def _assign(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Nearest centroid per point; ``x`` (G, N, D), ``centroids`` (G, K, D) -> labels (G, N)."""
    g, n, _ = x.shape
    k = centroids.shape[1]
    c_sq = (centroids * centroids).sum(-1)  # (G, K)
    labels = torch.empty(g, n, dtype=torch.long, device=x.device)
    step = max(1, _MAX_DIST_ELEMS // max(1, g * k))
    for s in range(0, n, step):
        xs = x[:, s : s + step]
        # ||x - c||^2 up to the per-point constant ||x||^2
        dist = c_sq[:, None, :] - 2 * torch.matmul(xs, centroids.transpose(1, 2))
        labels[:, s : s + step] = dist.argmin(-1)
    return labels


def _update(x: torch.Tensor, labels: torch.Tensor, old: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster means and sizes; an empty cluster keeps its previous centre."""
    g, _, d = x.shape
    k = old.shape[1]
    sums = torch.zeros(g, k, d, device=x.device, dtype=x.dtype).scatter_add_(1, labels[..., None].expand(-1, -1, d), x)
    sizes = torch.zeros(g, k, device=x.device, dtype=torch.long).scatter_add_(1, labels, torch.ones_like(labels))
    means = sums / sizes.clamp_min(1)[..., None].to(x.dtype)
    return torch.where(sizes[..., None] > 0, means, old), sizes


def kmeans(
    x: torch.Tensor,
    k: int,
    iters: int,
    init: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    draw: tuple[int, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched Euclidean k-means on ``x`` (G, N, D) in fp32.

    Returns ``(labels (G, N), centroids (G, k, D), sizes (G, k))``. Without ``init`` the centres
    start at ``k`` distinct random points of each group. Labels are the last assignment and the
    centroids are the means of exactly those clusters. ``draw = (rows, index)``: the random start draws
    ``rows`` groups and keeps those at ``index`` (context parallelism: a rank draws for the whole model's heads,
    so each head starts where it starts in a single process).
    """
    x = x.float()
    g, n, _ = x.shape
    if init is None:
        if k > n:
            raise ValueError(f"cannot make {k} clusters of {n} points")
        rows, index = draw if draw is not None else (g, None)
        noise = torch.rand(rows, n, generator=generator, device="cpu" if generator is None else generator.device)
        noise = noise if index is None else noise[index.to(noise.device)]
        idx = noise.to(x.device).argsort(-1)[:, :k]
        centroids = torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))
    else:
        centroids = init.float()
    labels = sizes = None
    for _ in range(iters):
        labels = _assign(x, centroids)
        centroids, sizes = _update(x, labels, centroids)
    return labels, centroids, sizes


def cluster_pair_mask(
    cq: torch.Tensor, ck: torch.Tensor, k_sizes: torch.Tensor, top_p: float | torch.Tensor, min_keep: int
) -> torch.Tensor:
    """Top-p selection on the size-weighted softmax of centroid scores; (G, qc, kc) bool.

    ``top_p`` is a float or one value per group ``(G,)``. A pair is kept while the mass before it is at most ``top_p``
    (the crossing pair is kept), as the reference's ``identify_dynamic_map`` (``svg/kmeans_utils.py``) removes only
    where the running sum exceeds ``top_p``. ``top_p >= 1`` keeps every pair: the reference's running sum is bf16 on
    Wan and can round above 1.0 and drop tail pairs whose mass is below its rounding error; the bench keeps them, so
    that 1 means every pair (dense over the clusters) at any dtype.
    """
    scores = torch.matmul(cq, ck.transpose(1, 2)) / math.sqrt(cq.shape[-1])
    logw = torch.log(k_sizes.float()).unsqueeze(1)  # empty clusters: -inf, never weighted
    probs = torch.softmax(scores + logw, dim=-1)
    ordered, order = probs.sort(-1, descending=True)
    before = ordered.cumsum(-1) - ordered
    p = torch.as_tensor(top_p, dtype=probs.dtype, device=probs.device).reshape(-1, 1, 1)
    keep = (before <= p) | (p >= 1)
    keep[..., :min_keep] = True
    return torch.zeros_like(keep).scatter_(-1, order, keep)


@dataclass
class Partition:
    """One head group's semantic layout: what a mask-reuse step needs to re-gather current tokens."""

    q_perm: torch.Tensor  # (G, Lq) token order that makes query clusters contiguous
    k_perm: torch.Tensor  # (G, Lk); Lk > Lq when the keys include cached context
    q_offsets: torch.Tensor  # (G, qc + 1)
    k_offsets: torch.Tensor  # (G, kc + 1)
    mask: torch.Tensor  # (G, qc, kc) bool
    q_centroids: torch.Tensor
    k_centroids: torch.Tensor

    def rows(self, rows: torch.Tensor) -> Partition:
        """The partition of a subset of head groups."""
        return Partition(*(getattr(self, f.name)[rows] for f in fields(self)))

    def merged(self, rows: torch.Tensor, fresh: Partition) -> Partition:
        """A copy with the head groups ``rows`` replaced by ``fresh``."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name).clone()
            value[rows] = getattr(fresh, f.name)
            out[f.name] = value
        return Partition(**out)


def _offsets(sizes: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.pad(sizes.cumsum(-1), (1, 0))


def _partition(q_clusters: tuple, k_clusters: tuple, top_p: torch.Tensor, min_keep: int) -> Partition:
    """The partition of k-means results ``(labels, centroids, sizes)`` of queries and keys, one row per group."""
    (q_labels, cq, sq), (k_labels, ck, sk) = q_clusters, k_clusters
    return Partition(
        q_perm=q_labels.argsort(dim=-1, stable=True),
        k_perm=k_labels.argsort(dim=-1, stable=True),
        q_offsets=_offsets(sq),
        k_offsets=_offsets(sk),
        mask=cluster_pair_mask(cq, ck, sk, top_p, min_keep),
        q_centroids=cq,
        k_centroids=ck,
    )


def _gather_tokens(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """``x`` (B, L, H, D) reordered per head by ``perm`` (B*H, L)."""
    b, length, h, d = x.shape
    idx = perm.view(b, h, length).transpose(1, 2)[..., None].expand(-1, -1, -1, d)
    return torch.gather(x, 1, idx)


def _scatter_tokens(y: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_gather_tokens`."""
    b, length, h, d = y.shape
    idx = perm.view(b, h, length).transpose(1, 2)[..., None].expand(-1, -1, -1, d)
    return torch.empty_like(y).scatter_(1, idx, y)


def _group_rows(batch: int, heads: int, subset: list[int], device: torch.device) -> torch.Tensor:
    """Row indices of ``subset`` heads in a ``(B*H, ...)`` layout."""
    sub = torch.tensor(subset, device=device)
    return (torch.arange(batch, device=device)[:, None] * heads + sub).reshape(-1)


class SVG2(HeadwiseSparse):
    """Semantic-aware permutation + variable-size block-sparse attention; +TMR and per-head top-p tables."""

    name = "svg2"
    keeps_state = True  # k-means warm-starts from last step's centroids

    def __init__(
        self,
        settings: SVG2Settings,
        clusters: tuple[int, int],
        recorder: Recorder | None = None,
        seed: int = 0,
        model: str = "",
        tmr_delta: float = 8.0,
    ):
        super().__init__(settings, recorder, model, tmr_delta)
        self.qc = settings.query_clusters or clusters[0]
        self.kc = settings.key_clusters or clusters[1]
        self.seed = seed

    def uniform_thresholds(self):
        return self.settings.top_p

    def is_dense_step(self, layer: int, info: StepInfo) -> bool:
        s = self.settings
        return info.step < s.dense_steps(info.num_steps) or layer < s.dense_layers(self.num_layers)

    def _generator(self, layer: int, branch: str, device: torch.device) -> torch.Generator:
        gen_device = device if device.type == "cuda" else torch.device("cpu")
        seed = self.seed * 1_000_003 + layer * 31 + zlib.crc32(branch.encode()) % 1009
        return torch.Generator(device=gen_device).manual_seed(seed)

    def predict(self, q, k, layer, branch, thresholds, heads):
        """Cluster Q and K of ``heads`` (all when None), warm-started from this layer's last partition.

        ``q`` is ``(B, Lq, H, D)`` and ``k`` ``(B, Lk, H, D)``; each is clustered over its own tokens, so the
        pair map is ``(qc, kc)`` with ``qc <= Lq`` and ``kc <= Lk``.
        """
        b, lq, h, d = q.shape
        lk = k.shape[1]
        if heads is not None:
            q, k, thresholds = q[:, :, heads], k[:, :, heads], thresholds[heads]
        hs = q.shape[2]
        xq = q.permute(0, 2, 1, 3).reshape(b * hs, lq, d)
        xk = k.permute(0, 2, 1, 3).reshape(b * hs, lk, d)
        qc, kc = min(self.qc, lq), min(self.kc, lk)
        prev = self.states.get((layer, branch))
        if prev is not None and prev.q_centroids.shape[:2] == (b * h, qc) and prev.k_centroids.shape[1] == kc:
            if heads is not None:
                prev = prev.rows(_group_rows(b, h, heads, q.device))
            iters, init_q, init_k, gen = self.settings.kmeans_warm_iters, prev.q_centroids, prev.k_centroids, None
        else:
            iters, init_q, init_k = self.settings.kmeans_init_iters, None, None
            gen = self._generator(layer, branch, q.device)
        draw = None
        if self.shard is not None and init_q is None:  # seeded per global head
            local = torch.tensor(self.shard.heads_of(layer))[heads if heads is not None else slice(None)]
            draw = (b * self.shard.heads, (torch.arange(b)[:, None] * self.shard.heads + local).reshape(-1))
        clusters = kmeans(xq, qc, iters, init_q, gen, draw), kmeans(xk, kc, iters, init_k, gen, draw)
        return _partition(*clusters, thresholds.repeat(b), math.floor(self.settings.min_kc_ratio * kc))

    def probe_state(self, q, k, layer, branch, rows, thresholds, memory):
        """Every candidate of a head is scored on one clustering of that head, as a run would see it: k-means
        warm-started (``kmeans_warm_iters``) from the head's centroids at the previous sample of the same trajectory
        (``memory["before"]``), cold (``kmeans_init_iters``) at its first; a head's clustering is kept in
        ``memory["now"]`` for the rest of the sample (candidates may span several probe calls)."""
        qc, kc = min(self.qc, q.shape[1]), min(self.kc, k.shape[1])
        s = self.settings
        for head in dict.fromkeys(rows):
            if head in memory["now"]:
                continue
            warm = memory["before"].get(head)  # (query, key) k-means results: (labels, centroids, sizes)
            if warm is not None:
                iters, init_q, init_k, gen = s.kmeans_warm_iters, warm[0][1], warm[1][1], None
            else:
                iters, init_q, init_k, gen = s.kmeans_init_iters, None, None, self._generator(layer, branch, q.device)
            memory["now"][head] = (
                kmeans(q[:, :, head], qc, iters, init_q, gen),
                kmeans(k[:, :, head], kc, iters, init_k, gen),
            )
        q_clusters, k_clusters = (
            tuple(torch.cat([memory["now"][h][side][i] for h in rows]) for i in range(3)) for side in (0, 1)
        )
        return _partition(q_clusters, k_clusters, thresholds, math.floor(s.min_kc_ratio * kc))

    def fits(self, state, q, k):
        b, lq, h, _ = q.shape
        return state.q_perm.shape == (b * h, lq) and state.k_perm.shape[1] == k.shape[1]

    def split_state(self, state):
        return {f.name: getattr(state, f.name).unflatten(0, (-1, self.num_heads)) for f in fields(state)}

    def join_state(self, parts):
        return Partition(**{name: value.flatten(0, 1) for name, value in parts.items()})

    def merge(self, cached, heads, fresh):
        b = cached.mask.shape[0] // self.num_heads
        return cached.merged(_group_rows(b, self.num_heads, heads, cached.mask.device), fresh)

    def record(self, layer, state):
        h = self.num_heads
        return self.recorder.record_mask(
            layer, state.mask[:h], state.q_offsets[:h], state.k_offsets[:h], kind=ArrayKind.CLUSTER_MASK
        )

    @staticmethod
    def _blocks(state: Partition, q: torch.Tensor):
        b, _, h, _ = q.shape
        return (
            state.mask.view(b, h, *state.mask.shape[1:]),
            state.q_offsets.view(b, h, -1),
            state.k_offsets.view(b, h, -1),
        )

    def state_density(self, state, q, k):
        return mask_density(*self._blocks(state, q))

    def apply(self, q, k, v, state, layer, thresholds, mask_ref):
        """Attention through a partition (fresh or cached): permute current tokens, attend, un-permute."""
        qp = _gather_tokens(q, state.q_perm)
        kp, vp = _gather_tokens(k, state.k_perm), _gather_tokens(v, state.k_perm)
        mask, q_off, k_off = self._blocks(state, q)
        out = block_sparse_attention(qp, kp, vp, mask, q_off, k_off, varlen=True, dense=self.dense_hint(q.device))
        density = mask_density(mask, q_off, k_off).mean(0)
        self.log_density(layer, density, threshold=thresholds, mask_ref=mask_ref)
        return _scatter_tokens(out, state.q_perm)
