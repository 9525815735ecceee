"""q_sample_randn in Triton: noise drawn in-kernel (kernels/philox.py) and
z = alpha[b] * x0 + sigma[b] * noise in the same pass. The backward is q_sample's."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._layout import empty_out_like, in_layout_of, per_sample_numel

from . import philox

BLOCK = 1024


@triton.jit(do_not_specialize=["off_lo", "off_hi"])
def _q_sample_randn_kernel(z_ptr, n_ptr, x_ptr, a_ptr, s_ptr, seed_ptr, off_lo, off_hi, N, D,
                           BLOCK: tl.constexpr):
    start = tl.program_id(0).to(tl.int64) * BLOCK
    offs = start + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < N
    b = offs // D
    a = tl.load(a_ptr + b, mask=mask, other=0.0)
    s = tl.load(s_ptr + b, mask=mask, other=0.0)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(a.dtype)
    k0, k1 = philox.seed_key(seed_ptr)
    # Rounded to the data dtype first: z is exactly q_sample(x0, alpha, sigma, returned noise).
    noise = philox.randn_tile(k0, k1, off_lo, off_hi, start, BLOCK).to(n_ptr.dtype.element_ty)
    tl.store(n_ptr + offs, noise, mask=mask)
    tl.store(z_ptr + offs, (a * x + s * noise.to(a.dtype)).to(z_ptr.dtype.element_ty), mask=mask)


def q_sample_randn(x0: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, seed: torch.Tensor,
                   offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    z = empty_out_like(x0)
    noise = empty_out_like(x0)
    n_elem = z.numel()
    if n_elem == 0:
        return z, noise
    x = in_layout_of(x0, z)
    lo, hi = philox.split_offset(offset)
    wrap_triton(_q_sample_randn_kernel)[(triton.cdiv(n_elem, BLOCK),)](
        z, noise, x, alpha, sigma, seed.reshape(1).to(x0.device), lo, hi, n_elem, per_sample_numel(x0), BLOCK=BLOCK
    )
    return z, noise
