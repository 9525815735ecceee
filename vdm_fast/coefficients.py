"""Coefficient builders of the samplers (DESIGN.md §5): the per-sample scalars of every step, as
pure functions of the levels. The sampling loops (``vdm_fast.samplers``) and the diffusers
drop-ins (``vdm_fast.integrations``) both build their steps here.

Every sampler step is one call of :func:`vdm_fast.reverse_step`::

    x̂      = a_z z + a_m m                 (clamped to [-clip, clip] when clip is given)
    z_next = c_z z + c_m m + c_x x̂ + c_n n

with m the model output (after guidance). A builder takes ``gamma_t`` (the noisier level, where
the model is evaluated) and ``gamma_s`` (the level stepped to) as tensors of any broadcastable
shape and returns the six scalars (a_z, a_m, c_z, c_m, c_x, c_n) stacked at dim -2: a (6, B)
tensor for (B,) gammas (what ``reverse_step`` takes), a (K, 6, B) table for (K, B) gammas (one row
per step). ``gamma_s = -inf`` is the clean level (alpha = 1, sigma = 0), the last step of a discrete
diffusers grid; ``gamma_t = +inf`` is zero terminal SNR.

Everything is written in gamma = -log SNR through ``vdm_fast.parameterization`` (DESIGN.md §2):
ratios of two levels are exp/expm1/softplus of gamma differences, never differences of
alpha_bar's, so nothing cancels at either end of a schedule.

**Built in float64.** Neighbouring levels of a fine grid differ by little in gamma, and
c = 1 - SNR_t/SNR_s = -expm1(gamma_s - gamma_t) carries the relative rounding of the gammas
divided by their difference: from float32 gammas the DDPM posterior variance at t = 960 of 1000
is off by 5e-5 relative. So :func:`gammas` evaluates schedules in float64, every builder computes
in float64 whatever the dtype of the gammas it is given, and the result is cast once, to the dtype
of the gammas (float64 from :func:`gammas`; the loops then cast the finished table once to the
compute dtype of the data).

Time grids: :func:`uniform_times` (continuous time, 1 → 0) and :func:`discrete_times` (diffusers'
integer grids followed by -1, the clean level); :func:`gammas` turns a grid into levels.
"""

from __future__ import annotations

import torch

from .parameterization import (alpha_ratio, alpha_sigma, alpha_sigma_squared, eps_coeffs,
                               one_minus_alpha_sq_ratio, one_minus_snr_ratio, score_coeffs, sigma_ratio, snr,
                               snr_ratio, x0_coeffs)
from .schedules import DiscreteSchedule, Schedule
from ._namespace import public_dir

VARIANCES = ("posterior", "beta")
BUILD_DTYPE = torch.float64  # every builder computes in it (module docstring)


# --- time grids and levels ------------------------------------------------------------------------


def uniform_times(steps: int, *, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The continuous-time grid t_i = i / steps, descending: [1, 1 - 1/steps, ..., 1/steps, 0].

    ``steps + 1`` levels, i.e. ``steps`` sampler steps, each from t = i/T to s = (i-1)/T
    (DESIGN.md §2). Float32 by default, the dtype models are usually fed; the levels are
    evaluated in float64 from these times whatever their dtype.
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    return torch.linspace(1.0, 0.0, steps + 1, dtype=dtype, device=device)


def discrete_times(num_train_timesteps: int, steps: int, *, spacing: str = "leading",
                   steps_offset: int = 0, device=None) -> torch.Tensor:
    """Integer timesteps of a discrete table as diffusers' DDPM/DDIM ``set_timesteps`` makes them,
    descending, followed by -1 (the clean level: diffusers' ``prev_t < 0``, alpha_bar = 1).

    spacing "leading": (arange(steps) * (T // steps))[::-1] + steps_offset; "trailing":
    round(arange(T, 0, -T / steps)) - 1. With ``steps == T`` both are T-1, ..., 0.
    """
    if not isinstance(steps, int) or steps < 1 or steps > num_train_timesteps:
        raise ValueError(f"steps must be an int in [1, {num_train_timesteps}], got {steps!r}")
    if spacing == "leading":
        ts = torch.arange(steps, dtype=torch.int64).flip(0) * (num_train_timesteps // steps) + steps_offset
    elif spacing == "trailing":
        ts = torch.arange(num_train_timesteps, 0, -num_train_timesteps / steps, dtype=torch.float64).round().long() - 1
    else:
        raise ValueError(f"spacing must be 'leading' or 'trailing', got {spacing!r}")
    return torch.cat([ts, torch.tensor([-1])]).to(device)


def gammas(schedule, times: torch.Tensor, dtype: torch.dtype = BUILD_DTYPE) -> torch.Tensor:
    """gamma(times) in ``dtype`` (float64 by default: what the builders want) on times' device, for
    any schedule with ``gamma(t)``.

    Integer ``times`` on a ``DiscreteSchedule`` index its (float64) table; negative timesteps give
    -inf (the clean level); fractional timesteps (a Karras grid, ``karras.karras_times``) need
    ``karras.FractionalSchedule(table)``. vdm_fast's schedules, learned ones included, evaluate in
    ``dtype``;
    any other object with ``gamma(t)`` is called with float times cast to its own dtype (an
    nn.Module's parameters', else ``dtype``; integer times as they are) and its result is cast to
    ``dtype``. Learned schedules are evaluated without
    building a graph only if the caller is under ``torch.no_grad`` (the loops are).
    """
    times = torch.as_tensor(times)
    if isinstance(schedule, DiscreteSchedule) and not times.is_floating_point():
        g = schedule.gamma(times.clamp(min=0), dtype)
        return torch.where(times < 0, torch.full_like(g, -float("inf")), g)
    if not hasattr(schedule, "gamma"):
        raise TypeError(f"schedule must have a gamma(t) method, got {type(schedule).__name__}")
    flat = times.reshape(-1)  # schedules are written for a batch of times: hand them a 1-D one
    if isinstance(schedule, Schedule):  # vdm_fast's schedules, learned ones included
        g = schedule.gamma(flat, dtype)
    else:  # any other object with gamma(t): evaluated in its own arithmetic, cast afterwards
        own = _own_dtype(schedule, dtype)
        g = schedule.gamma(flat.to(own) if flat.is_floating_point() else flat).to(dtype)
    return g.reshape(times.shape)


def _own_dtype(schedule, default: torch.dtype) -> torch.dtype:
    """The dtype a user's schedule computes in: an nn.Module's floating parameters' (a float32 network
    cannot take float64 times), else ``default``."""
    if isinstance(schedule, torch.nn.Module):
        for t in (*schedule.parameters(), *schedule.buffers()):
            if t.is_floating_point():
                return t.dtype
    return default


# --- helpers -------------------------------------------------------------------------------------------


def _levels(*levels):
    """The gammas as broadcast float64 tensors, and the dtype the coefficients are returned in
    (the gammas' own, promoted)."""
    levels = [torch.as_tensor(g) for g in levels]
    if not all(g.is_floating_point() for g in levels):
        raise TypeError("gamma levels must be floating-point tensors (use coefficients.gammas)")
    dtype = levels[0].dtype
    for g in levels[1:]:
        dtype = torch.promote_types(dtype, g.dtype)
    return (*torch.broadcast_tensors(*(g.to(BUILD_DTYPE) for g in levels)), dtype)


def _levels_and_previous(gamma_t, gamma_s, gamma_prev):
    """``_levels`` of a multistep step: (g_t, g_s, g_p, dtype), g_p NaN where there is no previous level."""
    if gamma_prev is None:
        g_t, g_s, dtype = _levels(gamma_t, gamma_s)
        return g_t, g_s, torch.full_like(g_t, float("nan")), dtype
    return _levels(gamma_t, gamma_s, gamma_prev)


def _scalar(value, like: torch.Tensor) -> torch.Tensor:
    """A per-sample argument (eta, a step size, a norm) in float64 on ``like``'s device."""
    return torch.as_tensor(value, dtype=BUILD_DTYPE, device=like.device)


def _stack(dtype: torch.dtype, a_z, a_m, c_z, c_m, c_x, c_n) -> torch.Tensor:
    """The six coefficients stacked at dim -2 and cast once to ``dtype``."""
    parts = torch.broadcast_tensors(a_z, a_m, c_z, c_m, c_x, c_n)
    table = torch.stack(parts, dim=-2) if parts[0].dim() > 0 else torch.stack(parts)
    return table.to(dtype)


# --- coefficient builders ---------------------------------------------------------------------------


def ancestral_coeffs(gamma_t, gamma_s, parameterization: str = "eps", variance: str = "posterior") -> torch.Tensor:
    """Ancestral step z_s ~ p(z_s | z_t) = q(z_s | z_t, x = x̂) (Luo eq. 84; Kingma et al. App. A).

    With c = 1 - SNR(t)/SNR(s) = -expm1(gamma_s - gamma_t):
    mean = (alpha_s/alpha_t)(1 - c) z_t + alpha_s c x̂, and the noise scale is
    ``"posterior"``: sigma_s sqrt(c) (the true posterior; DDPM's sigma² = beta-tilde,
    diffusers' "fixed_small"), or ``"beta"``: sqrt(1 - alpha_t²/alpha_s²) (DDPM's sigma² = beta,
    diffusers' "fixed_large"; zero on a step to the clean level, as DDPM adds no noise there).
    """
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    g_t, g_s, dtype = _levels(gamma_t, gamma_s)
    alpha_t, sigma_t = alpha_sigma(g_t)
    alpha_s, sigma_s = alpha_sigma(g_s)
    a_z, a_m = x0_coeffs(parameterization, alpha_t, sigma_t)
    c = one_minus_snr_ratio(g_t, g_s)
    # (alpha_s/alpha_t)(1 - c) = (alpha_t/alpha_s)(sigma_s/sigma_t)²: 0, not 0 * inf, at zero
    # terminal SNR (alpha_t = 0) and on a step to the clean level (sigma_s = 0).
    c_z = alpha_ratio(g_t, g_s) * sigma_ratio(g_s, g_t, 2)
    if variance == "posterior":
        c_n = sigma_s * c.sqrt()
    else:
        beta = one_minus_alpha_sq_ratio(g_t, g_s)
        c_n = torch.where(sigma_s > 0, beta.sqrt(), torch.zeros_like(beta))
    return _stack(dtype, a_z, a_m, c_z, torch.zeros_like(c_z), alpha_s * c, c_n)


def ddim_coeffs(gamma_t, gamma_s, parameterization: str = "eps", eta=0.0, clipped_eps: bool = False) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12): z_s = alpha_s x̂ + sqrt(sigma_s² - std²) ε̂ + std n,
    std = eta sigma_s sqrt(c) (eta = 1: the ancestral posterior noise; eta per sample allowed).

    ε̂ is the unclipped estimate (diffusers' default); ``clipped_eps=True`` recomputes it from the
    clipped x̂, ε̂ = (z - alpha_t x̂) / sigma_t (diffusers' ``use_clipped_model_output``).
    eta must lie in [0, 1]: beyond 1, sigma_s² - std² is negative where c is large and its square
    root NaN, as in diffusers.
    """
    g_t, g_s, dtype = _levels(gamma_t, gamma_s)
    alpha_t, sigma_t = alpha_sigma(g_t)
    alpha_s, sigma_s = alpha_sigma(g_s)
    a_z, a_m = x0_coeffs(parameterization, alpha_t, sigma_t)
    c = one_minus_snr_ratio(g_t, g_s)
    eta = _scalar(eta, g_t)
    std = eta * sigma_s * c.sqrt()
    # (sigma_s² - std²) / sigma_s² = 1 - eta² c, >= 0 for eta <= 1: the clamp removes rounding only.
    rest = 1 - eta * eta * c
    direction = sigma_s * torch.where(eta <= 1, rest.clamp(min=0), rest).sqrt()
    if clipped_eps:
        c_z, c_m = direction / sigma_t, torch.zeros_like(direction)
        c_x = alpha_s - direction * alpha_t / sigma_t
    else:
        e_z, e_m = eps_coeffs(parameterization, alpha_t, sigma_t)
        c_z, c_m, c_x = direction * e_z, direction * e_m, alpha_s
    return _stack(dtype, a_z, a_m, c_z, c_m, c_x, std)


def langevin_coeffs(gamma, step_size, parameterization: str = "score") -> torch.Tensor:
    """One Langevin step at a fixed level (Welling & Teh 2011; NCSN's convention):
    z' = z + (step/2) ŝ(z) + sqrt(step) n, ŝ the score of q_t read from the model output."""
    g, dtype = _levels(gamma)
    alpha, sigma = alpha_sigma(g)
    step = _scalar(step_size, g)
    s_z, s_m = score_coeffs(parameterization, alpha, sigma)
    zero = torch.zeros_like(alpha)
    return _stack(dtype, zero, zero, 1 + 0.5 * step * s_z, 0.5 * step * s_m, zero, step.sqrt())


def annealed_langevin_step_sizes(gamma_levels, epsilon: float | None = None) -> torch.Tensor:
    """NCSN's step rule (Song & Ermon 2019, Alg. 1): step_i = epsilon * sigmã_i² / sigmã_L², where
    sigmã = sigma/alpha = exp(gamma/2) is the variance-exploding noise level of the VP level gamma
    and L the last (least noisy) level; applied to the VP latent z = alpha x̃ the VE step becomes
    alpha_i² step_i, i.e. ``epsilon * sigma_i² * exp(-gamma_L)``. Geometric sigmã (NCSN) is a
    grid uniform in gamma, e.g. ``uniform_times`` on ``LinearGamma``. ``gamma_levels``: (L,) or (L, B).

    epsilon is tied to sigmã_L (NCSN: 2e-5 for sigmã_L = 0.01); None keeps NCSN's ratio
    epsilon / sigmã_L² = 0.2 whatever the last level, i.e. step_i = 0.2 sigma_i²."""
    g, dtype = _levels(gamma_levels)
    _, sigma_sq = alpha_sigma_squared(g)
    if epsilon is None:
        return (0.2 * sigma_sq).to(dtype)
    return (epsilon * sigma_sq * snr(g[-1])).to(dtype)


def reverse_diffusion_coeffs(gamma_t, gamma_s, parameterization: str = "eps") -> torch.Tensor:
    """score_sde's reverse-diffusion predictor for the VP SDE (Song et al. 2021, App. E, eq. 46):
    z_s = (2 - sqrt(1 - beta)) z_t + beta ŝ + sqrt(beta) n, beta = 1 - alpha_t²/alpha_s².
    A step to the clean level (sigma_s = 0) is the denoising step z_s = x̂."""
    g_t, g_s, dtype = _levels(gamma_t, gamma_s)
    alpha_t, sigma_t = alpha_sigma(g_t)
    _, sigma_s = alpha_sigma(g_s)
    a_z, a_m = x0_coeffs(parameterization, alpha_t, sigma_t)
    s_z, s_m = score_coeffs(parameterization, alpha_t, sigma_t)
    beta = one_minus_alpha_sq_ratio(g_t, g_s)
    keep = alpha_ratio(g_t, g_s)  # sqrt(1 - beta)
    clean = sigma_s == 0
    zero, one = torch.zeros_like(beta), torch.ones_like(beta)
    c_z = torch.where(clean, zero, 2 - keep + beta * s_z)
    c_m = torch.where(clean, zero, beta * s_m)
    c_x = torch.where(clean, one, zero)
    c_n = torch.where(clean, zero, beta.sqrt())
    return _stack(dtype, a_z, a_m, c_z, c_m, c_x, c_n)


def langevin_corrector_coeffs(gamma_t, gamma_s, score_norm, noise_norm, snr: float,
                              parameterization: str = "eps") -> torch.Tensor:
    """score_sde's Langevin corrector at level t (Song et al. 2021, Alg. 5, VP):
    step = 2 a (snr ||n|| / ||ŝ||)², z' = z + step ŝ + sqrt(2 step) n, a = alpha_t²/alpha_s² (the
    1 - beta of the step t → s). ``score_norm``, ``noise_norm``: (B,) norms of ŝ and n (per
    sample, or a batch mean broadcast). A zero score norm is clamped to 1e-30."""
    g_t, g_s, dtype = _levels(gamma_t, gamma_s)
    alpha_t, sigma_t = alpha_sigma(g_t)
    s_z, s_m = score_coeffs(parameterization, alpha_t, sigma_t)
    a = alpha_ratio(g_t, g_s, 2)
    step = 2 * a * (snr * _scalar(noise_norm, g_t) / _scalar(score_norm, g_t).clamp(min=1e-30)) ** 2
    zero = torch.zeros_like(step)
    return _stack(dtype, zero, zero, 1 + step * s_z, step * s_m, zero, (2 * step).sqrt())


def ode_euler_coeffs(gamma_t, gamma_s, parameterization: str = "eps") -> torch.Tensor:
    """Euler step of the probability-flow ODE in the variables of DDIM eq. 14 / Karras et al.
    (2022): x̃ = z/alpha, sigmã = sigma/alpha = exp(gamma/2), dx̃/dsigmã = (x̃ - x̂)/sigmã.
    In z: z_s = (sigma_s/sigma_t) z_t + alpha_s (1 - sigmã_s/sigmã_t) x̂ (the same as DDIM with
    eta = 0 and ε̂ from the clipped x̂). A step to the clean level gives x̂."""
    g_t, g_s, dtype = _levels(gamma_t, gamma_s)
    alpha_t, sigma_t = alpha_sigma(g_t)
    alpha_s, _ = alpha_sigma(g_s)
    a_z, a_m = x0_coeffs(parameterization, alpha_t, sigma_t)
    c_z = sigma_ratio(g_s, g_t)
    c_x = alpha_s * one_minus_snr_ratio(g_t, g_s, 0.5)  # 1 - sigmã_s/sigmã_t
    zero = torch.zeros_like(c_z)
    return _stack(dtype, a_z, a_m, c_z, zero, c_x, zero)


def ode_heun_coeffs(gamma_t, gamma_s, parameterization: str = "eps") -> torch.Tensor:
    """The correction of Heun's method (Karras et al. 2022, Alg. 1 without churn) as a second
    ``reverse_step`` call. With z' the Euler prediction at level s and m' = model(z', s)::

        z_s = (1 - r/2) z' + (alpha_s/2)(r - 1) x̂(z', m') + alpha_s/(2 alpha_t) z_t,  r = sigmã_t/sigmã_s

    i.e. ``reverse_step(z', m', heun_coeffs, noise=z_t)``: z_t enters through the noise slot, with
    c_n = alpha_s / (2 alpha_t). (z_s = x̃-average of the two slopes, written in z.) Undefined on a
    step to the clean level, where Heun takes the Euler step (Karras et al.)."""
    g_t, g_s, dtype = _levels(gamma_t, gamma_s)
    alpha_s, sigma_s = alpha_sigma(g_s)
    a_z, a_m = x0_coeffs(parameterization, alpha_s, sigma_s)
    r = snr_ratio(g_s, g_t, 0.5)  # sigmã_t / sigmã_s
    c_x = -0.5 * alpha_s * one_minus_snr_ratio(g_s, g_t, 0.5)  # (alpha_s/2)(r - 1)
    c_n = 0.5 * alpha_ratio(g_s, g_t)
    return _stack(dtype, a_z, a_m, 1 - 0.5 * r, torch.zeros_like(r), c_x, c_n)


def euler_ancestral_coeffs(gamma_t, gamma_s, parameterization: str = "eps", eta=1.0) -> torch.Tensor:
    """The Euler-ancestral step of k-diffusion (``sample_euler_ancestral``) and diffusers'
    ``EulerAncestralDiscreteScheduler``, written in z: in x̃ = z/alpha, sigmã = exp(gamma/2),
    x̃_s = x̃_t + (sigmã_down - sigmã_t)(x̃_t - x̂)/sigmã_t + sigmã_up n with
    sigmã_up = eta sigmã_s sqrt(1 - sigmã_s²/sigmã_t²) and sigmã_down² = sigmã_s² - sigmã_up².

    That is exactly DDIM(eta) with ε̂ re-derived from x̂, ``ddim_coeffs(..., eta, clipped_eps=True)``:
    sigmã_up/sigmã_s = eta sqrt(c) and sigmã_down/sigmã_s = sqrt(1 - eta² c) with c = 1 - SNR_t/SNR_s,
    so the two are one builder (and eta = 1 is the ancestral posterior step). eta in [0, 1]."""
    return ddim_coeffs(gamma_t, gamma_s, parameterization, eta, clipped_eps=True)


SOLVER_TYPES = ("midpoint", "heun")


def dpmpp_2m_coeffs(gamma_t, gamma_s, gamma_prev=None, parameterization: str = "eps",
                    solver_type: str = "midpoint") -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2; k-diffusion ``sample_dpmpp_2m``, diffusers'
    ``DPMSolverMultistepScheduler`` with ``algorithm_type="dpmsolver++"``), one step t -> s.

    With lambda = -gamma/2 (log alpha/sigma), h = lambda_s - lambda_t, D = x̂ at t and D' = x̂ at
    the previous level p (h' = lambda_t - lambda_p, r = h'/h)::

        z_s = (sigma_s/sigma_t) z_t - alpha_s (e^{-h} - 1) D + (second-order term in D - D')

    midpoint: - alpha_s (e^{-h} - 1) (D - D') / (2r); heun: + alpha_s ((e^{-h} - 1)/h + 1) (D - D')/r.
    As one ``reverse_step`` the previous x̂ rides in the noise slot: the table's c_n multiplies
    ``noise=x̂_prev`` (``reverse_step_with_x0`` returns this step's x̂ for the next one), so the
    multistep update is one pass over z, the model output and x̂_prev.

    ``gamma_prev``: the level of x̂_prev; None, or NaN per entry, is the first-order step (DPM-Solver-1
    = DDIM eta=0; c_n = 0). A step to the clean level (gamma_s = -inf) is first order too, as in
    k-diffusion and diffusers' ``final_sigmas_type="zero"`` (where h is infinite).
    """
    if solver_type not in SOLVER_TYPES:
        raise ValueError(f"solver_type must be one of {SOLVER_TYPES}, got {solver_type!r}")
    g_t, g_s, g_p, dtype = _levels_and_previous(gamma_t, gamma_s, gamma_prev)
    alpha_t, sigma_t = alpha_sigma(g_t)
    alpha_s, _ = alpha_sigma(g_s)
    a_z, a_m = x0_coeffs(parameterization, alpha_t, sigma_t)
    c_z = sigma_ratio(g_s, g_t)
    h = 0.5 * (g_t - g_s)
    em = torch.expm1(-h)  # e^{-h} - 1, in [-1, 0]
    phi = -alpha_s * em  # the weight of D in the first-order step
    first = torch.isnan(g_p) | torch.isinf(g_s)
    inv_r = h / (0.5 * (g_p - g_t))  # 1/r = h / h'
    if solver_type == "midpoint":
        w = 0.5 * phi * inv_r  # on D - D'
    else:
        w = alpha_s * (em / h + 1) * inv_r
    w = torch.where(first, torch.zeros_like(w), w)
    return _stack(dtype, a_z, a_m, c_z, torch.zeros_like(c_z), phi + w, -w)


def unipc_corrector_coeffs(gamma_t, gamma_s, gamma_prev=None, parameterization: str = "eps"):
    """UniC, the corrector of UniPC (Zhao et al. 2023; diffusers' ``UniPCMultistepScheduler``,
    ``predict_x0=True``, ``solver_type="bh2"``), of order 1 or 2, for the step t -> s that a
    predictor has just taken. Its predictor is DPM-Solver++(2M)'s midpoint step (UniP-2 with B(h) =
    e^{-h} - 1 has the same weights): :func:`dpmpp_2m_coeffs`.

    With x the sample at t the predictor started from, D = x̂ at t, D' = x̂ at the previous level p
    and D_s = x̂ at s (the model evaluated at the predicted sample)::

        x_s = (sigma_s/sigma_t) x - alpha_s (e^{-h} - 1) D
              - alpha_s (e^{-h} - 1) (rho_0 (D' - D)/r_k + rho_1 (D_s - D))

    r_k = (lambda_p - lambda_t)/h, (rho_0, rho_1) solving UniPC's 2x2 system (order 1: rho_1 = 1/2,
    no D' term). Returned as two ``reverse_step`` tables (float64-built, cast like the others):
    ``history`` combines what is already known, n = (sigma_s/sigma_t) x + w_D D + w_D' D', as
    ``reverse_step(x, D, history, noise=D')``; ``correct`` adds the new output,
    x_s = x̂(z_s, m_s) w_s + n, as ``reverse_step_with_x0(z_s, m_s, correct, noise=n)`` (which also
    returns D_s for the next step). ``gamma_prev`` None or NaN: order 1."""
    g_t, g_s, g_p, dtype = _levels_and_previous(gamma_t, gamma_s, gamma_prev)
    alpha_s, sigma_s = alpha_sigma(g_s)
    a_z, a_m = x0_coeffs(parameterization, alpha_s, sigma_s)  # D_s is formed at s
    hh = 0.5 * (g_s - g_t)  # -h
    b_h = torch.expm1(hh)  # B(h) of bh2, = h phi_1(h)
    phi_2 = b_h / hh - 1
    phi_3 = phi_2 / hh - 0.5
    b1, b2 = phi_2 / b_h, 2 * phi_3 / b_h
    r_k = (g_t - g_p) / (g_t - g_s)  # (lambda_p - lambda_t) / h, negative
    first = torch.isnan(g_p)
    rho_0 = torch.where(first, torch.zeros_like(b1), (b1 - b2) / (1 - r_k))
    rho_1 = torch.where(first, torch.full_like(b1, 0.5), (b2 - r_k * b1) / (1 - r_k))
    w_prev = torch.where(first, torch.zeros_like(b1), -alpha_s * b_h * rho_0 / r_k)
    w_s = -alpha_s * b_h * rho_1
    w_d = -alpha_s * b_h - w_prev - w_s
    zero = torch.zeros_like(b_h)
    history = _stack(dtype, zero, zero, sigma_ratio(g_s, g_t), w_d, zero, w_prev)
    correct = _stack(dtype, a_z, a_m, zero, zero, w_s, torch.ones_like(b_h))
    return history, correct


def denoise_coeffs(gamma, parameterization: str = "eps") -> torch.Tensor:
    """The step that returns x̂ itself, (a_z, a_m, 0, 0, 1, 0) at level gamma: Tweedie's denoising
    step (NCSNv2's last step, diffusers' ``pred_original_sample``)."""
    g, dtype = _levels(gamma)
    alpha, sigma = alpha_sigma(g)
    a_z, a_m = x0_coeffs(parameterization, alpha, sigma)
    zero = torch.zeros_like(alpha)
    return _stack(dtype, a_z, a_m, zero, zero, torch.ones_like(alpha), zero)


__all__ = [
    "VARIANCES", "BUILD_DTYPE", "uniform_times", "discrete_times", "gammas", "ancestral_coeffs", "ddim_coeffs",
    "langevin_coeffs", "annealed_langevin_step_sizes", "reverse_diffusion_coeffs", "langevin_corrector_coeffs",
    "ode_euler_coeffs", "ode_heun_coeffs", "euler_ancestral_coeffs", "SOLVER_TYPES", "dpmpp_2m_coeffs",
    "unipc_corrector_coeffs", "denoise_coeffs",
]
__dir__ = public_dir(__all__)
