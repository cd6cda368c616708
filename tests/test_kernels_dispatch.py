"""Backend selection for the kernels (no kernel launches here: see test_kernels_triton.py for those)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from accel.kernels import block_sparse, dispatch
from accel.kernels.block_sparse import block_sparse_attention, uniform_offsets
from accel.kernels.dispatch import resolve as resolve_backend
from accel.kernels.dispatch import use_backend

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@pytest.fixture()
def clean_env(monkeypatch):
    monkeypatch.delenv("ACCEL_KERNELS", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    return monkeypatch


def test_env_switch_and_precedence(clean_env):
    assert dispatch.requested_backend() == "auto"
    clean_env.setenv("ACCEL_KERNELS", "torch")
    assert resolve_backend(CPU) == "torch"
    clean_env.setenv("ACCEL_KERNELS", "TRITON ")
    assert dispatch.requested_backend() == "triton"
    with use_backend("torch"):
        assert dispatch.requested_backend() == "torch"  # context manager beats the environment
        with use_backend("auto"):
            assert dispatch.requested_backend() == "auto"
        assert dispatch.requested_backend("triton") == "triton"  # the argument beats both
        assert dispatch.requested_backend() == "torch"
    assert dispatch.requested_backend() == "triton"
    clean_env.setenv("ACCEL_KERNELS", "cuda")
    with pytest.raises(ValueError, match="one of"):
        dispatch.requested_backend()
    with pytest.raises(ValueError):
        use_backend("fast").__enter__()


def test_auto_on_cpu_is_torch_without_interpreter(clean_env):
    assert resolve_backend(CPU) == "torch"
    q = torch.randn(1, 16, 2, 8)
    mask = torch.tensor([[True, False], [False, True]])[None].expand(2, 2, 2)
    before = dispatch.calls[("block_sparse_attention", "torch")]
    block_sparse_attention(q, q, q, mask)
    assert dispatch.calls[("block_sparse_attention", "torch")] == before + 1


def test_without_triton(clean_env):
    clean_env.setattr(dispatch, "_triton_why", "triton is not installed")
    assert resolve_backend(torch.device("cuda")) == "torch"
    clean_env.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend(CPU) == "torch"
    with pytest.raises(RuntimeError, match="ACCEL_KERNELS=triton but triton is not installed"), use_backend("triton"):
        resolve_backend(CPU)


def test_a_triton_that_fails_to_import_is_named_not_silent(clean_env, caplog):
    """A broken install falls back to the torch reference, and the log and a forced backend say why."""
    import importlib.machinery
    import sys

    clean_env.setattr(dispatch, "_triton_why", None)
    clean_env.setattr(dispatch.importlib.util, "find_spec", lambda name: importlib.machinery.ModuleSpec(name, None))
    clean_env.setitem(sys.modules, "triton", None)  # importing it raises ImportError
    with caplog.at_level("WARNING", logger="accel.kernels"):
        assert not dispatch.triton_available()
    assert "triton is installed but does not import (ModuleNotFoundError: import of triton halted" in caplog.text
    with pytest.raises(RuntimeError, match="does not import"), use_backend("triton"):
        resolve_backend(CPU)


@pytest.mark.skipif(not dispatch.triton_available(), reason="triton is not installed")
def test_forced_triton_on_cpu_needs_the_interpreter(clean_env):
    if dispatch.triton_interprets():
        pytest.skip("this process runs Triton interpreted")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        resolve_backend(CPU, "triton")
    clean_env.setenv("TRITON_INTERPRET", "1")  # too late for this process: warn and keep torch
    clean_env.setattr(dispatch, "_warned", False)
    with pytest.warns(UserWarning, match="TRITON_INTERPRET"):
        assert resolve_backend(CPU) == "torch"


def test_dense_mask_keeps_the_exact_sdpa_shortcut(clean_env):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 40, 2, 16, generator=gen) for _ in range(3))
    before = dispatch.calls[("block_sparse_attention", "dense")]
    out = block_sparse_attention(q, k, v, torch.ones(1, 2, 5, 5, dtype=torch.bool), backend="triton")
    ref = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    assert torch.equal(out, ref.transpose(1, 2))
    assert dispatch.calls[("block_sparse_attention", "dense")] == before + 1


def test_uniform_offsets_are_recognised():
    u = uniform_offsets(37, 8)
    assert block_sparse._uniform_block(u.expand(2, 3, 6), 37) == 8
    assert block_sparse._uniform_block(u.expand(2, 3, 6).clone(), 37) == 8
    other = u.expand(2, 3, 6).clone()
    other[1, 2, 1:-1] -= 1
    assert block_sparse._uniform_block(other, 37) is None
    assert block_sparse._uniform_block(torch.tensor([0, 8, 20, 37]).expand(1, 1, 4), 37) is None
    assert block_sparse._uniform_block(torch.tensor([0, 37]).expand(1, 1, 2), 37) == 37


@pytest.mark.skipif(not dispatch.triton_available(), reason="triton is not installed")
def test_lookup_and_query_tiles():
    from accel.kernels.triton_attention import build_lookup, key_tiles, query_tiles

    mask = torch.tensor([[[[False, True, False, True], [False, False, False, False], [True, True, True, True]]]])
    lut, count = build_lookup(mask)
    assert count.tolist() == [[2, 0, 4]]
    assert lut.shape == (1, 3, 4)
    assert lut[0, 0, :2].tolist() == [1, 3]
    assert lut[0, 2].tolist() == [0, 1, 2, 3]
    off = torch.tensor([[0, 3, 3, 40, 47], [0, 16, 32, 33, 47]])
    cluster, start = query_tiles(off, 16, 47)
    # group 0: cluster 0 -> 1 tile, cluster 1 empty, cluster 2 (37 rows) -> 3 tiles, cluster 3 -> 1 tile; the
    # grid has the upper bound 4 + 47 // 16 = 6 tiles, the rest padding (-1)
    assert cluster[0].tolist() == [0, 2, 2, 2, 3, -1]
    assert start[0].tolist()[:5] == [0, 3, 19, 35, 40]
    assert cluster[1].tolist() == [0, 1, 2, 3, -1, -1]
    assert start[1].tolist()[:4] == [0, 16, 32, 33]
    # a random mask: every row lists exactly its selected blocks, in order
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(2, 3, 7, 11, generator=gen) < 0.4
    lut, count = build_lookup(mask)
    flat, cnt = mask.reshape(-1, 11), count.reshape(-1)
    for i in range(flat.shape[0]):
        assert lut.reshape(-1, 11)[i, : cnt[i]].tolist() == flat[i].nonzero().flatten().tolist()
    # key tiles: row 0 selects clusters 1, 2 and 4 (tokens 5-41: cluster 3 is empty, the run goes on), row 1 all
    k_off = torch.tensor([[0, 5, 12, 20, 20, 41]])
    sel = torch.tensor([[[False, True, True, False, True], [True] * 5, [False] * 5]])
    lo, hi, count = key_tiles(sel, k_off, 8, 41)
    assert lo.shape == (1, 3, 3 + 41 // 8) and count.tolist() == [[5, 6, 0]]
    assert lo[0, 0, :5].tolist() == [5, 13, 21, 29, 37] and hi[0, 0, :5].tolist() == [41] * 5
    assert lo[0, 1, :6].tolist() == [0, 8, 16, 24, 32, 40]
    assert hi[0, 1, :6].tolist() == [41] * 6
    # every selected token is covered exactly once, on a random layout
    sizes = torch.randint(0, 9, (6, 13), generator=gen)
    k_off = torch.nn.functional.pad(sizes.cumsum(-1), (1, 0))
    sel = torch.rand(6, 4, 13, generator=gen) < 0.5
    lo, hi, count = key_tiles(sel, k_off, 4, int(k_off[:, -1].max()))
    for g in range(6):
        for i in range(4):
            got = sorted(t for s in range(count[g, i]) for t in range(lo[g, i, s], min(lo[g, i, s] + 4, hi[g, i, s])))
            want = [t for j in range(13) if sel[g, i, j] for t in range(k_off[g, j], k_off[g, j + 1])]
            assert got == want


def test_kernels_import_and_run_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "from accel.kernels.block_sparse import block_sparse_attention\n"
        "from accel.kernels.dispatch import triton_available\n"
        "from accel.kernels.estimate import antidiagonal_block_scores\n"
        "assert not triton_available()\n"
        "q = torch.randn(1, 16, 1, 8)\n"
        "m = torch.tensor([[[[True, False], [False, True]]]])\n"
        "block_sparse_attention(q, q, q, m)\n"
        "antidiagonal_block_scores(q, q, 2, 8)\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ok")


def _module(*args: str, interpret: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    env.pop("TRITON_INTERPRET", None)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run(
        [sys.executable, "-m", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=180, check=False
    )


@pytest.mark.slow
def test_benchmarks_exit_cleanly_without_cuda():
    for module in ("accel.kernels.bench", "accel.kernels.bench_e2e"):
        proc = _module(module, "--quick")
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "no CUDA device" in proc.stdout


@pytest.mark.skipif(not dispatch.triton_available(), reason="triton is not installed")
@pytest.mark.slow
def test_benchmarks_smoke_under_the_interpreter():
    proc = _module("accel.kernels.bench", "--interpret", "--inputs", "structured", "--densities", "0.5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "estimation" in proc.stdout and "0.50" in proc.stdout
    proc = _module("accel.kernels.bench_e2e", "--interpret", "--kinds", "xattention", "--densities", "0.5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "xattention" in proc.stdout and "Amdahl" in proc.stdout


@pytest.mark.skipif(not dispatch.triton_available(), reason="triton is not installed")
@pytest.mark.parametrize("kind", ["fixed", "varlen"])
def test_triton_path_reads_no_data_on_the_host(kind, monkeypatch):
    """Meta tensors hold no data, so any host read of a tensor (``.item()``, ``bool()``, ``int()``: a host-device
    sync on CUDA) fails. Given what the caller knows, the public entry (fixed blocks) and the variable-size kernel's
    host side reach the launch anyway: a transformer call can be captured in a CUDA graph."""
    from accel.kernels import triton_attention

    grids = []

    class Launcher:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: grids.append(grid)

    monkeypatch.setattr(triton_attention, "jitted", lambda fn: Launcher())
    monkeypatch.setattr(dispatch, "resolve", lambda device, backend=None, tokens=0: "triton")
    monkeypatch.setenv(triton_attention.ENV_AUTOTUNE, "0")
    q, k, v = (torch.empty(2, 1000, 3, 64, device="meta", dtype=torch.bfloat16) for _ in range(3))
    mask = torch.empty(2, 3, 8, 8, device="meta", dtype=torch.bool)
    if kind == "fixed":
        out = block_sparse_attention(q, k, v, mask, block_size=128, dense=False)
        lut = triton_attention.build_lookup(mask)
        out = block_sparse_attention(q, k, v, mask, block_size=(128, 128), dense=False, lookup=lut)
    else:
        off = torch.empty(2, 3, 9, device="meta", dtype=torch.long)
        out = block_sparse_attention(q, k, v, mask, off, off, varlen=True, dense=False)
    assert out.shape == q.shape and len(grids) == (2 if kind == "fixed" else 1)
    with pytest.raises((RuntimeError, NotImplementedError)):  # the check itself: a data read does fail on meta
        block_sparse_attention(q, k, v, mask, block_size=128)  # dense=None looks at the mask


def test_cpu_bench_times_each_methods_own_attention(capsys):
    """``--device cpu --methods``: one row per method, with the density its own attention call logged (STA's
    (3, 3, 3) window over 5 x 2 x 2 tiles of (1, 4, 4): 3 of 5 frames, every tile of them)."""
    from accel.kernels.bench import main

    argv = ["--device", "cpu", "--methods", "sta", "radial", "--grid", "5", "8", "8", "--heads", "2", "--dim", "8"]
    assert main([*argv, "--warmup", "0", "--iters", "1"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[2:]}
    assert set(rows) == {"dense", "sta", "radial"}
    assert rows["sta"][1] == "0.600" and 0 < float(rows["radial"][1]) < 1
