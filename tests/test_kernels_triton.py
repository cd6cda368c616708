"""Triton kernels against their torch references.

CPU: Triton fixes interpreter-vs-compiler when it is first imported (and ``import torch`` /
``diffusers`` import it), so the interpreter cases run in ONE subprocess started with
``TRITON_INTERPRET=1`` (this file with ``--worker``); each case is reported back as its own test. A
process that already interprets (``TRITON_INTERPRET=1 pytest ...``) runs them inline. Every case
checks that the Triton path really ran (dispatch counters and the interpreted kernel objects).

GPU: bf16 cases at larger shapes, skipped without CUDA.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from accel.kernels import dispatch
from accel.kernels.block_sparse import block_sparse_attention, uniform_offsets
from accel.kernels.dispatch import resolve as resolve_backend
from accel.kernels.dispatch import use_backend
from accel.kernels.estimate import antidiagonal_block_scores

ROOT = Path(__file__).resolve().parents[1]
CASES: dict[str, Callable[[], None]] = {}
WORKER_TIMEOUT_S = 240


def case(name: str, **kwargs) -> Callable:
    """Register ``fn(**kwargs)`` as interpreter case ``name``."""

    def register(fn: Callable) -> Callable:
        CASES[name] = lambda: fn(**kwargs)
        return fn

    return register


# -- helpers ------------------------------------------------------------------------------------------


def qkv(b: int, lq: int, lk: int, h: int, d: int, seed: int, dtype=torch.float32, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, lq, h, d, generator=gen)
    k = torch.randn(b, lk, h, d, generator=gen)
    v = torch.randn(b, lk, h, d, generator=gen)
    return (x.to(device=device, dtype=dtype) for x in (q, k, v))


def reference(q, k, v, mask, q_off=None, k_off=None) -> torch.Tensor:
    """The torch reference in float64 (never the dense shortcut: it is checked separately)."""
    from accel.kernels.block_sparse import _full_offsets, _reference

    b, lq, h, _ = q.shape
    nq, nk = mask.shape[-2:]
    qo = _full_offsets(q_off, b, h, lq, nq, q.device)
    ko = _full_offsets(k_off, b, h, k.shape[1], nk, q.device)
    return _reference(q.double(), k.double(), v.double(), mask, qo, ko, None)


def random_mask(b: int, h: int, nq: int, nk: int, density: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(b, h, nq, nk, generator=gen) < density


def cluster_offsets(length: int, sizes: list[int]) -> torch.Tensor:
    assert sum(sizes) == length
    return torch.tensor([0, *torch.tensor(sizes).cumsum(0).tolist()])


def ran_triton(op: str, before: int) -> None:
    """The last call of ``op`` went through Triton, interpreted on CPU."""
    from accel.kernels._jit import _cache, is_interpreted

    assert dispatch.calls[(op, "triton")] == before + 1, f"{op} did not dispatch to triton: {dict(dispatch.calls)}"
    assert _cache and all(is_interpreted(kern) for kern in _cache.values())


def sparse_call(q, k, v, mask, q_off=None, k_off=None) -> torch.Tensor:
    before = dispatch.calls[("block_sparse_attention", "triton")]
    out = block_sparse_attention(q, k, v, mask, q_off, k_off)  # auto: TRITON_INTERPRET=1 -> triton
    ran_triton("block_sparse_attention", before)
    return out


# -- interpreter cases: fixed blocks -------------------------------------------------------------------


@case("fixed_d64_density_0.5", density=0.5, d=64)
@case("fixed_d64_density_0.2", density=0.2, d=64)
@case("fixed_d128_density_0.5", density=0.5, d=128)
@case("fixed_d16_density_0.5", density=0.5, d=16)
@case("fixed_d24_padded_head_dim", density=0.5, d=24)
def fixed_blocks(density: float, d: int) -> None:
    b, h, length, bs = 1, 2, 37, 8  # odd length: the last block holds 5 tokens
    q, k, v = qkv(b, length, length, h, d, seed=1)
    n = math.ceil(length / bs)
    mask = random_mask(b, h, n, n, density, seed=2)
    mask[0, 0, 1] = False  # an empty query-block row -> zeros
    mask[0, 1, 2, -1] = True  # the short tail block is visited at least once
    off = uniform_offsets(length, bs)
    out = sparse_call(q, k, v, mask, off, off)
    torch.testing.assert_close(out.double(), reference(q, k, v, mask, off, off), atol=2e-5, rtol=2e-5)
    assert torch.count_nonzero(out[0, bs : 2 * bs, 0]) == 0


@case("fixed_dense_mask_equals_sdpa")
def fixed_dense() -> None:
    from accel.kernels.triton_attention import fixed_block_sparse_attention

    q, k, v = qkv(1, 45, 45, 2, 64, seed=3)
    mask = torch.ones(1, 2, 3, 3, dtype=torch.bool)  # block 16: 16 + 16 + 13
    out = fixed_block_sparse_attention(q, k, v, mask, 16, 16)  # the kernel itself, no dense shortcut
    ref = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    torch.testing.assert_close(out, ref.transpose(1, 2), atol=2e-5, rtol=2e-5)


@case("fixed_cross_lengths_big_and_odd_blocks")
def fixed_cross_lengths() -> None:
    # queries and keys of different lengths; key blocks of 32 span two 16-wide tiles, query blocks of 12
    # are not a power of two; batch 2
    q, k, v = qkv(2, 29, 70, 2, 32, seed=4)
    nq, nk = math.ceil(29 / 12), math.ceil(70 / 32)
    mask = random_mask(2, 2, nq, nk, 0.6, seed=5)
    mask[1, 0, 0] = False
    q_off, k_off = uniform_offsets(29, 12), uniform_offsets(70, 32)
    out = sparse_call(q, k, v, mask, q_off, k_off)
    torch.testing.assert_close(out.double(), reference(q, k, v, mask, q_off, k_off), atol=2e-5, rtol=2e-5)


@case("fixed_without_offsets_and_3d_mask")
def fixed_defaults() -> None:
    q, k, v = qkv(1, 32, 32, 2, 64, seed=6)
    mask = random_mask(1, 2, 4, 4, 0.5, seed=7)[0]  # (H, nq, nk), offsets implied: 4 blocks of 8
    out = sparse_call(q, k, v, mask)
    torch.testing.assert_close(out.double(), reference(q, k, v, mask[None]), atol=2e-5, rtol=2e-5)


# -- interpreter cases: variable-size clusters -----------------------------------------------------------


@case("varlen_d64", d=64, density=0.5)
@case("varlen_d128", d=128, density=0.5)
@case("varlen_d64_density_0.2", d=64, density=0.2)
def varlen_clusters(d: int, density: float) -> None:
    # per-head cluster sizes: empty clusters, clusters larger than the 16-row/16-col tile (up to 3 tiles)
    b, h, lq, lk = 1, 2, 50, 61
    q, k, v = qkv(b, lq, lk, h, d, seed=8)
    q_off = torch.stack([cluster_offsets(lq, [3, 0, 40, 7]), cluster_offsets(lq, [17, 17, 0, 16])])[None]
    k_off = torch.stack([cluster_offsets(lk, [1, 33, 0, 20, 7]), cluster_offsets(lk, [0, 5, 40, 16, 0])])[None]
    mask = random_mask(b, h, 4, 5, density, seed=9)
    mask[0, 0, 2] = False  # the big query cluster selects nothing -> zeros
    mask[0, 1, 0, 2] = True  # the 40-token key cluster is visited
    out = sparse_call(q, k, v, mask, q_off, k_off)
    torch.testing.assert_close(out.double(), reference(q, k, v, mask, q_off, k_off), atol=2e-5, rtol=2e-5)
    assert torch.count_nonzero(out[0, 3:43, 0]) == 0


@case("varlen_dense_mask_equals_sdpa")
def varlen_dense() -> None:
    from accel.kernels.triton_attention import varlen_block_sparse_attention

    q, k, v = qkv(1, 40, 40, 2, 32, seed=10)
    off = cluster_offsets(40, [5, 0, 20, 15])
    out = varlen_block_sparse_attention(q, k, v, torch.ones(1, 2, 4, 4, dtype=torch.bool), off, off)
    ref = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    torch.testing.assert_close(out, ref.transpose(1, 2), atol=2e-5, rtol=2e-5)


@case("varlen_batch_offsets_per_batch_and_head")
def varlen_batched() -> None:
    gen = torch.Generator().manual_seed(11)
    b, h, length, n = 2, 2, 33, 4
    q, k, v = qkv(b, length, length, h, 16, seed=12)
    cuts = [torch.randperm(length - 1, generator=gen)[: n - 1].sort().values + 1 for _ in range(b * h)]
    off = torch.stack([torch.cat([torch.tensor([0]), c, torch.tensor([length])]) for c in cuts]).view(b, h, n + 1)
    mask = random_mask(b, h, n, n, 0.5, seed=13)
    out = sparse_call(q, k, v, mask, off, off)
    torch.testing.assert_close(out.double(), reference(q, k, v, mask, off, off), atol=2e-5, rtol=2e-5)


@case("svg2_apply_runs_on_triton")
def svg2_path() -> None:
    """SVG2's own call (permute, block_sparse_attention over clusters, un-permute) takes the varlen kernel."""
    from accel.attention.svg2 import SVG2, Partition, kmeans
    from accel.methods.svg2 import SVG2Settings

    b, length, h, d = 1, 48, 2, 16
    q, k, v = qkv(b, length, length, h, d, seed=14)
    method = SVG2(SVG2Settings(), clusters=(4, 6))
    method.setup(2, h)
    gen = torch.Generator().manual_seed(0)
    lq, cq, sq = kmeans(q.permute(0, 2, 1, 3).reshape(b * h, length, d), 4, 3, generator=gen)
    lk, ck, sk = kmeans(k.permute(0, 2, 1, 3).reshape(b * h, length, d), 6, 3, generator=gen)
    mask = random_mask(1, b * h, 4, 6, 0.5, seed=15)[0]
    pad = torch.nn.functional.pad
    state = Partition(
        q_perm=lq.argsort(dim=-1, stable=True),
        k_perm=lk.argsort(dim=-1, stable=True),
        q_offsets=pad(sq.cumsum(-1), (1, 0)),
        k_offsets=pad(sk.cumsum(-1), (1, 0)),
        mask=mask,
        q_centroids=cq,
        k_centroids=ck,
    )
    before = dispatch.calls[("block_sparse_attention", "triton")]
    out = method.apply(q, k, v, state, 0, torch.ones(h), None)
    ran_triton("block_sparse_attention", before)
    with use_backend("torch"):
        ref = method.apply(q, k, v, state, 0, torch.ones(h), None)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)


@case("xattention_keeps_the_lookup_of_a_reused_mask")
def xattention_lookup() -> None:
    """XAttention passes its block size (no offsets to check) and keeps the kernel's lookup while a layer's mask is
    the same tensor (TMR reuse); a new mask gets a new lookup; the output equals the torch backend's."""
    from accel.attention.xattention import XAttention
    from accel.methods.xattention import XAttentionSettings

    b, length, h, d = 1, 40, 2, 16
    q, k, v = qkv(b, length, length, h, d, seed=16)
    method = XAttention(XAttentionSettings(block_size=16, stride=4, dense_above=1.0), block_size=16)
    method.setup(2, h)
    state = random_mask(b, h, 3, 3, 0.5, seed=17)
    before = dispatch.calls[("block_sparse_attention", "triton")]
    out = method.apply(q, k, v, state, 0, torch.ones(h), None)
    ran_triton("block_sparse_attention", before)
    lookup = method._lookups[0][1]
    method.apply(q, k, v, state, 0, torch.ones(h), None)
    assert method._lookups[0][1] is lookup  # reused with the mask
    method.apply(q, k, v, state.clone(), 0, torch.ones(h), None)
    assert method._lookups[0][1] is not lookup  # a new mask tensor: built again
    with use_backend("torch"):
        ref = method.apply(q, k, v, state, 0, torch.ones(h), None)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)


# -- interpreter cases: estimation ------------------------------------------------------------------------


def _scores_match_the_reference(q: torch.Tensor, k: torch.Tensor, stride: int, block: int) -> None:
    """The Triton estimator ran and equals the float64 torch reference; each reduced query row of each of the 2 heads
    sums to one."""
    before = dispatch.calls[("antidiagonal_block_scores", "triton")]
    got = antidiagonal_block_scores(q, k, stride, block)
    ran_triton("antidiagonal_block_scores", before)
    ref = antidiagonal_block_scores(q.double(), k.double(), stride, block, backend="torch")
    torch.testing.assert_close(got.double(), ref.double(), atol=1e-5, rtol=1e-5)
    assert got.sum().item() == pytest.approx(math.ceil(q.shape[1] / stride) * 2, rel=1e-5)


@case("estimate_64_64_s4_b16_d64", lq=64, lk=64, stride=4, block=16, d=64)
@case("estimate_odd_45_53_s4_b8", lq=45, lk=53, stride=4, block=8, d=16)
@case("estimate_odd_100_77_s8_b32_d128", lq=100, lk=77, stride=8, block=32, d=128)
@case("estimate_30_30_s2_b4_d24", lq=30, lk=30, stride=2, block=4, d=24)
def estimate(lq: int, lk: int, stride: int, block: int, d: int) -> None:
    q, k, _ = qkv(1, lq, lk, 2, d, seed=16)
    _scores_match_the_reference(q, k, stride, block)


@case("estimate_growing_logits_517_611_s4_b16_d32", lq=517, lk=611, stride=4, block=16, d=32, growth=4.0)
@case("estimate_growing_logits_1000_1100_s16_b128_d16", lq=1000, lk=1100, stride=16, block=128, d=16, growth=6.0)
def estimate_growing_logits(lq: int, lk: int, stride: int, block: int, d: int, growth: float) -> None:
    """Many key tiles per reduced row, logits growing along the keys: each row's running max rises tile after tile,
    so every partial block sum is rescaled to the final max by the combine (a missing rescale is off by ~3-9)."""
    from accel.kernels.estimate import _regroup
    from accel.kernels.triton_estimate import estimate_config

    q, k, _ = qkv(1, lq, lk, 2, d, seed=29)
    q = q + 1.0
    k = k + growth * torch.arange(lk, dtype=torch.float32)[None, :, None, None] / lk  # q.k grows with the key
    r = block // stride
    tile = estimate_config(True, r)["block_n"]
    nq, nk = math.ceil(lq / block), math.ceil(lk / block)
    qr = _regroup(q.double(), stride, nq * block, reverse=True)[:, :, : math.ceil(lq / stride)]
    kr = _regroup(k.double(), stride, nk * block, reverse=False)[:, :, : math.ceil(lk / stride)]
    logits = qr @ kr.transpose(-1, -2) / (math.sqrt(d) * stride * math.log(2))  # log2 units, as in the kernel
    assert logits.shape[-1] >= 4 * tile  # several key tiles per row
    rise = logits.amax(-1) - logits[..., :tile].amax(-1)
    assert rise.min() > 4  # in every row the first tile's max is far below the final one: rescales far from 1
    _scores_match_the_reference(q, k, stride, block)


@case("dispatch_under_interpreter")
def dispatch_rules() -> None:
    cpu = torch.device("cpu")
    assert dispatch.triton_interprets()
    assert resolve_backend(cpu) == "triton"  # auto + TRITON_INTERPRET=1 on CPU
    with use_backend("torch"):
        assert resolve_backend(cpu) == "torch"
        assert resolve_backend(cpu, "triton") == "triton"  # the argument wins
    q, k, v = qkv(1, 16, 16, 1, 16, seed=17)
    mask = torch.tensor([[[[True, False], [True, True]]]])
    before = dict(dispatch.calls)
    with use_backend("torch"):
        block_sparse_attention(q, k, v, mask)
    assert dispatch.calls[("block_sparse_attention", "torch")] == before.get(("block_sparse_attention", "torch"), 0) + 1
    assert dispatch.calls[("block_sparse_attention", "triton")] == before.get(("block_sparse_attention", "triton"), 0)


# -- the subprocess ---------------------------------------------------------------------------------------


def _run_cases() -> dict[str, str]:
    results = {}
    for name, fn in CASES.items():
        try:
            fn()
            results[name] = "ok"
        except Exception:
            results[name] = traceback.format_exc()
    return results


@pytest.fixture(scope="module")
def interpreter_results() -> dict[str, str] | None:
    """Outcomes of every case under the interpreter (``None``: this process interprets, run them inline)."""
    if not dispatch.triton_available():
        pytest.skip("triton is not installed")
    if dispatch.interpret_requested() and dispatch.triton_interprets():
        return None
    env = {**os.environ, "TRITON_INTERPRET": "1", "ACCEL_KERNELS": "auto"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT_S,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        pytest.fail(f"interpreter worker failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


@pytest.mark.parametrize("name", list(CASES))
def test_interpreted(name: str, interpreter_results: dict[str, str] | None) -> None:
    if interpreter_results is None:
        CASES[name]()
        return
    outcome = interpreter_results.get(name, "not run")
    if outcome != "ok":
        pytest.fail(f"{name} under TRITON_INTERPRET=1:\n{outcome}")


# -- GPU, with the same logic on CPU ------------------------------------------------------------------------
# Each case runs twice: on CUDA through Triton in bf16 (skipped without a GPU), and on CPU through the torch
# backend in fp32 at the same shapes, so a wrong offset, mask or reference in the test itself fails in CI.

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEVICES = [pytest.param("cpu", id="cpu-torch"), pytest.param("cuda", id="cuda-triton", marks=[gpu, pytest.mark.gpu])]


def _setting(device: str) -> tuple[torch.dtype, str, float]:
    """dtype, backend and tolerance of a device case."""
    return (torch.bfloat16, "triton", 2e-2) if device == "cuda" else (torch.float32, "torch", 1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("density", [1.0, 0.5, 0.1])
def test_fixed_blocks_at_size(device: str, d: int, density: float) -> None:
    dtype, backend, tol = _setting(device)
    length, h, bs = 2000, 4, 128  # 16 blocks, the last one short
    q, k, v = qkv(1, length, length, h, d, seed=20, dtype=dtype, device=device)
    n = math.ceil(length / bs)
    mask = random_mask(1, h, n, n, density, seed=21).to(device)
    if density < 1.0:
        mask[0, 0, 3] = False  # an empty row
    if device == "cuda":
        from accel.kernels.triton_attention import fixed_block_sparse_attention

        out = fixed_block_sparse_attention(q, k, v, mask, bs, bs)  # no dense shortcut, even at density 1
    else:
        out = block_sparse_attention(q, k, v, mask, block_size=bs, dense=False, backend=backend)
    off = uniform_offsets(length, bs, device)
    ref = reference(q.float(), k.float(), v.float(), mask, off, off)
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)
    if density < 1.0:
        assert out[0, 3 * bs : 4 * bs, 0].abs().max() == 0  # the empty row is zero
    else:
        sdpa = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        ).transpose(1, 2)
        torch.testing.assert_close(out, sdpa, atol=tol, rtol=tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("how", ["offsets", "block_size"])
def test_public_entry_at_size(device: str, how: str) -> None:
    dtype, backend, tol = _setting(device)
    q, k, v = qkv(2, 1000, 1000, 2, 128, seed=22, dtype=dtype, device=device)
    mask = random_mask(2, 2, 8, 8, 0.4, seed=23).to(device)
    off = uniform_offsets(1000, 128, device)
    before = dispatch.calls[("block_sparse_attention", backend)]
    if how == "offsets":
        out = block_sparse_attention(q, k, v, mask, off, off, backend=backend)  # both sides' blocks
    else:
        out = block_sparse_attention(q, k, v, mask, block_size=128, dense=False, backend=backend)
    assert dispatch.calls[("block_sparse_attention", backend)] == before + 1
    ref = reference(q.float(), k.float(), v.float(), mask, off, off)
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("device", DEVICES)
def test_varlen_at_size(device: str) -> None:
    dtype, backend, tol = _setting(device)
    gen = torch.Generator().manual_seed(24)
    b, h, length, n = 1, 4, 3000, 40
    q, k, v = qkv(b, length, length, h, 128, seed=25, dtype=dtype, device=device)
    sizes = torch.distributions.Dirichlet(torch.full((n,), 0.5)).sample((b * h,)) * length
    sizes = sizes.floor().long()
    sizes[:, -1] += length - sizes.sum(-1)
    off = torch.nn.functional.pad(sizes.cumsum(-1), (1, 0)).view(b, h, n + 1).to(device)
    mask = (torch.rand(b, h, n, n, generator=gen) < 0.3).to(device)
    out = block_sparse_attention(q, k, v, mask, off, off, varlen=True, dense=False, backend=backend)
    ref = reference(q.float(), k.float(), v.float(), mask, off, off)
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize(("stride", "block"), [(16, 128), (8, 128)])
def test_gpu_estimate_bf16(stride: int, block: int) -> None:
    q, k, _ = qkv(1, 3001, 3001, 4, 128, seed=26, dtype=torch.bfloat16, device="cuda")
    got = antidiagonal_block_scores(q, k, stride, block)
    ref = antidiagonal_block_scores(q, k, stride, block, backend="torch")
    torch.testing.assert_close(got, ref, atol=2e-3, rtol=2e-2)


@pytest.mark.gpu
@gpu
def test_gpu_fp32_runs_in_bf16_with_a_warning() -> None:
    from accel.kernels.triton_attention import fixed_block_sparse_attention

    q, k, v = qkv(1, 512, 512, 2, 64, seed=27, device="cuda")
    mask = random_mask(1, 2, 4, 4, 0.5, seed=28).cuda()
    with pytest.warns(UserWarning, match="fp32 inputs run in bf16"):
        out = fixed_block_sparse_attention(q, k, v, mask, 128, 128)
    assert out.dtype == torch.float32
    off = uniform_offsets(512, 128, "cuda")
    torch.testing.assert_close(out.double(), reference(q, k, v, mask, off, off), atol=2e-2, rtol=2e-2)


if __name__ == "__main__" and "--worker" in sys.argv:
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    print(json.dumps(_run_cases()))
