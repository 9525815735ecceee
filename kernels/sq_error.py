"""sq_error in Triton: out[b] = sum_i (pred - target)^2, target built in-kernel, and its fused backward.

Targets are compile-time constants (TARGET: 0 eps, 1 x0, 2 v, 3 score; as in csrc/targets.h):
target = tx * x0 + tn * noise with per-sample (tx, tn), and a tensor the target does not use is
never loaded. Reductions run on a (B, chunks) grid writing float64 partials summed in a fixed order.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._layout import empty_out_like, in_layout_of, per_sample_numel

from ._common import REDUCE_CHUNK, sample_block

BLOCK = 1024
TARGET_IDS = {"eps": 0, "x0": 1, "v": 2, "score": 3}


def target_id(target: str) -> int:
    try:
        return TARGET_IDS[target]
    except KeyError:
        raise ValueError(f"sq_error: target must be one of {tuple(TARGET_IDS)}, got {target!r}") from None


@triton.jit
def _residual(p_ptr, x_ptr, n_ptr, offs, mask, a, s, TARGET: tl.constexpr, USES_X: tl.constexpr,
              USES_N: tl.constexpr):
    """(r, x, n) at offs: r = pred - target (0 past the end); x, n are zeros where the target does not read them."""
    p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(a.dtype)
    if USES_X:
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(a.dtype)
    else:
        x = tl.zeros_like(p)
    if USES_N:
        n = tl.load(n_ptr + offs, mask=mask, other=0.0).to(a.dtype)
    else:
        n = tl.zeros_like(p)
    if TARGET == 0:
        t = n
    elif TARGET == 1:
        t = x
    elif TARGET == 2:
        t = a * n - s * x
    else:
        t = -n * (1.0 / s)
    # Lanes past the sample's end are zeros: at sigma = 0 the score target there is 0 * inf = NaN,
    # which would poison the sum. Zero them so only real elements count (as on the CPU: inf, not NaN).
    return tl.where(mask, p - t, 0.0), x, n


# grid = (B, chunks): program (b, c) covers elements [c*CHUNK, (c+1)*CHUNK) of sample b.
@triton.jit
def _sq_error_kernel(p_ptr, x_ptr, n_ptr, a_ptr, s_ptr, partial_ptr, D, TARGET: tl.constexpr, USES_X: tl.constexpr,
                     USES_N: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1).to(tl.int64)
    a = tl.load(a_ptr + b)
    s = tl.load(s_ptr + b)
    acc = tl.zeros([BLOCK], dtype=a.dtype)
    for k in range(0, tl.minimum(D - c * CHUNK, CHUNK), BLOCK):  # this chunk's length: no idle steps
        offs, mask = sample_block(b, c, k, D, CHUNK, BLOCK)
        r, x, n = _residual(p_ptr, x_ptr, n_ptr, offs, mask, a, s, TARGET, USES_X, USES_N)
        acc += r * r
    tl.store(partial_ptr + b * tl.num_programs(1) + c, tl.sum(acc, axis=0).to(tl.float64))


@triton.jit
def _sq_error_backward_kernel(
    gp_ptr, gx_ptr, gn_ptr, u_ptr, p_ptr, x_ptr, n_ptr, a_ptr, s_ptr, partial_ptr, D,
    TARGET: tl.constexpr, USES_X: tl.constexpr, USES_N: tl.constexpr,
    WANT_GP: tl.constexpr, WANT_GX: tl.constexpr, WANT_GN: tl.constexpr, WANT_SUMS: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1).to(tl.int64)
    a = tl.load(a_ptr + b)
    s = tl.load(s_ptr + b)
    k = 2.0 * tl.load(u_ptr + b)  # d(r^2)/dr times the upstream grad
    srx = tl.zeros([BLOCK], dtype=a.dtype)
    srn = tl.zeros([BLOCK], dtype=a.dtype)
    for j in range(0, tl.minimum(D - c * CHUNK, CHUNK), BLOCK):  # this chunk's length: no idle steps
        offs, mask = sample_block(b, c, j, D, CHUNK, BLOCK)
        r, x, n = _residual(p_ptr, x_ptr, n_ptr, offs, mask, a, s, TARGET, USES_X, USES_N)
        if WANT_GP:
            tl.store(gp_ptr + offs, (k * r).to(gp_ptr.dtype.element_ty), mask=mask)
        if WANT_GX:  # only x0 (tx = 1) and v (tx = -sigma) reach here
            if TARGET == 1:
                gx = -k * r
            else:
                gx = (k * s) * r
            tl.store(gx_ptr + offs, gx.to(gx_ptr.dtype.element_ty), mask=mask)
        if WANT_GN:  # eps (tn = 1), v (tn = alpha), score (tn = -1/sigma)
            if TARGET == 0:
                gn = -k * r
            elif TARGET == 2:
                gn = (-k * a) * r
            else:
                gn = (k / s) * r
            tl.store(gn_ptr + offs, gn.to(gn_ptr.dtype.element_ty), mask=mask)
        if WANT_SUMS:
            srx += r * x
            srn += r * n
    if WANT_SUMS:
        slot = (b * tl.num_programs(1) + c) * 2
        tl.store(partial_ptr + slot, tl.sum(srx, axis=0).to(tl.float64))
        tl.store(partial_ptr + slot + 1, tl.sum(srn, axis=0).to(tl.float64))


def _uses(target: str) -> tuple[bool, bool]:
    """Whether the target reads (x0, noise)."""
    return target in ("x0", "v"), target != "x0"


def sq_error(pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
             target: str) -> torch.Tensor:
    tid = target_id(target)
    B, D = pred.shape[0], per_sample_numel(pred)
    if pred.numel() == 0:
        return alpha.new_zeros(B)
    layout = empty_out_like(pred)
    uses_x, uses_n = _uses(target)
    p = in_layout_of(pred, layout)
    x = in_layout_of(x0, layout) if uses_x else p  # never copy what is not read
    n = in_layout_of(noise, layout) if uses_n else p
    chunks = triton.cdiv(D, REDUCE_CHUNK)
    partial = torch.empty((B, chunks), dtype=torch.float64, device=pred.device)
    wrap_triton(_sq_error_kernel)[(B, chunks)](p, x, n, alpha, sigma, partial, D,
                                               TARGET=tid, USES_X=uses_x, USES_N=uses_n, CHUNK=REDUCE_CHUNK, BLOCK=BLOCK)
    return partial.sum(1).to(alpha.dtype)


def sq_error_backward(
    grad: torch.Tensor, pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, alpha: torch.Tensor,
    sigma: torch.Tensor, target: str, output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    tid = target_id(target)
    B, D = pred.shape[0], per_sample_numel(pred)
    uses_x, uses_n = _uses(target)
    want_gp, want_gx, want_gn = output_mask[0], output_mask[1] and uses_x, output_mask[2] and uses_n
    want_sums = (output_mask[3] or output_mask[4]) and target in ("v", "score")

    def data_grad(wanted, computed):  # one layout for all; structurally zero grads are zeros
        if not wanted:
            return pred.new_empty(0)
        return empty_out_like(pred) if computed else empty_out_like(pred).zero_()

    gp = data_grad(output_mask[0], True)
    gx = data_grad(output_mask[1], want_gx)
    gn = data_grad(output_mask[2], want_gn)
    chunks = triton.cdiv(D, REDUCE_CHUNK) if D > 0 else 0
    partial = torch.zeros((B, chunks, 2), dtype=torch.float64, device=pred.device)
    if pred.numel() > 0 and (want_gp or want_gx or want_gn or want_sums):
        layout = gp if want_gp else (gx if want_gx else (gn if want_gn else empty_out_like(pred)))
        p = in_layout_of(pred, layout)
        x = in_layout_of(x0, layout) if uses_x else p
        n = in_layout_of(noise, layout) if uses_n else p
        wrap_triton(_sq_error_backward_kernel)[(B, chunks)](
            gp if want_gp else layout, gx if want_gx else layout, gn if want_gn else layout, grad, p, x, n,
            alpha, sigma, partial, D, TARGET=tid, USES_X=uses_x, USES_N=uses_n,
            WANT_GP=want_gp, WANT_GX=want_gx, WANT_GN=want_gn, WANT_SUMS=want_sums, CHUNK=REDUCE_CHUNK, BLOCK=BLOCK,
        )
    # d/dtheta sum(r^2) = -2 sum(r * dtarget/dtheta): v: dt/da = noise, dt/ds = -x0; score: dt/ds = noise/s^2.
    k = -2.0 * grad.double()
    srx, srn = partial[:, :, 0].sum(1), partial[:, :, 1].sum(1)
    zero = torch.zeros_like(k)
    if target == "v":
        da, ds = k * srn, -k * srx
    elif target == "score":
        da, ds = zero, k * srn / sigma.double() ** 2
    else:
        da, ds = zero, zero.clone()
    ga = da.to(alpha.dtype) if output_mask[3] else alpha.new_empty(0)
    gs = ds.to(sigma.dtype) if output_mask[4] else sigma.new_empty(0)
    return gp, gx, gn, ga, gs
