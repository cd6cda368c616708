"""Lazy ``triton.jit`` in the mode Triton itself was imported in.

Triton decides between compiler and interpreter when it wraps a function, and its own library
functions (``tl.sum``, ``tl.max``, ``tl.zeros`` ...) are wrapped when ``triton.language`` is first
imported. A kernel must be wrapped in the same mode as that library, so the kernels here are
wrapped on first use, with ``TRITON_INTERPRET`` set to match the library for the duration of the
wrap. Device functions that kernels call (:func:`device`) are wrapped the same way, just before the
first kernel that names them. Consequence: running Triton on CPU needs ``TRITON_INTERPRET=1`` in the environment before
anything imports ``triton`` (``import torch, diffusers`` already does) — typically
``TRITON_INTERPRET=1 python ...`` or a subprocess.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import triton
import triton.language as tl

_cache: dict[Callable, Any] = {}
_devices: set[Callable] = set()
_lock = threading.RLock()


def device(fn: Callable) -> Callable:
    """Mark ``fn`` as a ``@triton.jit`` device function: kernels call it, and :func:`jitted` wraps it with them."""
    _devices.add(fn)
    return fn


def is_interpreted(kernel: Any) -> bool:
    """Whether a wrapped kernel (or Triton library function) runs in the interpreter."""
    return type(kernel).__name__ == "InterpretedFunction"


def triton_interprets() -> bool:
    """Whether this process's Triton was imported in interpreter mode (``TRITON_INTERPRET=1`` at import)."""
    return is_interpreted(tl.zeros)


def jitted(fn: Callable) -> Any:
    """``fn`` wrapped by ``triton.jit`` in the mode of the imported Triton library (cached)."""
    kernel = _cache.get(fn)
    if kernel is not None:
        return kernel
    with _lock:
        for name in fn.__code__.co_names:  # the device functions it calls, wrapped first, in its globals
            callee = fn.__globals__.get(name)
            if callee in _devices:
                fn.__globals__[name] = jitted(callee)
        prev = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1" if triton_interprets() else "0"
        try:
            kernel = triton.jit(fn)
        finally:
            if prev is None:
                os.environ.pop("TRITON_INTERPRET", None)
            else:
                os.environ["TRITON_INTERPRET"] = prev
        _cache[fn] = kernel
    return kernel
