"""Backend choice for the kernels: Triton, FlexAttention or the pure-torch reference.

``accel.kernels`` (the repository's top-level ``kernels/`` folder, a namespace package with no ``__init__``: see
``accel/__init__.py``) has two public entry points, :func:`accel.kernels.block_sparse.block_sparse_attention`
and the XAttention estimator :func:`accel.kernels.estimate.antidiagonal_block_scores`; each dispatches here.

Order of precedence: an explicit ``backend=`` argument, then :func:`use_backend` (a context
manager), then the environment variable ``ACCEL_KERNELS`` (``auto`` | ``triton`` | ``flex`` | ``torch``,
default ``auto``). ``auto`` picks Triton for CUDA tensors, and for CPU tensors only when
``TRITON_INTERPRET=1``; everything else uses torch. FlexAttention (:mod:`accel.kernels.flex`) runs when forced: on CPU
the torch path needs no compile (flex: 5-22 s per shape), wins from blocks of 64 tokens and is even with flex at
block 16 up to 2,304 tokens (``python -m accel.kernels.bench --device cpu``); on CUDA Triton stays the default until the
GPU benchmark compares them. On CPU, Triton can only
run in its interpreter, which Triton fixes when it is imported: ``TRITON_INTERPRET=1`` must be in the environment before
anything imports ``triton`` (``import torch, diffusers`` does). Triton is optional: without it (macOS,
no wheel) ``auto`` is always torch and forcing ``triton`` raises.

Every dispatched call is counted in :data:`calls` (``(op, backend) -> n``), so tests and
benchmarks can check which code path actually ran.

Import layers (no module imports one that imports it back, even inside a function): at the bottom
:mod:`accel.kernels.block_offsets` (torch only) and :mod:`accel.kernels._jit`; the backends
(:mod:`accel.kernels.triton_attention`, :mod:`accel.kernels.triton_estimate`, :mod:`accel.kernels.flex`) import only
those and each other downwards; this module imports :mod:`accel.kernels.flex` (is it available) and ``_jit``; the
entry points :mod:`accel.kernels.block_sparse` and :mod:`accel.kernels.estimate` import this module and the backends.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

from accel.errors import root_cause

BACKENDS = ("auto", "triton", "flex", "torch")  # accel.config.KERNEL_BACKENDS names the same
ENV_VAR = "ACCEL_KERNELS"
LOG = logging.getLogger("accel.kernels")

_forced: ContextVar[str | None] = ContextVar("accel_kernels_backend", default=None)
calls: Counter[tuple[str, str]] = Counter()
_triton_why: str | None = None  # why triton cannot be used ("" once it imported), checked once


def triton_available() -> bool:
    """Whether ``triton`` can be imported (checked once, without importing it twice). A triton that is installed
    but fails to import is logged once with its error (:func:`triton_unavailable_reason` keeps it)."""
    global _triton_why
    if _triton_why is None:
        try:
            if importlib.util.find_spec("triton") is None:
                _triton_why = "triton is not installed"
            else:
                import triton  # noqa: F401

                _triton_why = ""
        except Exception as exc:  # a broken install: the torch reference runs, and the log says why
            _triton_why = f"triton is installed but does not import ({root_cause(exc)})"
            LOG.warning("%s: block-sparse attention uses the torch reference", _triton_why)
    return not _triton_why


def triton_unavailable_reason() -> str:
    """Why triton cannot be used here, or "" when it can."""
    triton_available()
    return _triton_why or ""


def interpret_requested() -> bool:
    """Whether ``TRITON_INTERPRET`` is set to a true value right now."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def _check(name: str, source: str = "kernel backend") -> str:
    name = name.strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"{source} must be one of {', '.join(BACKENDS)}, got {name!r}")
    return name


@contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force ``auto``/``triton``/``torch`` for the kernel calls inside the ``with`` block."""
    token = _forced.set(_check(name))
    try:
        yield
    finally:
        _forced.reset(token)


def requested_backend(backend: str | None = None) -> str:
    """The backend setting in effect: argument, else context manager, else ``ACCEL_KERNELS``, else ``auto``."""
    if backend is not None:
        return _check(backend)
    forced = _forced.get()
    if forced is not None:
        return forced
    return _check(os.environ.get(ENV_VAR, "auto") or "auto", f"${ENV_VAR}")


def triton_interprets() -> bool:
    """Whether the imported Triton runs kernels in its interpreter (``TRITON_INTERPRET=1`` when it was imported)."""
    from accel.kernels._jit import triton_interprets as check

    return check()


_CPU_HINT = "Triton on CPU tensors needs its interpreter: set TRITON_INTERPRET=1 before triton is first imported"
_warned = False


def resolve(device: torch.device, backend: str | None = None) -> str:
    """``"triton"``, ``"flex"`` or ``"torch"`` for tensors on ``device``; raises when ``triton`` or ``flex`` is
    forced but cannot run."""
    global _warned
    want = requested_backend(backend)
    if want == "torch":
        return "torch"
    if want == "flex":
        from accel.kernels import flex

        if not flex.available():
            raise RuntimeError(f"{ENV_VAR}=flex but FlexAttention cannot be compiled here (no C++ compiler)")
        return "flex"
    if not triton_available():
        if want == "triton":
            raise RuntimeError(f"{ENV_VAR}=triton but {triton_unavailable_reason()}")
        return "torch"
    if device.type == "cuda":
        return "triton"
    if want == "auto" and not interpret_requested():
        return "torch"
    if triton_interprets():
        return "triton"
    if want == "triton":
        raise RuntimeError(_CPU_HINT)
    if not _warned:
        _warned = True
        warnings.warn(f"{_CPU_HINT}; using the torch reference", stacklevel=3)
    return "torch"


def record(op: str, backend: str) -> None:
    """Count one call of ``op`` on ``backend``."""
    calls[(op, backend)] += 1
