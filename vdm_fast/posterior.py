"""The diffusion posterior q(x_{t-1} | x_t, x_0) of a discrete table, improved-diffusion's way
(DESIGN.md §3.3, §5), and its learned-range variances.

For the step t -> s (s = t - 1 on a table, the next level on a sampler grid), with
c = 1 - SNR_t/SNR_s = -expm1(gamma_s - gamma_t) (``parameterization.one_minus_snr_ratio``)::

    mean     = coef1 x_0 + coef2 x_t,   coef1 = alpha_s c,   coef2 = (alpha_t/alpha_s)(sigma_s/sigma_t)^2
    variance = sigma_s^2 c,             log variance = log sigma_s^2 + log c

written in gamma = -log SNR as the samplers' builders are (``vdm_fast.coefficients``,
``ancestral_coeffs``): no 1 - alpha_bar cancellations, float64 tables. These are improved-diffusion's
``posterior_mean_coef1``, ``posterior_mean_coef2``, ``posterior_variance`` (DDPM eqs. 6-7).
At t = 0 (a step to the clean level) the variance is 0; improved-diffusion's
``posterior_log_variance_clipped`` replaces its log by step 1's, and so does
:func:`posterior_log_variance_clipped` (a table needs T >= 2).

Learned-range variances (improved-diffusion's ``ModelVarType.LEARNED_RANGE``, ``learn_sigma``): the
model outputs 2C channels; the second half v in [-1, 1] gives, per element,
log var = frac max_log + (1 - frac) min_log, frac = (v + 1)/2, between min_log = the clipped
posterior log-variance and max_log = log beta_t (:func:`learned_range_log_variance`). The sampler
(``samplers.sample_ancestral(variance="learned_range")``), ``bpd.calc_bpd_loop`` and
``bpd.hybrid_loss`` and the diffusers drop-in's DDPM step all take it from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._checks import compute_dtype
from .parameterization import (alpha_ratio, alpha_sigma, alpha_sigma_squared, one_minus_alpha_sq_ratio,
                               one_minus_snr_ratio, sigma_ratio)
from .schedules import DiscreteSchedule
from ._namespace import public_dir

F64 = torch.float64


def _step(g_t: torch.Tensor, g_s: torch.Tensor):
    """(coef1, coef2, variance, log_variance, log_beta) of the steps g_t -> g_s, float64, in gamma
    form. log_variance is -inf on a step to the clean level (g_s = -inf)."""
    g_t, g_s = g_t.to(F64), g_s.to(F64)
    alpha_s, _ = alpha_sigma(g_s)
    _, sigma_s_sq = alpha_sigma_squared(g_s)
    c = one_minus_snr_ratio(g_t, g_s)
    coef1 = alpha_s * c
    # (alpha_t/alpha_s)(sigma_s/sigma_t)^2: 0, not 0 * inf, on a step to the clean level.
    coef2 = alpha_ratio(g_t, g_s) * sigma_ratio(g_s, g_t, 2)
    log_sigma_s_sq = -F.softplus(-g_s)  # log sigmoid(g_s)
    log_variance = log_sigma_s_sq + torch.log(c)
    variance = sigma_s_sq * c
    log_beta = torch.log(one_minus_alpha_sq_ratio(g_t, g_s))  # beta = 1 - alpha_t^2/alpha_s^2
    return coef1, coef2, variance, log_variance, log_beta


@dataclass(frozen=True)
class PosteriorTable:
    """improved-diffusion's posterior tables of a :class:`DiscreteSchedule`, float64, (T,) each, on
    the CPU: ``coef1`` (posterior_mean_coef1, of x_0), ``coef2`` (posterior_mean_coef2, of x_t),
    ``variance`` (posterior_variance, 0 at t = 0), ``log_variance_clipped``
    (posterior_log_variance_clipped: step 0's entry is step 1's) and ``log_beta`` (log betas, the
    learned range's max_log)."""

    coef1: torch.Tensor
    coef2: torch.Tensor
    variance: torch.Tensor
    log_variance_clipped: torch.Tensor
    log_beta: torch.Tensor


def _check_schedule(op: str, schedule) -> DiscreteSchedule:
    if not isinstance(schedule, DiscreteSchedule):
        raise TypeError(f"{op}: schedule must be a DiscreteSchedule, got {type(schedule).__name__}")
    if schedule.num_timesteps < 2:
        raise ValueError(f"{op}: schedule needs at least 2 timesteps (the clipped log-variance of step 0 is "
                         f"step 1's), got {schedule.num_timesteps}")
    return schedule


def posterior_table(schedule: DiscreteSchedule) -> PosteriorTable:
    """The posterior tables of ``schedule`` (T >= 2), see :class:`PosteriorTable`."""
    _check_schedule("posterior_table", schedule)
    g = schedule.gammas
    g_prev = torch.cat([g.new_full((1,), -float("inf")), g[:-1]])
    coef1, coef2, variance, log_variance, log_beta = _step(g, g_prev)
    clipped = torch.cat([log_variance[1:2], log_variance[1:]])
    return PosteriorTable(coef1, coef2, variance, clipped, log_beta)


def posterior_log_variance_clipped(schedule: DiscreteSchedule) -> torch.Tensor:
    """improved-diffusion's ``posterior_log_variance_clipped``: log of the posterior variance per
    timestep, (T,) float64, step 0's (log 0) replaced by step 1's."""
    return posterior_table(schedule).log_variance_clipped


def _per_sample(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """table[t] as (B, 1, ..., 1) in ``dtype`` on like's device."""
    v = table.to(like.device)[t.to(like.device)].to(dtype)
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


def posterior_mean_variance(x0: torch.Tensor, z_t: torch.Tensor, schedule: DiscreteSchedule, t: torch.Tensor, *,
                            table: PosteriorTable | None = None):
    """q(x_{t-1} | x_t, x_0) at integer timesteps ``t`` (B,): improved-diffusion's
    ``q_posterior_mean_variance``.

    Args:
        x0: (B, ...) the clean data (or a prediction of it).
        z_t: (B, ...) the latent x_t at timesteps t, the shape of x0.
        schedule: the :class:`DiscreteSchedule` (T >= 2).
        t: (B,) integer timesteps in 0..T-1.
        table: ``posterior_table(schedule)``, to reuse it across calls (a loop over timesteps);
            built here when None.

    Returns:
        (mean, variance, log_variance_clipped), each of x0's shape (the last two expanded from
        per-sample values), in the compute dtype of x0 (float32; float64 for float64 data). The
        tables are float64 (:func:`posterior_table`).
    """
    op = "posterior_mean_variance"
    for name, x in (("x0", x0), ("z_t", z_t)):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() == 0:
            raise TypeError(f"{op}: {name} must be a floating-point tensor with a batch dimension")
    if z_t.shape != x0.shape:
        raise ValueError(f"{op}: z_t must have the shape of x0 {tuple(x0.shape)}, got {tuple(z_t.shape)}")
    t = torch.as_tensor(t)
    if t.is_floating_point() or t.shape != x0.shape[:1]:
        raise ValueError(f"{op}: t must be a ({x0.shape[0]},) tensor of integer timesteps, got "
                         f"{tuple(t.shape)} {t.dtype}")
    tab = posterior_table(schedule) if table is None else table
    if not isinstance(tab, PosteriorTable):
        raise TypeError(f"{op}: table must be a PosteriorTable (posterior_table(schedule)), got {type(tab).__name__}")
    t = schedule._index(t)  # range check (no host sync)
    cdt = compute_dtype(torch.promote_types(x0.dtype, z_t.dtype))
    mean = _per_sample(tab.coef1, t, x0, cdt) * x0.to(cdt) + _per_sample(tab.coef2, t, x0, cdt) * z_t.to(cdt)
    variance = _per_sample(tab.variance, t, x0, cdt).expand(mean.shape)
    log_variance = _per_sample(tab.log_variance_clipped, t, x0, cdt).expand(mean.shape)
    return mean, variance, log_variance


def learned_range_bounds(levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(min_log, max_log) of the learned-range variance for every step of a sampler grid.

    ``levels``: gamma of a descending grid, (K+1,) or (K+1, B) (``coefficients.gammas``); step i
    goes levels[i] -> levels[i+1]. min_log is the posterior log-variance of the step, clipped as
    improved-diffusion clips it: a step to the clean level (gamma = -inf, the last of a discrete
    grid ending in -1) takes the previous step's (on a respaced table that is step 1's); max_log is
    log beta of the step, 1 - alpha_t^2/alpha_s^2 (the respaced beta). Float64, (K,) or (K, B)."""
    levels = torch.as_tensor(levels)
    if levels.dim() not in (1, 2) or levels.shape[0] < 2:
        raise ValueError(f"levels must have shape (K+1,) or (K+1, B) with K >= 1, got {tuple(levels.shape)}")
    g_t, g_s = levels[:-1].to(F64), levels[1:].to(F64)
    _, _, _, log_variance, log_beta = _step(g_t, g_s)
    clean = torch.isneginf(g_s)
    previous = torch.cat([torch.full_like(log_variance[:1], float("nan")), log_variance[:-1]])
    return torch.where(clean, previous, log_variance), log_beta


def learned_range_log_variance(v: torch.Tensor, min_log, max_log) -> torch.Tensor:
    """improved-diffusion's LEARNED_RANGE: frac max_log + (1 - frac) min_log, frac = (v + 1)/2, per
    element (v: the model's variance channels, nominally in [-1, 1]; min_log, max_log broadcast to
    it). Differentiable in v."""
    frac = (v + 1) / 2
    return frac * max_log + (1 - frac) * min_log


def split_variance_output(out, channels: int, what: str = "model(z, t)"):
    """(mean part, variance part) of a learned-variance model output: ``out`` has 2 ``channels``
    along dim 1 (improved-diffusion's ``learn_sigma``); the first half is the mean's
    parameterization, the second the variance values."""
    if not isinstance(out, torch.Tensor) or not out.is_floating_point():
        raise TypeError(f"{what} must return a floating-point tensor, got "
                        f"{out.dtype if isinstance(out, torch.Tensor) else type(out).__name__}")
    if out.dim() < 2 or out.shape[1] != 2 * channels:
        raise ValueError(f"{what} must return twice the channels of the data (dim 1: {2 * channels}) for a "
                         f"learned-range variance, got shape {tuple(out.shape)}")
    return out[:, :channels], out[:, channels:]


__all__ = ["PosteriorTable", "posterior_table", "posterior_log_variance_clipped", "posterior_mean_variance",
           "learned_range_bounds", "learned_range_log_variance", "split_variance_output"]
__dir__ = public_dir(__all__)
