"""Coefficients from a codebase's own tables (DESIGN.md §5): the ``alphas_cumprod`` or ``betas``
buffer a DDPM/DDIM codebase already holds (improved-diffusion's ``GaussianDiffusion``,
denoising-diffusion-pytorch's registered buffers, diffusers' scheduler) feeds
:func:`vdm_fast.reverse_step` with no hand algebra.

- :func:`gammas_from_alphas_cumprod`, :func:`gammas_from_betas`: the table as levels
  gamma = -log SNR = log((1 - alpha_bar) / alpha_bar), float64, through
  :mod:`vdm_fast.parameterization` (1 - alpha_bar is never formed by subtraction).
- :func:`ddpm_step_coeffs`, :func:`ddim_step_coeffs`: the (6, B) coefficients of one step
  t -> t_prev per sample, built by :mod:`vdm_fast.coefficients` (``ancestral_coeffs``,
  ``ddim_coeffs``) from the table's levels. ``t``, ``t_prev``: (B,) integer timesteps indexing the
  table; ``t_prev < 0`` is the clean level (alpha_bar = 1: improved-diffusion's
  ``alphas_cumprod_prev[0] = 1``, diffusers' ``prev_t < 0``), the last step of a loop, where the
  step returns x̂ and adds no noise.

The coefficients are float64 (the builders' precision, DESIGN.md §5), on the table's device;
``reverse_step`` reads them at the compute precision of the data. The step helpers take the table
as ``alphas_cumprod`` or as ``betas=`` (keyword, with ``alphas_cumprod=None``).

**Pass a float64 table.** improved-diffusion's numpy tables are float64; denoising-diffusion-pytorch
and diffusers keep float32 buffers, and a float32 table carries its rounding into the steps: an
alpha_bar within 1e-4 of 1 keeps ~3 digits of 1 - alpha_bar, the ratio of neighbouring float32
alpha_bar's (a step's 1 - beta) ~5 digits, and a float32 beta near 1 (a cosine table's 0.999 cap)
few digits of 1 - beta: coefficients off by up to ~1e-4 relative. Rebuild the float64 table from
the codebase's own schedule function (denoising-diffusion-pytorch's ``cosine_beta_schedule(T)``
returns float64; diffusers' betas are ``linspace(beta_start, beta_end, T)``: ``vdm_fast.schedules.
linear_betas``), which is what their float32 buffers were rounded from. To reproduce a codebase
that computes *with* its float32 table (diffusers' ``add_noise`` reads its float32
``alphas_cumprod``), pass that table: the steps then carry the same rounding as theirs.

Index checks (timesteps in range, t_prev < t) use ``torch._assert_async``: no host sync on a GPU.
"""

from __future__ import annotations

import torch

from . import coefficients
from .parameterization import gamma_from_alpha_bar, gamma_from_log_alpha_bar
from ._namespace import public_dir


def _table(name: str, values) -> torch.Tensor:
    x = torch.as_tensor(values)
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point table, got dtype {x.dtype}")
    if x.dim() != 1 or x.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D table, got shape {tuple(x.shape)}")
    return x.to(torch.float64)


def gammas_from_alphas_cumprod(alphas_cumprod) -> torch.Tensor:
    """gamma = log((1 - alpha_bar) / alpha_bar) of each entry, float64, on the table's device.

    ``alphas_cumprod``: a 1-D tensor or array, entries in [0, 1] (1: the clean level, -inf;
    0: zero terminal SNR, +inf); else an error naming it (checked without a host sync)."""
    abar = _table("alphas_cumprod", alphas_cumprod)
    torch._assert_async(((abar >= 0) & (abar <= 1)).all(), "alphas_cumprod must lie in [0, 1], with no NaN")
    return gamma_from_alpha_bar(abar)


def gammas_from_betas(betas) -> torch.Tensor:
    """gamma of the table with these betas, float64: alpha_bar_t = prod_{i <= t} (1 - beta_i) taken
    as a sum of log1p(-beta_i) (``parameterization.gamma_from_log_alpha_bar``), so the first
    timesteps keep full relative precision in 1 - alpha_bar. ``betas`` in (0, 1]."""
    b = _table("betas", betas)
    torch._assert_async(((b > 0) & (b <= 1)).all(), "betas must lie in (0, 1], with no NaN")
    return gamma_from_log_alpha_bar(torch.cumsum(torch.log1p(-b), dim=0))


def _step_levels(alphas_cumprod, betas, t, t_prev) -> tuple[torch.Tensor, torch.Tensor]:
    """(gamma at t, gamma at t_prev) per sample, float64; t_prev < 0 gives -inf."""
    if (alphas_cumprod is None) == (betas is None):
        raise ValueError("pass exactly one of alphas_cumprod and betas (the other None)")
    g = gammas_from_alphas_cumprod(alphas_cumprod) if betas is None else gammas_from_betas(betas)
    n = g.numel()
    t = _timesteps("t", t, g.device)
    if t_prev is None:
        t_prev = t - 1
    t_prev = _timesteps("t_prev", t_prev, g.device)
    if t.dim() != 1 or t_prev.shape != t.shape:
        raise ValueError(f"t and t_prev must be (B,) tensors of one shape, got {tuple(t.shape)} and "
                         f"{tuple(t_prev.shape)}")
    if t.numel():
        torch._assert_async(((t >= 0) & (t < n)).all(), f"t: timesteps must lie in 0..{n - 1}")
        torch._assert_async((t_prev < t).all(), "t_prev must be < t (a step towards less noise; < 0: the clean level)")
    g_t = g[t.clamp(0, n - 1)]
    g_s = torch.where(t_prev < 0, torch.full_like(g_t, -float("inf")), g[t_prev.clamp(0, n - 1)])
    return g_t, g_s


def _timesteps(name: str, value, device) -> torch.Tensor:
    x = torch.as_tensor(value)
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer timesteps, got dtype {x.dtype}")
    return x.to(device=device, dtype=torch.int64)


def ddpm_step_coeffs(alphas_cumprod, t, t_prev=None, parameterization: str = "eps",
                     variance: str = "posterior", *, betas=None) -> torch.Tensor:
    """The (6, B) ``reverse_step`` coefficients of DDPM's ancestral step t -> t_prev
    (improved-diffusion's / denoising-diffusion-pytorch's ``p_sample``), from the table.

    x̂ from the model output (``parameterization``: "eps", "x0", "v", "score" or diffusers'
    names), the posterior mean coef1 x̂ + coef2 z_t, and the noise scale sqrt of
    ``variance="posterior"`` (beta-tilde: improved-diffusion's ``FIXED_SMALL``, diffusers'
    "fixed_small") or ``"beta"`` (``FIXED_LARGE``, "fixed_large"). ``t_prev`` None: t - 1 (-1 at
    t = 0, the clean level: the step returns x̂, no noise, as their ``nonzero_mask``). With a
    respaced (strided) table pass the kept timesteps: the step between any two levels is the
    posterior of that pair. :func:`vdm_fast.coefficients.ancestral_coeffs` does the algebra.
    """
    g_t, g_s = _step_levels(alphas_cumprod, betas, t, t_prev)
    return coefficients.ancestral_coeffs(g_t, g_s, parameterization, variance)


def ddim_step_coeffs(alphas_cumprod, t, t_prev, eta=0.0, parameterization: str = "eps",
                     clipped_eps: bool = False, *, betas=None) -> torch.Tensor:
    """The (6, B) ``reverse_step`` coefficients of DDIM's step t -> t_prev (Song et al. 2021,
    eq. 12), from the table: z = sqrt(abar_prev) x̂ + sqrt(1 - abar_prev - std²) ε̂ + std n with
    std = eta sqrt((1 - abar_prev)/(1 - abar_t)) sqrt(1 - abar_t/abar_prev).

    ``clipped_eps=True`` re-derives ε̂ from the clipped x̂ (improved-diffusion's ``ddim_sample``,
    denoising-diffusion-pytorch's ``rederive_pred_noise`` and diffusers' ``use_clipped_model_output``);
    False uses the model's own ε̂ (diffusers' default). Without ``clip`` in ``reverse_step`` the two
    are the same step. eta per sample allowed, in [0, 1]. :func:`vdm_fast.coefficients.ddim_coeffs`
    does the algebra.
    """
    g_t, g_s = _step_levels(alphas_cumprod, betas, t, t_prev)
    return coefficients.ddim_coeffs(g_t, g_s, parameterization, eta, clipped_eps)


__all__ = ["gammas_from_alphas_cumprod", "gammas_from_betas", "ddpm_step_coeffs", "ddim_step_coeffs"]
__dir__ = public_dir(__all__)
