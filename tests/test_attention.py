"""Semantics of the attention methods: dense is diffusers, tau=1/top_p=1 is dense, density falls with tau."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import MEDIUM, run_pipe
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from accel.attention import SVG2, AttentionMethod, XAttention, installed, select_blocks
from accel.attention.svg2 import _gather_tokens, _scatter_tokens, kmeans
from accel.errors import ConfigError
from accel.kernels.block_sparse import block_token_ids, mask_density, uniform_offsets
from accel.kernels.estimate import antidiagonal_block_scores
from accel.methods import xattention
from accel.methods.svg2 import SVG2Settings
from accel.methods.xattention import XAttentionSettings
from accel.telemetry import Recorder
from accel.tracking import StepInfo


def structured_qk(length=256, heads=4, dim=16, seed=0):
    """Q/K with locality: tokens near each other share a direction, like a video model's."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(length // 32 + 1, heads, dim, generator=gen)
    pos = torch.arange(length) // 32
    q = base[pos] * 3 + torch.randn(length, heads, dim, generator=gen)
    k = base[pos] * 3 + torch.randn(length, heads, dim, generator=gen)
    v = torch.randn(length, heads, dim, generator=gen)
    return q[None], k[None], v[None]


def test_dense_method_reproduces_diffusers_pipeline(tiny_pipe):
    assert all(isinstance(b.attn1.processor, WanAttnProcessor) for b in tiny_pipe.transformer.blocks)
    ref = run_pipe(tiny_pipe)
    with installed(tiny_pipe.transformer, AttentionMethod()):
        out = run_pipe(tiny_pipe)
    assert np.abs(out - ref).max() <= 1e-6
    # processors are restored afterwards
    assert all(isinstance(b.attn1.processor, WanAttnProcessor) for b in tiny_pipe.transformer.blocks)


@pytest.mark.slow  # a whole generation: in the full suite, not the quick subset
def test_xattention_tau_one_equals_dense_pipeline(tiny_pipe):
    from accel.models import REGISTRY

    ref = run_pipe(tiny_pipe, **MEDIUM)
    method = XAttention(
        XAttentionSettings(tau=1.0, warmup_steps=0, block_size=16, stride=4),
        xattention.model_defaults(REGISTRY["tiny-wan"])["block_size"],
    )
    with installed(tiny_pipe.transformer, method):
        out = run_pipe(tiny_pipe, **MEDIUM)
    assert np.abs(out - ref).max() <= 1e-6
    settings = XAttentionSettings(tau=0.5, warmup_steps=0, block_size=16, stride=4, dense_above=1.0)  # all sparse
    sparse = XAttention(settings, 64)
    with installed(tiny_pipe.transformer, sparse):
        out_sparse = run_pipe(tiny_pipe, **MEDIUM)
    assert np.abs(out_sparse - ref).max() > 1e-4  # the sparse path really changes the result


def test_xattention_tau_one_selects_everything():
    q, k, _ = structured_qk()
    scores = antidiagonal_block_scores(q, k, 4, 16)
    assert select_blocks(scores, 1.0).all()


def test_density_falls_monotonically_with_tau():
    q, k, _ = structured_qk()
    scores = antidiagonal_block_scores(q, k, 4, 16)
    off = uniform_offsets(q.shape[1], 16)
    densities = [
        mask_density(select_blocks(scores, tau), off, off).mean().item() for tau in (1.0, 0.95, 0.9, 0.7, 0.5, 0.2)
    ]
    assert all(a >= b for a, b in itertools.pairwise(densities))
    assert densities[0] == 1.0 and densities[-1] < 0.5


def test_select_blocks_keeps_crossing_block_and_first_column():
    scores = torch.tensor([[[[0.1, 0.6, 0.3, 0.0]]]])
    # sorted 0.6, 0.3, 0.1: 0.6 < 0.8 so the crossing 0.3 is kept as well; column 0 is always kept
    assert select_blocks(scores, 0.8).tolist() == [[[[True, True, True, False]]]]
    assert select_blocks(scores, 0.5).tolist() == [[[[True, True, False, False]]]]


def test_per_head_tau():
    q, k, _ = structured_qk(heads=2)
    scores = antidiagonal_block_scores(q, k, 4, 16)
    mask = select_blocks(scores, torch.tensor([1.0, 0.3]))
    assert mask[0, 0].all() and not mask[0, 1].all()


def test_tau_table_shape_is_checked():
    method = XAttention(XAttentionSettings(tau=(0.9, 0.8, 0.7)), 64)
    with pytest.raises(ConfigError, match="3 values"):
        method.setup(num_layers=4, num_heads=6)
    per_layer = XAttention(XAttentionSettings(tau=tuple(0.5 + 0.01 * i for i in range(24))), 64)
    per_layer.setup(num_layers=4, num_heads=6)
    assert per_layer.threshold(3, "uncond", torch.device("cpu")).tolist() == pytest.approx(
        [0.68, 0.69, 0.7, 0.71, 0.72, 0.73]
    )


def test_settings_out_of_range_are_refused():
    with pytest.raises(ConfigError, match="tau"):
        XAttentionSettings(tau=1.5)
    with pytest.raises(ConfigError, match="multiple of stride"):
        XAttentionSettings(stride=8, block_size=20)
    with pytest.raises(ConfigError, match="top_p"):
        SVG2Settings(top_p=0.0)


def test_kmeans_permutation_round_trips_exactly():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 100, 3, 8, generator=gen)
    labels, _, sizes = kmeans(x.permute(0, 2, 1, 3).reshape(6, 100, 8), 7, 10, generator=gen)
    perm = labels.argsort(dim=-1, stable=True)
    permuted = _gather_tokens(x, perm)
    assert torch.equal(_scatter_tokens(permuted, perm), x)
    # clusters are contiguous after the permutation and the sizes add up
    assert torch.all(torch.gather(labels, 1, perm).diff(dim=-1) >= 0)
    assert torch.all(sizes.sum(-1) == 100)


def test_kmeans_converges_on_separated_clusters():
    gen = torch.Generator().manual_seed(6)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    pts = centres.repeat_interleave(30, 0) + 0.1 * torch.randn(90, 2, generator=gen)
    _, cents, sizes = kmeans(pts[None], 3, 20, generator=torch.Generator().manual_seed(0))
    assert sorted(sizes[0].tolist()) == [30, 30, 30]
    assert torch.cdist(cents[0], centres).min(-1).values.max() < 0.2


def _svg2(top_p: float) -> SVG2:
    method = SVG2(SVG2Settings(top_p=top_p, first_times_fp=0, first_layers_fp=0), (8, 16), Recorder())
    method.setup(num_layers=1, num_heads=4)
    return method


def test_svg2_top_p_one_equals_dense():
    q, k, v = structured_qk()
    info = StepInfo(step=0, num_steps=10)
    out = _svg2(1.0).attend(q, k, v, 0, info)
    torch.testing.assert_close(out, AttentionMethod().dense(q, k, v), atol=1e-5, rtol=1e-5)


def _token_mask(method: SVG2, lq: int, lk: int) -> torch.Tensor:
    """The last partition's cluster-pair mask at token level, in the original order: ``(B*H, Lq, Lk)``."""
    state = method.states[(0, "cond")]
    qid, kid = block_token_ids(state.q_offsets, lq), block_token_ids(state.k_offsets, lk)
    rows = torch.arange(qid.shape[0])[:, None, None]
    permuted = state.mask[rows, qid[:, :, None], kid[:, None, :]]  # (G, Lq, Lk) over permuted tokens
    token = torch.zeros_like(permuted)
    token[rows, state.q_perm[:, :, None], state.k_perm[:, None, :]] = permuted
    return token


def test_svg2_keys_longer_than_queries():
    """Chunked generation: a group's queries attend to [cached context ; itself], so Lk > Lq."""
    q, k, v = structured_qk(length=256)
    q = q[:, 128:]  # the current chunk: the last 128 of the 256 context tokens
    info = StepInfo(step=0, num_steps=10)
    sdpa = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    out = _svg2(1.0).attend(q, k, v, 0, info)
    assert out.shape == q.shape
    torch.testing.assert_close(out, sdpa, atol=1e-5, rtol=1e-5)
    # sparse: (qc x kc) pair map over each side's own tokens, and exactly masked attention over them
    method = _svg2(0.5)
    out = method.attend(q, k, v, 0, info)
    state = method.states[(0, "cond")]
    assert state.mask.shape == (4, 8, 16) and state.q_perm.shape == (4, 128) and state.k_perm.shape == (4, 256)
    token = _token_mask(method, 128, 256)
    assert 0 < token.float().mean() < 1
    bias = token.view(1, 4, 128, 256)
    expected = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=bias
    ).transpose(1, 2)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["xattention", "svg2"])
def test_reused_mask_is_dropped_when_the_context_length_changes(name):
    """TMR keeps a state per (layer, branch); a chunk whose KV context changed length predicts anew."""
    if name == "svg2":
        method = SVG2(SVG2Settings(first_times_fp=0, first_layers_fp=0, tmr=True, tmr_delta=1e9), (8, 16), Recorder())
    else:
        method = XAttention(
            XAttentionSettings(warmup_steps=0, block_size=16, stride=4, tmr=True, tmr_delta=1e9), 16, Recorder()
        )
    method.setup(num_layers=1, num_heads=4)
    q, k, v = structured_qk(length=256)
    q = q[:, 192:]
    for step, context in enumerate((256, 160, 160)):  # e.g. KV compression shortened the context
        out = method.attend(q, k[:, -context:], v[:, -context:], 0, StepInfo(step=step, num_steps=10))
        assert out.shape == q.shape and torch.isfinite(out).all()
    table, _ = method.recorder.finish()
    assert table[table.event == "mask_refresh"]["value"].tolist() == [1.0] * 8 + [0.0] * 4


def test_svg2_error_shrinks_as_top_p_grows():
    q, k, v = structured_qk()
    dense = AttentionMethod().dense(q, k, v)
    errors, densities = [], []
    for top_p in (0.5, 0.9, 0.99):
        method = _svg2(top_p)
        out = method.attend(q, k, v, 0, StepInfo(step=0, num_steps=10))
        table, _ = method.recorder.finish()
        density = table[table.event == "density"]["density"]
        assert len(density) == 4 and (density < 1).all()
        densities.append(density.mean())
        errors.append(((out - dense).abs().mean() / dense.abs().mean()).item())
    assert errors[0] > errors[1] >= errors[2] and errors[1] < 0.3
    assert densities[0] < densities[1] <= densities[2]


def test_svg2_dense_warmup_fractions():
    method = SVG2(SVG2Settings(first_times_fp=0.2, first_layers_fp=0.03), (8, 16))
    method.setup(num_layers=40, num_heads=4)
    assert method.is_dense_step(0, StepInfo(step=20, num_steps=50))  # floor(0.03 * 40) = 1: the first layer dense
    method.setup(num_layers=30, num_heads=4)
    assert not method.is_dense_step(0, StepInfo(step=20, num_steps=50))  # floor(0.03 * 30) = 0, as the reference
    assert not method.is_dense_step(1, StepInfo(step=10, num_steps=50))
    assert method.is_dense_step(1, StepInfo(step=9, num_steps=50))  # 0.2 * 50 = 10 dense steps


@pytest.mark.parametrize(("lq", "lk"), [(64, 64), (50, 70)])
def test_xattention_attend_is_sdpa_under_its_token_mask(lq, lk):
    """XAttention's output equals PyTorch SDPA with its block mask expanded to tokens (keys may outnumber queries,
    as in chunked generation, and lengths need not be multiples of the block)."""
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, n, 4, 32, generator=gen) for n in (lq, lk, lk))
    method = XAttention(XAttentionSettings(tau=0.6, block_size=16, stride=4, warmup_steps=0, dense_above=1.0), 16)
    method.setup(1, 4)
    out = method.attend(q, k, v, 0, StepInfo(step=3, num_steps=10))
    mask = method.predict(q, k, 0, "cond", method.threshold(0, "cond", q.device), None)  # deterministic: the same
    assert 0 < mask.float().mean() < 1
    tokens = mask.repeat_interleave(16, dim=-2).repeat_interleave(16, dim=-1)[..., :lq, :lk]
    expected = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=tokens)
    torch.testing.assert_close(out, expected.transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_density_aware_execution_runs_dense_heads_on_sdpa():
    """Heads whose mask keeps more than dense_above of the blocks run dense SDPA (batched), the others block-sparse;
    telemetry says which ran how; the default limit is the backend's measured crossover."""
    from accel.attention.xattention import dense_crossover
    from accel.kernels.block_sparse import block_sparse_attention

    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 64, 3, 16, generator=gen) for _ in range(3))
    mask = torch.zeros(1, 3, 4, 4, dtype=torch.bool)
    mask[0, 0] = True  # density 1: dense
    mask[0, 1, :, :1] = True  # density 0.25: sparse
    mask[0, 2, :, :3] = True  # density 0.75: dense
    rec = Recorder()
    method = XAttention(XAttentionSettings(block_size=16, stride=4, dense_above=0.5), 16, rec)
    method.setup(1, 3)
    out = method.apply(q, k, v, mask, 0, torch.full((3,), 0.9), None)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    torch.testing.assert_close(out[:, :, [0, 2]], sdpa.transpose(1, 2)[:, :, [0, 2]])
    sparse = block_sparse_attention(q[:, :, [1]], k[:, :, [1]], v[:, :, [1]], mask[:, [1]], block_size=16)
    torch.testing.assert_close(out[:, :, [1]], sparse)
    table, _ = rec.finish()
    rows = table[table.event == "dense_head"].sort_values("head")
    assert rows["value"].tolist() == [1.0, 0.0, 1.0] and (rows["threshold"] == 0.5).all()
    default = XAttention(XAttentionSettings(block_size=16, stride=4), 16)
    assert default.dense_above(q) == dense_crossover("torch", 16, 64) == 0.1  # CPU, 64 tokens: the torch crossover
    assert dense_crossover("torch", 128, 4096) == 0.45 and dense_crossover("triton", 128, 4096) is None
    assert XAttention(XAttentionSettings(dense_above=1.0), 16).dense_above(q) is None  # off


def test_svg2_keeps_a_pair_whose_preceding_mass_equals_top_p_as_the_reference():
    """The reference removes a pair only where the running sum before it exceeds top_p (``identify_dynamic_map``):
    with masses 0.5, 0.25, 0.25 and top_p 0.75 all three stay; at top_p 1 every pair stays."""
    from accel.attention.svg2 import cluster_pair_mask

    cq, ck = torch.zeros(1, 1, 4), torch.zeros(1, 3, 4)  # equal scores: the masses are the cluster sizes' shares
    sizes = torch.tensor([[2, 1, 1]])
    assert cluster_pair_mask(cq, ck, sizes, 0.75, 0)[0, 0].tolist() == [True, True, True]
    assert cluster_pair_mask(cq, ck, sizes, 0.7, 0)[0, 0].tolist() == [True, True, False]
    assert cluster_pair_mask(cq, ck, sizes, 0.4, 0)[0, 0].tolist() == [True, False, False]
    assert cluster_pair_mask(cq, ck, sizes, 1.0, 0).all()
