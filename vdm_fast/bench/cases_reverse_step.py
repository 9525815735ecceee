"""Benchmark cases for reverse_step: ours (each built backend) vs eager, torch.compile, diffusers.

Cases per shape, all epsilon prediction in float32:
- ``ddim eta=1 clip, noise given`` — with and without classifier-free guidance; diffusers runs
  ``DDIMScheduler.step(..., eta=1, variance_noise=noise)`` (the same work: clip, given noise),
  after the CFG combine ``uncond + w (cond - uncond)`` in torch when guided.
- ``ddpm clip, noise drawn`` — the ancestral step; every provider draws its noise (ours inside
  the kernel, Philox); diffusers runs ``DDPMScheduler.step(..., generator=g)``. With ``, cfg``
  the same after classifier-free guidance (ours: fused; diffusers: the CFG combine in torch).
- ``ddim eta=0`` — deterministic (no noise, no clip) against ``DDIMScheduler.step(..., eta=0)``.

The coefficients come from the small helpers below, built from ``alphas_cumprod`` exactly as the
DDPM posterior and DDIM define them; tests/test_reverse_step.py checks once that they and the op
reproduce the two diffusers schedulers.
"""

from __future__ import annotations

import math
import torch

from .. import backends, reference
from ..ops.reverse_step import reverse_step
from .harness import Case

SHAPES = [(64, 3, 64, 64), (16, 4, 64, 64), (256, 3, 32, 32)]
QUICK_SHAPES = [(16, 3, 32, 32)]
T_TRAIN = 1000


def _alpha_bars(alphas_cumprod: torch.Tensor, t: torch.Tensor, prev_t: torch.Tensor):
    ac = alphas_cumprod.double()
    a_t = ac[t]
    a_prev = torch.where(prev_t >= 0, ac[prev_t.clamp(min=0)], torch.ones_like(a_t))  # alpha_bar(-1) = 1
    return a_t, a_prev


def _eps_to_x0(a_t: torch.Tensor):
    # x̂ = (z - sigma m) / alpha for an epsilon model: a_z = 1/alpha, a_m = -sigma/alpha.
    return 1 / a_t.sqrt(), -(1 - a_t).sqrt() / a_t.sqrt()


def ddpm_step_coeffs(alphas_cumprod: torch.Tensor, t: torch.Tensor, prev_t: torch.Tensor | None = None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(6, B) coefficients of one ancestral DDPM step (epsilon model, posterior variance).

    Mean of q(z_prev | z_t, x̂) = c_x x̂ + c_z z_t with c_x = sqrt(ab_prev) beta_t / (1 - ab_t) and
    c_z = sqrt(alpha_t) (1 - ab_prev) / (1 - ab_t), where alpha_t = ab_t / ab_prev; c_n is the
    square root of the posterior variance (1 - ab_prev) / (1 - ab_t) beta_t, and 0 at t = 0.
    Computed in float64 from the table, returned in ``dtype``.
    """
    prev_t = t - 1 if prev_t is None else prev_t
    a_t, a_prev = _alpha_bars(alphas_cumprod, t, prev_t)
    alpha_t = a_t / a_prev
    beta_t = 1 - alpha_t
    a_z, a_m = _eps_to_x0(a_t)
    c_x = a_prev.sqrt() * beta_t / (1 - a_t)
    c_z = alpha_t.sqrt() * (1 - a_prev) / (1 - a_t)
    var = ((1 - a_prev) / (1 - a_t) * beta_t).clamp(min=1e-20)
    c_n = torch.where(t > 0, var.sqrt(), torch.zeros_like(var))
    return torch.stack([a_z, a_m, c_z, torch.zeros_like(a_z), c_x, c_n]).to(dtype)


def ddim_step_coeffs(alphas_cumprod: torch.Tensor, t: torch.Tensor, prev_t: torch.Tensor, eta: float = 0.0,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(6, B) coefficients of one DDIM step (epsilon model): z_prev = sqrt(ab_prev) x̂ +
    sqrt(1 - ab_prev - s²) m + s n with s = eta sqrt((1 - ab_prev)/(1 - ab_t) (1 - ab_t/ab_prev))."""
    a_t, a_prev = _alpha_bars(alphas_cumprod, t, prev_t)
    a_z, a_m = _eps_to_x0(a_t)
    std = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
    c_m = (1 - a_prev - std**2).sqrt()
    return torch.stack([a_z, a_m, torch.zeros_like(a_z), c_m, a_prev.sqrt(), std]).to(dtype)


def _schedulers():
    try:
        from diffusers import DDIMScheduler, DDPMScheduler
    except ImportError:
        return None, None
    return DDPMScheduler(num_train_timesteps=T_TRAIN), DDIMScheduler(num_train_timesteps=T_TRAIN)


def _ours(device: str, fn) -> tuple[dict, list]:
    providers, ours = {}, []
    for backend in backends.available(device, "reverse_step"):
        if backend == "reference" or (backend == "triton" and device == "cpu"):
            continue  # the Triton interpreter is a correctness tool, not a benchmark
        providers[f"vdm_fast[{backend}]"] = lambda b=backend: fn(b)
        ours.append(f"vdm_fast[{backend}]")
    return providers, ours


def _case(kind: str, shape, device: str, compiled_ref) -> Case:
    # Built in its own scope so every provider closes over this case's tensors.
    ddpm, ddim = _schedulers()
    B = shape[0]
    t_val, prev_val = 500, 480  # a mid-sampling DDIM step of 50 (stride 20); DDPM steps to t - 1
    t = torch.full((B,), t_val, dtype=torch.long)
    z = torch.randn(shape, device=device)
    cond = torch.randn(shape, device=device)
    uncond = torch.randn(shape, device=device)
    noise = torch.randn(shape, device=device)
    w_val = 7.5
    w = torch.full((B,), w_val, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    n_elem, es = z.numel(), z.element_size()
    cfg = kind.endswith("cfg")
    table = ddpm.alphas_cumprod if ddpm is not None else _fallback_table()

    if kind.startswith("ddim eta=1"):
        coeffs = ddim_step_coeffs(table, t, torch.full((B,), prev_val), eta=1.0).to(device)
        kw = dict(uncond=uncond, guidance_scale=w) if cfg else {}
        ref_kw = dict(uncond=uncond, guidance_scale=w) if cfg else dict(uncond=None, guidance_scale=None)
        providers, ours = _ours(device, lambda b: reverse_step(z, cond, coeffs, clip=1.0, noise=noise, backend=b, **kw))
        providers["eager"] = lambda: reference.reverse_step(z, cond, coeffs, clip=1.0, noise=noise, **ref_kw)
        providers["torch.compile"] = lambda: compiled_ref(z, cond, coeffs, clip=1.0, noise=noise, **ref_kw)
        if ddim is not None:
            ddim.set_timesteps(50)

            def diff():
                m = uncond + w_val * (cond - uncond) if cfg else cond
                return ddim.step(m, t_val, z, eta=1.0, variance_noise=noise).prev_sample

            providers["diffusers"] = diff
        bytes_moved = (5 if cfg else 4) * n_elem * es  # read z, model_out[, uncond], noise; write z_next
    elif kind.startswith("ddpm clip, noise drawn"):
        coeffs = ddpm_step_coeffs(table, t).to(device)
        kw = dict(uncond=uncond, guidance_scale=w) if cfg else {}
        ref_kw = dict(uncond=uncond, guidance_scale=w) if cfg else dict(uncond=None, guidance_scale=None)
        providers, ours = _ours(device, lambda b: reverse_step(z, cond, coeffs, clip=1.0, generator=gen, backend=b,
                                                               **kw))
        providers["eager"] = lambda: reference.reverse_step(z, cond, coeffs, clip=1.0, generator=gen, **ref_kw)
        providers["torch.compile"] = lambda: compiled_ref(z, cond, coeffs, clip=1.0, noise=torch.randn_like(z),
                                                          **ref_kw)
        if ddpm is not None:

            def diff():
                m = uncond + w_val * (cond - uncond) if cfg else cond
                return ddpm.step(m, t_val, z, generator=gen).prev_sample

            providers["diffusers"] = diff
        # read z, model_out[, uncond]; write z_next (the noise is made in registers)
        bytes_moved = (4 if cfg else 3) * n_elem * es
    elif kind == "ddim eta=0":
        coeffs = ddim_step_coeffs(table, t, torch.full((B,), prev_val), eta=0.0).to(device)
        providers, ours = _ours(device, lambda b: reverse_step(z, cond, coeffs, stochastic=False, backend=b))
        providers["eager"] = lambda: reference.reverse_step(z, cond, coeffs)
        # noise=z with c_n = 0 adds nothing (and no memory traffic once fused); without it the
        # reference's host check of c_n would break the compiled graph.
        providers["torch.compile"] = lambda: compiled_ref(z, cond, coeffs, noise=z)
        if ddim is not None:
            ddim_noclip = type(ddim).from_config(ddim.config, clip_sample=False)
            ddim_noclip.set_timesteps(50)
            providers["diffusers"] = lambda: ddim_noclip.step(cond, t_val, z, eta=0.0).prev_sample
        bytes_moved = 3 * n_elem * es
    else:
        raise ValueError(kind)
    return Case("reverse_step", f"{kind} {tuple(shape)} fp32", bytes_moved, providers, device=device, elements=math.prod(shape),
                ours=tuple(ours))


def _fallback_table() -> torch.Tensor:
    # DDPM's linear betas, as diffusers builds them (float32), when diffusers is not installed.
    betas = torch.linspace(1e-4, 0.02, T_TRAIN, dtype=torch.float32)
    return torch.cumprod(1 - betas, 0)


KINDS = ("ddim eta=1 clip, noise given", "ddim eta=1 clip, noise given, cfg", "ddpm clip, noise drawn",
         "ddpm clip, noise drawn, cfg", "ddim eta=0")


# The ops whose benchmarks this module writes by hand (vdm-fast bench derives the others').
OPS = ("reverse_step",)


def cases(device: str = "cpu", quick: bool = False) -> list[Case]:
    shapes = QUICK_SHAPES if quick else SHAPES
    compiled_ref = torch.compile(reference.reverse_step, dynamic=False)
    return [_case(kind, shape, device, compiled_ref) for shape in shapes for kind in KINDS]
