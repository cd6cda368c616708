"""Radial Attention's mask against the reference's rules (worked examples and a token-level re-statement), its
attention against dense under that mask, and a run through the registry."""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPT, WAN

from accel.attention.radial import COLUMN_FILL, KEEP_COLUMN_SHARE, pair_kept, radial_mask, window
from accel.config import RunConfig
from accel.errors import ConfigError

# 5 latent frames of 512 tokens (4 blocks of 128 each), decay 1 (docs/references/radial_sta.md, 1.9): '#' kept
EXAMPLE = """
####|####|###.|###.|##..
####|####|####|####|###.
####|####|####|####|.###
####|####|.###|.###|..##
####|####|####|###.|###.
####|####|####|####|####
####|####|####|####|####
####|####|####|.###|.###
####|####|####|####|###.
####|####|####|####|####
####|####|####|####|####
####|####|####|####|.###
####|###.|####|####|####
####|####|####|####|####
####|####|####|####|####
####|.###|####|####|####
####|###.|###.|####|####
####|####|####|####|####
####|####|####|####|####
####|.###|.###|####|####
"""


def test_the_worked_example_and_the_reference_setting():
    expected = torch.tensor([[c == "#" for c in row.replace("|", "")] for row in EXAMPLE.split()])
    got = radial_mask(5, 512, 1.0, 128)
    assert torch.equal(got, expected)
    assert got.float().mean().item() == pytest.approx(0.945)
    narrow = radial_mask(5, 512, 0.2, 128)  # every far pair at the one-block floor: a tri-diagonal band
    assert narrow.float().mean().item() == pytest.approx(0.865)
    # the reference's own setting: 14B at 768x1280x69, 18 frames of 48x80 tokens, decay 0.2: 68 full frame pairs
    # and 256 tri-diagonal ones of 30x30 blocks
    assert radial_mask(18, 3840, 0.2, 128).float().mean().item() == pytest.approx((68 * 900 + 256 * 88) / 540**2)


def _token_reference(frames: int, s: int, decay: float, block: int) -> torch.Tensor:
    """The rules written out per token, then per block: each frame pair's token mask placed at its frame's offset in
    its first block, cropped to whole blocks, shrunk by the column rule and ORed; a partial last block dense."""
    n = -(-s // block)
    nb, whole = -(-frames * s // block), frames * s // block
    out = torch.zeros(nb + n, nb + n, dtype=torch.bool)
    for i in range(frames):
        for j in range(frames):
            d, r_i, r_j = abs(i - j), i * s % block, j * s % block
            canvas = torch.zeros(n * block + r_i, n * block + r_j, dtype=torch.bool)
            for p in range(s):
                for q in range(s):
                    canvas[r_i + p, r_j + q] = j == 0 or (
                        pair_kept(d, s, block) and abs(p - q) <= window(d, s, decay, block)
                    )
            canvas = canvas[: n * block, : n * block]
            for a in range(n):
                for b in range(n):
                    cell = canvas[a * block : (a + 1) * block, b * block : (b + 1) * block]
                    fill = cell.float().sum(0) / block
                    nonempty = int((fill > 0).sum())
                    if nonempty and int((fill > COLUMN_FILL).sum()) > KEEP_COLUMN_SHARE * nonempty:
                        out[i * s // block + a, j * s // block + b] = True
    out = out[:nb, :nb]
    out[whole:, :] = True
    out[:, whole:] = True
    return out


@pytest.mark.parametrize(("frames", "s", "decay", "block"), [(6, 12, 0.5, 4), (5, 10, 1.0, 8), (9, 16, 0.2, 4)])
def test_the_mask_follows_the_rules_token_by_token(frames, s, decay, block):
    """Misaligned frames (the tokens per frame no multiple of the block), far pairs dropped, a partial last block."""
    assert torch.equal(radial_mask(frames, s, decay, block), _token_reference(frames, s, decay, block))


def test_the_window_halves_as_the_distance_doubles():
    assert [window(d, 3840, 1.0, 128) for d in (1, 2, 3, 4, 8)] == [3840, 1024, 1024, 512, 256]
    assert window(5, 3840, 0.2, 128) == 128  # the floor: one block
    assert [pair_kept(d, 1560, 128) for d in (15, 16, 17, 18)] == [True, True, False, True]  # every 2nd past 16


def test_radial_attention_is_dense_attention_under_its_mask():
    from accel.attention.block_mask import BlockMaskAttention
    from accel.tracking import StepInfo

    frames, s, block = 4, 8, 4
    mask = radial_mask(frames, s, 0.5, block)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, frames * s, 2, 8, generator=gen) for _ in range(3))
    attn = BlockMaskAttention("radial", lambda h, nq, nk, b, info: mask.expand(h, nq, nk), block)
    attn.setup(2, 2)
    out = attn.attend(q, k, v, 1, StepInfo(step=3, num_steps=4, grid=(frames, 2, 4)))
    ids = torch.arange(frames * s) // block
    tokens = mask[ids][:, ids]
    scores = torch.einsum("blhd,bmhd->bhlm", q, k) / 8**0.5
    ref = torch.einsum("bhlm,bmhd->blhd", scores.masked_fill(~tokens, float("-inf")).softmax(-1), v)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    dense_layer = BlockMaskAttention("radial", lambda *a: mask, block, dense_layers=2)
    dense_layer.setup(2, 2)
    torch.testing.assert_close(dense_layer.attend(q, k, v, 1, StepInfo(step=3, num_steps=4)), attn.dense(q, k, v))


def test_a_radial_run_records_its_masks_and_runs_on_wan_only(store):
    from accel.runner import checked, generate

    run = generate(RunConfig(prompt=PROMPT, model="tiny-wan", method="radial", settings={"warmup_steps": 2}, **WAN),
                   store)  # fmt: skip
    events = set(run.telemetry["event"].dropna())
    assert events == {"density", "dense_warmup"}
    sparse = run.telemetry[(run.telemetry["event"] == "density") & (run.telemetry["step"] >= 2)]
    assert (sparse[sparse["layer"] == 0]["value"] == 1).all()  # layer 0 dense (the reference's dense_layers 1)
    assert len(run.arrays) > 0
    with pytest.raises(ConfigError, match=r"radial runs on Wan2\.1 models"):
        checked(RunConfig(prompt=PROMPT, model="tiny-skyreels", method="radial"))
