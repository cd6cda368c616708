"""Attention kernels: one block-sparse attention entry point and the XAttention estimator.

Every function here has a pure-torch reference implementation (this package's ``reference``
module) that runs anywhere and is what the tests pin the semantics to.
"""

from kernels.block_sparse import block_sparse_attention, block_token_ids, mask_density, uniform_offsets
from kernels.estimate import antidiagonal_block_scores

__all__ = [
    "antidiagonal_block_scores",
    "block_sparse_attention",
    "block_token_ids",
    "mask_density",
    "uniform_offsets",
]
