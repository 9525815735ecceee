"""discretized_gaussian_nll in Triton: per-sample sums of -log P(x0's bin), and the fused backward.

The same math as csrc/discretized_gaussian_math.h. Triton has no erfc, erfcx, tanh or log1p that
also run under the interpreter, so they are built here from erf, exp and log:
log erfc(y) = log(1 - erf(y)) for small y (at most ~8 bits lost to cancellation at the switch,
float64: erfc(2) = 4.7e-3), and -y^2 + log(K(y)/sqrt(pi)) beyond it, K the continued fraction
1/(y + (1/2)/(y + 1/(y + (3/2)/(y + ...)))) with enough terms for the dtype (relative error
2.5e-8 at y = 1.5 with 24 terms in float32, 1.1e-16 at y = 2 with 64 terms in float64).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._layout import empty_out_like, in_layout_of, per_sample_numel

from ._common import REDUCE_CHUNK, sample_block

BLOCK = 1024
CDFS = ("erf", "tanh")


@triton.jit
def _log1p(u):
    # log(1 + u) without losing u when it is tiny (Goldberg's trick).
    w = 1.0 + u
    return tl.where(w == 1.0, u, tl.log(w) * u / (w - 1.0))


@triton.jit
def _log_erfc(y, CF_START: tl.constexpr, CF_TERMS: tl.constexpr):
    """log erfc(y) for y >= 0."""
    near = tl.log(1.0 - tl.math.erf(tl.minimum(y, CF_START)))
    yc = tl.maximum(y, CF_START)  # every lane evaluates the fraction inside its domain
    v = tl.zeros(y.shape, y.dtype)
    for i in range(CF_TERMS):
        v = ((CF_TERMS - i) * 0.5) / (yc + v)
    far = -yc * yc - tl.log(yc + v) - 0.5723649429247001  # - log(sqrt(pi))
    return tl.where(y < CF_START, near, far)


@triton.jit
def _log_ndtr(x, CF_START: tl.constexpr, CF_TERMS: tl.constexpr):
    """log Phi(x) = log(erfc(-x/sqrt 2) / 2), through the tail that is small."""
    le = _log_erfc(tl.abs(x) * 0.7071067811865476, CF_START, CF_TERMS)
    return tl.where(x < 0, le - 0.6931471805599453, _log1p(-0.5 * tl.exp(le)))


@triton.jit
def _approx_cdf(u, k):
    # improved-diffusion's 0.5 (1 + tanh(k (u + 0.044715 u^3))) and its derivative.
    # tanh from float64, rounded once (see csrc/discretized_gaussian_math.h: the tails cancel).
    w = (k * (u + 0.044715 * (u * u * u))).to(tl.float64)
    e = tl.exp(-2.0 * tl.abs(w))
    # Near |tanh| = 1, 1 - 2e/(1 + e) rounds once (as a libm tanh does); the tails cancel on it.
    th = tl.where(e < 0.5, 1.0 - 2.0 * e / (1.0 + e), (1.0 - e) / (1.0 + e))
    th = tl.where(w < 0, -th, th).to(u.dtype)
    # 1 - th^2 as (1 - th)(1 + th), exact factors in the tails (see the C++ header).
    return 0.5 * (1.0 + th), 0.5 * ((1.0 - th) * (1.0 + th)) * k * (1.0 + 3.0 * 0.044715 * (u * u))


@triton.jit
def _element(x, m, ls, TANH: tl.constexpr, GRAD: tl.constexpr, CF_START: tl.constexpr, CF_TERMS: tl.constexpr):
    """log P of each element's bin and, when GRAD, d/d mean and d/d log_scale of it."""
    inv = tl.exp(-ls)
    centred = x - m
    plus = inv * (centred + 1.0 / 255)
    minus = inv * (centred - 1.0 / 255)
    left = x < -0.999
    right = x > 0.999
    if TANH:
        if x.dtype == tl.float64:  # sqrt(2/pi) in the compute dtype, correctly rounded
            k = tl.zeros_like(x) + 0.7978845608028654  # sqrt(2/pi) rounded to float64
        else:
            k = tl.sqrt_rn(tl.zeros_like(x) + 0.6366197723675814)
        cp, pp = _approx_cdf(plus, k)
        cm, pm = _approx_cdf(minus, k)
        p = tl.where(left, cp, tl.where(right, 1.0 - cm, cp - cm))
        lp = tl.log(tl.where(p < 1e-12, 1e-12, p))
        live = p >= 1e-12  # clamp(min=1e-12) passes gradient only here
        dplus = tl.where(live & (x <= 0.999), pp / p, 0.0)
        dminus = tl.where(live & (x >= -0.999), -pm / p, 0.0)
    else:
        flip = minus > 0
        hi = tl.where(flip, -minus, plus)
        lo = tl.where(flip, -plus, minus)
        la = _log_ndtr(tl.where(left, plus, tl.where(right, -minus, hi)), CF_START, CF_TERMS)
        lb = _log_ndtr(lo, CF_START, CF_TERMS)
        lp = tl.where(left | right, la, la + _log1p(-tl.exp(lb - la)))
        # 1/sqrt(2 pi) written inline: a float bound to a name becomes a float32 constant.
        dplus = tl.where(x <= 0.999, 0.3989422804014327 * tl.exp(-(lp + plus * plus / 2.0)), 0.0)
        dminus = tl.where(x >= -0.999, -0.3989422804014327 * tl.exp(-(lp + minus * minus / 2.0)), 0.0)
    dmean = -inv * (dplus + dminus)
    dls = -(plus * dplus + minus * dminus)
    return lp, dmean, dls


# grid = (B, chunks): program (b, c) covers elements [c*CHUNK, (c+1)*CHUNK) of sample b.
@triton.jit
def _dgauss_kernel(x_ptr, m_ptr, l_ptr, partial_ptr, D, TANH: tl.constexpr, FP64: tl.constexpr,
                   CF_START: tl.constexpr, CF_TERMS: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1).to(tl.int64)
    cdt = tl.float64 if FP64 else tl.float32
    total = tl.zeros([BLOCK], dtype=tl.float64)  # terms summed in float64 (see recon_nll.py)
    # Only the part of the chunk inside the sample: the last chunk is often short.
    for k0 in range(0, tl.minimum(D - c * CHUNK, CHUNK), BLOCK):
        offs, mask = sample_block(b, c, k0, D, CHUNK, BLOCK)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(cdt)
        m = tl.load(m_ptr + offs, mask=mask, other=0.0).to(cdt)
        ls = tl.load(l_ptr + offs, mask=mask, other=0.0).to(cdt)
        lp, _, _ = _element(x, m, ls, TANH, False, CF_START, CF_TERMS)
        total += tl.where(mask, lp, 0.0).to(tl.float64)
    tl.store(partial_ptr + b * tl.num_programs(1) + c, -tl.sum(total, axis=0))


@triton.jit
def _dgauss_backward_kernel(gm_ptr, gl_ptr, g_ptr, x_ptr, m_ptr, l_ptr, N, D, WANT_GM: tl.constexpr,
                            WANT_GL: tl.constexpr, TANH: tl.constexpr, CF_START: tl.constexpr,
                            CF_TERMS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < N
    g = tl.load(g_ptr + offs // D, mask=mask, other=0.0)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(g.dtype)
    m = tl.load(m_ptr + offs, mask=mask, other=0.0).to(g.dtype)
    ls = tl.load(l_ptr + offs, mask=mask, other=0.0).to(g.dtype)
    _, dmean, dls = _element(x, m, ls, TANH, True, CF_START, CF_TERMS)
    # nll = -sum log P: the gradients carry a minus sign.
    if WANT_GM:
        tl.store(gm_ptr + offs, (-g * dmean).to(gm_ptr.dtype.element_ty), mask=mask)
    if WANT_GL:
        tl.store(gl_ptr + offs, (-g * dls).to(gl_ptr.dtype.element_ty), mask=mask)


def _cf(dtype: torch.dtype) -> dict:
    return dict(CF_START=2.0, CF_TERMS=64) if dtype == torch.float64 else dict(CF_START=1.5, CF_TERMS=24)


def _check_cdf(cdf: str) -> bool:
    if cdf not in CDFS:
        raise ValueError(f"discretized_gaussian_nll: cdf must be one of {CDFS}, got {cdf!r}")
    return cdf == "tanh"


def discretized_gaussian_nll(x0: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor,
                             cdf: str = "erf") -> torch.Tensor:
    tanh = _check_cdf(cdf)
    B, D = x0.shape[0], per_sample_numel(x0)
    chunks = triton.cdiv(D, REDUCE_CHUNK) if D > 0 else 0
    partial = torch.zeros((B, chunks), dtype=torch.float64, device=x0.device)
    if x0.numel() > 0:
        layout = empty_out_like(x0)
        x, m, ls = (in_layout_of(t, layout) for t in (x0, mean, log_scale))
        wrap_triton(_dgauss_kernel)[(B, chunks)](
            x, m, ls, partial, D, TANH=tanh, FP64=x0.dtype == torch.float64, CHUNK=REDUCE_CHUNK, BLOCK=BLOCK,
            **_cf(x0.dtype),
        )
    cdt = torch.float64 if x0.dtype == torch.float64 else torch.float32
    return partial.sum(1).to(cdt)


def discretized_gaussian_nll_backward(grad: torch.Tensor, x0: torch.Tensor, mean: torch.Tensor,
                                      log_scale: torch.Tensor, cdf: str, output_mask: list[bool]
                                      ) -> tuple[torch.Tensor, torch.Tensor]:
    tanh = _check_cdf(cdf)
    want_gm, want_gl = output_mask
    gm = empty_out_like(x0) if want_gm else x0.new_empty(0)
    gl = empty_out_like(x0) if want_gl else x0.new_empty(0)  # one layout for all outputs
    n_elem = x0.numel()
    if n_elem > 0 and (want_gm or want_gl):
        layout = gm if want_gm else gl
        x, m, ls = (in_layout_of(t, layout) for t in (x0, mean, log_scale))
        wrap_triton(_dgauss_backward_kernel)[(triton.cdiv(n_elem, BLOCK),)](
            gm if want_gm else layout, gl if want_gl else layout, grad.contiguous(), x, m, ls, n_elem,
            per_sample_numel(x0), WANT_GM=want_gm, WANT_GL=want_gl, TANH=tanh, BLOCK=BLOCK, **_cf(x0.dtype),
        )
    return gm, gl
