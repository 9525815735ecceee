"""The memory-layout rule every backend follows (DESIGN.md §4.8; mirrors csrc/common.h).

It lives in the kernel layer (installed as ``vdm_fast.kernels._layout``) because the Triton
launchers apply it, and the layers above (the fake kernels of vdm_fast.ops, the reference) import
it from here: vdm_fast.kernels imports nothing from vdm_fast. Needs torch only, not triton.

Kernels see data as B samples of D elements, sample b at storage offsets [b*D, (b+1)*D). A
tensor that is "batch-major dense" (non-overlapping and dense with stride(0) == D: contiguous,
channels_last, ...) is used as it is; anything else is copied once. Outputs take the strides of
the first data input when it is batch-major dense, else they are contiguous. Fake kernels use
``empty_out_like`` so that traced and real outputs have the same strides.
"""

from __future__ import annotations

import torch


def per_sample_numel(x: torch.Tensor) -> int:
    if x.dim() == 0:
        return 1
    return 0 if x.shape[0] == 0 else x.numel() // x.shape[0]


def is_non_overlapping_and_dense(x: torch.Tensor) -> bool:
    """Whether x's elements fill a storage range of exactly numel() elements, in any dim order."""
    if x.numel() == 0:
        return True
    expected = 1
    for stride, size in sorted((st, sz) for st, sz in zip(x.stride(), x.shape) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def is_batch_major_dense(x: torch.Tensor) -> bool:
    if not is_non_overlapping_and_dense(x):
        return False
    if x.dim() == 0 or x.shape[0] <= 1:
        return True
    return x.stride(0) == per_sample_numel(x)


def empty_out_like(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    dtype = x.dtype if dtype is None else dtype
    if is_batch_major_dense(x):
        return torch.empty_strided(x.shape, x.stride(), dtype=dtype, device=x.device)
    return torch.empty(x.shape, dtype=dtype, device=x.device)


def in_layout_of(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` in exactly the storage layout of ``like`` (batch-major dense): itself or one copy."""
    if t.stride() == like.stride() and is_non_overlapping_and_dense(t):
        return t
    out = torch.empty_strided(like.shape, like.stride(), dtype=t.dtype, device=t.device)
    out.copy_(t)
    return out
