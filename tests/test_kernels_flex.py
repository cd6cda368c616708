"""FlexAttention as the third kernel backend: pinned against the torch reference, and the dispatch rules."""

from __future__ import annotations

import math

import pytest
import torch

from accel.kernels import dispatch, flex
from accel.kernels.block_sparse import _reference, block_sparse_attention, uniform_offsets
from accel.kernels.dispatch import use_backend

needs_flex = pytest.mark.skipif(not flex.available(), reason="FlexAttention cannot be compiled here")


def _case(lq: int, lk: int, bs: int, density: float, seed: int = 0, h: int = 2, d: int = 32):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, lq, h, d, generator=gen)
    k, v = torch.randn(1, lk, h, d, generator=gen), torch.randn(1, lk, h, d, generator=gen)
    nq, nk = math.ceil(lq / bs), math.ceil(lk / bs)
    mask = torch.rand(1, h, nq, nk, generator=gen) < density
    mask[0, 1, 1] = False  # a query block that selects nothing
    ref = _reference(
        q, k, v, mask, uniform_offsets(lq, bs).expand(1, h, nq + 1), uniform_offsets(lk, bs).expand(1, h, nk + 1), None
    )
    return q, k, v, mask, ref


@pytest.mark.parametrize(("lq", "lk", "bs"), [(64, 64, 16), (100, 77, 16), (130, 300, 32), (257, 257, 128)])
@pytest.mark.parametrize("density", [1.0, 0.5, 0.1])
def test_flex_equals_the_reference(lq: int, lk: int, bs: int, density: float) -> None:
    """Eager FlexAttention (no compiler) with the BlockMask built from the block mask: odd lengths (partial last
    blocks on both sides), cross lengths, empty rows."""
    q, k, v, mask, ref = _case(lq, lk, bs, density)
    out = flex.flex_block_sparse_attention(q, k, v, mask, bs, bs, compiled=False)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert out[0, bs : min(2 * bs, lq), 1].abs().max() == 0


@needs_flex
@pytest.mark.slow
def test_compiled_flex_through_the_public_entry() -> None:
    """The compiled kernel (inductor's C++ on CPU) through ``block_sparse_attention``, forced by argument and by
    context; the compile time is kept apart."""
    q, k, v, mask, ref = _case(1100, 1100, 16, 0.3)
    before = dispatch.calls[("block_sparse_attention", "flex")]
    out = block_sparse_attention(q, k, v, mask, block_size=16, backend="flex")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert out[0, 16:32, 1].abs().max() == 0
    with use_backend("flex"):
        out = block_sparse_attention(q, k, v, mask, block_size=16)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert dispatch.calls[("block_sparse_attention", "flex")] == before + 2
    assert any(key[2] == 1100 and seconds > 0 for key, seconds in flex.compile_seconds.items())


@needs_flex
def test_dispatch_rules(monkeypatch) -> None:
    """FlexAttention runs when forced (argument, context, environment); ``auto`` never picks it on CPU, where the
    torch path needs no compile and wins or ties at the pocket models' shapes (accel.kernels.bench --device cpu)."""
    cpu = torch.device("cpu")
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert dispatch.resolve(cpu) == "torch"
    assert dispatch.resolve(cpu, "flex") == "flex"
    with dispatch.use_backend("flex"):
        assert dispatch.resolve(cpu) == "flex"
    monkeypatch.setenv(dispatch.ENV_VAR, "flex")
    assert dispatch.resolve(cpu) == "flex"
    assert dispatch.resolve(cpu, "torch") == "torch"


def test_flex_forced_without_a_compiler_is_one_clear_error(monkeypatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # auto on CPU is torch unless the interpreter is asked for
    monkeypatch.setattr(flex, "available", lambda: False)
    with pytest.raises(RuntimeError, match="FlexAttention cannot be compiled here"):
        dispatch.resolve(torch.device("cpu"), "flex")
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    assert dispatch.resolve(torch.device("cpu")) == "torch"


def _clusters(lq: int, lk: int, nq: int, nk: int, seed: int = 3, h: int = 2):
    gen = torch.Generator().manual_seed(seed)

    def offsets(length: int, n: int) -> torch.Tensor:
        cuts = torch.randperm(length - 1, generator=gen)[: n - 1].sort().values + 1
        return torch.cat([torch.tensor([0]), cuts, torch.tensor([length])])

    q = torch.randn(1, lq, h, 16, generator=gen)
    k, v = torch.randn(1, lk, h, 16, generator=gen), torch.randn(1, lk, h, 16, generator=gen)
    q_off = torch.stack([offsets(lq, nq) for _ in range(h)])[None]
    k_off = torch.stack([offsets(lk, nk) for _ in range(h)])[None]
    mask = torch.rand(1, h, nq, nk, generator=gen) < 0.4
    mask[0, 0, 1] = False  # a cluster that selects nothing
    return q, k, v, mask, q_off, k_off


def test_cluster_grid_marks_exactly_the_blocks_a_token_pair_needs() -> None:
    """SVG2's clusters on a fixed grid: a grid block is full iff every token pair in it is selected, computed
    (full or partial) iff any is; checked against the token mask built by brute force."""
    from accel.kernels.block_sparse import block_token_ids

    lq, lk, grid = 150, 200, 16
    _, _, _, mask, q_off, k_off = _clusters(lq, lk, 6, 9)
    blocks = flex.cluster_block_mask(mask, q_off, k_off, lq, lk, grid=grid)
    qi, ki = block_token_ids(q_off, lq)[0], block_token_ids(k_off, lk)[0]  # (H, L)
    tokens = torch.stack([mask[0, h][qi[h]][:, ki[h]] for h in range(2)])  # (H, Lq, Lk)
    gq, gk = math.ceil(lq / grid), math.ceil(lk / grid)
    padded = torch.zeros(2, gq * grid, gk * grid, dtype=torch.bool)
    padded[:, :lq, :lk] = tokens
    per_block = padded.view(2, gq, grid, gk, grid).transpose(2, 3).flatten(-2)  # (H, gq, gk, grid * grid)
    real = torch.zeros_like(padded)
    real[:, :lq, :lk] = True
    real = real.view(2, gq, grid, gk, grid).transpose(2, 3).flatten(-2)
    any_pair = per_block.any(-1)
    # padding queries do not matter (their rows are dropped); a block with padding keys is never full
    all_pairs = (per_block | ~real).all(-1) & ((torch.arange(gk) + 1) * grid <= lk)
    dense = blocks.to_dense()[0]  # full and partial blocks
    assert torch.equal(dense.bool(), any_pair)
    full = torch.zeros(2, gq, gk, dtype=torch.bool)
    for h in range(2):
        for i in range(gq):
            n = int(blocks.full_kv_num_blocks[0, h, i])
            full[h, i, blocks.full_kv_indices[0, h, i, :n]] = True
    assert torch.equal(full, all_pairs & any_pair)


def test_flex_over_clusters_equals_the_reference() -> None:
    """Eager FlexAttention on the cluster grid through the public entry equals the loop reference."""
    q, k, v, mask, q_off, k_off = _clusters(90, 130, 5, 7)
    ref = _reference(q, k, v, mask, q_off.expand(1, 2, 6), k_off.expand(1, 2, 8), None)
    blocks = flex.cluster_block_mask(mask, q_off, k_off, 90, 130, grid=32)
    out = flex.flex_block_sparse_attention(q, k, v, mask, 32, 32, compiled=False, blocks=blocks)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@needs_flex
@pytest.mark.slow
def test_compiled_flex_over_clusters_through_the_public_entry() -> None:
    q, k, v, mask, q_off, k_off = _clusters(300, 300, 8, 12)
    ref = _reference(q, k, v, mask, q_off.expand(1, 2, 9), k_off.expand(1, 2, 13), None)
    before = dispatch.calls[("block_sparse_attention", "flex")]
    out = block_sparse_attention(q, k, v, mask, q_off, k_off, varlen=True, dense=False, backend="flex")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert dispatch.calls[("block_sparse_attention", "flex")] == before + 1


@needs_flex
@pytest.mark.slow
def test_a_generation_on_flex_is_the_reference_generation(tmp_path) -> None:
    """XAttention on tiny-wan with FlexAttention forced: the same video as the torch reference (within float
    rounding), the run says flex ran and how long it compiled, and the headline shows it."""
    import numpy as np
    from conftest import PROMPT

    from accel import runner
    from accel.config import RunConfig
    from accel.runs import RunStore
    from viz import panels

    store = RunStore(tmp_path / "runs")
    settings = {"warmup_steps": 1, "block_size": 16, "stride": 4, "dense_above": 1.0}  # every head sparse
    cfg = RunConfig(prompt=PROMPT, method="xattention", settings=settings, height=128, width=128, frames=9, steps=3,
                    device="cpu")  # fmt: skip
    with use_backend("flex"):
        run = runner.generate(cfg, store)
    with use_backend("torch"):
        ref = runner.generate(cfg, store)
    assert run.metrics["kernel_calls"]["block_sparse_attention/flex"] > 0
    assert "block_sparse_attention/flex" not in ref.metrics["kernel_calls"]
    assert run.metrics["kernel_compile_s"] > 0 and "kernel backend | flex x" in panels.headline(store, run)
    assert "dense_head_frac" not in run.metrics  # every head sparse (dense_above=1)
    diff = np.abs(run.frames().astype(int) - ref.frames().astype(int))
    assert diff.max() <= 2  # uint8 frames of the same video up to float rounding
