"""Bits per dimension, in the two conventions papers report.

(a) VDM (Kingma et al. 2021): :func:`vdm_bpd`. The negative ELBO of :func:`vdm_fast.elbo.elbo`
    (continuous time or T steps, categorical decoder), data on the bin-centre grid
    2(k + 1/2)/256 - 1 (:func:`to_vdm_grid`), averaged over ``repeats`` draws of (t, eps).

(b) improved-diffusion (Nichol & Dhariwal 2021): :func:`calc_bpd_loop`, the semantics of their
    ``GaussianDiffusion.calc_bpd_loop`` for a discrete table (:class:`DiscreteSchedule`), data on
    the grid k/127.5 - 1 (:func:`to_ddpm_grid`). For every timestep t = T-1 .. 0, one draw of
    x_t ~ q(x_t | x_0) and:
      - t >= 1: KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)), Gaussians with the true posterior
        variance (log-variance "clipped": step 0's variance replaced by step 1's) and the model's
        fixed variance, "fixed_small" (the posterior variance) or "fixed_large" (beta_t, with
        beta_0 replaced by the posterior variance at step 1); the model's mean is the posterior
        mean at x̂_0 (clipped to [-1, 1] when ``clip_denoised``);
      - t = 0: the discretized-Gaussian decoder -log p(x_0 | x_1) with that mean and variance;
    then the prior KL(q(x_{T-1} | x_0) || N(0, I)). All in bits/dim (mean over dims / ln 2),
    returned as their dict: total_bpd (B,), prior_bpd (B,), vb (B, T), xstart_mse (B, T),
    mse (B, T).

    The KL between two Gaussians that share z and differ in the mean by coef1 (x_0 - x̂_0) is,
    per sample, D c_t + 1/2 coef1^2 / var_model ||x_0 - x̂_0||^2 with c_t = 1/2 (-1 + log var_model
    - log var_true + var_true / var_model) (zero for fixed_small: Luo's equal-variance form
    1/2 (SNR_{t-1} - SNR_t) ||x_0 - x̂_0||^2), so each term is one ``sq_error`` pass.
"""

from __future__ import annotations

import math

import torch

from . import elbo as elbo_mod
from ._checks import compute_dtype
from .elbo import LN2, BitsPerDim
from .ops import discretized_gaussian_nll, prior_kl, q_sample, sq_error
from .parameterization import check, convert
from .schedules import DiscreteSchedule
from ._namespace import public_dir

VARIANCES = ("fixed_small", "fixed_large")


def to_vdm_grid(k: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """8-bit values k -> VDM's bin centres 2(k + 1/2)/256 - 1."""
    return (2 * (k.to(torch.float64) + 0.5) / 256 - 1).to(dtype)


def to_ddpm_grid(k: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """8-bit values k -> the DDPM / improved-diffusion grid k/127.5 - 1."""
    return (k.to(torch.float64) / 127.5 - 1).to(dtype)


# --- (a) VDM --------------------------------------------------------------------------------------


@torch.no_grad()
def vdm_bpd(model, x0: torch.Tensor, schedule, *, T: int | None = None, parameterization: str = "eps",
            repeats: int = 1, antithetic: bool = True, generator: torch.Generator | None = None,
            decoder: str | None = "categorical", backend: str | None = None) -> BitsPerDim:
    """Per-sample negative ELBO in bits/dim, VDM's convention, averaged over ``repeats`` estimates.

    Each repeat draws new times (antithetic across the batch), eps and eps' from ``generator``.
    Returns :class:`BitsPerDim` of (B,) float64 tensors (recon, prior, diffusion, total).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    sums = None
    for _ in range(repeats):
        terms = elbo_mod.elbo(model, x0, schedule, T=T, parameterization=parameterization, antithetic=antithetic,
                              generator=generator, decoder=decoder, backend=backend).bpd_terms()
        vals = [terms.recon, terms.prior, terms.diffusion, terms.total]
        sums = [v.double() for v in vals] if sums is None else [s + v.double() for s, v in zip(sums, vals)]
    return BitsPerDim(*(s / repeats for s in sums))


# --- (b) improved-diffusion -----------------------------------------------------------------------


class _Tables:
    """improved-diffusion's float64 tables, by their names."""

    def __init__(self, schedule: DiscreteSchedule, variance: str):
        betas = schedule.betas
        if betas.numel() < 2:
            raise ValueError("schedule: calc_bpd_loop needs at least 2 timesteps (step 0's variance is step 1's)")
        abar = schedule.alphas_cumprod
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        post_var = betas * (1 - abar_prev) / (1 - abar)
        self.true_logvar = torch.log(torch.cat([post_var[1:2], post_var[1:]]))  # posterior_log_variance_clipped
        if variance == "fixed_small":
            self.model_logvar = self.true_logvar
        else:
            self.model_logvar = torch.log(torch.cat([post_var[1:2], betas[1:]]))
        self.coef1 = betas * abar_prev.sqrt() / (1 - abar)  # posterior_mean_coef1 (x_0)
        self.coef2 = (1 - abar_prev) * (1 - betas).sqrt() / (1 - abar)  # posterior_mean_coef2 (x_t)
        # KL per sample = D * const + weight * ||x_0 - x̂_0||^2 (module docstring).
        log_ratio = self.true_logvar - self.model_logvar
        self.kl_const = 0.5 * (-1 - log_ratio + torch.exp(log_ratio))
        self.kl_weight = 0.5 * self.coef1**2 * torch.exp(-self.model_logvar)


@torch.no_grad()
def calc_bpd_loop(model, x0: torch.Tensor, schedule: DiscreteSchedule, *, parameterization: str = "eps",
                  variance: str = "fixed_small", clip_denoised: bool = True, cdf: str = "tanh",
                  generator: torch.Generator | None = None, backend: str | None = None) -> dict:
    """improved-diffusion's ``calc_bpd_loop`` for a fixed-variance model on a discrete table.

    Args:
        model: ``model(x_t, t) -> m`` with integer timesteps t (B,) (rescale them inside the
            model if it was trained on improved-diffusion's ``rescale_timesteps``).
        x0: data on the grid k/127.5 - 1, (B, ...).
        schedule: the :class:`DiscreteSchedule` the model was trained with (T >= 2 steps).
        parameterization: ``"eps"`` (their EPSILON), ``"x0"`` (START_X), ``"v"`` or ``"score"``.
        variance: ``"fixed_small"`` or ``"fixed_large"``.
        clip_denoised: clamp x̂_0 to [-1, 1] (their default True).
        cdf: the decoder's normal CDF: ``"tanh"`` (theirs, reproduces their numbers) or ``"erf"``.
        generator: for the per-step noise, drawn in their order t = T-1 .. 0.

    Returns:
        dict: total_bpd (B,), prior_bpd (B,), vb (B, T), xstart_mse (B, T), mse (B, T), in the
        compute dtype (float32, float64 for float64 data); column t of vb is step t.
    """
    if not isinstance(schedule, DiscreteSchedule):
        raise TypeError(f"schedule must be a DiscreteSchedule, got {type(schedule).__name__}")
    parameterization = check(parameterization)
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point() or x0.dim() == 0:
        raise TypeError("x0 must be a floating-point tensor with a batch dimension")
    tab = _Tables(schedule, variance)
    B, T, D = x0.shape[0], schedule.num_timesteps, math.prod(x0.shape[1:])
    cdt, dev = compute_dtype(x0.dtype), x0.device
    view = (B,) + (1,) * (x0.dim() - 1)
    vb = torch.empty(B, T, dtype=cdt, device=dev)
    xstart_mse, mse = torch.empty_like(vb), torch.empty_like(vb)
    for t in range(T - 1, -1, -1):
        t_batch = torch.full((B,), t, dtype=torch.long, device=dev)
        alpha, sigma = schedule.alpha_sigma(t_batch, cdt)
        noise = elbo_mod._randn_like(x0, generator)
        z = q_sample(x0, alpha, sigma, noise, backend=backend)
        m = elbo_mod._model_out(model, z, t_batch, x0).to(cdt)
        a, s = alpha.reshape(view), sigma.reshape(view)
        x_hat = convert(m, z.to(cdt), a, s, parameterization, "x0")
        if clip_denoised:
            x_hat = x_hat.clamp(-1, 1)
        x_hat = x_hat.to(x0.dtype)
        err_x = sq_error(x_hat, x0, noise, alpha, sigma, "x0", backend=backend)
        if t == 0:
            mean = (tab.coef1[0].item() * x_hat.to(cdt) + tab.coef2[0].item() * z.to(cdt)).to(x0.dtype)
            log_scale = torch.full_like(x0, 0.5 * tab.model_logvar[0].item())
            vb[:, t] = discretized_gaussian_nll(x0, mean, log_scale, cdf, backend=backend) / (D * LN2)
        else:
            vb[:, t] = (D * tab.kl_const[t].item() + tab.kl_weight[t].item() * err_x) / (D * LN2)
        xstart_mse[:, t] = err_x / D
        eps_hat = convert(x_hat.to(cdt), z.to(cdt), a, s, "x0", "eps").to(x0.dtype)  # their _predict_eps_from_xstart
        mse[:, t] = sq_error(eps_hat, x0, noise, alpha, sigma, "eps", backend=backend) / D
    a1, s1 = schedule.alpha_sigma(torch.full((B,), T - 1, dtype=torch.long, device=dev), cdt)
    prior_bpd = prior_kl(x0, a1, s1, backend=backend) / (D * LN2)
    return {"total_bpd": vb.sum(1) + prior_bpd, "prior_bpd": prior_bpd, "vb": vb, "xstart_mse": xstart_mse,
            "mse": mse}


__all__ = ["VARIANCES", "to_vdm_grid", "to_ddpm_grid", "vdm_bpd", "calc_bpd_loop"]
__dir__ = public_dir(__all__)
