"""Ahead-of-time guard: every kernel configuration the project launches on CUDA compiles for sm_90a (H100/H200)
without register spills and keeps its wgmma (``HGMMA``), for bf16 inputs.

No GPU needed: :mod:`accel.kernels.aot` compiles with Triton's bundled ``ptxas`` and reads the cubin with its bundled
``cuobjdump``; skipped where this Triton cannot target CUDA. Only bf16 is guarded (fp16 compiles to the same
registers; fp32 inputs are converted to bf16 on CUDA by the host code, their fp32 dots would spill). Shapes: Wan2.1
480p (32,760 tokens, not a multiple of 16); ``python -m accel.kernels.aot --length 32760 75600`` adds 720p. The sweep is
~28 compiles, 20-45 s on two busy cores with a cold Triton cache, so it is marked slow; the detector tests are not.
"""

from __future__ import annotations

import time

import pytest

from accel.kernels import aot

pytestmark = pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION:UserWarning")

try:
    CASES = aot.project_cases()
except ImportError:  # no Triton: the tests below skip
    CASES = []

SPILLING = aot.Case("fixed", 128, {"block_m": 128, "block_n": 128, "num_warps": 4, "num_stages": 3}, source="spills")


def require_aot(capability: int = 90) -> None:
    try:
        aot.check_available(capability)
    except aot.AotUnavailable as e:
        pytest.skip(str(e))


def guard_failures(report: aot.KernelReport) -> list[str]:
    """What the guard rejects: any spill (local loads/stores or stack) and no wgmma."""
    failures = []
    if report.spill_loads or report.spill_stores or report.stack_bytes:
        failures.append(f"spills: LDL={report.spill_loads} STL={report.spill_stores} stack={report.stack_bytes} B")
    if report.hgmma == 0:
        failures.append(f"no wgmma: HGMMA=0 (HMMA={report.sass.get('HMMA', 0)})")
    return failures


@pytest.fixture(scope="module")
def reports() -> dict[str, aot.KernelReport]:
    require_aot()
    start = time.perf_counter()
    out = aot.compile_cases(CASES)
    print(f"\n{len(CASES)} configs compiled for sm_90a in {time.perf_counter() - start:.1f} s")
    for case, report in zip(CASES, out, strict=True):
        print(f"{case.label}: {report.target} {report.line()}")
    return {case.label: report for case, report in zip(CASES, out, strict=True)}


def test_cases_cover_every_launch_config():
    """The sweep holds the attention defaults for head dims 64 and 128, every tune_configs(kernel) entry of both
    attention kernels, and both estimation passes at their default tile and every tune_configs entry, all bf16."""
    if not CASES:
        pytest.skip("Triton is not installed")
    from accel.kernels import triton_attention as ta
    from accel.kernels import triton_estimate as te

    have = {(c.kernel, c.head_dim, tuple(sorted(c.config.items()))) for c in CASES}
    for d in (64, 128):
        for kernel in ("fixed", "varlen"):
            for cfg in [ta.default_config(d, interpret=False), *ta.tune_configs(kernel)]:
                assert (kernel, d, tuple(sorted(cfg.items()))) in have
    for stride in aot.EST_STRIDES:
        r = aot.BLOCK // stride
        for cfg in [te.estimate_config(False, r), *getattr(te, "tune_configs", lambda r: ())(r)]:
            for kernel in ("est.partials",):
                assert any(c.kernel == kernel and c.stride == stride and c.config == dict(cfg) for c in CASES)
    assert {c.dtype for c in CASES} == {"bfloat16"}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_no_spills_and_wgmma_on_sm90a(case: aot.Case, reports: dict[str, aot.KernelReport]):
    report = reports[case.label]
    assert report.target == "sm_90a"
    failures = guard_failures(report)
    assert not failures, f"{case.label}: {'; '.join(failures)} ({report.line()})"


def test_detector_flags_a_spilling_config():
    """128x128 tiles on 4 warps with 3 stages spill heavily on sm_90a: the guard must see it."""
    require_aot()
    report = aot.compile_case(SPILLING)
    assert report.spill_loads > 0 and report.spill_stores > 0 and report.stack_bytes > 0, report.line()
    assert report.spills and report.problems()
    assert any(f.startswith("spills") for f in guard_failures(report))
    assert report.hgmma > 0  # the spill, not a lost wgmma, is what fails it


def test_detector_flags_missing_wgmma():
    """The default tile compiled for sm_80 (no wgmma there) has mma.sync (HMMA) and no HGMMA: the guard must see it."""
    require_aot(80)
    case = aot.Case("fixed", 128, {"block_m": 128, "block_n": 64, "num_warps": 8, "num_stages": 3})
    report = aot.compile_case(case, capability=80)
    assert report.target == "sm_80" and report.hgmma == 0 and report.sass["HMMA"] > 0, report.line()
    assert any(f.startswith("no wgmma") for f in guard_failures(report))


def test_unavailable_tools_raise_aot_unavailable(monkeypatch):
    """No bundled ptxas/cuobjdump: a clear AotUnavailable (which the tests above turn into a skip)."""
    require_aot()
    from triton import knobs

    monkeypatch.setattr(knobs.NvidiaTool, "from_path", staticmethod(lambda path: None))
    with pytest.raises(aot.AotUnavailable, match="Cannot find"):
        aot.check_available()
