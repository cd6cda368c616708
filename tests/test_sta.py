"""Sliding Tile Attention: the tiling and window rule against hand-written references, its attention against dense
under its token mask (whole and partial tiles), and a run through the registry."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import PROMPT, WAN

from accel.attention.sta import SlidingTileAttention, load_windows, sta_mask, tile_grid, tiling, window_keys
from accel.config import RunConfig
from accel.errors import ConfigError
from accel.tracking import StepInfo


def test_the_window_is_centred_and_shifted_inward_at_the_borders():
    assert [list(window_keys(x, 6, 3)) for x in (0, 3, 5)] == [[0, 1, 2], [2, 3, 4], [3, 4, 5]]
    assert [list(window_keys(x, 3, 5)) for x in range(3)] == [[0, 1, 2]] * 3  # wider than the axis: all of it
    assert list(window_keys(2, 6, 4)) == [0, 1, 2, 3, 4]  # an even window covers k + 1 tiles, as the reference's
    assert list(window_keys(1, 6, 1)) == [1]


def test_tiles_are_contiguous_in_tile_row_major_order():
    perm, offsets, whole = tiling((2, 4, 4), (1, 2, 2))
    assert whole and offsets.tolist() == list(range(0, 33, 4))
    # native index (t * 4 + h) * 4 + w; tile (n_t, n_h, n_w) holds rows h = 2 n_h + b, columns w = 2 n_w + c
    assert perm[:8].tolist() == [0, 1, 4, 5, 2, 3, 6, 7]
    assert sorted(perm.tolist()) == list(range(32))
    perm, offsets, whole = tiling((3, 3, 2), (2, 2, 2))  # smaller last tiles on each axis
    assert not whole and offsets.diff().tolist() == [8, 4, 4, 2] and sorted(perm.tolist()) == list(range(18))


def _reference_mask(tiles, window):
    """Which tile each tile sees, by the per-axis rule written out."""
    nt, nh, nw = tiles
    coords = [(t, h, w) for t in range(nt) for h in range(nh) for w in range(nw)]
    return torch.tensor([[all(b in window_keys(a, n, k) for a, b, n, k in zip(q, key, tiles, window, strict=True))
                          for key in coords] for q in coords])  # fmt: skip


@pytest.mark.parametrize("tiles", [(3, 6, 10), (4, 4, 7), (2, 3, 3)])
def test_the_tile_mask_is_the_product_of_the_axis_windows(tiles):
    mask = sta_mask(tiles, ((3, 3, 3), (1, 6, 10)))
    assert torch.equal(mask[0], _reference_mask(tiles, (3, 3, 3))) and torch.equal(
        mask[1], _reference_mask(tiles, (1, 6, 10))
    )
    if tiles == (3, 6, 10):  # the reference's Wan grid: (3, 3, 3) sees 27 of 180 tiles, (1, 6, 10) one frame tile
        assert mask[0].sum(1).unique().tolist() == [27] and mask[1].sum(1).unique().tolist() == [60]


@pytest.mark.parametrize(("grid", "tile"), [((2, 4, 4), (1, 2, 2)), ((3, 3, 5), (2, 2, 2))])
def test_sta_is_dense_attention_under_its_token_mask(grid, tile):
    windows = [(1, 1, 1), (3, 1, 3)]
    attn = SlidingTileAttention(tile, lambda step, layer, heads: windows)
    attn.setup(1, 2)
    tokens = grid[0] * grid[1] * grid[2]
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, tokens, 2, 8, generator=gen) for _ in range(3))
    out = attn.attend(q, k, v, 0, StepInfo(step=0, num_steps=4, grid=grid))
    perm, offsets, _ = tiling(grid, tile)
    tile_of = torch.empty(tokens, dtype=torch.long)
    tile_of[perm] = torch.repeat_interleave(torch.arange(len(offsets) - 1), offsets.diff())
    mask = sta_mask(tile_grid(grid, tile), tuple(windows))
    token_mask = mask[:, tile_of][:, :, tile_of]  # (heads, L, L) in native order
    scores = torch.einsum("blhd,bmhd->bhlm", q, k) / 8**0.5
    ref = torch.einsum("bhlm,bmhd->blhd", scores.masked_fill(~token_mask, float("-inf")).softmax(-1), v)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_a_window_table_in_the_reference_format(tmp_path):
    path = tmp_path / "mask_strategy.json"
    path.write_text(json.dumps({"0_1_2": [1, 6, 10], "12_0_0": [3, 3, 3]}))
    assert load_windows(str(path)) == {(0, 1, 2): (1, 6, 10), (12, 0, 0): (3, 3, 3)}
    path.write_text(json.dumps({"0_1": [1, 6, 10]}))
    with pytest.raises(ConfigError, match=r"expected .*step_layer_head"):
        load_windows(str(path))


def test_an_sta_run_records_its_masks_on_wan(store):
    from accel.runner import checked, generate

    settings = {"warmup_steps": 1, "window": (1, 1, 1)}
    run = generate(RunConfig(prompt=PROMPT, model="tiny-wan", method="sta", settings=settings, **WAN), store)
    assert set(run.telemetry["event"].dropna()) == {"density", "dense_warmup"} and len(run.arrays) > 0
    assert run.metrics["density_mean_sparse"] < 0.5 and run.config["label"] == "sta-win1x1x1-w1"
    with pytest.raises(ConfigError, match=r"sta runs on Wan2\.1 models"):
        checked(RunConfig(prompt=PROMPT, model="tiny-skyreels", method="sta"))
    with pytest.raises(ConfigError, match="window must be three integers"):
        RunConfig(prompt=PROMPT, method="sta", settings={"window": (3, 3)})
