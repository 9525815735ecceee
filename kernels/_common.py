"""Helpers shared by the Triton launchers: the memory-layout rule and compute dtypes."""

from __future__ import annotations

import torch
import triton.language as tl

# Elements of one sample reduced by one program in per-sample reductions.
REDUCE_CHUNK = 16384


def acc_tl_dtype(data_dtype: torch.dtype):
    """The Triton type kernels compute in: fp64 for fp64 data, fp32 otherwise."""
    return tl.float64 if data_dtype == torch.float64 else tl.float32
