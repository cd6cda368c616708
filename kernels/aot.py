"""Compile the project's Triton kernels ahead of time for a CUDA target, on a machine without a GPU.

For each kernel configuration this reports what decides whether the kernel is fast on the GPU it targets:
registers per thread, stack bytes and local-memory spill instructions (``LDL``/``STL``), shared memory, and the
count of the SASS instructions that matter (``HGMMA`` = Hopper wgmma, ``HMMA`` = the older mma.sync, async copies,
barriers). The default target is sm_90a (H100/H200, capability 90).

What gets compiled is what the host code would launch: :func:`compile_case` calls the host function
(:func:`accel.kernels.triton_attention.fixed_block_sparse_attention`, ...) with CPU tensors of a realistic shape,
records the kernel launch instead of running it, and hands the recorded arguments to Triton's own launch-time
specialisation (argument dtypes, integers equal to 1 turned into constexprs, 16-divisible integers and aligned
pointers marked as such), then compiles that for the target. Nothing here hard-codes a kernel signature.

The large inputs are ``torch.empty`` and never touched, so they cost address space, not memory (the varlen host
code zero-fills its ~100 MB output once). Triton's bundled ``ptxas`` assembles and its bundled ``cuobjdump`` reads
the cubin; where either is missing, the Triton is too old, or the process imported Triton in interpreter mode,
:func:`check_available` raises :class:`AotUnavailable`.

``python -m accel.kernels.aot`` prints one line per configuration of :func:`project_cases` and exits 1 if any spills or
(on sm_90a) lost its wgmma.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SASS_OPS = ("HGMMA", "HMMA", "LDL", "STL", "LDGSTS", "UTMALDG", "WARPGROUP.ARRIVE", "BAR.SYNC")
HEAD_DIMS = (64, 128)  # Wan2.1 / SkyReels-V2 use 128; 64 is default_config's other branch (head_dim <= 64)
EST_STRIDES = (8, 16)  # XAttention's default stride (accel.config) and accel.kernels.bench's default
EST_HEAD_DIMS = (128,)  # the estimation runs for XAttention on Wan2.1 / SkyReels-V2 only
BLOCK = 128  # XAttention's block size for Wan2.1
LENGTH = 32760  # Wan2.1 480p, 21 x 30 x 52 latent tokens: not a multiple of 16 (the kit's worst register case)
HEADS = 12  # Wan2.1-1.3B
KERNELS = ("fixed", "varlen", "est.partials")  # est.partials: the estimation's one GEMM pass (its combine is torch)


class AotUnavailable(RuntimeError):
    """This process cannot compile Triton kernels for CUDA ahead of time (the reason is the message)."""


@dataclass(frozen=True)
class Case:
    """One kernel configuration: which kernel, the host-side launch ``config`` (``block_m``, ``block_n``,
    ``num_warps``, ``num_stages``; empty = the host's default), the input dtype and the problem shape."""

    kernel: str  # one of KERNELS
    head_dim: int = 128
    config: dict[str, int] = field(default_factory=dict)
    dtype: str = "bfloat16"
    length: int = LENGTH
    heads: int = HEADS
    block: int = BLOCK
    stride: int = 8  # estimation only
    source: str = ""  # where the config comes from (default, TUNE_CONFIGS, ...)

    @property
    def label(self) -> str:
        c = {k: self.config.get(k, "?") for k in ("block_m", "block_n", "num_warps", "num_stages")}
        tile = f"{c['block_m']}x{c['block_n']} {c['num_warps']}w {c['num_stages']}st"
        est = f" S{self.stride}" if self.kernel.startswith("est.") else ""
        dt = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(self.dtype, self.dtype)
        source = f" ({self.source})" if self.source else ""
        return f"{self.kernel} L{self.length} d{self.head_dim} {dt}{est} {tile}{source}"


@dataclass(frozen=True)
class KernelReport:
    """Resource use of one compiled kernel, read from the cubin (``cuobjdump -res-usage`` and ``-sass``)."""

    name: str  # the kernel function
    target: str  # e.g. "sm_90a"
    num_warps: int
    num_stages: int
    registers: int
    stack_bytes: int
    spill_loads: int  # LDL instructions
    spill_stores: int  # STL instructions
    shared_bytes: int  # dynamic shared memory Triton allocates
    sass: dict[str, int]  # counts of SASS_OPS

    @property
    def spills(self) -> bool:
        return self.spill_loads > 0 or self.spill_stores > 0 or self.stack_bytes > 0

    @property
    def hgmma(self) -> int:
        return self.sass.get("HGMMA", 0)

    def problems(self) -> list[str]:
        """What is wrong with this kernel: spills, or no wgmma where the target has it (sm_90a)."""
        out = []
        if self.spills:
            out.append(f"spills (LDL={self.spill_loads} STL={self.spill_stores} stack={self.stack_bytes})")
        if self.target == "sm_90a" and self.hgmma == 0:
            out.append("no wgmma (HGMMA=0)")
        return out

    def line(self) -> str:
        ops = " ".join(f"{k}={v}" for k, v in self.sass.items())
        return (
            f"regs={self.registers} stack={self.stack_bytes} smem={self.shared_bytes} B "
            f"warps={self.num_warps} stages={self.num_stages} {ops}"
        )


@dataclass(frozen=True)
class Launch:
    """One recorded kernel launch: the plain kernel function and what the host passed to ``kernel[grid](...)``."""

    fn: Callable
    grid: Any
    args: tuple
    kwargs: dict[str, Any]


def check_available(capability: int = 90) -> dict[str, str]:
    """Paths of the bundled ``ptxas`` and ``cuobjdump``; raises :class:`AotUnavailable` where this process cannot
    compile for ``cuda:capability`` (no Triton, no CUDA backend or tools, older launch internals, interpreter)."""
    try:
        import triton
        from triton import knobs
        from triton.backends.compiler import GPUTarget
        from triton.compiler import make_backend
        from triton.runtime.jit import JITFunction, create_function_from_signature  # noqa: F401
    except ImportError as e:
        raise AotUnavailable(f"Triton cannot compile ahead of time here: {e}") from e
    if not hasattr(JITFunction, "_pack_args"):
        raise AotUnavailable(f"Triton {triton.__version__} lacks the launch internals this module uses (_pack_args)")
    from accel.kernels._jit import triton_interprets

    if triton_interprets():
        raise AotUnavailable("this process imported Triton in interpreter mode (TRITON_INTERPRET=1)")
    try:
        make_backend(GPUTarget("cuda", capability, 32))
        return {tool: getattr(knobs.nvidia, tool).path for tool in ("ptxas", "cuobjdump")}
    except (RuntimeError, AttributeError, KeyError) as e:
        raise AotUnavailable(f"Triton {triton.__version__} cannot target CUDA here: {e}") from e


def _kernel_fns() -> dict[str, Callable]:
    from accel.kernels import triton_attention as ta
    from accel.kernels import triton_estimate as te

    fns = (ta._fixed_fwd, ta._varlen_fwd, te._estimate_partials)
    return dict(zip(KERNELS, fns, strict=True))


def capture_launches(host: Callable[[], Any]) -> list[Launch]:
    """Run ``host()`` with every project kernel's launch recorded instead of run (nothing reaches a device)."""
    from accel.kernels import _jit

    launches: list[Launch] = []

    class _Recorder:
        def __init__(self, fn: Callable) -> None:
            self.fn = fn

        def __getitem__(self, grid: Any) -> Callable:
            return lambda *args, **kwargs: launches.append(Launch(self.fn, grid, args, kwargs))

    fns = list(_kernel_fns().values())
    with _jit._lock:  # kernels.jitted returns what its cache holds: the recorders, for the duration of host()
        saved = {fn: _jit._cache.get(fn) for fn in fns}
        _jit._cache.update({fn: _Recorder(fn) for fn in fns})
        try:
            host()
        finally:
            for fn, kernel in saved.items():
                if kernel is None:
                    _jit._cache.pop(fn, None)
                else:
                    _jit._cache[fn] = kernel
    return launches


def compile_kernel(
    fn: Callable,
    args: Sequence[Any],
    constexprs: dict[str, Any],
    *,
    num_warps: int,
    num_stages: int,
    capability: int = 90,
) -> KernelReport:
    """Compile kernel ``fn`` (a plain function of :mod:`accel.kernels.triton_attention` /
    :mod:`accel.kernels.triton_estimate`) for ``cuda:capability`` as a launch ``jitted(fn)[grid](*args, **constexprs,
    num_warps=..., num_stages=...)`` would, and read its resources. ``args`` are the runtime arguments (tensors on any
    device, ints, floats)."""
    tools = check_available(capability)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    from accel.kernels._jit import jitted

    kernel = jitted(fn)
    target = GPUTarget("cuda", capability, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    kwargs = {**constexprs, "num_warps": num_warps, "num_stages": num_stages}
    bound, specialization, options = binder(*args, **kwargs)  # what JITFunction.run does at launch
    options, signature, consts, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    compiled = triton.compile(ASTSource(kernel, signature, consts, attrs), target=target, options=options.__dict__)
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / f"{fn.__name__}.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        res = _run([tools["cuobjdump"], "-res-usage", str(cubin)])
        sass = _run([tools["cuobjdump"], "-sass", str(cubin)])
    usage = {k: int(v) for k, v in re.findall(r"\b(REG|STACK):(\d+)", res)}
    # the PTX target is what was compiled for: Triton 3.6's cuobjdump prints "sm_90" in the SASS of an sm_90a cubin
    arch = re.search(r"\.target\s+(sm_\w+)", compiled.asm["ptx"])
    ops = Counter(re.findall(r"/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", sass))
    counts = {op: sum(n for name, n in ops.items() if name == op or name.startswith(op + ".")) for op in SASS_OPS}
    return KernelReport(
        name=fn.__name__,
        target=arch.group(1) if arch else f"sm_{capability}",
        num_warps=num_warps,
        num_stages=num_stages,
        registers=usage.get("REG", -1),
        stack_bytes=usage.get("STACK", -1),
        spill_loads=counts["LDL"],
        spill_stores=counts["STL"],
        shared_bytes=int(compiled.metadata.shared),
        sass=counts,
    )


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[:500]}")
    return proc.stdout


def host_call(case: Case) -> Callable[[], Any]:
    """The host-side call that launches ``case``'s kernel, on untouched CPU tensors of the case's shape."""
    import torch

    from accel.kernels import triton_attention as ta
    from accel.kernels import triton_estimate as te
    from accel.kernels.block_sparse import uniform_offsets

    dtype = getattr(torch, case.dtype)
    q, k, v = (torch.empty(1, case.length, case.heads, case.head_dim, dtype=dtype) for _ in "qkv")
    n = math.ceil(case.length / case.block)
    mask = torch.rand(1, case.heads, n, n, generator=torch.Generator().manual_seed(0)) < 0.3
    cfg = dict(case.config)
    if case.kernel == "fixed":
        return lambda: ta.fixed_block_sparse_attention(q, k, v, mask, case.block, case.block, interpret=False, **cfg)
    if case.kernel == "varlen":  # uniform offsets: the varlen kernel's signature does not depend on their values
        off = uniform_offsets(case.length, case.block)
        return lambda: ta.varlen_block_sparse_attention(q, k, v, mask, off, off, interpret=False, **cfg)
    if case.kernel == "est.partials":
        return lambda: te.antidiagonal_block_scores_triton(q, k, case.stride, case.block, interpret=False, **cfg)
    raise ValueError(f"unknown kernel {case.kernel!r}; one of {KERNELS}")


def case_launch(case: Case) -> Launch:
    """The launch of ``case``'s kernel that its host function makes (recorded, not run)."""
    fn = _kernel_fns()[case.kernel]
    launches = [launch for launch in capture_launches(host_call(case)) if launch.fn is fn]
    if len(launches) != 1:
        raise RuntimeError(f"{case.label}: the host code launched {fn.__name__} {len(launches)} times, expected once")
    return launches[0]


def compile_launch(launch: Launch, capability: int = 90) -> KernelReport:
    """Compile a recorded launch for ``cuda:capability``."""
    kwargs = dict(launch.kwargs)
    num_warps, num_stages = kwargs.pop("num_warps", 4), kwargs.pop("num_stages", 3)  # Triton's defaults
    return compile_kernel(
        launch.fn, launch.args, kwargs, num_warps=num_warps, num_stages=num_stages, capability=capability
    )


def compile_case(case: Case, capability: int = 90) -> KernelReport:
    """Compile ``case``'s kernel exactly as its host function would launch it (see the module docstring)."""
    check_available(capability)
    return compile_launch(case_launch(case), capability)


def compile_cases(cases: Sequence[Case], capability: int = 90, workers: int | None = None) -> list[KernelReport]:
    """:func:`compile_case` for each case, ``workers`` compiles at a time in threads (ptxas and cuobjdump are
    subprocesses and Triton's passes release the GIL: two workers nearly halve the time on two cores)."""
    check_available(capability)
    launches = [case_launch(case) for case in cases]  # serial: recording swaps the kernels in _jit's cache

    def one(case: Case, launch: Launch) -> KernelReport:
        try:
            return compile_launch(launch, capability)
        except Exception as e:
            raise RuntimeError(f"{case.label}: {type(e).__name__}: {e}") from e

    with ThreadPoolExecutor(workers or min(4, os.cpu_count() or 1)) as pool:
        return list(pool.map(one, cases, launches))


def project_cases(dtypes: Sequence[str] = ("bfloat16",), lengths: Sequence[int] = (LENGTH,)) -> list[Case]:
    """Every kernel configuration the project launches on CUDA, per input dtype and sequence length: the attention
    kernels' defaults for each of :data:`HEAD_DIMS`, every entry of ``triton_attention.tune_configs(kernel)`` (the
    autotuner launches each) for both attention kernels and head dims, and the estimation kernel at its
    default tile and every ``triton_estimate.tune_configs(r)`` entry (where it exists) for each of :data:`EST_STRIDES`
    and :data:`EST_HEAD_DIMS`. The length matters: Triton specialises integer arguments on divisibility by 16 (480p's
    32,760 tokens are not, 720p's 75,600 are), and the registers differ."""
    from accel.kernels import triton_attention as ta
    from accel.kernels import triton_estimate as te

    keys = ("block_m", "block_n", "num_warps", "num_stages")
    tune_sets = {
        kernel: [{k: tune[k] for k in keys} for tune in ta.tune_configs(kernel)] for kernel in ("fixed", "varlen")
    }
    cases: list[Case] = []
    seen: set[tuple] = set()

    def add(kernel: str, d: int, cfg: dict[str, int], source: str, **kw: Any) -> None:
        case = Case(kernel, d, cfg, source=source, **kw)
        key = (kernel, d, case.dtype, case.length, case.stride, tuple(sorted(cfg.items())))
        if key not in seen:
            seen.add(key)
            cases.append(case)

    for dtype in dtypes:
        for length in lengths:
            for d in HEAD_DIMS:
                for kernel in ("fixed", "varlen"):
                    add(kernel, d, ta.default_config(d, interpret=False), "default", dtype=dtype, length=length)
            for kernel, tunes in tune_sets.items():
                for i, tune in enumerate(tunes):
                    for d in HEAD_DIMS:
                        add(kernel, d, tune, f"tune_configs({kernel!r})[{i}]", dtype=dtype, length=length)
            for stride in EST_STRIDES:
                r = BLOCK // stride
                est_tunes = getattr(te, "tune_configs", lambda r: ())(r)
                configs = [("default", te.estimate_config(False, r))]
                configs += [(f"tune_configs({r})[{i}]", {k: t[k] for k in keys}) for i, t in enumerate(est_tunes)]
                for d in EST_HEAD_DIMS:
                    for source, cfg in configs:
                        add("est.partials", d, cfg, source, dtype=dtype, length=length, stride=stride)
    return cases


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m accel.kernels.aot", description=__doc__.split("\n\n")[0])
    p.add_argument("--capability", type=int, default=90, help="CUDA compute capability (default 90: sm_90a)")
    p.add_argument("--dtype", nargs="+", default=["bfloat16"], choices=["bfloat16", "float16", "float32"])
    p.add_argument("--length", nargs="+", type=int, default=[LENGTH], help=f"sequence lengths (default {LENGTH})")
    p.add_argument("--workers", type=int, default=None, help="compiles at a time (default: cores, at most 4)")
    args = p.parse_args(argv)
    try:
        check_available(args.capability)
    except AotUnavailable as e:
        print(f"accel.kernels.aot: {e}", file=sys.stderr)
        return 2
    import triton

    print(f"triton {triton.__version__}, cuda capability {args.capability}")
    bad = 0
    cases = project_cases(args.dtype, args.length)
    for case, report in zip(cases, compile_cases(cases, args.capability, args.workers), strict=True):
        problems = report.problems()
        bad += bool(problems)
        print(f"{case.label}: {report.target} {report.line()}" + (f"  <-- {'; '.join(problems)}" if problems else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
