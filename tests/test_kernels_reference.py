"""The pure-torch block-sparse attention and XAttention estimator against brute force."""

from __future__ import annotations

import math

import pytest
import torch

from accel.kernels.block_sparse import (
    block_sparse_attention,
    block_token_ids,
    block_work,
    mask_density,
    uniform_density,
    uniform_offsets,
)
from accel.kernels.estimate import antidiagonal_block_scores


def brute_attention(q, k, v, mask, q_off, k_off):
    """Float64 softmax attention with an explicit token mask built by loops."""
    b, lq, h, d = q.shape
    lk = k.shape[1]
    out = torch.zeros(b, lq, h, d, dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            qo, ko = q_off[bi, hi].tolist(), k_off[bi, hi].tolist()
            allowed = torch.zeros(lq, lk, dtype=torch.bool)
            for i in range(len(qo) - 1):
                for j in range(len(ko) - 1):
                    if mask[bi, hi, i, j]:
                        allowed[qo[i] : qo[i + 1], ko[j] : ko[j + 1]] = True
            s = q[bi, :, hi].double() @ k[bi, :, hi].double().T / math.sqrt(d)
            s = s.masked_fill(~allowed, float("-inf"))
            p = torch.softmax(s, -1).nan_to_num(0.0)
            out[bi, :, hi] = p @ v[bi, :, hi].double()
    return out


def random_offsets(length: int, n: int, gen: torch.Generator) -> torch.Tensor:
    cuts = torch.randperm(length - 1, generator=gen)[: n - 1].sort().values + 1
    off = torch.cat([torch.tensor([0]), cuts, torch.tensor([length])])
    off[2] = off[1]  # one empty block
    return off


@pytest.mark.parametrize("density", [1.0, 0.5, 0.2, 0.0])
def test_block_sparse_matches_brute_force_fixed_blocks(density):
    gen = torch.Generator().manual_seed(1)
    b, h, d, length, bs = 2, 3, 16, 37, 8  # odd length: last block short
    q, k, v = (torch.randn(b, length, h, d, generator=gen) for _ in range(3))
    n = math.ceil(length / bs)
    mask = torch.rand(b, h, n, n, generator=gen) < density
    mask[0, 0, 1] = False  # an empty row
    off = uniform_offsets(length, bs).expand(b, h, n + 1)
    out = block_sparse_attention(q, k, v, mask, off, off)
    ref = brute_attention(q, k, v, mask, off, off)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    assert torch.count_nonzero(out[0, bs : 2 * bs, 0]) == 0


@pytest.mark.parametrize(("lq", "lk", "bq", "bk"), [(37, 53, 8, 8), (64, 40, 16, 8), (30, 30, 32, 32)])
def test_grouped_fixed_blocks_match_brute_force(monkeypatch, lq, lk, bq, bk):
    """The torch path for fixed blocks (query blocks grouped by selected count, gathered keys): cross lengths,
    partial last blocks on both sides, empty rows, and groups split by the gather budget."""
    from accel.kernels import gathered

    monkeypatch.setattr(gathered, "GATHER_BYTES", 4096)  # a few rows per SDPA call
    gen = torch.Generator().manual_seed(lq + lk)
    b, h, d = 2, 3, 8
    q = torch.randn(b, lq, h, d, generator=gen)
    k, v = torch.randn(b, lk, h, d, generator=gen), torch.randn(b, lk, h, d, generator=gen)
    nq, nk = math.ceil(lq / bq), math.ceil(lk / bk)
    mask = torch.rand(b, h, nq, nk, generator=gen) < 0.5
    mask[0, 1, 0] = False  # an empty row
    mask[1, 2, -1, -1] = True  # the partial last key block
    mask[:, :, -1] = mask[:, :, 0]  # identical rows share one SDPA row (the partial last query block among them)
    mask[1, 0, :2] = True
    out = block_sparse_attention(q, k, v, mask, block_size=(bq, bk), dense=False, backend="torch")
    q_off = uniform_offsets(lq, bq).expand(b, h, nq + 1)
    k_off = uniform_offsets(lk, bk).expand(b, h, nk + 1)
    torch.testing.assert_close(out.double(), brute_attention(q, k, v, mask, q_off, k_off), atol=1e-5, rtol=1e-5)
    assert torch.count_nonzero(out[0, :bq, 1]) == 0


def test_gather_plan_puts_identical_rows_of_one_head_together():
    """Rows repeated within a (batch, head) make one SDPA row of their query blocks; the same row in another head
    does not (its keys differ); a kept plan must match its mask."""
    from accel.kernels.gathered import gather_plan, gathered_attention

    mask = torch.zeros(1, 2, 4, 3, dtype=torch.bool)
    mask[0, 0, [0, 2, 3], 1] = True  # head 0: rows 0, 2 and 3 alike
    mask[0, 0, 1] = True
    mask[0, 1, 0, 1] = True  # head 1: the same row once
    plan = gather_plan(mask)
    shapes = sorted((tuple(qi.shape), tuple(ki.shape)) for qi, ki in plan.groups)
    assert shapes == [((1, 1), (1, 1)), ((1, 1), (1, 3)), ((1, 3), (1, 1))]
    merged = next(qi for qi, ki in plan.groups if qi.shape[1] == 3)
    assert merged.tolist() == [[0, 2, 3]]
    q = torch.randn(1, 8, 2, 4)
    with pytest.raises(ValueError, match="gather plan built for"):
        gathered_attention(q, q, q, mask[:, :1], 2, 2, None, plan=plan)


def test_uniform_density_and_block_work():
    """Real pairs against the blocks a kernel computes: a partial last block counts whole in the work."""
    mask = torch.zeros(1, 2, 2, 2, dtype=torch.bool)
    mask[0, 0] = True
    mask[0, 1, 1, 1] = True  # the 4 x 4 corner of a 20 x 20 product split 16 + 4
    density = uniform_density(mask, 16, 16, 20, 20)
    torch.testing.assert_close(density, mask_density(mask, uniform_offsets(20, 16), uniform_offsets(20, 16)))
    assert density[0, 1].item() == pytest.approx(16 / 400)
    work = block_work(mask, 16, 16, 20, 20)
    assert work[0].tolist() == pytest.approx([4 * 256 / 400, 256 / 400])


def test_block_sparse_variable_blocks():
    gen = torch.Generator().manual_seed(2)
    b, h, d, lq, lk = 1, 2, 8, 29, 41
    q = torch.randn(b, lq, h, d, generator=gen)
    k, v = torch.randn(b, lk, h, d, generator=gen), torch.randn(b, lk, h, d, generator=gen)
    q_off = torch.stack([random_offsets(lq, 5, gen) for _ in range(h)])[None]
    k_off = torch.stack([random_offsets(lk, 7, gen) for _ in range(h)])[None]
    mask = torch.rand(b, h, 5, 7, generator=gen) < 0.5
    out = block_sparse_attention(q, k, v, mask, q_off, k_off)
    torch.testing.assert_close(out.double(), brute_attention(q, k, v, mask, q_off, k_off), atol=1e-5, rtol=1e-5)


def test_full_mask_is_exact_sdpa():
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 50, 2, 16, generator=gen) for _ in range(3))
    out = block_sparse_attention(
        q, k, v, torch.ones(2, 4, 4, dtype=torch.bool), uniform_offsets(50, 16), uniform_offsets(50, 16)
    )
    ref = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    assert torch.equal(out, ref.transpose(1, 2))


def test_mask_density_weights_by_block_size():
    off = torch.tensor([0, 3, 10])
    mask = torch.tensor([[[[True, False], [False, True]]]])
    # (3*3 + 7*7) / (10*10)
    assert mask_density(mask, off, off).item() == pytest.approx(0.58)
    assert block_token_ids(off, 10).tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]


def brute_antidiagonal_scores(q, k, stride, block):
    b, lq, h, d = q.shape
    lk = k.shape[1]
    nq, nk = math.ceil(lq / block), math.ceil(lk / block)
    rq, rk = nq * block // stride, nk * block // stride
    qp = torch.zeros(b, nq * block, h, d, dtype=torch.float64)
    kp = torch.zeros(b, nk * block, h, d, dtype=torch.float64)
    qp[:, :lq], kp[:, :lk] = q.double(), k.double()
    out = torch.zeros(b, h, nq, nk, dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            full = qp[bi, :, hi] @ kp[bi, :, hi].T
            red = torch.zeros(rq, rk, dtype=torch.float64)
            for i in range(rq):
                for j in range(rk):
                    # antidiagonal of tile (i, j): rows i*S + (S-1-m), cols j*S + m
                    red[i, j] = sum(full[i * stride + stride - 1 - m, j * stride + m] for m in range(stride))
            red = red / (math.sqrt(d) * stride)
            red[:, torch.arange(rk) * stride >= lk] = float("-inf")
            p = torch.softmax(red, -1)
            p[torch.arange(rq) * stride >= lq] = 0
            r = block // stride
            out[bi, hi] = p.view(nq, r, nk, r).sum((1, 3))
    return out


@pytest.mark.parametrize(("lq", "lk", "stride", "block"), [(64, 64, 4, 16), (45, 53, 4, 8), (30, 30, 2, 4)])
def test_antidiagonal_scores_match_brute_force(lq, lk, stride, block):
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(1, lq, 2, 8, generator=gen)
    k = torch.randn(1, lk, 2, 8, generator=gen)
    got = antidiagonal_block_scores(q, k, stride, block)
    torch.testing.assert_close(got.double(), brute_antidiagonal_scores(q, k, stride, block), atol=1e-5, rtol=1e-5)
    # every real reduced query row is a distribution over the keys
    rows = math.ceil(lq / stride)
    assert got.sum() == pytest.approx(rows * 2, rel=1e-5)  # 2 heads


def test_antidiagonal_needs_block_multiple_of_stride():
    with pytest.raises(ValueError, match="multiple of stride"):
        antidiagonal_block_scores(torch.zeros(1, 8, 1, 4), torch.zeros(1, 8, 1, 4), 3, 8)
