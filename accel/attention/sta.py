"""Sliding Tile Attention (hao-ai-lab/FastVideo, branch ``sta_do_not_delete``): tokens permuted into tiles of
``(t, h, w)`` latent tokens, each query tile attending to the key tiles in a 3-D window around it.

- Tiling (``SlidingTileAttentionImpl.tile`` / ``untile``): tiles in tile-row-major order ``(n_t, n_h, n_w)``, each
  tile's tokens contiguous in ``(a, b, c)`` row-major order. The reference accepts only grids its tile divides; a grid
  it does not divide gets smaller last tiles on each axis, as the same repository's VSA backend does
  (``get_tile_partition_indices``): the bench's extension, run on the variable-block kernel.
- Window (``triton_sta_kernel``, ``sta_mask_3d``): per axis with ``n`` tiles, query tile ``x`` and window ``k``
  (tiles), ``centre = clamp(x, k // 2, n - 1 - k // 2)`` (the lower bound wins when they cross) and the key tiles
  ``centre - k // 2 .. centre + k // 2`` within ``[0, n)``: centred, shifted inward at the borders, never cut; a query
  tile sees the Cartesian product of the three ranges, every token of them.
- Windows are per head (the reference stores one per step, layer and head, ``{t}_{layer}_{head}``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

from accel.attention.base import AttentionMethod
from accel.attention.block_mask import StaticLookups
from accel.kernels.block_sparse import block_sparse_attention, mask_density
from accel.telemetry import Recorder
from accel.tracking import StepInfo

Window = tuple[int, int, int]


def _cuts(n: int, size: int) -> list[int]:
    """Tile boundaries along one axis: tiles of ``size``, the last one smaller where ``size`` does not divide ``n``."""
    return [*range(0, n, size), n]


@functools.lru_cache(maxsize=16)
def tiling(grid: tuple[int, int, int], tile: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """The token order of the tiles (``perm[i]`` is the native index of the ``i``-th tiled token), the tiles'
    offsets into it ``(n_tiles + 1,)``, and whether every tile is whole."""
    frames, height, width = grid
    index = torch.arange(frames * height * width).view(frames, height, width)
    cuts = [_cuts(n, s) for n, s in zip(grid, tile, strict=True)]
    parts = [
        index[t0:t1, h0:h1, w0:w1].reshape(-1)
        for t0, t1 in zip(cuts[0], cuts[0][1:], strict=False)
        for h0, h1 in zip(cuts[1], cuts[1][1:], strict=False)
        for w0, w1 in zip(cuts[2], cuts[2][1:], strict=False)
    ]
    sizes = torch.tensor([0, *(len(p) for p in parts)])
    whole = all(n % s == 0 for n, s in zip(grid, tile, strict=True))
    return torch.cat(parts), sizes.cumsum(0), whole


def tile_grid(grid: tuple[int, int, int], tile: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(math.ceil(n / s) for n, s in zip(grid, tile, strict=True))


def window_keys(x: int, n: int, k: int) -> range:
    """The key tiles query tile ``x`` of ``n`` sees along one axis with a window of ``k`` tiles."""
    half = k // 2
    centre = max(min(x, n - 1 - half), half)  # the upper bound, then the lower one (the Triton kernel's order)
    return range(max(centre - half, 0), min(centre + half, n - 1) + 1)


@functools.lru_cache(maxsize=64)
def sta_mask(tiles: tuple[int, int, int], windows: tuple[Window, ...]) -> torch.Tensor:
    """Bool ``(heads, T, T)`` tile mask (``T`` tiles in tile-row-major order), one window per head."""
    nt, nh, nw = tiles
    out = torch.zeros(len(windows), nt * nh * nw, nt * nh * nw, dtype=torch.bool)
    for head, (kt, kh, kw) in enumerate(windows):
        per_axis = []
        for n, k in ((nt, kt), (nh, kh), (nw, kw)):
            m = torch.zeros(n, n, dtype=torch.bool)
            for x in range(n):
                m[x, list(window_keys(x, n, k))] = True
            per_axis.append(m)
        mt, mh, mw = per_axis
        out[head] = (mt[:, None, None, :, None, None] & mh[None, :, None, None, :, None]
                     & mw[None, None, :, None, None, :]).reshape(nt * nh * nw, nt * nh * nw)  # fmt: skip
    return out


class SlidingTileAttention(AttentionMethod):
    """STA on the block-sparse kernels: q, k, v permuted into tiles, a tile mask per head, the output permuted back;
    uniform blocks when every tile is whole, else the variable-block kernel. Dense on the first
    ``dense_steps(num_steps)`` steps; ``windows(step, layer, heads)`` gives each head's window (in tiles)."""

    name = "sta"

    def __init__(
        self,
        tile: tuple[int, int, int],
        windows: Callable[[int, int, int], list[Window]],
        dense_steps: Callable[[int], int] = lambda num_steps: 0,
        recorder: Recorder | None = None,
    ):
        super().__init__(recorder)
        self.tile, self.windows, self.dense_steps = tile, windows, dense_steps
        self._patterns: dict[tuple, tuple] = {}
        self._lookups = StaticLookups()

    def _pattern(self, grid: tuple[int, int, int], windows: tuple[Window, ...], device: torch.device):
        """The tiling and tile mask of a call, on ``device``, kept per grid and windows: ``(perm, offsets, mask,
        whole, full, density)``, ``full`` whether every window covers every tile, ``density`` per head."""
        key = (grid, windows, device)
        if key not in self._patterns:
            perm, offsets, whole = tiling(grid, self.tile)
            mask = sta_mask(tile_grid(grid, self.tile), windows)
            density = mask_density(mask[None], offsets, offsets)[0]
            self._patterns[key] = (perm.to(device), offsets.to(device), mask.to(device), whole, bool(mask.all()),
                                   density)  # fmt: skip
        return self._patterns[key]

    def attend(self, q, k, v, layer, info: StepInfo):
        if info.step < self.dense_steps(info.num_steps):
            return self.warmup_dense(q, k, v, layer)
        grid = tuple(info.grid)
        if q.shape[1] != k.shape[1] or math.prod(grid) != q.shape[1]:
            raise ValueError(f"sliding tile attention needs the video's own tokens ({grid}), got {q.shape[1]}")
        heads = q.shape[2]
        global_heads = self.shard.heads_of(layer) if self.shard is not None else range(heads)
        windows = self.windows(info.step, layer, max(global_heads) + 1)
        windows = tuple(windows[h] for h in global_heads)
        perm, offsets, mask, whole, full, density = self._pattern(grid, windows, q.device)
        # in (B, H, L, D) storage: the kernels read each head's tokens as contiguous blocks without another copy
        qp, kp, vp = (x.transpose(1, 2).index_select(2, perm).transpose(1, 2) for x in (q, k, v))
        if whole:
            block = math.prod(self.tile)
            lookup = self._lookups.get(mask, block, qp, kp)
            out = block_sparse_attention(qp, kp, vp, mask, block_size=block, dense=full, lookup=lookup)
            ref = self.recorder.record_mask(layer, mask)
        else:
            out = block_sparse_attention(qp, kp, vp, mask, offsets, offsets, varlen=True, dense=full)
            full = offsets.expand(heads, -1)
            ref = self.recorder.record_mask(layer, mask, full, full)
        self.log_density(layer, density, mask_ref=ref)
        return torch.empty_like(out).index_copy_(1, perm, out)


def load_windows(path: str) -> dict[tuple[int, int, int], Window]:
    """Per (step, layer, head) windows from the reference's mask-strategy JSON (``{"t_layer_head": [kt, kh, kw]}``);
    a file that cannot be read or holds anything else is a one-line :class:`ConfigError`."""
    import json
    from pathlib import Path

    from accel.errors import ConfigError

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise ConfigError(f"window table {path} cannot be read: {exc}") from None
    out = {}
    for key, value in data.items() if isinstance(data, dict) else [("?", None)]:
        parts = str(key).split("_")
        ok = len(parts) == 3 and all(p.isdigit() for p in parts)
        ok = ok and isinstance(value, list) and len(value) == 3
        ok = ok and all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in value)
        if not ok:
            raise ConfigError(
                f"window table {path}: expected {{'step_layer_head': [kt, kh, kw]}}, got {key!r}: {value!r}"
            )
        out[tuple(int(p) for p in parts)] = tuple(value)
    return out
