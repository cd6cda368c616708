"""Radial Attention's static spatio-temporal energy-decay mask (mit-han-lab/radial-attention,
``radial_attn/attn_mask.py``: ``gen_log_mask_shrinked``, ``get_window_width``, ``get_diagonal_split_mask``,
``shrinkMaskStrict``), for Wan2.1's frame-major token order.

Token ``(i, p)`` (latent frame ``i``, in-frame raster index ``p``) attends to ``(j, q)`` iff ``j == 0`` (every frame
sees frame 0: the attention sink) or ``|p - q| <= w(d)`` for ``d = |i - j|`` with the frame pair kept:

- ``w(d) = s`` for ``d <= 1`` (a frame and its neighbours are dense), else ``max(S / 2**bitlen(d) * decay, B)``
  with ``s`` the tokens per frame, ``S`` the smallest power of two above ``s`` and ``B`` the block size: the window
  halves each time the temporal distance doubles, down to one block;
- a far pair is kept only every ``k``-th distance once the undecayed window ``S / 2**bitlen(d)`` drops below a
  block (``k = B / that``).

Each frame pair's token mask is placed at its frame's offset inside its first block, cropped to whole blocks, and a
``B x B`` block is kept iff more than 60% of its non-empty key columns have more than a third of the block's rows
true; the pairs are ORed into one block mask, the same for every head, layer and step. The reference's ``128`` in
the rules is its block size: here ``B`` is the model's block size. A partial last block (the tokens are not a
multiple of ``B``; the reference never meets one on Wan) is kept dense in its row and column, as the reference
treats blocks past the video.
"""

from __future__ import annotations

import functools

import torch

KEEP_COLUMN_SHARE = 0.6  # a block is kept if more than this share of its non-empty key columns ...
COLUMN_FILL = 1 / 3  # ... have more than this share of the block's query rows true (shrinkMaskStrict)


def window(d: int, s: int, decay: float, block: int) -> float:
    """The in-frame token window of a frame pair ``d`` frames apart (``get_window_width``)."""
    if d <= 1:
        return float(s)
    return max((1 << s.bit_length()) / (1 << d.bit_length()) * decay, float(block))


def pair_kept(d: int, s: int, block: int) -> bool:
    """Whether a frame pair ``d`` apart is kept at all (``get_diagonal_split_mask``): every ``k``-th distance once the
    undecayed window drops below a block."""
    undecayed = (1 << s.bit_length()) / (1 << d.bit_length())
    if undecayed >= block:
        return True
    return d % round(block / undecayed) == 0


def shrink(tokens: torch.Tensor, block: int) -> torch.Tensor:
    """A ``(n*B, n*B)`` token mask to its ``(n, n)`` block mask by the reference's column rule."""
    n = tokens.shape[0] // block
    cells = tokens.view(n, block, n, block).float()
    column_fill = cells.mean(1)  # (n, n, B): each key column's share of the block's query rows
    nonempty = (column_fill > 0).sum(-1)
    filled = (column_fill > COLUMN_FILL).sum(-1)
    return (nonempty > 0) & (filled > KEEP_COLUMN_SHARE * nonempty)


@functools.lru_cache(maxsize=64)
def _pair_blocks(d: int, sink: bool, s: int, decay: float, block: int, r_i: int, r_j: int) -> torch.Tensor:
    """The block mask one frame pair contributes: its token mask at offsets ``(r_i, r_j)`` in a canvas of whole
    blocks, cropped to ``ceil(s / B)`` blocks a side and shrunk."""
    n = -(-s // block)
    canvas = torch.zeros(n * block + r_i, n * block + r_j, dtype=torch.bool)
    if sink:
        canvas[r_i : r_i + s, r_j : r_j + s] = True
    elif pair_kept(d, s, block):
        p = torch.arange(s)
        canvas[r_i : r_i + s, r_j : r_j + s] = (p[:, None] - p[None, :]).abs() <= window(d, s, decay, block)
    return shrink(canvas[: n * block, : n * block], block)


def radial_mask(frames: int, s: int, decay: float, block: int) -> torch.Tensor:
    """Bool ``(nb, nb)`` block mask of a video of ``frames`` latent frames of ``s`` tokens, ``nb = ceil(N / B)``."""
    tokens = frames * s
    nb, whole = -(-tokens // block), tokens // block
    mask = torch.zeros(nb + -(-s // block), nb + -(-s // block), dtype=torch.bool)
    for i in range(frames):
        for j in range(frames):
            bi, bj = i * s // block, j * s // block
            part = _pair_blocks(abs(i - j), j == 0, s, decay, block, i * s % block, j * s % block)
            mask[bi : bi + part.shape[0], bj : bj + part.shape[1]] |= part
    mask = mask[:nb, :nb]
    mask[whole:, :] = True  # a partial last block: dense, as the reference treats blocks past the video
    mask[:, whole:] = True
    return mask


def density(mask: torch.Tensor) -> float:
    """Share of kept blocks."""
    return float(mask.float().mean())
