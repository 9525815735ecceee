"""reverse_step in Triton (DESIGN.md §4.6): guidance, x̂ (optionally clipped) and the affine update.

One program per (sample, chunk of BLOCK elements), flattened into a 1-D grid (no 65535 limit on
either): the per-sample scalars are loaded once per program. The optional parts (classifier-free
guidance, classifier guidance, clip, noise) are constexpr flags, so each combination compiles to
its own tight kernel. With a seed the noise is drawn in-kernel (kernels/philox.py), only in
programs whose sample has c_n != 0.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._layout import empty_out_like, in_layout_of, per_sample_numel

from . import philox

BLOCK = 1024


@triton.jit
def _step_mean(z, m, u, g, a_z, a_m, c_z, c_m, c_x, w, gs, clip,
               CFG: tl.constexpr, CG: tl.constexpr, CLIP: tl.constexpr):
    """(c_z z + c_m m + c_x x̂, x̂): the whole update except the noise term c_n n, so a different
    noise source (an in-kernel draw) changes only the caller, and x̂ (reverse_step_with_x0's second
    output). Same order of operations as the reference."""
    if CFG:
        m = u + w * (m - u)
    if CG:
        m = m + gs * g
    x_hat = a_z * z + a_m * m
    if CLIP:
        # Comparisons rather than min/max: a NaN x̂ stays NaN, as with torch.clamp.
        x_hat = tl.where(x_hat < -clip, -clip, tl.where(x_hat > clip, clip, x_hat))
    return c_z * z + c_m * m + c_x * x_hat, x_hat


@triton.jit
def _philox_noise(seed_ptr, off_lo, off_hi, start, offs, ALIGNED4: tl.constexpr, BLOCK: tl.constexpr):
    """Float32 normals of elements ``offs`` = [start, start + BLOCK) of stream (seed, offset). ALIGNED4:
    start is a multiple of 4, so whole Philox blocks are drawn once each; otherwise each element
    draws its own block and keeps its lane (odd D: 4x the arithmetic, same numbers)."""
    k0, k1 = philox.seed_key(seed_ptr)
    if ALIGNED4:
        n = philox.randn_tile(k0, k1, off_lo, off_hi, start, BLOCK)
    else:
        n0, n1, n2, n3 = philox.philox_normal4(k0, k1, off_lo, off_hi, offs // 4)
        lane = offs % 4
        n = tl.where(lane == 0, n0, tl.where(lane == 1, n1, tl.where(lane == 2, n2, n3)))
    return n


@triton.jit(do_not_specialize=["off_lo", "off_hi"])
def _reverse_step_kernel(
    out_ptr, x0_ptr, z_ptr, m_ptr, u_ptr, g_ptr, n_ptr, coeff_ptr, w_ptr, gs_ptr, clip, seed_ptr, off_lo, off_hi, B, D,
    chunks, CFG: tl.constexpr, CG: tl.constexpr, CLIP: tl.constexpr, NOISE: tl.constexpr, PHILOX: tl.constexpr,
    X0: tl.constexpr, ALIGNED4: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // chunks
    c = pid % chunks
    local = c * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = local < D
    offs = b * D + local
    a_z = tl.load(coeff_ptr + b)
    acc = a_z.dtype  # float32, or float64 for float64 data
    a_m = tl.load(coeff_ptr + B + b)
    c_z = tl.load(coeff_ptr + 2 * B + b)
    c_m = tl.load(coeff_ptr + 3 * B + b)
    c_x = tl.load(coeff_ptr + 4 * B + b)
    z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(acc)
    m = tl.load(m_ptr + offs, mask=mask, other=0.0).to(acc)
    u = m
    w = a_z
    if CFG:
        u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(acc)
        w = tl.load(w_ptr + b)
    g = m
    gs = a_z
    if CG:
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(acc)
        gs = tl.load(gs_ptr + b)
    # tl.full casts the clip scalar (fp32, or fp64 when torch.compile passes it) to the compute type.
    clip_v = tl.full([BLOCK], clip, acc)
    out, x_hat = _step_mean(z, m, u, g, a_z, a_m, c_z, c_m, c_x, w, gs, clip_v, CFG, CG, CLIP)
    if NOISE:
        c_n = tl.load(coeff_ptr + 5 * B + b)
        out = out + c_n * tl.load(n_ptr + offs, mask=mask, other=0.0).to(acc)
    if PHILOX:
        c_n = tl.load(coeff_ptr + 5 * B + b)
        if c_n != 0:  # nothing drawn where the noise term is 0 (a NaN c_n draws, and propagates)
            start = b * D + c * BLOCK
            n = _philox_noise(seed_ptr, off_lo, off_hi, start, offs, ALIGNED4, BLOCK)
            # Rounded to the data dtype first: the step equals the step with this noise as a tensor.
            out = out + c_n * n.to(out_ptr.dtype.element_ty).to(acc)
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)
    if X0:
        tl.store(x0_ptr + offs, x_hat.to(x0_ptr.dtype.element_ty), mask=mask)


def _launch(z, model_out, coeffs, uncond, guidance_scale, classifier_grad, grad_scale, clip, noise, seed, offset,
            with_x0: bool):
    out = empty_out_like(z)
    x0 = torch.empty_like(out) if with_x0 else None  # out's layout
    if out.numel() == 0:
        return out, x0
    B, D = z.shape[0], per_sample_numel(z)
    cfg, cg, has_noise, philox_noise = uncond is not None, classifier_grad is not None, noise is not None, seed is not None
    zl = in_layout_of(z, out)
    ml = in_layout_of(model_out, out)
    # Absent inputs: any valid pointer of the right type; the constexpr flags keep it unread.
    ul = in_layout_of(uncond, out) if cfg else zl
    gl = in_layout_of(classifier_grad, out) if cg else zl
    nl = in_layout_of(noise, out) if has_noise else zl
    seed_t = seed.reshape(1).to(z.device) if philox_noise else coeffs  # any pointer when unused
    off_lo, off_hi = philox.split_offset(offset)
    chunks = triton.cdiv(D, BLOCK)
    wrap_triton(_reverse_step_kernel)[(B * chunks,)](
        out, x0 if with_x0 else out, zl, ml, ul, gl, nl, coeffs,
        guidance_scale if cfg else coeffs, grad_scale if cg else coeffs,
        float(clip) if clip is not None else 1.0, seed_t, off_lo, off_hi, B, D, chunks,
        CFG=cfg, CG=cg, CLIP=clip is not None, NOISE=has_noise, PHILOX=philox_noise, X0=with_x0, ALIGNED4=D % 4 == 0,
        BLOCK=BLOCK,
    )
    return out, x0


def reverse_step(
    z: torch.Tensor,
    model_out: torch.Tensor,
    coeffs: torch.Tensor,
    uncond: torch.Tensor | None = None,
    guidance_scale: torch.Tensor | None = None,
    classifier_grad: torch.Tensor | None = None,
    grad_scale: torch.Tensor | None = None,
    clip: float | None = None,
    noise: torch.Tensor | None = None,
    seed: torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """Launcher; arguments as ``vdm_fast::reverse_step`` (already validated by the op module).
    ``noise`` and ``seed`` both None leave the c_n term out."""
    return _launch(z, model_out, coeffs, uncond, guidance_scale, classifier_grad, grad_scale, clip, noise, seed,
                   offset, False)[0]


def reverse_step_with_x0(
    z: torch.Tensor,
    model_out: torch.Tensor,
    coeffs: torch.Tensor,
    uncond: torch.Tensor | None = None,
    guidance_scale: torch.Tensor | None = None,
    classifier_grad: torch.Tensor | None = None,
    grad_scale: torch.Tensor | None = None,
    clip: float | None = None,
    noise: torch.Tensor | None = None,
    seed: torch.Tensor | None = None,
    offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launcher of ``vdm_fast::reverse_step_with_x0``: the step and x̂, written in the same pass."""
    return _launch(z, model_out, coeffs, uncond, guidance_scale, classifier_grad, grad_scale, clip, noise, seed,
                   offset, True)
