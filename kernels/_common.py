"""Helpers shared by the Triton launchers: the memory-layout rule and compute dtypes."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Elements of one sample reduced by one program in per-sample reductions.
REDUCE_CHUNK = 16384


def acc_tl_dtype(data_dtype: torch.dtype):
    """The Triton type kernels compute in: fp64 for fp64 data, fp32 otherwise."""
    return tl.float64 if data_dtype == torch.float64 else tl.float32


@triton.jit
def sample_block(b, c, k, D, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    """Flat offsets and mask of the block that starts ``k`` elements into chunk ``c`` of sample ``b``
    (``D`` elements a sample, batch-major dense): the per-sample reductions walk their chunk with it."""
    local = c * CHUNK + k + tl.arange(0, BLOCK).to(tl.int64)
    return b * D + local, local < D
