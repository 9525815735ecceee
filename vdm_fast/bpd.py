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
    mse (B, T), the columns in their order by default (column 0 is t = T-1: they append while
    looping t = T-1 .. 0 and stack; ``order="ascending"`` makes column t step t).

    The KL between two Gaussians that share z and differ in the mean by coef1 (x_0 - x̂_0) is,
    per sample, D c_t + 1/2 coef1^2 / var_model ||x_0 - x̂_0||^2 with c_t = 1/2 (-1 + log var_model
    - log var_true + var_true / var_model) (zero for fixed_small: Luo's equal-variance form
    1/2 (SNR_{t-1} - SNR_t) ||x_0 - x̂_0||^2), so each term is one ``sq_error`` pass. With a
    learned-range variance (``variance="learned_range"``, their LEARNED_RANGE: the model outputs
    2C channels, :mod:`vdm_fast.posterior`) the model's variance is per element and the KL is the
    full Gaussian KL of the two means and log-variances (the ``gaussian_kl`` op, their
    ``normal_kl``); the decoder then takes the per-element log-scale.

    :func:`hybrid_loss` is Improved DDPM's training objective for such models, L_simple + L_vlb
    with the stop-gradient on the mean and L_vlb (bits/dim, their ``_vb_terms_bpd``) scaled by
    T/1000, their ``RESCALED_MSE``. Tables (posterior mean coefficients, clipped log-variance,
    log beta) come from :func:`vdm_fast.posterior.posterior_table`, in gamma form, float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import elbo as elbo_mod
from ._checks import compute_dtype
from .elbo import LN2, BitsPerDim
from .ops import discretized_gaussian_nll, gaussian_kl, prior_kl, q_sample, sq_error
from .parameterization import check, convert
from .posterior import (learned_range_log_variance, posterior_mean_variance, posterior_table,
                        split_variance_output)
from .schedules import DiscreteSchedule
from ._namespace import public_dir

VARIANCES = ("fixed_small", "fixed_large", "learned_range")
ORDERS = ("descending", "ascending")


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
    """improved-diffusion's float64 tables, by their names (the posterior's from
    :func:`vdm_fast.posterior.posterior_table`)."""

    def __init__(self, schedule: DiscreteSchedule, variance: str):
        if schedule.num_timesteps < 2:
            raise ValueError("schedule: needs at least 2 timesteps (step 0's variance is step 1's)")
        self.posterior = post = posterior_table(schedule)
        self.true_logvar = post.log_variance_clipped  # posterior_log_variance_clipped
        self.coef1, self.coef2 = post.coef1, post.coef2  # posterior_mean_coef1 (x_0), posterior_mean_coef2 (x_t)
        if variance == "fixed_large":  # log(append(posterior_variance[1], betas[1:]))
            self.model_logvar = torch.cat([post.log_variance_clipped[1:2], post.log_beta[1:]])
        else:  # fixed_small; learned_range: the lower end of its range (its per-element values are formed per step)
            self.model_logvar = self.true_logvar
        # KL per sample = D * const + weight * ||x_0 - x̂_0||^2 (module docstring; fixed variances).
        log_ratio = self.true_logvar - self.model_logvar
        self.kl_const = 0.5 * (-1 - log_ratio + torch.exp(log_ratio))
        self.kl_weight = 0.5 * self.coef1**2 * torch.exp(-self.model_logvar)


def _check_x0(op: str, x0, learned: bool) -> None:
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point() or x0.dim() == 0:
        raise TypeError(f"{op}: x0 must be a floating-point tensor with a batch dimension")
    if learned and x0.dim() < 2:
        raise ValueError(f"{op}: x0 must have a channel dimension (dim 1) for a learned-range variance, "
                         f"got shape {tuple(x0.shape)}")


def _learned_vb_terms(schedule: DiscreteSchedule, tab: _Tables, x0, z, t, x_hat, v, cdf: str, backend, step=None):
    """improved-diffusion's ``_vb_terms_bpd`` with a learned-range variance, per sample in bits/dim:
    KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) where t > 0, the discretized-Gaussian decoder
    -log p(x_0 | x_1) where t = 0. The model's variance is per element, so the KL is the full
    Gaussian KL (``gaussian_kl``, their ``normal_kl``) of the two means (posterior mean at x_0 and
    at x̂_0) and log-variances. ``step``: the one timestep of the whole batch, when known on the
    host (then only its term is computed)."""
    cdt = compute_dtype(x0.dtype)
    D = math.prod(x0.shape[1:])
    post = tab.posterior
    true_mean, _, true_logvar = posterior_mean_variance(x0, z, schedule, t, table=post)
    model_mean, _, _ = posterior_mean_variance(x_hat, z, schedule, t, table=post)
    max_log = post.log_beta.to(x0.device)[t].to(cdt).reshape((-1,) + (1,) * (x0.dim() - 1))
    model_logvar = learned_range_log_variance(v.to(cdt), true_logvar, max_log)
    x0c = x0.to(cdt)
    kl = nll = None
    if step is None or step > 0:
        kl = gaussian_kl(true_mean, true_logvar, model_mean, model_logvar, backend=backend) / (D * LN2)
    if step is None or step == 0:
        nll = discretized_gaussian_nll(x0c, model_mean, 0.5 * model_logvar, cdf, backend=backend) / (D * LN2)
    if step is not None:
        return kl if step > 0 else nll
    return torch.where(t == 0, nll, kl)


@torch.no_grad()
def calc_bpd_loop(model, x0: torch.Tensor, schedule: DiscreteSchedule, *, parameterization: str = "eps",
                  variance: str = "fixed_small", clip_denoised: bool = True, cdf: str = "tanh",
                  order: str = "descending", generator: torch.Generator | None = None,
                  backend: str | None = None) -> dict:
    """improved-diffusion's ``calc_bpd_loop`` on a discrete table.

    Args:
        model: ``model(x_t, t) -> m`` with integer timesteps t (B,) (rescale them inside the
            model if it was trained on improved-diffusion's ``rescale_timesteps``; a respaced
            table's model: ``vdm_fast.respace.Respaced.wrap_model``). With
            ``variance="learned_range"`` m has twice the channels of x0 (dim 1): the first half in
            ``parameterization``, the second the variance values v in [-1, 1].
        x0: data on the grid k/127.5 - 1, (B, ...).
        schedule: the :class:`DiscreteSchedule` the model was trained with (T >= 2 steps).
        parameterization: ``"eps"`` (their EPSILON), ``"x0"`` (START_X), ``"v"`` or ``"score"``.
        variance: ``"fixed_small"``, ``"fixed_large"`` or ``"learned_range"`` (their
            LEARNED_RANGE: per element, log var = frac log beta_t + (1 - frac) min_log,
            frac = (v + 1)/2, min_log the clipped posterior log-variance; the KL is then the full
            Gaussian KL, ``gaussian_kl``, and the decoder takes the per-element log-scale).
        clip_denoised: clamp x̂_0 to [-1, 1] (their default True).
        cdf: the decoder's normal CDF: ``"tanh"`` (theirs, reproduces their numbers) or ``"erf"``.
        order: the columns of vb, xstart_mse and mse: ``"descending"`` (default, theirs: they
            append while looping t = T-1 .. 0 and stack, so column j is timestep T-1-j) or
            ``"ascending"`` (column t is timestep t).
        generator: for the per-step noise, drawn in their order t = T-1 .. 0.

    Returns:
        improved-diffusion's dict: total_bpd (B,), prior_bpd (B,), vb (B, T), xstart_mse (B, T),
        mse (B, T), in the compute dtype (float32, float64 for float64 data), bits/dim for
        total_bpd, prior_bpd and vb.
    """
    if not isinstance(schedule, DiscreteSchedule):
        raise TypeError(f"schedule must be a DiscreteSchedule, got {type(schedule).__name__}")
    parameterization = check(parameterization)
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    learned = variance == "learned_range"
    _check_x0("calc_bpd_loop", x0, learned)
    tab = _Tables(schedule, variance)
    B, T, D = x0.shape[0], schedule.num_timesteps, math.prod(x0.shape[1:])
    cdt, dev = compute_dtype(x0.dtype), x0.device
    view = (B,) + (1,) * (x0.dim() - 1)
    vb = torch.empty(B, T, dtype=cdt, device=dev)
    xstart_mse, mse = torch.empty_like(vb), torch.empty_like(vb)
    for t in range(T - 1, -1, -1):
        col = T - 1 - t if order == "descending" else t
        t_batch = torch.full((B,), t, dtype=torch.long, device=dev)
        alpha, sigma = schedule.alpha_sigma(t_batch, cdt)
        noise = elbo_mod._randn_like(x0, generator)
        z = q_sample(x0, alpha, sigma, noise, backend=backend)
        if learned:
            m, v = split_variance_output(model(z, t_batch), x0.shape[1], "model(x_t, t)")
        else:
            m = elbo_mod._model_out(model, z, t_batch, x0)
        m = m.to(cdt)
        a, s = alpha.reshape(view), sigma.reshape(view)
        x_hat = convert(m, z.to(cdt), a, s, parameterization, "x0")
        if clip_denoised:
            x_hat = x_hat.clamp(-1, 1)
        x_hat = x_hat.to(x0.dtype)
        err_x = sq_error(x_hat, x0, noise, alpha, sigma, "x0", backend=backend)
        if learned:
            vb[:, col] = _learned_vb_terms(schedule, tab, x0, z, t_batch, x_hat, v, cdf, backend, step=t)
        elif t == 0:
            mean = (tab.coef1[0].item() * x_hat.to(cdt) + tab.coef2[0].item() * z.to(cdt)).to(x0.dtype)
            log_scale = torch.full_like(x0, 0.5 * tab.model_logvar[0].item())
            vb[:, col] = discretized_gaussian_nll(x0, mean, log_scale, cdf, backend=backend) / (D * LN2)
        else:
            vb[:, col] = (D * tab.kl_const[t].item() + tab.kl_weight[t].item() * err_x) / (D * LN2)
        xstart_mse[:, col] = err_x / D
        eps_hat = convert(x_hat.to(cdt), z.to(cdt), a, s, "x0", "eps").to(x0.dtype)  # their _predict_eps_from_xstart
        mse[:, col] = sq_error(eps_hat, x0, noise, alpha, sigma, "eps", backend=backend) / D
    a1, s1 = schedule.alpha_sigma(torch.full((B,), T - 1, dtype=torch.long, device=dev), cdt)
    prior_bpd = prior_kl(x0, a1, s1, backend=backend) / (D * LN2)
    return {"total_bpd": vb.sum(1) + prior_bpd, "prior_bpd": prior_bpd, "vb": vb, "xstart_mse": xstart_mse,
            "mse": mse}


@dataclass(frozen=True)
class HybridLoss:
    """Per-sample terms of :func:`hybrid_loss`, each (B,): ``loss`` = ``mse`` + ``vb``; ``mse`` the
    mean squared error of the mean channels against their target (L_simple); ``vb`` the variational
    term in bits/dim (rescaled by T/1000 when asked), with gradients to the variance channels only;
    ``t`` the timesteps used."""

    loss: torch.Tensor
    mse: torch.Tensor
    vb: torch.Tensor
    t: torch.Tensor


def hybrid_loss(model, x0: torch.Tensor, schedule: DiscreteSchedule, t: torch.Tensor | None = None,
                noise: torch.Tensor | None = None, *, parameterization: str = "eps", rescale: bool = True,
                cdf: str = "tanh", generator: torch.Generator | None = None,
                backend: str | None = None) -> HybridLoss:
    """Improved DDPM's L_hybrid = L_simple + lambda L_vlb for a learned-range variance (Nichol &
    Dhariwal 2021, lambda = 1 as in their code; improved-diffusion's ``training_losses`` with
    ``learn_sigma`` and ``LossType.RESCALED_MSE``, or ``MSE`` with ``rescale=False``).

    ``model(x_t, t)`` returns twice the channels of x0 (dim 1): the mean half in ``parameterization``
    and the variance values v. L_simple is the mean over dims of the squared error of the mean half
    against its target (eps: the noise; x0: the data; v, score: theirs, as ``VDMLoss(weighting=
    "simple")``). L_vlb is their ``_vb_terms_bpd`` (bits/dim: the Gaussian KL of posterior and
    model where t > 0, the discretized-Gaussian decoder's NLL at t = 0) evaluated with the mean half
    detached (their ``frozen_out = cat([mean.detach(), v])``, no clipping of x̂_0), so it trains the
    variance only; ``rescale`` multiplies it by T/1000 (their "equivalence with the initial
    implementation"; T the table's number of steps, the respaced one for a respaced table).

    Args:
        x0: data in [-1, 1] (the decoder's range), (B, C, ...).
        schedule: the :class:`DiscreteSchedule` (T >= 2).
        t: (B,) integer timesteps; drawn uniformly from 0..T-1 (their ``UniformSampler``) with
            ``generator`` when None.
        noise: the eps of x_t; drawn from ``generator`` when None.
        cdf: the decoder's normal CDF, ``"tanh"`` (theirs) or ``"erf"``.

    Returns:
        :class:`HybridLoss` of (B,) tensors (``loss.mean()`` is their ``terms["loss"].mean()``),
        differentiable in the model's output.
    """
    op = "hybrid_loss"
    if not isinstance(schedule, DiscreteSchedule):
        raise TypeError(f"{op}: schedule must be a DiscreteSchedule, got {type(schedule).__name__}")
    parameterization = check(parameterization)
    _check_x0(op, x0, True)
    tab = _Tables(schedule, "learned_range")
    B, T, D = x0.shape[0], schedule.num_timesteps, math.prod(x0.shape[1:])
    cdt, dev = compute_dtype(x0.dtype), x0.device
    if t is None:
        where = generator.device if generator is not None else torch.device("cpu")
        t = torch.randint(0, T, (B,), generator=generator, device=where).to(dev)
    elif not isinstance(t, torch.Tensor) or t.shape != (B,) or t.is_floating_point():
        raise ValueError(f"{op}: t must be a ({B},) tensor of integer timesteps")
    if noise is None:
        noise = elbo_mod._randn_like(x0, generator)
    elif not isinstance(noise, torch.Tensor) or noise.shape != x0.shape:
        raise ValueError(f"{op}: noise must be a tensor of the shape of x0 {tuple(x0.shape)}")
    alpha, sigma = schedule.alpha_sigma(t, cdt)
    z = q_sample(x0, alpha, sigma, noise, backend=backend)
    m, v = split_variance_output(model(z, t), x0.shape[1], "model(x_t, t)")
    mse = sq_error(m, x0, noise, alpha, sigma, parameterization, backend=backend) / D
    view = (B,) + (1,) * (x0.dim() - 1)
    x_hat = convert(m.detach().to(cdt), z.detach().to(cdt), alpha.reshape(view), sigma.reshape(view),
                    parameterization, "x0")
    vb = _learned_vb_terms(schedule, tab, x0, z.detach(), t, x_hat, v, cdf, backend)
    if rescale:
        vb = vb * (T / 1000.0)
    return HybridLoss(mse + vb, mse, vb, t)


__all__ = ["VARIANCES", "ORDERS", "to_vdm_grid", "to_ddpm_grid", "vdm_bpd", "calc_bpd_loop", "HybridLoss",
           "hybrid_loss"]
__dir__ = public_dir(__all__)
