"""recon_nll in Triton: VDM's categorical decoder, per-sample sums, and its fused backward.

The same algorithm as csrc/recon_nll_math.h (read it for the window bound): per element, the
256-way logsumexp is summed in registers over the L bins around the bin nearest z0/alpha_0,
L = 2W + 1 with W(W+1) >= 2T/kappa (T = 40 for float32, 64 for float64), or all 256 bins.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._layout import empty_out_like, in_layout_of, per_sample_numel

from ._common import REDUCE_CHUNK, sample_block

BLOCK = 256


@triton.jit
def _window_bins(a, s, TAIL: tl.constexpr):
    # Per sample: the smallest W with W (W + 1) >= need = 2T / kappa, L = min(2W + 1, 256).
    r = a.to(tl.float64) / (s.to(tl.float64) * 128.0)
    need = 2.0 * TAIL / (r * r)
    small = need < 127.0 * 128.0  # False for inf and NaN: all bins
    needc = tl.where(small, need, 0.0)
    w = tl.floor(tl.sqrt(needc))
    w = tl.where((w - 1.0) * w >= needc, w - 1.0, w)
    w = tl.where(w * (w + 1.0) < needc, w + 1.0, w)
    return tl.where(small, tl.minimum(2 * w.to(tl.int32) + 1, 256), 256)


@triton.jit
def _bin_index(x):
    # reference.bin_index: round half to even of (x + 1) * 128 - 1/2 in float64, clamped to 0..255.
    v = (x.to(tl.float64) + 1.0) * 128.0 - 0.5
    f = tl.floor(v)
    frac = v - f
    odd = f - 2.0 * tl.floor(f * 0.5)
    r = tl.where(frac > 0.5, f + 1.0, tl.where(frac < 0.5, f, f + odd))
    r = tl.where(r >= 255.0, 255.0, tl.where(r >= 0.0, r, 0.0))  # NaN -> 0
    return r.to(tl.int32)


@triton.jit
def _element(z, a, s, kstar, L, GRAD: tl.constexpr):
    """nll per element and, when GRAD, E[c_k - c*] and E[(c_k - c*)^2] and q*."""
    t = (z / a + 1.0) * 128.0 - 0.5
    f = tl.floor(t + 0.5)
    m = tl.where(f >= 255.0, 255.0, tl.where(f >= 0.0, f, 0.0)).to(tl.int32)
    # t rounds: next to a bin edge m can come out as the neighbour of the largest logit, and with
    # a tiny sigma the true maximum's term overflows exp. One step towards the larger computed
    # logit (the sign of l_{m+-1} - l_m, as the sum below computes it) makes m the argmax of what
    # is summed (csrc/recon_nll_math.h, nearest_bin).
    qm = (z - a * ((m.to(z.dtype) + 0.5) / 128.0 - 1.0)) / s
    q_up = (z - a * ((m.to(z.dtype) + 1.5) / 128.0 - 1.0)) / s
    q_down = (z - a * ((m.to(z.dtype) - 0.5) / 128.0 - 1.0)) / s
    m = tl.where((m < 255) & (qm + q_up > 0.0), m + 1, tl.where((m > 0) & (qm + q_down < 0.0), m - 1, m))
    lo = tl.minimum(tl.maximum(m - (L - 1) // 2, 0), 256 - L)
    r = a / s
    cs = (kstar.to(z.dtype) + 0.5) / 128.0 - 1.0
    qs = (z - a * cs) / s
    qm = (z - a * ((m.to(z.dtype) + 0.5) / 128.0 - 1.0)) / s
    acc = tl.zeros(z.shape, z.dtype)
    sd = tl.zeros(z.shape, z.dtype)
    sd2 = tl.zeros(z.shape, z.dtype)
    for j in range(0, L):
        k = lo + j
        q = (z - a * ((k.to(z.dtype) + 0.5) / 128.0 - 1.0)) / s
        e = tl.exp(0.5 * r * ((k - m).to(z.dtype) / 128.0) * (qm + q))
        acc += e
        if GRAD:
            d = (k - kstar).to(z.dtype) / 128.0
            sd += e * d
            sd2 += e * d * d
    nll = 0.5 * r * ((m - kstar).to(z.dtype) / 128.0) * (qs + qm) + tl.log(acc)
    return nll, sd / acc, sd2 / acc, qs, cs


@triton.jit
def _bins_and_latents(x_ptr, z_ptr, offs, mask, a):
    """The bins of one block of x0 and its z0 in the compute dtype (``a``'s)."""
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    return _bin_index(x), tl.load(z_ptr + offs, mask=mask, other=0.0).to(a.dtype)


# grid = (B, chunks): program (b, c) covers elements [c*CHUNK, (c+1)*CHUNK) of sample b.
@triton.jit
def _recon_nll_kernel(x_ptr, z_ptr, a_ptr, s_ptr, partial_ptr, D, TAIL: tl.constexpr, CHUNK: tl.constexpr,
                      BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1).to(tl.int64)
    a = tl.load(a_ptr + b)
    s = tl.load(s_ptr + b)
    L = _window_bins(a, s, TAIL)
    # Terms in a's dtype, summed in float64: a float32 sum absorbs the terms below half an ulp of a
    # large partial, a bias (tests/test_accurate_sums.py); the exps per element dominate the cost.
    total = tl.zeros([BLOCK], dtype=tl.float64)
    # Only the part of the chunk inside the sample: the last chunk is often short.
    for k0 in range(0, tl.minimum(D - c * CHUNK, CHUNK), BLOCK):
        offs, mask = sample_block(b, c, k0, D, CHUNK, BLOCK)
        k, z = _bins_and_latents(x_ptr, z_ptr, offs, mask, a)
        nll, _, _, _, _ = _element(z, a, s, k, L, False)
        total += tl.where(mask, nll, 0.0).to(tl.float64)
    tl.store(partial_ptr + b * tl.num_programs(1) + c, tl.sum(total, axis=0))


@triton.jit
def _recon_nll_backward_kernel(gz_ptr, g_ptr, x_ptr, z_ptr, a_ptr, s_ptr, partial_ptr, D, WANT_GZ: tl.constexpr,
                               TAIL: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1).to(tl.int64)
    a = tl.load(a_ptr + b)
    s = tl.load(s_ptr + b)
    g = tl.load(g_ptr + b)
    L = _window_bins(a, s, TAIL)
    r = a / s
    sa = tl.zeros([BLOCK], dtype=tl.float64)  # summed in float64, as the forward
    ss = tl.zeros([BLOCK], dtype=tl.float64)
    # Only the part of the chunk inside the sample: the last chunk is often short.
    for k0 in range(0, tl.minimum(D - c * CHUNK, CHUNK), BLOCK):
        offs, mask = sample_block(b, c, k0, D, CHUNK, BLOCK)
        k, z = _bins_and_latents(x_ptr, z_ptr, offs, mask, a)
        _, ed, ed2, qs, cs = _element(z, a, s, k, L, True)
        if WANT_GZ:
            tl.store(gz_ptr + offs, (g * (r * ed / s)).to(gz_ptr.dtype.element_ty), mask=mask)
        sa += tl.where(mask, (qs * ed - r * cs * ed - r * ed2) / s, 0.0).to(tl.float64)
        ss += tl.where(mask, (r * r * ed2 - 2.0 * r * qs * ed) / s, 0.0).to(tl.float64)
    slot = (b * tl.num_programs(1) + c) * 2
    tl.store(partial_ptr + slot, tl.sum(sa, axis=0))
    tl.store(partial_ptr + slot + 1, tl.sum(ss, axis=0))


def _tail(dtype: torch.dtype) -> float:
    return 64.0 if dtype == torch.float64 else 40.0


def _check_decoder(decoder: str) -> None:
    if decoder != "categorical":
        raise ValueError(f"recon_nll: decoder must be 'categorical', got {decoder!r}")


def recon_nll(x0: torch.Tensor, z0: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
              decoder: str = "categorical") -> torch.Tensor:
    _check_decoder(decoder)
    B, D = x0.shape[0], per_sample_numel(x0)
    chunks = triton.cdiv(D, REDUCE_CHUNK) if D > 0 else 0
    partial = torch.zeros((B, chunks), dtype=torch.float64, device=x0.device)
    if x0.numel() > 0:
        layout = empty_out_like(x0)
        x = in_layout_of(x0, layout)
        z = in_layout_of(z0, layout)
        wrap_triton(_recon_nll_kernel)[(B, chunks)](
            x, z, alpha, sigma, partial, D, TAIL=_tail(x0.dtype), CHUNK=REDUCE_CHUNK, BLOCK=BLOCK,
        )
    return partial.sum(1).to(alpha.dtype)


def recon_nll_backward(grad: torch.Tensor, x0: torch.Tensor, z0: torch.Tensor, alpha: torch.Tensor,
                       sigma: torch.Tensor, decoder: str, output_mask: list[bool]
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_decoder(decoder)
    want_gz, want_ga, want_gs = output_mask
    B, D = x0.shape[0], per_sample_numel(x0)
    gz = empty_out_like(x0) if want_gz else x0.new_empty(0)
    chunks = triton.cdiv(D, REDUCE_CHUNK) if D > 0 else 0
    partial = torch.zeros((B, chunks, 2), dtype=torch.float64, device=x0.device)
    if x0.numel() > 0 and (want_gz or want_ga or want_gs):
        layout = gz if want_gz else empty_out_like(x0)
        x = in_layout_of(x0, layout)
        z = in_layout_of(z0, layout)
        wrap_triton(_recon_nll_backward_kernel)[(B, chunks)](
            layout, grad.contiguous(), x, z, alpha, sigma, partial, D, WANT_GZ=want_gz, TAIL=_tail(x0.dtype),
            CHUNK=REDUCE_CHUNK, BLOCK=BLOCK,
        )
    # Two separate reductions: the outputs of a custom op may not alias each other.
    ga = (partial[:, :, 0].sum(1) * grad).to(alpha.dtype) if want_ga else alpha.new_empty(0)
    gs = (partial[:, :, 1].sum(1) * grad).to(sigma.dtype) if want_gs else sigma.new_empty(0)
    return gz, ga, gs
