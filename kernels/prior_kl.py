"""prior_kl in Triton: L_prior[b] = a^2/2 * sum_i x_i^2 + D/2 (s^2 - 1 - log s^2), and its backward.

The data pass is the per-sample sum of squares on a (B, chunks) grid (float64 partials, summed in
a fixed order); the rest is per-sample arithmetic on (B,) tensors.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._layout import empty_out_like, in_layout_of, per_sample_numel

from ._common import REDUCE_CHUNK, acc_tl_dtype, sample_block

BLOCK = 1024


# grid = (B, chunks): program (b, c) covers elements [c*CHUNK, (c+1)*CHUNK) of sample b; it writes
# gx = k[b] * x there when WANT_GX (k = grad * a^2) and its sum of squares when WANT_SUM.
@triton.jit
def _prior_kl_kernel(gx_ptr, x_ptr, k_ptr, partial_ptr, D, ACC: tl.constexpr, WANT_GX: tl.constexpr,
                     WANT_SUM: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1).to(tl.int64)
    acc = tl.zeros([BLOCK], dtype=ACC)
    if WANT_GX:
        k = tl.load(k_ptr + b).to(ACC)
    for j in range(0, tl.minimum(D - c * CHUNK, CHUNK), BLOCK):  # this chunk's length: no idle steps
        offs, mask = sample_block(b, c, j, D, CHUNK, BLOCK)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC)
        if WANT_GX:
            tl.store(gx_ptr + offs, (k * x).to(gx_ptr.dtype.element_ty), mask=mask)
        if WANT_SUM:
            acc += x * x
    if WANT_SUM:
        tl.store(partial_ptr + b * tl.num_programs(1) + c, tl.sum(acc, axis=0).to(tl.float64))


def _pass(x0: torch.Tensor, gx: torch.Tensor | None, k: torch.Tensor | None, want_sum: bool) -> torch.Tensor:
    """Runs the data pass; returns the per-sample sums of squares (float64, (B,); zeros if not wanted)."""
    B, D = x0.shape[0], per_sample_numel(x0)
    chunks = triton.cdiv(D, REDUCE_CHUNK) if D > 0 else 0
    partial = torch.zeros((B, chunks), dtype=torch.float64, device=x0.device)
    if x0.numel() > 0 and (gx is not None or want_sum):
        layout = gx if gx is not None else empty_out_like(x0)
        x = in_layout_of(x0, layout)
        wrap_triton(_prior_kl_kernel)[(B, chunks)](
            layout, x, k if k is not None else partial, partial, D, ACC=acc_tl_dtype(x0.dtype),
            WANT_GX=gx is not None, WANT_SUM=want_sum, CHUNK=REDUCE_CHUNK, BLOCK=BLOCK,
        )
    return partial.sum(1)


def prior_kl(x0: torch.Tensor, alpha_1: torch.Tensor, sigma_1: torch.Tensor) -> torch.Tensor:
    D = per_sample_numel(x0)
    sum_sq = _pass(x0, None, None, True).to(alpha_1.dtype)
    s2 = sigma_1 * sigma_1
    return 0.5 * alpha_1 * alpha_1 * sum_sq + 0.5 * D * (s2 - 1 - torch.log(s2))


def prior_kl_backward(
    grad: torch.Tensor, x0: torch.Tensor, alpha_1: torch.Tensor, sigma_1: torch.Tensor, output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    want_gx, want_ga, want_gs = output_mask
    D = per_sample_numel(x0)
    gx = empty_out_like(x0) if want_gx else None
    k = (grad * alpha_1 * alpha_1).contiguous() if want_gx else None
    sum_sq = _pass(x0, gx, k, want_ga).to(alpha_1.dtype)
    ga = grad * alpha_1 * sum_sq if want_ga else alpha_1.new_empty(0)
    gs = grad * D * (sigma_1 - 1 / sigma_1) if want_gs else sigma_1.new_empty(0)
    return (gx if want_gx else x0.new_empty(0)), ga, gs
