"""The attention processor installed on Wan self-attention (``attn1``) and the method interface.

:class:`BenchAttnProcessor` forms Q, K, V exactly as diffusers' ``WanAttnProcessor`` does
(projections, RMSNorm across heads, interleaved RoPE) and hands them to an
:class:`AttentionMethod`, which returns the attention output. Cross-attention (``attn2``) and
everything else in diffusers stay untouched; :func:`installed` restores the original processors.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn

from accel import parallel
from accel.balance import Balancer, contiguous
from accel.schema import Event
from accel.settings import DEFAULT_REBALANCE
from accel.telemetry import Recorder
from accel.tracking import StepInfo, attach_tracker, detach_tracker
from profiling.ranges import named_range


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Interleaved rotary embedding on the last axis: pairs (x[2i], x[2i+1]) rotate by the pair's angle."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * c - x2 * s
    out[..., 1::2] = x1 * s + x2 * c
    return out.type_as(x)


def self_attention_heads(attn, hidden_states: torch.Tensor, rotary_emb=None):
    """Q, K, V ``(B, L, H, D)`` of a Wan / SkyReels-V2 self-attention exactly as diffusers' processors form them:
    projections (fused or not), RMSNorm of Q and K across heads, interleaved RoPE."""
    if getattr(attn, "fused_projections", False):
        query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
    else:
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
    query = attn.norm_q(query).unflatten(2, (attn.heads, -1))
    key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
    value = value.unflatten(2, (attn.heads, -1))
    if rotary_emb is not None:
        query, key = apply_rotary(query, *rotary_emb), apply_rotary(key, *rotary_emb)
    return query, key, value


def output_projection(attn, out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The attention output ``(B, L, H, D)`` through ``to_out`` (projection, dropout), in ``like``'s dtype."""
    return attn.to_out[1](attn.to_out[0](out.flatten(2, 3).type_as(like)))


class AttentionMethod:
    """A self-attention method. Subclasses override :meth:`attend`; state lives per run."""

    name = "dense"

    def __init__(self, recorder: Recorder | None = None):
        self.recorder = recorder or Recorder(enabled=False)
        self.backend = None  # diffusers attention backend of the processors this replaced
        self.num_layers = 0
        self.num_heads = 0  # the heads this method attends: all, or this rank's under context parallelism
        self.shard: parallel.Shard | None = None  # context parallelism: this rank's heads (set before setup)
        self.balancer: Balancer | None = None  # ... and a balanced head assignment (accel.balance), if on
        self._measured: dict[tuple[int, str], torch.Tensor] = {}  # (layer, branch) -> last per-head density

    def setup(self, num_layers: int, num_heads: int) -> None:
        """Called once at install time with the model's shape (all its heads); validate per-layer/head settings here.
        Under context parallelism :attr:`num_heads` becomes the rank's share."""
        self.num_layers = num_layers
        self.num_heads = num_heads if self.shard is None else self.shard.stop - self.shard.start

    def log_density(self, layer: int, density: torch.Tensor, **row) -> None:
        """The call's per-head density ``(H,)``: one :attr:`Event.DENSITY` row per head (``row``: its other
        fields), and kept as the layer's measured density for a balanced head assignment."""
        self._measured[(layer, self.recorder.info.branch)] = density
        self.recorder.log(Event.DENSITY, density, layer=layer, density=density, **row)

    def measured_density(self, layer: int) -> torch.Tensor | None:
        """The local heads' last density at ``layer``, averaged over the CFG branches (None before its first call)."""
        seen = [d for (lay, _), d in self._measured.items() if lay == layer]
        return torch.stack(seen).float().mean(0) if seen else None

    # -- context parallelism: a balanced head assignment (accel.balance) ----------------------------------------
    def balance_auto(self) -> bool:
        """Whether ``balance=auto`` balances this method's heads (head-wise methods with a table or TMR do)."""
        return False

    def head_costs(self) -> np.ndarray | None:
        """Per-(layer, head) densities known before the run (an EBC table's), or None."""
        return None

    def head_state(self, layer: int) -> dict[str, torch.Tensor]:
        """This rank's per-head state of ``layer`` that moves with its heads; each tensor has the heads on axis 1."""
        return {}

    def set_head_state(self, layer: int, parts: dict[str, torch.Tensor]) -> None:
        """Take over ``parts`` (as :meth:`head_state` gives them) for the heads this rank attends now."""

    def dense(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Full attention exactly as diffusers computes it (same dispatch, same backend)."""
        with named_range("attn.dense"):
            return dispatch_attention_fn(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, backend=self.backend)

    def warmup_dense(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int) -> torch.Tensor:
        """A dense warm-up call of a sparse method: logged as such, with density 1 for every head."""
        self.recorder.log(Event.DENSE_WARMUP, 1.0, layer=layer)
        self.log_density(layer, torch.ones(q.shape[2]))
        return self.dense(q, k, v)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int, info: StepInfo) -> torch.Tensor:
        """Attention output ``(B, L, H, D)`` of ``q, k, v`` ``(B, L, H, D)`` at ``layer``."""
        return self.dense(q, k, v)


class BenchAttnProcessor:
    """Wan ``attn1`` processor that delegates the attention product to an :class:`AttentionMethod`."""

    def __init__(self, method: AttentionMethod, layer: int, info_source):
        self.method = method
        self.layer = layer
        self.info_source = info_source  # the StepTracker whose .info describes the current call

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None, **kw):
        if encoder_hidden_states is not None or attn.add_k_proj is not None or attention_mask is not None:
            raise RuntimeError("BenchAttnProcessor handles plain self-attention (attn1) only")
        query, key, value = self_attention_heads(attn, hidden_states, rotary_emb)
        shard, balancer, info = self.method.shard, self.method.balancer, self.info_source.info
        order = None
        if balancer is not None:  # a balanced assignment: heads permuted into rank-major order, and back after
            order = balancer.order(self.layer, info, self.method)
            order = None if order == contiguous(shard.heads) else order
        if shard is not None:  # Ulysses: this rank's tokens of every head -> every token of this rank's heads
            query, key, value = (parallel.seq_to_heads(parallel.permute_heads(x, order), shard)
                                 for x in (query, key, value))  # fmt: skip
        out = self.method.attend(query, key, value, self.layer, info)
        if shard is not None:
            out = parallel.unpermute_heads(parallel.heads_to_seq(out, shard), order)
        return output_projection(attn, out, query)


@contextmanager
def installed(
    transformer: torch.nn.Module, method: AttentionMethod, num_steps: int = 0, balance: str = "off",
    rebalance: float = DEFAULT_REBALANCE,
) -> Iterator[StepInfo]:  # fmt: skip
    """Install ``method`` on every block's ``attn1`` and a step tracker; restore everything on exit. Under diffusers'
    context parallelism (:mod:`accel.parallel`) the method gets this rank's head shard and a
    :class:`~accel.balance.Balancer` (``rebalance``: its threshold), which moves heads with ``balance`` ``on`` (or
    ``auto`` and :meth:`AttentionMethod.balance_auto`) and otherwise only judges Ulysses' contiguous ranges."""
    blocks = transformer.blocks
    originals = [block.attn1.processor for block in blocks]
    method.backend = getattr(originals[0], "_attention_backend", None)
    heads = blocks[0].attn1.heads
    method.shard = parallel.shard_of(originals[0], heads)
    method.balancer = None
    if method.shard is not None:
        method.recorder.heads_of, method.recorder.ranks = method.shard.heads_of, method.shard.world
        moves = balance == "on" or (balance == "auto" and method.balance_auto())
        costs = method.head_costs() if moves else None
        method.balancer = Balancer(method.shard, rebalance, costs, moves)  # off: judges the contiguous ranges only
        method.balancer.start(len(blocks))
    method.setup(len(blocks), heads)
    tracker = attach_tracker(transformer, num_steps)
    method.recorder.begin(tracker.info, len(blocks))
    try:
        for i, block in enumerate(blocks):
            block.attn1.set_processor(BenchAttnProcessor(method, i, tracker))
        yield tracker.info
    finally:
        for block, proc in zip(blocks, originals, strict=True):
            block.attn1.set_processor(proc)
        detach_tracker(transformer)
