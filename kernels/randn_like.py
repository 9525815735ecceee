"""randn_like and philox_bits in Triton (DESIGN.md §6): the Philox stream of kernels/philox.py
written to an output in the input's layout, and the raw words (for tests against the published
vectors)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._layout import empty_out_like
from .philox import philox_block, randn_tile, seed_key, split_offset

BLOCK = 1024  # elements per program of randn_like


@triton.jit(do_not_specialize=["off_lo", "off_hi"])
def _randn_like_kernel(out_ptr, seed_ptr, off_lo, off_hi, N, BLOCK: tl.constexpr):
    start = tl.program_id(0).to(tl.int64) * BLOCK
    k0, k1 = seed_key(seed_ptr)
    noise = randn_tile(k0, k1, off_lo, off_hi, start, BLOCK)
    offs = start + tl.arange(0, BLOCK).to(tl.int64)
    tl.store(out_ptr + offs, noise.to(out_ptr.dtype.element_ty), mask=offs < N)


@triton.jit(do_not_specialize=["off_lo", "off_hi", "first_lo", "first_hi"])
def _philox_bits_kernel(out_ptr, seed_ptr, off_lo, off_hi, first_lo, first_hi, n_blocks, BLOCK: tl.constexpr):
    k = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    # block = first + k mod 2^64, carried by hand in 32-bit halves.
    lo = first_lo.to(tl.int64) + k
    hi = (first_hi.to(tl.int64) + (lo >> 32)) & 0xFFFFFFFF
    block = (hi << 32) | (lo & 0xFFFFFFFF)
    k0, k1 = seed_key(seed_ptr)
    x0, x1, x2, x3 = philox_block(k0, k1, off_lo, off_hi, block)
    mask = k < n_blocks
    tl.store(out_ptr + 4 * k, x0.to(tl.int32, bitcast=True), mask=mask)
    tl.store(out_ptr + 4 * k + 1, x1.to(tl.int32, bitcast=True), mask=mask)
    tl.store(out_ptr + 4 * k + 2, x2.to(tl.int32, bitcast=True), mask=mask)
    tl.store(out_ptr + 4 * k + 3, x3.to(tl.int32, bitcast=True), mask=mask)


def randn_like(x: torch.Tensor, seed: torch.Tensor, offset: int) -> torch.Tensor:
    out = empty_out_like(x)
    n = out.numel()
    if n == 0:
        return out
    lo, hi = split_offset(offset)
    wrap_triton(_randn_like_kernel)[(triton.cdiv(n, BLOCK),)](
        out, seed.reshape(1).to(x.device), lo, hi, n, BLOCK=BLOCK
    )
    return out


def philox_bits(seed: torch.Tensor, offset: int, first_block: int, n_blocks: int, device=None) -> torch.Tensor:
    """The raw stream (int32 bit patterns, 4 words per block), like ``vdm_fast::philox_bits``."""
    device = seed.device if device is None else device
    out = torch.empty(4 * n_blocks, dtype=torch.int32, device=device)
    if n_blocks == 0:
        return out
    o_lo, o_hi = split_offset(offset)
    f_lo, f_hi = split_offset(first_block)
    _philox_bits_kernel[(triton.cdiv(n_blocks, 256),)](
        out, seed.reshape(1).to(device), o_lo, o_hi, f_lo, f_hi, n_blocks, BLOCK=256
    )
    return out
