"""Attention kernels: one block-sparse attention entry point and the XAttention estimator.

Each public function dispatches between a Triton kernel (CUDA, or CPU under ``TRITON_INTERPRET=1``),
FlexAttention (block-sparse attention only) and a pure-torch path that runs anywhere and pins the semantics.
Choose with the environment variable ``ACCEL_KERNELS=auto|triton|flex|torch``, the :func:`use_backend` context
manager, or the ``backend=`` argument (see :mod:`kernels.dispatch`). Triton is optional at import time.
"""

from kernels.block_sparse import (
    block_sparse_attention,
    block_token_ids,
    block_work,
    mask_density,
    uniform_density,
    uniform_offsets,
)
from kernels.dispatch import resolve as resolve_backend
from kernels.dispatch import triton_available, use_backend
from kernels.estimate import antidiagonal_block_scores

__all__ = [
    "antidiagonal_block_scores",
    "block_sparse_attention",
    "block_token_ids",
    "block_work",
    "mask_density",
    "resolve_backend",
    "triton_available",
    "uniform_density",
    "uniform_offsets",
    "use_backend",
]
