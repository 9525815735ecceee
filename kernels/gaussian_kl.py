"""gaussian_kl in Triton: per-sample sums of KL(N(mean_q, exp(log_var_q)) || N(mean_p, exp(log_var_p))),
and the fused backward.

Per element 1/2 (-1 + lp - lq + exp(lq - lp) + (mq - mp)^2 exp(-lp)), the variance ratio one exp of
the log-variance difference (csrc/gaussian_kl.h). The forward runs on a (B, chunks) grid writing
float64 partials, summed per sample in a fixed order; the backward is elementwise.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._common import REDUCE_CHUNK, acc_tl_dtype, sample_block
from ._layout import empty_out_like, in_layout_of, per_sample_numel

BLOCK = 1024


# grid = (B, chunks): program (b, c) sums twice the KL of elements [c*CHUNK, (c+1)*CHUNK) of sample b.
@triton.jit
def _gaussian_kl_kernel(mq_ptr, lq_ptr, mp_ptr, lp_ptr, partial_ptr, D, ACC: tl.constexpr, CHUNK: tl.constexpr,
                        BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1).to(tl.int64)
    total = tl.zeros([BLOCK], dtype=ACC)
    for j in range(0, tl.minimum(D - c * CHUNK, CHUNK), BLOCK):  # this chunk's length: no idle steps
        offs, mask = sample_block(b, c, j, D, CHUNK, BLOCK)
        mq = tl.load(mq_ptr + offs, mask=mask, other=0.0).to(ACC)
        lq = tl.load(lq_ptr + offs, mask=mask, other=0.0).to(ACC)
        mp = tl.load(mp_ptr + offs, mask=mask, other=0.0).to(ACC)
        lp = tl.load(lp_ptr + offs, mask=mask, other=0.0).to(ACC)
        dm = mq - mp
        twice = ((lp - 1.0) - lq) + tl.exp(lq - lp) + dm * dm * tl.exp(-lp)
        total += tl.where(mask, twice, 0.0)
    tl.store(partial_ptr + b * tl.num_programs(1) + c, tl.sum(total, axis=0).to(tl.float64))


@triton.jit
def _gaussian_kl_backward_kernel(gmq_ptr, glq_ptr, gmp_ptr, glp_ptr, g_ptr, mq_ptr, lq_ptr, mp_ptr, lp_ptr, N, D,
                                 WANT_GMQ: tl.constexpr, WANT_GLQ: tl.constexpr, WANT_GMP: tl.constexpr,
                                 WANT_GLP: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < N
    g = tl.load(g_ptr + offs // D, mask=mask, other=0.0)  # the compute dtype
    mq = tl.load(mq_ptr + offs, mask=mask, other=0.0).to(g.dtype)
    lq = tl.load(lq_ptr + offs, mask=mask, other=0.0).to(g.dtype)
    mp = tl.load(mp_ptr + offs, mask=mask, other=0.0).to(g.dtype)
    lp = tl.load(lp_ptr + offs, mask=mask, other=0.0).to(g.dtype)
    dm = mq - mp
    ip = tl.exp(-lp)
    r = tl.exp(lq - lp)
    h = 0.5 * g
    d_mq = g * dm * ip
    if WANT_GMQ:
        tl.store(gmq_ptr + offs, d_mq.to(gmq_ptr.dtype.element_ty), mask=mask)
    if WANT_GLQ:
        tl.store(glq_ptr + offs, (h * (r - 1.0)).to(glq_ptr.dtype.element_ty), mask=mask)
    if WANT_GMP:
        tl.store(gmp_ptr + offs, (-d_mq).to(gmp_ptr.dtype.element_ty), mask=mask)
    if WANT_GLP:
        tl.store(glp_ptr + offs, (h * ((1.0 - r) - dm * dm * ip)).to(glp_ptr.dtype.element_ty), mask=mask)


def gaussian_kl(mean_q: torch.Tensor, log_var_q: torch.Tensor, mean_p: torch.Tensor,
                log_var_p: torch.Tensor) -> torch.Tensor:
    B, D = mean_q.shape[0], per_sample_numel(mean_q)
    chunks = triton.cdiv(D, REDUCE_CHUNK) if D > 0 else 0
    partial = torch.zeros((B, chunks), dtype=torch.float64, device=mean_q.device)
    if mean_q.numel() > 0:
        layout = empty_out_like(mean_q)
        mq, lq, mp, lp = (in_layout_of(t, layout) for t in (mean_q, log_var_q, mean_p, log_var_p))
        wrap_triton(_gaussian_kl_kernel)[(B, chunks)](
            mq, lq, mp, lp, partial, D, ACC=acc_tl_dtype(mean_q.dtype), CHUNK=REDUCE_CHUNK, BLOCK=BLOCK,
        )
    cdt = torch.float64 if mean_q.dtype == torch.float64 else torch.float32
    return (0.5 * partial.sum(1)).to(cdt)


def gaussian_kl_backward(grad: torch.Tensor, mean_q: torch.Tensor, log_var_q: torch.Tensor, mean_p: torch.Tensor,
                         log_var_p: torch.Tensor, output_mask: list[bool]
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    want = list(output_mask)
    # One layout for all the gradients (the layout rule: that of mean_q).
    grads = [empty_out_like(mean_q) if w else mean_q.new_empty(0) for w in want]
    n_elem = mean_q.numel()
    if n_elem > 0 and any(want):
        layout = grads[want.index(True)]
        mq, lq, mp, lp = (in_layout_of(t, layout) for t in (mean_q, log_var_q, mean_p, log_var_p))
        outs = [g if w else layout for g, w in zip(grads, want)]
        wrap_triton(_gaussian_kl_backward_kernel)[(triton.cdiv(n_elem, BLOCK),)](
            *outs, grad.contiguous(), mq, lq, mp, lp, n_elem, per_sample_numel(mean_q), WANT_GMQ=want[0],
            WANT_GLQ=want[1], WANT_GMP=want[2], WANT_GLP=want[3], BLOCK=BLOCK,
        )
    return tuple(grads)
