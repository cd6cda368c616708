"""KV-cache compression: importance and O(L·D) redundancy against brute force, bounded memory."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from accel.cache.kv import KVCompression, gather_heads, importance, redundancy, select


def test_redundancy_matches_the_pairwise_cosine_matrix():
    k = torch.randn(2, 30, 3, 8, generator=torch.Generator().manual_seed(0))
    unit = F.normalize(k.transpose(1, 2).double(), dim=-1)
    cos = unit @ unit.transpose(-1, -2)
    mean_others = (cos.sum(-1) - cos.diagonal(dim1=-2, dim2=-1)) / 30  # diagonal zeroed, mean over all 30
    torch.testing.assert_close(redundancy(k).double(), torch.softmax(mean_others, -1), atol=1e-6, rtol=1e-5)


def test_importance_is_pooled_mean_attention():
    gen = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 12, 2, 8, generator=gen), torch.randn(1, 20, 2, 8, generator=gen)
    probs = torch.softmax(q.transpose(1, 2) @ k.transpose(1, 2).transpose(-1, -2) / math.sqrt(8), -1).mean(2)
    pooled = F.max_pool1d(probs.reshape(2, 1, 20), 7, 1, 3).reshape(1, 2, 20)
    torch.testing.assert_close(importance(q, k), pooled, atol=1e-6, rtol=1e-5)


def test_selection_per_head_and_granularity():
    gen = torch.Generator().manual_seed(2)
    q, k = torch.randn(1, 8, 4, 8, generator=gen), torch.randn(1, 40, 4, 8, generator=gen)
    idx = select(q, k, keep=10)
    assert idx.shape == (1, 4, 10) and (idx.diff(dim=-1) > 0).all()
    assert len({tuple(idx[0, h].tolist()) for h in range(4)}) > 1  # heads choose differently
    frames = select(q, k, keep=16, granularity="frame", block=8)
    assert frames.shape == (1, 4, 16)
    assert ((frames.view(1, 4, 2, 8) % 8) == torch.arange(8)).all()  # whole frames of 8 tokens
    kept = gather_heads(k, idx)
    assert torch.equal(kept[0, 3, 2], k[0, idx[0, 2, 3], 2])
    with pytest.raises(ValueError, match="granularity"):
        KVCompression(granularity="pixel")


def _long_run(pipe, kv, recorder):
    from accel.cache.chunked import ChunkedRunner

    runner = ChunkedRunner(pipe, recorder=recorder, kv=kv)
    # 16 latent frames = 8 chunks of 2; ar_step = steps: one chunk denoises at a time, so clean ones pile up
    out = runner.generate("a long video of a river", "", 64, 64, 61, 3, 5.0, seed=0, ar_step=3, causal_block_size=2,
                          output_type="latent")  # fmt: skip
    return out, runner


@pytest.fixture(scope="module")
def uncompressed(sky_pipe):
    """The long video without KV compression: its latents and telemetry."""
    from accel.telemetry import Recorder

    rec = Recorder()
    full, _ = _long_run(sky_pipe, None, rec)
    return full, rec.finish()[0]


def test_compressed_buffer_stays_within_budget_as_the_video_grows(sky_pipe, uncompressed):
    from accel.telemetry import Recorder

    rec = Recorder()
    out, runner = _long_run(sky_pipe, KVCompression(budget_chunks=1), rec)
    full, kv_full = uncompressed
    chunk = 2 * 4 * 4  # 2 frames x 4 x 4 tokens at 64 x 64
    kv = rec.finish()[0]
    sizes = kv[kv.event == "kv_tokens"]["value"]
    sizes_full = kv_full[kv_full.event == "kv_tokens"]["value"]
    assert sizes.max() <= 2 * chunk  # budget (1 chunk) + the chunk being denoised
    assert sizes_full.max() == 8 * chunk  # without compression it grows with the video
    assert runner.stats["kv_compressions"] >= 6
    comp = kv[kv.event == "kv_compress"]
    assert (comp["value"] == chunk).all() and (comp["threshold"] > chunk).all()
    assert torch.isfinite(out).all() and not torch.equal(out, full)


def test_large_budget_changes_nothing(sky_pipe, uncompressed):
    out, _ = _long_run(sky_pipe, KVCompression(budget_chunks=8), None)
    full, _ = uncompressed
    torch.testing.assert_close(out, full, atol=1e-5, rtol=1e-5)
