"""q_sample in Triton: z = alpha[b] * x0 + sigma[b] * noise, and its fused backward."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._layout import empty_out_like, in_layout_of, per_sample_numel

from ._common import REDUCE_CHUNK

BLOCK = 1024


@triton.jit
def _q_sample_kernel(z_ptr, x_ptr, n_ptr, a_ptr, s_ptr, N, D, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < N
    b = offs // D
    a = tl.load(a_ptr + b, mask=mask, other=0.0)
    s = tl.load(s_ptr + b, mask=mask, other=0.0)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(a.dtype)
    n = tl.load(n_ptr + offs, mask=mask, other=0.0).to(a.dtype)
    tl.store(z_ptr + offs, (a * x + s * n).to(z_ptr.dtype.element_ty), mask=mask)


# grid = (B, chunks): program (b, c) covers elements [c*CHUNK, (c+1)*CHUNK) of sample b.
@triton.jit
def _q_sample_backward_kernel(
    gx_ptr, gn_ptr, g_ptr, x_ptr, n_ptr, a_ptr, s_ptr, partial_ptr, D,
    WANT_GX: tl.constexpr, WANT_GN: tl.constexpr, WANT_SUMS: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1).to(tl.int64)
    a = tl.load(a_ptr + b)
    s = tl.load(s_ptr + b)
    sx = tl.zeros([BLOCK], dtype=a.dtype)
    sn = tl.zeros([BLOCK], dtype=a.dtype)
    start = c * CHUNK
    for k in range(0, CHUNK, BLOCK):
        local = start + k + tl.arange(0, BLOCK).to(tl.int64)
        mask = local < D
        offs = b * D + local
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(a.dtype)
        if WANT_GX:
            tl.store(gx_ptr + offs, (a * g).to(gx_ptr.dtype.element_ty), mask=mask)
        if WANT_GN:
            tl.store(gn_ptr + offs, (s * g).to(gn_ptr.dtype.element_ty), mask=mask)
        if WANT_SUMS:
            sx += g * tl.load(x_ptr + offs, mask=mask, other=0.0).to(a.dtype)
            sn += g * tl.load(n_ptr + offs, mask=mask, other=0.0).to(a.dtype)
    if WANT_SUMS:
        slot = (b * tl.num_programs(1) + c) * 2
        tl.store(partial_ptr + slot, tl.sum(sx, axis=0).to(tl.float64))
        tl.store(partial_ptr + slot + 1, tl.sum(sn, axis=0).to(tl.float64))


def q_sample(x0: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    z = empty_out_like(x0)
    n_elem = z.numel()
    if n_elem == 0:
        return z
    x = in_layout_of(x0, z)
    n = in_layout_of(noise, z)
    grid = (triton.cdiv(n_elem, BLOCK),)
    wrap_triton(_q_sample_kernel)[grid](z, x, n, alpha, sigma, n_elem, per_sample_numel(x0), BLOCK=BLOCK)
    return z


def q_sample_backward(
    grad: torch.Tensor, x0: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor,
    output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x0, grad_alpha, grad_sigma, grad_noise): the forward's arguments and order."""
    want_gx, want_ga, want_gs, want_gn = output_mask
    B, D = x0.shape[0], per_sample_numel(x0)
    gx = empty_out_like(x0) if want_gx else x0.new_empty(0)
    gn = empty_out_like(x0) if want_gn else x0.new_empty(0)  # one layout for all outputs
    want_sums = want_ga or want_gs
    chunks = triton.cdiv(D, REDUCE_CHUNK) if D > 0 else 0
    partial = torch.zeros((B, chunks, 2), dtype=torch.float64, device=x0.device)
    if x0.numel() > 0 and (want_gx or want_gn or want_sums):
        layout = gx if want_gx else (gn if want_gn else empty_out_like(x0))
        g = in_layout_of(grad, layout)
        x = in_layout_of(x0, layout)
        n = in_layout_of(noise, layout)
        wrap_triton(_q_sample_backward_kernel)[(B, chunks)](
            gx if want_gx else layout, gn if want_gn else layout, g, x, n, alpha, sigma, partial, D,
            WANT_GX=want_gx, WANT_GN=want_gn, WANT_SUMS=want_sums, CHUNK=REDUCE_CHUNK, BLOCK=BLOCK,
        )
    # Two separate reductions: the outputs of a custom op may not alias each other.
    ga = partial[:, :, 0].sum(1).to(alpha.dtype) if want_ga else alpha.new_empty(0)
    gs = partial[:, :, 1].sum(1).to(sigma.dtype) if want_gs else sigma.new_empty(0)
    return gx, ga, gs, gn
