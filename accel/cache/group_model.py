"""The SkyReels-V2 transformer forwarded one group (chunk) at a time: the group's attention processors with their
per-layer KV buffer (:class:`KVBuffer`, :class:`GroupAttnProcessor`) and the glue that follows
``SkyReelsV2Transformer3DModel.forward`` for a token subset (:class:`GroupModel`). The runner that schedules the
groups is :mod:`accel.cache.chunked`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn

from accel.attention.base import AttentionMethod, output_projection, self_attention_heads
from accel.cache.kv import KVCompression, gather_heads
from accel.cache.kv import select as kv_select
from accel.tracking import StepInfo
from profiling.ranges import named_range


@dataclass
class Call:
    """What the attention processors need to know about the current group forward (the runner sets it)."""

    branch: str = "cond"
    group: int = 0
    tokens: torch.Tensor | None = None  # token subset of the group being recomputed (None = all)
    # per branch: finished groups whose K/V the branch's next attention compresses with its own queries
    pending: dict[str, tuple[int, ...]] = field(default_factory=dict)
    buffer: KVBuffer = field(default_factory=lambda: KVBuffer())
    compress: Callable[[int, torch.Tensor], None] | None = None  # (layer, queries): KV compression, if on


@dataclass
class KVBuffer:
    """Per (branch, layer): post-RoPE K/V of every forwarded group, and a compressed clean prefix."""

    groups: dict[tuple[str, int], dict[int, tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)
    clean: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def write(self, branch: str, layer: int, group: int, k, v, tokens: torch.Tensor | None = None) -> None:
        slot = self.groups.setdefault((branch, layer), {})
        if tokens is None or group not in slot:
            slot[group] = (k, v)
            return
        old_k, old_v = slot[group]
        new_k, new_v = old_k.clone(), old_v.clone()
        new_k[:, tokens], new_v[:, tokens] = k, v
        slot[group] = (new_k, new_v)

    def context(self, branch: str, layer: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V visible to ``group``: the clean prefix, then every buffered group up to ``group``."""
        parts = [self.clean[(branch, layer)]] if (branch, layer) in self.clean else []
        slot = self.groups.get((branch, layer), {})
        parts += [slot[g] for g in sorted(slot) if g <= group]
        if len(parts) == 1:
            return parts[0]
        return torch.cat([p[0] for p in parts], dim=1), torch.cat([p[1] for p in parts], dim=1)

    def compress(self, branch: str, layer: int, clean: tuple[int, ...], q, keep: int, kv: KVCompression, block: int):
        """Merge the clean groups into the clean prefix, keeping ``keep`` tokens per head if over budget."""
        key = (branch, layer)
        slot = self.groups.get(key, {})
        parts = ([self.clean[key]] if key in self.clean else []) + [slot.pop(g) for g in clean if g in slot]
        if not parts:
            return None
        k = torch.cat([p[0] for p in parts], dim=1)
        v = torch.cat([p[1] for p in parts], dim=1)
        before = k.shape[1]
        if before > keep:
            idx = kv_select(q, k, keep, kv.lam, kv.granularity, block)
            k, v = gather_heads(k, idx), gather_heads(v, idx)
        self.clean[key] = (k, v)
        return before, k.shape[1]

    def tokens(self) -> int:
        """Buffered tokens of one (branch, layer), summed over the groups and the clean prefix."""
        if not self.groups and not self.clean:
            return 0
        key = next(iter(self.groups or self.clean))
        n = sum(k.shape[1] for k, _ in self.groups.get(key, {}).values())
        return n + (self.clean[key][0].shape[1] if key in self.clean else 0)

    def nbytes(self) -> int:
        total = sum(k.nbytes + v.nbytes for slot in self.groups.values() for k, v in slot.values())
        return total + sum(k.nbytes + v.nbytes for k, v in self.clean.values())


class GroupAttnProcessor:
    """``attn1`` of a SkyReels block for one group: fresh Q/K/V of its tokens against the KV buffer of ``call``,
    through the sparse ``attention`` method (seeing ``info``) or diffusers' dispatch."""

    def __init__(self, layer: int, call: Call, backend=None, attention: AttentionMethod | None = None,
                 info: StepInfo | None = None):  # fmt: skip
        self.layer, self.call, self.backend, self.attention, self.info = layer, call, backend, attention, info

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None, **kw):
        query, key, value = self_attention_heads(attn, hidden_states, rotary_emb)
        c = self.call
        if c.compress is not None and c.pending.get(c.branch):  # compress first, then attend (as the reference)
            c.compress(self.layer, query)
        c.buffer.write(c.branch, self.layer, c.group, key, value, c.tokens)
        k_ctx, v_ctx = c.buffer.context(c.branch, self.layer, c.group)
        if self.attention is not None:  # sparse attention over [earlier groups ; this group]
            out = self.attention.attend(query, k_ctx, v_ctx, self.layer, self.info)
        else:
            out = dispatch_attention_fn(query, k_ctx, v_ctx, attn_mask=None, dropout_p=0.0, is_causal=False,
                                        backend=self.backend)  # fmt: skip
        return output_projection(attn, out, query)


@dataclass
class Embedded:
    """A group's tokens after patch embedding, with its per-token modulation and RoPE."""

    tokens: torch.Tensor  # (B, L_g, D): x_in, the input of block 0
    temb: torch.Tensor  # (B, L_g, D) for the output head
    tproj: torch.Tensor  # (B, 6, L_g, D) block modulation
    e0: torch.Tensor  # (B, f, 6, D) per-frame modulation (FlowCache's metric)
    rotary: tuple[torch.Tensor, torch.Tensor]  # (1, L_g, 1, Dh) each
    shape: tuple[int, int, int]  # (f, H', W')


class GroupModel:
    """The SkyReels-V2 transformer split into embed / blocks / head, for one group's frames."""

    def __init__(self, transformer, fps: int = 24):
        self.tr = transformer
        self.fps_index = 0 if fps == 16 else 1  # as the pipeline maps fps

    def embed(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, frame0: int) -> tuple[Embedded, Any]:
        """Patch-embed latents ``x`` (B, C, f, H, W) at per-frame timesteps ``t`` (B, f)."""
        tr = self.tr
        b, _, f, h, w = x.shape
        pt, ph, pw = tr.config.patch_size
        fh, hh, wh = f // pt, h // ph, w // pw
        tokens = tr.patch_embedding(x).flatten(2).transpose(1, 2)
        temb, tproj, enc, _ = tr.condition_embedder(t, context, None)
        tproj = tproj.unflatten(-1, (6, -1))  # (B, f, 6, D)
        if tr.config.inject_sample_info:
            fps = torch.full((b,), self.fps_index, dtype=torch.long, device=x.device)
            tproj = tproj + tr.fps_projection(tr.fps_embedding(fps)).unflatten(1, (6, -1))[:, None]
        per_frame = hh * wh
        temb_tok = temb[:, :, None, :].expand(b, fh, per_frame, temb.shape[-1]).flatten(1, 2)
        tproj_tok = tproj[:, :, None].expand(b, fh, per_frame, 6, tproj.shape[-1]).flatten(1, 2).transpose(1, 2)
        cos, sin = self.rope(frame0, fh, hh, wh, x.device)
        return Embedded(tokens, temb_tok, tproj_tok.contiguous(), tproj, (cos, sin), (fh, hh, wh)), enc

    def rope(self, frame0: int, frames: int, hh: int, wh: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE of frames ``[frame0, frame0 + frames)`` (absolute positions in the window)."""
        full_frames = frame0 + frames
        dummy = torch.empty(1, 1, full_frames * self.tr.config.patch_size[0], hh * self.tr.config.patch_size[1],
                            wh * self.tr.config.patch_size[2], device=device)  # fmt: skip
        cos, sin = self.tr.rope(dummy)
        start = frame0 * hh * wh
        return cos[:, start:], sin[:, start:]

    def blocks(self, emb: Embedded, enc: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Run every block on the group's tokens (or on the subset ``tokens``); returns the last block output."""
        with named_range("cache.recompute"):
            return self._blocks(emb, enc, tokens)

    def _blocks(self, emb: Embedded, enc: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
        hs, tproj, (cos, sin) = emb.tokens, emb.tproj, emb.rotary
        if tokens is not None:
            hs, tproj, cos, sin = hs[:, tokens], tproj[:, :, tokens], cos[:, tokens], sin[:, tokens]
        for block in self.tr.blocks:
            hs = block(hs, enc, tproj, (cos, sin), None)
        return hs

    def head(self, hidden: torch.Tensor, emb: Embedded) -> torch.Tensor:
        """Output norm, projection and unpatchify: (B, L_g, D) -> (B, C, f, H, W)."""
        tr = self.tr
        shift, scale = (tr.scale_shift_table.unsqueeze(2) + emb.temb.unsqueeze(1)).chunk(2, dim=1)
        shift, scale = shift.squeeze(1).to(hidden.device), scale.squeeze(1).to(hidden.device)
        hs = (tr.norm_out(hidden.float()) * (1 + scale) + shift).type_as(hidden)
        hs = tr.proj_out(hs)
        b = hs.shape[0]
        pt, ph, pw = tr.config.patch_size
        fh, hh, wh = emb.shape
        hs = hs.reshape(b, fh, hh, wh, pt, ph, pw, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return hs.flatten(6, 7).flatten(4, 5).flatten(2, 3)
