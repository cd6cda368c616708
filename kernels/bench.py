"""Kernel benchmark at real Wan2.1 attention shapes: ``python -m accel.kernels.bench [--quick] [--interpret]``.

For each shape (Wan2.1-1.3B: 12 heads x 128; 14B: 40 heads x 128; 480p L = 32,760, 720p L = 75,600)
and each input kind, prints the time and TFLOP/s of dense SDPA (flash backend) and of our
block-sparse kernel with masks of density 1.0 / 0.5 / 0.25 / 0.1 (the kernel itself, never the
dense shortcut; the lookup build is included), the speedup against our density-1.0 run and against
SDPA, and the XAttention estimation kernel's time (stride 16, block 128) as a fraction of dense.

Inputs: ``uniform`` (i.i.d. normal Q/K/V, random block masks) and ``structured`` (Q/K correlated
between nearby tokens of the (frame, h, w) grid; masks from the real XAttention selection,
``accel.attention.xattention.select_blocks``, at the tau that gives the density).

Without CUDA it prints a message and exits 0; ``--interpret`` runs tiny shapes through the Triton
interpreter on CPU to smoke-test the script (timings there mean nothing).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from accel.kernels.block_sparse import mask_density, uniform_offsets

DENSITIES = (1.0, 0.5, 0.25, 0.1)


@dataclass(frozen=True)
class Shape:
    name: str
    heads: int
    head_dim: int
    grid: tuple[int, int, int]  # latent tokens (frames, h, w) after patching

    @property
    def length(self) -> int:
        return math.prod(self.grid)


SHAPES = {
    "1.3b-480p": Shape("Wan2.1-1.3B 480p", 12, 128, (21, 30, 52)),
    "1.3b-720p": Shape("Wan2.1-1.3B 720p", 12, 128, (21, 45, 80)),
    "14b-480p": Shape("Wan2.1-14B 480p", 40, 128, (21, 30, 52)),
    "14b-720p": Shape("Wan2.1-14B 720p", 40, 128, (21, 45, 80)),
}
TINY = {"tiny": Shape("tiny (interpreter)", 2, 64, (2, 4, 6))}


def reexec_interpreted(module: str) -> None:
    """Make sure Triton runs interpreted in this process; re-run ``module`` in a subprocess if it is too late."""
    if os.environ.get("TRITON_INTERPRET") == "1" and "triton" not in sys.modules:
        return
    if "triton" not in sys.modules:
        os.environ["TRITON_INTERPRET"] = "1"
        return
    from accel.kernels.dispatch import triton_interprets

    if triton_interprets():
        return
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    raise SystemExit(subprocess.call([sys.executable, "-m", module, *sys.argv[1:]], env=env))


def timeit(fn: Callable[[], object], warmup: int, iters: int) -> float:
    """Median seconds per call: CUDA events on GPU, wall clock on CPU."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def structured_qkv(
    shape: Shape, device: torch.device, dtype: torch.dtype, seed: int = 0, sharpness: float = 6.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q/K that correlate between nearby tokens of the (frame, h, w) grid; ``(1, L, H, D)``.

    Per head, random Fourier features of the token position ``phi(x) = [cos(W x), sin(W x)]`` (so
    ``phi(x).phi(y)`` is a shift-invariant kernel peaking at ``x = y``); frequency scales differ per
    head, from local (short-range) to global heads. Q and K are the features plus independent noise.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    f, h, w = shape.grid
    pos = torch.stack(torch.meshgrid(torch.arange(f), torch.arange(h), torch.arange(w), indexing="ij"), dim=-1).reshape(
        -1, 3
    )
    pos = pos.to(device=device, dtype=torch.float32)
    half = shape.head_dim // 2
    scales = torch.logspace(math.log10(0.05), math.log10(0.8), shape.heads)  # radians per grid cell
    freqs = torch.randn(shape.heads, 3, half, generator=gen) * scales[:, None, None]
    amp = math.sqrt(sharpness * math.sqrt(shape.head_dim) / half)  # peak logit ~ sharpness
    q = torch.empty(1, shape.length, shape.heads, shape.head_dim, device=device, dtype=dtype)
    k = torch.empty_like(q)
    for i in range(shape.heads):
        ang = pos @ freqs[i].to(device)
        phi = torch.cat([ang.cos(), ang.sin()], dim=-1) * amp
        noise = torch.randn(2, *phi.shape, generator=gen).to(device) * 0.5
        q[0, :, i] = (phi + noise[0]).to(dtype)
        k[0, :, i] = (phi + noise[1]).to(dtype)
    v = torch.randn(q.shape, generator=gen).to(device=device, dtype=dtype)
    return q, k, v


def random_mask(heads: int, n: int, density: float, device: torch.device, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    if density >= 1.0:
        return torch.ones(1, heads, n, n, dtype=torch.bool, device=device)
    return (torch.rand(1, heads, n, n, generator=gen) < density).to(device)


def xattention_mask(scores: torch.Tensor, density: float, offsets: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The XAttention selection at the tau (bisection) whose mean density is closest to ``density``."""
    from accel.attention.xattention import select_blocks

    if density >= 1.0:
        return torch.ones_like(scores, dtype=torch.bool), 1.0
    lo, hi = 0.0, 1.0
    best = None
    for _ in range(20):
        tau = (lo + hi) / 2
        mask = select_blocks(scores, tau)
        got = float(mask_density(mask, offsets, offsets).mean())
        if best is None or abs(got - density) < abs(best[1] - density):
            best = (mask, got, tau)
        if got > density:
            hi = tau
        else:
            lo = tau
    return best[0], best[2]


def dense_flops(shape: Shape) -> float:
    return 4.0 * shape.heads * shape.length**2 * shape.head_dim


def sdpa_fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Callable[[], torch.Tensor]:
    """Dense attention on (B, H, L, D) copies, flash backend on CUDA."""
    qt, kt, vt = (x.transpose(1, 2).contiguous() for x in (q, k, v))
    if q.is_cuda:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def run() -> torch.Tensor:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return torch.nn.functional.scaled_dot_product_attention(qt, kt, vt)

        return run
    return lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt)


def bench_shape(shape: Shape, kind: str, args: argparse.Namespace, device: torch.device) -> None:
    from accel.kernels.triton_attention import fixed_block_sparse_attention
    from accel.kernels.triton_estimate import antidiagonal_block_scores_triton

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    length, bs = shape.length, args.block
    n = math.ceil(length / bs)
    if kind == "structured":
        q, k, v = structured_qkv(shape, device, dtype)
    else:
        gen = torch.Generator(device="cpu").manual_seed(0)
        q, k, v = (torch.randn(1, length, shape.heads, shape.head_dim, generator=gen).to(device, dtype) for _ in "qkv")
    off = uniform_offsets(length, bs, device)
    cfg = {key: val for key in ("block_m", "block_n", "num_warps", "num_stages") if (val := getattr(args, key))}
    w, it = args.warmup, args.iters

    t_sdpa = timeit(sdpa_fn(q, k, v), w, it)
    est_cfg = {"block_m": args.est_tile, "block_n": args.est_tile} if args.est_tile else {}
    if args.est_warps:
        est_cfg["num_warps"] = args.est_warps
    est = lambda: antidiagonal_block_scores_triton(q, k, args.stride, bs, **est_cfg)  # noqa: E731
    t_est = timeit(est, w, it)
    scores = est() if kind == "structured" else None
    flops = dense_flops(shape)
    print(f"\n{shape.name}: L={length}, {shape.heads} heads x {shape.head_dim}, block {bs}, {kind} inputs, {dtype}")
    label = "SDPA (flash)" if device.type == "cuda" else "SDPA (CPU)"
    print(f"  {label:<21} {t_sdpa * 1e3:9.2f} ms   {flops / t_sdpa / 1e12:7.1f} TFLOP/s")
    print(
        f"  estimation (S={args.stride}, B={bs}) {t_est * 1e3:9.2f} ms   "
        f"= {t_est / t_sdpa:6.1%} of dense SDPA (ideal 1/S = {1 / args.stride:.1%})"
    )
    header = f"  {'density':>8} {'actual':>7} {'tau':>6} {'ms':>9} {'TFLOP/s':>8} {'vs ours@1':>10} {'vs SDPA':>8}"
    if args.flex:
        header += f" {'flex ms':>9} {'flex/SDPA':>9}"
    print(header)
    t_full = None
    for density in args.densities:
        if kind == "structured":
            mask, tau = xattention_mask(scores, density, off)
        else:
            mask, tau = random_mask(shape.heads, n, density, device, seed=int(density * 1000)), float("nan")
        actual = float(mask_density(mask, off, off).mean())
        run = lambda m=mask: fixed_block_sparse_attention(q, k, v, m, bs, bs, **cfg)  # noqa: E731
        t = timeit(run, w, it)
        if density >= 1.0:
            t_full = t
        rel = f"{t_full / t:9.2f}x" if t_full else f"{'-':>10}"
        line = (
            f"  {density:8.2f} {actual:7.3f} {tau:6.3f} {t * 1e3:9.2f} {flops * actual / t / 1e12:8.1f} "
            f"{rel} {t_sdpa / t:7.2f}x"
        )
        if args.flex:  # FlexAttention (inductor's Triton on CUDA) on the same mask; its compile is timed apart
            from accel.kernels import flex

            blocks = flex.block_mask(mask, bs, bs, length, length)
            t_flex = timeit(
                lambda m=mask, b=blocks: flex.flex_block_sparse_attention(q, k, v, m, bs, bs, blocks=b), w, it
            )
            line += f" {t_flex * 1e3:9.2f} {t_sdpa / t_flex:8.2f}x"
        print(line)
    if args.flex:
        from accel.kernels import flex

        print(f"  flex compile so far: {sum(flex.compile_seconds.values()):.1f} s")


CPU_LENGTHS = (320, 1024, 2048, 4096)  # the default pocket run is 320 tokens; the pocket "bench" size is >= 2,000


def _cpu_ratios(length: int, args: argparse.Namespace, backends: tuple[str, ...]) -> tuple[float, dict[str, list]]:
    """Dense SDPA seconds at ``length`` and, per backend, SDPA time / backend time at each density."""
    from accel.kernels import flex
    from accel.kernels.block_sparse import _reference, block_sparse_attention

    gen = torch.Generator().manual_seed(length)
    q, k, v = (torch.randn(1, length, args.heads, args.dim, generator=gen) for _ in range(3))
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    n, bs = math.ceil(length / args.block), args.block
    off = uniform_offsets(length, bs).expand(1, args.heads, n + 1)
    sdpa = timeit(lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt), args.warmup, args.iters)
    ratios: dict[str, list[float]] = {name: [] for name in backends}
    for d in args.densities:
        m = random_mask(args.heads, n, d, torch.device("cpu"), seed=int(d * 100))
        runs = {
            "torch": lambda m=m: block_sparse_attention(q, k, v, m, block_size=bs, dense=False, backend="torch"),
            "loop": lambda m=m: _reference(q, k, v, m, off, off, None),
        }
        if "flex" in backends:
            blocks = flex.block_mask(m, bs, bs, length, length)
            runs["flex"] = lambda m=m, b=blocks: flex.flex_block_sparse_attention(q, k, v, m, bs, bs, blocks=b)
        for name in backends:
            ratios[name].append(sdpa / timeit(runs[name], args.warmup, args.iters))
    return sdpa, ratios


def bench_cpu(args: argparse.Namespace) -> None:
    """CPU table: dense SDPA against FlexAttention (compiled; its compile is timed apart), the torch backend (query
    blocks grouped by selected count, one SDPA per group) and the loop reference (one step per query block, the
    path variable-size clusters take) at each length and density (random block masks, 4 heads x 64, block
    ``--block``), as SDPA time / backend time (higher is faster), and the crossover: the highest density at which
    each backend beats dense."""
    from accel.kernels import flex

    backends = ("flex", "torch", "loop") if flex.available() else ("torch", "loop")
    if "flex" not in backends:
        print("flex: FlexAttention cannot be compiled here (no C++ compiler): only the torch reference runs")
    print(f"CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.heads} heads x {args.dim}, "
          f"block {args.block}; ratio = SDPA time / backend time (higher is faster)")  # fmt: skip
    print(f"{'L':>6} {'backend':>8} {'SDPA ms':>8} " + " ".join(f"{'d=' + format(d, 'g'):>8}" for d in args.densities))
    crossover = []
    for length in args.lengths or CPU_LENGTHS:
        sdpa, ratios = _cpu_ratios(length, args, backends)
        for name, row in ratios.items():
            print(f"{length:>6} {name:>8} {sdpa * 1e3:>8.1f} " + " ".join(f"{r:>7.2f}x" for r in row), flush=True)
            wins = [d for d, r in zip(args.densities, row, strict=True) if r >= 1.0]
            crossover.append(f"L={length} {name} {max(wins) if wins else 'none'}")
    if flex.compile_seconds:
        print(f"flex compile: {sum(flex.compile_seconds.values()):.1f} s over {len(flex.compile_seconds)} shapes")
    print("crossover (highest density that beats dense SDPA): " + ", ".join(crossover))


BENCH_GRID = (9, 16, 16)  # pocket-wan's "bench" size preset (256x256x33) in latent tokens: 2,304


def bench_cpu_methods(args: argparse.Namespace) -> None:
    """CPU table of each method's own attention call (its estimation, permutation and kernel; ``attend``) against
    dense SDPA, on structured Q/K at ``--grid`` with pocket-wan's defaults for the method, in layer 1 at a step past
    every method's dense warm-up: the per-call share the method can save, and its density there."""
    from accel import methods
    from accel.model_specs import resolve
    from accel.schema import Event
    from accel.telemetry import Recorder
    from accel.tracking import StepInfo

    class Densities(Recorder):
        density = float("nan")

        def log(self, event, value=None, **fields):
            if event == Event.DENSITY:
                self.density = float(torch.as_tensor(fields.get("density", value)).float().mean())

    spec = resolve("pocket-wan")
    shape = Shape("grid", args.heads, args.dim, tuple(args.grid))
    q, k, v = structured_qkv(shape, torch.device("cpu"), torch.float32)
    info = StepInfo(step=19, num_steps=20, grid=shape.grid)
    sdpa = timeit(sdpa_fn(q, k, v), args.warmup, args.iters)
    print(f"CPU, torch {torch.__version__}, {torch.get_num_threads()} threads; grid {'x'.join(map(str, shape.grid))} "
          f"({shape.length} tokens), {shape.heads} heads x {shape.head_dim}, structured Q/K; one attention call in "
          f"layer 1 at step 19 of 20, pocket-wan's defaults; ratio = SDPA time / method time")  # fmt: skip
    print(f"{'method':>12} {'density':>8} {'ms':>8} {'ratio':>7}")
    print(f"{'dense SDPA':>12} {1.0:>8.3f} {sdpa * 1e3:>8.1f} {1.0:>6.2f}x")
    for name in args.methods:
        if name == "dense":  # the SDPA row above
            continue
        recorder = Densities(enabled=False)
        attention = methods.build_attention(methods.settings_for(name), spec, recorder)
        attention.setup(4, shape.heads)  # pocket-wan's layers
        seconds = timeit(lambda a=attention: a.attend(q, k, v, 1, info), args.warmup, args.iters)
        print(f"{name:>12} {recorder.density:>8.3f} {seconds * 1e3:>8.1f} {sdpa / seconds:>6.2f}x", flush=True)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    from accel.methods import attention_names

    p = argparse.ArgumentParser(prog="python -m accel.kernels.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 1.3B 480p only, few iterations")
    p.add_argument("--interpret", action="store_true", help="tiny shapes on CPU through the Triton interpreter")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="cpu: SDPA vs FlexAttention vs the torch reference at CPU sizes (--lengths)")  # fmt: skip
    p.add_argument("--lengths", nargs="+", type=int, default=None, help=f"CPU lengths (default {CPU_LENGTHS})")
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD", choices=["dense", *attention_names()],
                   help="cpu: time these methods' own attention calls at --grid instead of random masks")  # fmt: skip
    p.add_argument(
        "--grid",
        nargs=3,
        type=int,
        default=list(BENCH_GRID),
        metavar=("F", "H", "W"),
        help="--methods: latent tokens (frames, height, width); default: pocket-wan's bench size",
    )
    p.add_argument("--heads", type=int, default=None, help="CPU heads (default 4; with --methods pocket-wan's 6)")
    p.add_argument("--dim", type=int, default=None, help="CPU head dim (default 64; with --methods pocket-wan's 32)")
    p.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=None, help="shapes to run (default: all)")
    p.add_argument("--inputs", nargs="+", choices=["uniform", "structured"], default=["uniform", "structured"])
    p.add_argument("--densities", nargs="+", type=float, default=list(DENSITIES))
    p.add_argument("--block", type=int, default=128, help="mask block size (XAttention: 128)")
    p.add_argument("--stride", type=int, default=16, help="estimation stride")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    for key in ("block_m", "block_n", "num_warps", "num_stages"):
        p.add_argument(f"--{key.replace('_', '-')}", dest=key, type=int, default=None, help="kernel config override")
    p.add_argument("--flex", action="store_true", help="CUDA: add FlexAttention beside Triton and SDPA per density")
    p.add_argument("--est-tile", type=int, default=None, help="estimation tile (reduced rows = reduced keys)")
    p.add_argument("--est-warps", type=int, default=None, help="estimation num_warps override")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    pocket = bool(args.methods)  # a method's own call: pocket-wan's 6 heads x 32
    args.heads, args.dim = args.heads or (6 if pocket else 4), args.dim or (32 if pocket else 64)
    if args.device == "cpu":
        bench_cpu_methods(args) if args.methods else bench_cpu(args)
        return 0
    if args.interpret:
        reexec_interpreted("accel.kernels.bench")
        shapes = list(TINY.values())
        args.block, args.stride, args.warmup, args.iters = 8, 4, 0, 1
        device = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            print("accel.kernels.bench: no CUDA device, nothing to benchmark (--interpret: a tiny CPU smoke run).")
            return 0
        from accel.kernels.dispatch import triton_available

        if not triton_available():
            print("accel.kernels.bench: triton is not installed, nothing to benchmark.")
            return 0
        names = args.shapes or (["1.3b-480p"] if args.quick else list(SHAPES))
        shapes = [SHAPES[n] for n in names]
        if args.quick:
            args.warmup, args.iters = 1, 3
        device = torch.device("cuda")
        torch.cuda.init()
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    for shape in shapes:
        for kind in args.inputs:
            bench_shape(shape, kind, args, device)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
