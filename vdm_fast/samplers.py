"""Samplers: per-sample coefficient builders and sampling loops on the fused ``reverse_step`` op
(DESIGN.md §4.6, §5).

Every sampler step here is one call of :func:`vdm_fast.reverse_step`::

    x̂      = a_z z + a_m m                 (clamped to [-clip, clip] when clip is given)
    z_next = c_z z + c_m m + c_x x̂ + c_n n

with m the model output (after guidance) and six per-sample scalars. This module turns
(schedule, t, s, parameterization, sampler) into those scalars; the loops evaluate the model and
call the op. Everything is written in terms of gamma = -log SNR (DESIGN.md §2):
alpha² = sigmoid(-gamma), sigma² = sigmoid(gamma), with ratios taken as exp/expm1/softplus of
gamma differences so that nothing cancels at either end of a schedule.

Builders take ``gamma_t`` (the noisier level, where the model is evaluated) and ``gamma_s`` (the
level stepped to) as tensors of any broadcastable shape and return the six scalars
(a_z, a_m, c_z, c_m, c_x, c_n) stacked at dim -2: a (6, B) tensor for (B,) gammas (exactly what
``reverse_step`` takes), a (K, 6, B) table for (K, B) gammas (one row per step).
``gamma_s = -inf`` is the clean level (alpha = 1, sigma = 0): the last step of a discrete
diffusers grid (``prev_t < 0``).

Time grids (``times``): a descending 1-D tensor of K + 1 levels (K steps, step i goes from
times[i] to times[i + 1]) or a (K + 1, B) tensor (per-sample times). Continuous schedules (anything
with ``gamma(t)``: ``LinearGamma``, learned schedules) take float times in [0, 1]:
:func:`uniform_times` gives 1 → 0. Discrete tables (``DiscreteSchedule``) take integer timesteps;
a negative timestep is the clean level: :func:`discrete_times` gives diffusers' grids ending in -1.

The loops return z at the last level of ``times``: for continuous schedules that is z_0 (t = 0,
still carrying the noise sigma_0 of the schedule; decode it as VDM does), for a discrete grid
ending in -1 it is the sample x.

No host-device synchronisation inside a loop: gamma and the coefficient tables for the whole
grid are built on the data's device before the first step, and the noise is drawn inside
``reverse_step``'s kernel (counter-based Philox, DESIGN.md §6: one 64-bit seed drawn from
``generator`` per stochastic step, the same samples on every backend for the same generator
state). Each loop tells ``reverse_step`` whether its steps are stochastic, so nothing looks at c_n
on the host. The only per-step coefficient work is the predictor-corrector's step-size rule, done
with torch ops on the device (its corrector needs the noise's norm, so there the noise is drawn
first with ``vdm_fast.randn_like``, the same stream).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from . import guidance as _guidance
from .ops.noise import randn_like
from .ops.reverse_step import reverse_step
from .schedules import DiscreteSchedule, Schedule
from ._namespace import public_dir

PARAMETERIZATIONS = ("eps", "x0", "v", "score")
VARIANCES = ("posterior", "beta")


# --- schedule levels -----------------------------------------------------------------------------


def uniform_times(steps: int, *, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The continuous-time grid t_i = i / steps, descending: [1, 1 - 1/steps, ..., 1/steps, 0].

    ``steps + 1`` levels, i.e. ``steps`` sampler steps, each from t = i/T to s = (i-1)/T
    (DESIGN.md §2). Float32 by default, the dtype models are usually fed.
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


def gammas(schedule, times: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """gamma(times) in ``dtype`` on times' device, for any schedule with ``gamma(t)``.

    Integer ``times`` on a ``DiscreteSchedule`` index its table; negative timesteps give -inf
    (the clean level). Learned schedules are evaluated without building a graph only if the caller
    is under ``torch.no_grad`` (the loops are).
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
    else:  # any other object with gamma(t): evaluated in its own dtype, cast afterwards
        g = schedule.gamma(flat.to(dtype) if flat.is_floating_point() else flat).to(dtype)
    return g.reshape(times.shape)


def _alpha_sigma(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.sigmoid(-g).sqrt(), torch.sigmoid(g).sqrt()


def _check_param(parameterization: str) -> str:
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}")
    return parameterization


def x0_coeffs(parameterization: str, alpha, sigma):
    """(a_z, a_m) with x̂ = a_z z + a_m m (DESIGN.md §2; VP, so alpha² + sigma² = 1)."""
    p = _check_param(parameterization)
    if p == "eps":
        return 1 / alpha, -sigma / alpha
    if p == "x0":
        return torch.zeros_like(alpha), torch.ones_like(alpha)
    if p == "v":
        return alpha, -sigma
    return 1 / alpha, sigma * sigma / alpha  # score: Tweedie, x̂ = (z + sigma² s) / alpha


def eps_coeffs(parameterization: str, alpha, sigma):
    """(e_z, e_m) with ε̂ = e_z z + e_m m."""
    p = _check_param(parameterization)
    if p == "eps":
        return torch.zeros_like(alpha), torch.ones_like(alpha)
    if p == "x0":
        return 1 / sigma, -alpha / sigma
    if p == "v":
        return sigma, alpha
    return torch.zeros_like(alpha), -sigma


def score_coeffs(parameterization: str, alpha, sigma):
    """(s_z, s_m) with score ŝ = ∇_z log q_t(z) = s_z z + s_m m = -ε̂ / sigma."""
    e_z, e_m = eps_coeffs(parameterization, alpha, sigma)
    if parameterization == "score":
        return e_z, torch.ones_like(alpha)
    return -e_z / sigma, -e_m / sigma


def _stack(a_z, a_m, c_z, c_m, c_x, c_n) -> torch.Tensor:
    parts = torch.broadcast_tensors(a_z, a_m, c_z, c_m, c_x, c_n)
    return torch.stack(parts, dim=-2) if parts[0].dim() > 0 else torch.stack(parts)


def _gamma_pair(gamma_t, gamma_s):
    gamma_t, gamma_s = torch.as_tensor(gamma_t), torch.as_tensor(gamma_s)
    if not (gamma_t.is_floating_point() and gamma_s.is_floating_point()):
        raise TypeError("gamma_t and gamma_s must be floating-point tensors (use samplers.gammas)")
    return torch.broadcast_tensors(gamma_t, gamma_s)


# --- coefficient builders ---------------------------------------------------------------------------


def ancestral_coeffs(gamma_t, gamma_s, parameterization: str = "eps", variance: str = "posterior") -> torch.Tensor:
    """Ancestral step z_s ~ p(z_s | z_t) = q(z_s | z_t, x = x̂) (Luo eq. 84; Kingma et al. App. A).

    With c = 1 - SNR(t)/SNR(s) = -expm1(gamma_s - gamma_t):
    mean = (alpha_s/alpha_t)(1 - c) z_t + alpha_s c x̂, and the noise scale is
    ``"posterior"``: sigma_s sqrt(c) (the true posterior; DDPM's sigma² = beta-tilde,
    diffusers' "fixed_small"), or ``"beta"``: sqrt(1 - alpha_t²/alpha_s²) (DDPM's sigma² = beta,
    diffusers' "fixed_large"; zero on a step to the clean level, as diffusers adds no noise there).
    """
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    g_t, g_s = _gamma_pair(gamma_t, gamma_s)
    alpha_t, sigma_t = _alpha_sigma(g_t)
    alpha_s, sigma_s = _alpha_sigma(g_s)
    a_z, a_m = x0_coeffs(parameterization, alpha_t, sigma_t)
    c = -torch.expm1(g_s - g_t)
    # alpha_s / alpha_t = exp((softplus(g_t) - softplus(g_s)) / 2), since log alpha² = -softplus(g).
    sp_t, sp_s = F.softplus(g_t), F.softplus(g_s)
    c_z = torch.exp(0.5 * (sp_t - sp_s) + (g_s - g_t))
    c_x = alpha_s * c
    if variance == "posterior":
        c_n = sigma_s * c.sqrt()
    else:
        beta = -torch.expm1(sp_s - sp_t)
        c_n = torch.where(sigma_s > 0, beta.sqrt(), torch.zeros_like(beta))
    return _stack(a_z, a_m, c_z, torch.zeros_like(c_z), c_x, c_n)


def ddim_coeffs(gamma_t, gamma_s, parameterization: str = "eps", eta=0.0, clipped_eps: bool = False) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12): z_s = alpha_s x̂ + sqrt(sigma_s² - std²) ε̂ + std n,
    std = eta sigma_s sqrt(c) (eta = 1: the ancestral posterior noise; eta per sample allowed).

    ε̂ is the unclipped estimate (diffusers' default); ``clipped_eps=True`` recomputes it from the
    clipped x̂, ε̂ = (z - alpha_t x̂) / sigma_t (diffusers' ``use_clipped_model_output``).
    eta must lie in [0, 1].
    """
    g_t, g_s = _gamma_pair(gamma_t, gamma_s)
    alpha_t, sigma_t = _alpha_sigma(g_t)
    alpha_s, sigma_s = _alpha_sigma(g_s)
    a_z, a_m = x0_coeffs(parameterization, alpha_t, sigma_t)
    c = -torch.expm1(g_s - g_t)
    eta = torch.as_tensor(eta, dtype=g_t.dtype, device=g_t.device)
    std = eta * sigma_s * c.sqrt()
    direction = sigma_s * (1 - eta * eta * c).clamp(min=0).sqrt()
    if clipped_eps:
        c_z, c_m = direction / sigma_t, torch.zeros_like(direction)
        c_x = alpha_s - direction * alpha_t / sigma_t
    else:
        e_z, e_m = eps_coeffs(parameterization, alpha_t, sigma_t)
        c_z, c_m, c_x = direction * e_z, direction * e_m, alpha_s
    return _stack(a_z, a_m, c_z, c_m, c_x, std)


def langevin_coeffs(gamma, step_size, parameterization: str = "score") -> torch.Tensor:
    """One Langevin step at a fixed level (Welling & Teh 2011; NCSN's convention):
    z' = z + (step/2) ŝ(z) + sqrt(step) n, ŝ the score of q_t read from the model output."""
    g = torch.as_tensor(gamma)
    alpha, sigma = _alpha_sigma(g)
    step = torch.as_tensor(step_size, dtype=g.dtype, device=g.device)
    s_z, s_m = score_coeffs(parameterization, alpha, sigma)
    zero = torch.zeros_like(alpha)
    return _stack(zero, zero, 1 + 0.5 * step * s_z, 0.5 * step * s_m, zero, step.sqrt())


def annealed_langevin_step_sizes(gamma_levels, epsilon: float | None = None) -> torch.Tensor:
    """NCSN's step rule (Song & Ermon 2019, Alg. 1): step_i = epsilon * sigmã_i² / sigmã_L², where
    sigmã = sigma/alpha = exp(gamma/2) is the variance-exploding noise level of the VP level gamma
    and L the last (least noisy) level; applied to the VP latent z = alpha x̃ the VE step becomes
    alpha_i² step_i, i.e. ``epsilon * sigma_i² * exp(-gamma_L)``. Geometric sigmã (NCSN) is a
    grid uniform in gamma, e.g. ``uniform_times`` on ``LinearGamma``. ``gamma_levels``: (L,) or (L, B).

    epsilon is tied to sigmã_L (NCSN: 2e-5 for sigmã_L = 0.01); None keeps NCSN's ratio
    epsilon / sigmã_L² = 0.2 whatever the last level, i.e. step_i = 0.2 sigma_i²."""
    g = torch.as_tensor(gamma_levels)
    if epsilon is None:
        return 0.2 * torch.sigmoid(g)
    return epsilon * torch.sigmoid(g) * torch.exp(-g[-1])


def reverse_diffusion_coeffs(gamma_t, gamma_s, parameterization: str = "eps") -> torch.Tensor:
    """score_sde's reverse-diffusion predictor for the VP SDE (Song et al. 2021, App. E, eq. 46):
    z_s = (2 - sqrt(1 - beta)) z_t + beta ŝ + sqrt(beta) n, beta = 1 - alpha_t²/alpha_s².
    A step to the clean level (sigma_s = 0) is the denoising step z_s = x̂."""
    g_t, g_s = _gamma_pair(gamma_t, gamma_s)
    alpha_t, sigma_t = _alpha_sigma(g_t)
    _, sigma_s = _alpha_sigma(g_s)
    a_z, a_m = x0_coeffs(parameterization, alpha_t, sigma_t)
    s_z, s_m = score_coeffs(parameterization, alpha_t, sigma_t)
    sp_t, sp_s = F.softplus(g_t), F.softplus(g_s)
    beta = -torch.expm1(sp_s - sp_t)
    keep = torch.exp(0.5 * (sp_s - sp_t))  # sqrt(1 - beta) = alpha_t / alpha_s
    clean = sigma_s == 0
    zero, one = torch.zeros_like(beta), torch.ones_like(beta)
    c_z = torch.where(clean, zero, 2 - keep + beta * s_z)
    c_m = torch.where(clean, zero, beta * s_m)
    c_x = torch.where(clean, one, zero)
    c_n = torch.where(clean, zero, beta.sqrt())
    return _stack(a_z, a_m, c_z, c_m, c_x, c_n)


def langevin_corrector_coeffs(gamma_t, gamma_s, score_norm, noise_norm, snr: float,
                              parameterization: str = "eps") -> torch.Tensor:
    """score_sde's Langevin corrector at level t (Song et al. 2021, Alg. 5, VP):
    step = 2 a (snr ||n|| / ||ŝ||)², z' = z + step ŝ + sqrt(2 step) n, a = alpha_t²/alpha_s² (the
    1 - beta of the step t → s). ``score_norm``, ``noise_norm``: (B,) norms of ŝ and n (per
    sample, or a batch mean broadcast). A zero score norm is clamped to 1e-30."""
    g_t, g_s = _gamma_pair(gamma_t, gamma_s)
    alpha_t, sigma_t = _alpha_sigma(g_t)
    s_z, s_m = score_coeffs(parameterization, alpha_t, sigma_t)
    a = torch.exp(F.softplus(g_s) - F.softplus(g_t))
    step = 2 * a * (snr * noise_norm / score_norm.clamp(min=1e-30)) ** 2
    zero = torch.zeros_like(step)
    return _stack(zero, zero, 1 + step * s_z, step * s_m, zero, (2 * step).sqrt())


def ode_euler_coeffs(gamma_t, gamma_s, parameterization: str = "eps") -> torch.Tensor:
    """Euler step of the probability-flow ODE in the variables of DDIM eq. 14 / Karras et al.
    (2022): x̃ = z/alpha, sigmã = sigma/alpha = exp(gamma/2), dx̃/dsigmã = (x̃ - x̂)/sigmã.
    In z: z_s = (sigma_s/sigma_t) z_t + alpha_s (1 - sigmã_s/sigmã_t) x̂ (the same as DDIM with
    eta = 0 and ε̂ from the clipped x̂). A step to the clean level gives x̂."""
    g_t, g_s = _gamma_pair(gamma_t, gamma_s)
    alpha_t, sigma_t = _alpha_sigma(g_t)
    alpha_s, _ = _alpha_sigma(g_s)
    a_z, a_m = x0_coeffs(parameterization, alpha_t, sigma_t)
    # sigma_s / sigma_t = exp((log sigmoid(g_s) - log sigmoid(g_t)) / 2), log sigmoid(g) = -softplus(-g).
    c_z = torch.exp(0.5 * (F.softplus(-g_t) - F.softplus(-g_s)))
    c_x = -alpha_s * torch.expm1(0.5 * (g_s - g_t))
    zero = torch.zeros_like(c_z)
    return _stack(a_z, a_m, c_z, zero, c_x, zero)


def ode_heun_coeffs(gamma_t, gamma_s, parameterization: str = "eps") -> torch.Tensor:
    """The correction of Heun's method (Karras et al. 2022, Alg. 1 without churn) as a second
    ``reverse_step`` call. With z' the Euler prediction at level s and m' = model(z', s)::

        z_s = (1 - r/2) z' + (alpha_s/2)(r - 1) x̂(z', m') + alpha_s/(2 alpha_t) z_t,  r = sigmã_t/sigmã_s

    i.e. ``reverse_step(z', m', heun_coeffs, noise=z_t)``: z_t enters through the noise slot, with
    c_n = alpha_s / (2 alpha_t). (z_s = x̃-average of the two slopes, written in z.) Undefined on a
    step to the clean level, where Heun takes the Euler step (Karras et al.)."""
    g_t, g_s = _gamma_pair(gamma_t, gamma_s)
    alpha_t, _ = _alpha_sigma(g_t)
    alpha_s, sigma_s = _alpha_sigma(g_s)
    a_z, a_m = x0_coeffs(parameterization, alpha_s, sigma_s)
    r = torch.exp(0.5 * (g_t - g_s))
    c_x = 0.5 * alpha_s * torch.expm1(0.5 * (g_t - g_s))
    c_n = 0.5 * torch.exp(0.5 * (F.softplus(g_t) - F.softplus(g_s)))
    return _stack(a_z, a_m, 1 - 0.5 * r, torch.zeros_like(r), c_x, c_n)


# --- the loops ------------------------------------------------------------------------------------------


def _compute_dtype(z: torch.Tensor) -> torch.dtype:
    return torch.float64 if z.dtype == torch.float64 else torch.float32


class _Grid:
    """The time grid of one run on the data's device: model times per step and gamma per level."""

    def __init__(self, schedule, times, z: torch.Tensor):
        if not isinstance(z, torch.Tensor) or z.dim() == 0:
            raise TypeError("z must be a torch.Tensor with a batch dimension")
        times = torch.as_tensor(times).to(z.device)
        batch = z.shape[0]
        if times.dim() == 1:
            times = times[:, None].expand(-1, batch)
        if times.dim() != 2 or times.shape[1] != batch or times.shape[0] < 2:
            raise ValueError(f"times must have shape (K+1,) or (K+1, {batch}) with K >= 1 steps, "
                             f"got {tuple(torch.as_tensor(times).shape)}")
        self.times = times.contiguous()  # (K+1, B): what the model is fed, row by row
        self.cdt = _compute_dtype(z)
        with torch.no_grad():
            self.gamma = gammas(schedule, self.times, self.cdt)  # (K+1, B)
        self.steps = times.shape[0] - 1

    def alpha_sigma(self, i: int):
        return _alpha_sigma(self.gamma[i])


class _Evaluator:
    """Calls the user's model and turns guidance into reverse_step arguments.

    model: ``model(z, t) -> m``, or a ``guidance.ClassifierFree`` (then ``guidance_scale`` is
    required); ``classifier``: a ``guidance.Classifier`` with ``classifier_scale``.
    """

    def __init__(self, model, parameterization, guidance_scale, classifier, classifier_scale, z):
        self.model = model
        self.param = _check_param(parameterization)
        self.cfg = isinstance(model, _guidance.ClassifierFree)
        batch, dev, cdt = z.shape[0], z.device, _compute_dtype(z)
        if self.cfg and guidance_scale is None:
            raise ValueError("guidance_scale is required with a classifier-free guided model")
        if not self.cfg and guidance_scale is not None:
            raise ValueError("guidance_scale needs a guided model: wrap it with guidance.classifier_free(...)")
        if not self.cfg and not callable(model):
            raise TypeError(f"model must be callable as model(z, t), got {type(model).__name__}")
        self.w = None if guidance_scale is None else _per_sample("guidance_scale", guidance_scale, batch, dev, cdt)
        if (classifier is None) != (classifier_scale is None):
            raise ValueError("classifier and classifier_scale go together")
        if classifier is not None and not isinstance(classifier, _guidance.Classifier):
            raise TypeError("classifier must be a guidance.Classifier (guidance.classifier(fn, labels))")
        self.classifier = classifier
        self.cs = None if classifier is None else _per_sample("classifier_scale", classifier_scale, batch, dev, cdt)

    def __call__(self, z, t, alpha, sigma):
        """(m, kwargs for reverse_step) at latent z, times t (B,), level (alpha, sigma)."""
        kwargs = {}
        # Outputs are cast to z's dtype (a no-op unless the model runs under autocast, say).
        if self.cfg:
            m, uncond = self.model.outputs(z, t)
            kwargs.update(uncond=uncond.to(z.dtype), guidance_scale=self.w)
        else:
            m = self.model(z, t)
        m = m.to(z.dtype)
        if self.classifier is not None:
            kwargs.update(classifier_grad=self.classifier.grad(z, t),
                          grad_scale=_guidance.classifier_grad_scale(self.param, alpha, sigma, self.cs))
        return m, kwargs

    def combined(self, z, t, alpha, sigma) -> torch.Tensor:
        """The guided model output as a tensor (for samplers that need its norm)."""
        m, kw = self(z, t, alpha, sigma)
        return _guidance.guided_output(m, kw.get("uncond"), kw.get("guidance_scale"),
                                       kw.get("classifier_grad"), kw.get("grad_scale"))


def _per_sample(name, value, batch, device, dtype) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        v = value.to(device, dtype)
    else:
        v = torch.as_tensor(value, dtype=dtype, device=device)
    if v.dim() == 0:
        v = v.expand(batch)
    if v.shape != (batch,):
        raise ValueError(f"{name} must be a float or a ({batch},) tensor, got shape {tuple(v.shape)}")
    return v.contiguous()


def _range(n: int, progress: bool, desc: str):
    if not progress:
        return range(n)
    from tqdm.auto import tqdm  # optional dependency, imported only when asked for

    return tqdm(range(n), desc=desc)


def _run_two_level(coeff_fn, model, z, schedule, times, *, parameterization, guidance_scale, classifier,
                   classifier_scale, clip, generator, stochastic, progress, callback, backend, desc):
    """The loop shared by ancestral and DDIM: one model call and one reverse_step per step."""
    grid = _Grid(schedule, times, z)
    ev = _Evaluator(model, parameterization, guidance_scale, classifier, classifier_scale, z)
    with torch.no_grad():
        table = coeff_fn(grid.gamma[:-1], grid.gamma[1:])  # (K, 6, B)
    with torch.no_grad():
        for i in _range(grid.steps, progress, desc):
            alpha, sigma = grid.alpha_sigma(i)
            m, kw = ev(z, grid.times[i], alpha, sigma)
            z = reverse_step(z, m, table[i], clip=clip, generator=generator, stochastic=stochastic, backend=backend,
                             **kw)
            if callback is not None:
                callback(i, grid.times[i + 1], z)
    return z


def sample_ancestral(model, z: torch.Tensor, schedule, times, *, parameterization: str = "eps",
                     variance: str = "posterior", guidance_scale=None, classifier=None, classifier_scale=None,
                     clip: float | None = None, generator: torch.Generator | None = None, progress: bool = False,
                     callback: Callable | None = None, backend: str | None = None) -> torch.Tensor:
    """Ancestral sampling (DDPM / VDM): z_{times[i+1]} ~ q(z_s | z_t, x̂) for every step of ``times``.

    Args:
        model: ``model(z, t) -> m`` (t: (B,) times, float or integer as in ``times``), or a
            ``guidance.ClassifierFree`` model with ``guidance_scale``.
        z: the starting latent at times[0] (usually standard normal), shape (B, ...).
        schedule: anything with ``gamma(t)``, or a ``DiscreteSchedule`` with integer times.
        times: descending grid, (K+1,) or (K+1, B): see the module docstring.
        parameterization: what the model outputs: "eps", "x0", "v" or "score".
        variance: "posterior" (beta-tilde) or "beta" (see :func:`ancestral_coeffs`).
        guidance_scale: classifier-free scale w per sample (w = 1: conditional model).
        classifier, classifier_scale: classifier guidance (``guidance.classifier``), scale per sample.
        clip: clamp x̂ to [-clip, clip]. generator: for the noise. progress: tqdm bar.
        callback: ``callback(i, t, z)`` after step i, z at level t = times[i + 1].
        backend: the reverse_step backend.
    Returns:
        z at the last level of ``times``.
    """
    return _run_two_level(lambda gt, gs: ancestral_coeffs(gt, gs, parameterization, variance), model, z, schedule,
                          times, parameterization=parameterization, guidance_scale=guidance_scale,
                          classifier=classifier, classifier_scale=classifier_scale, clip=clip, generator=generator,
                          stochastic=True, progress=progress, callback=callback, backend=backend, desc="ancestral")


def sample_ddim(model, z: torch.Tensor, schedule, times, *, eta=0.0, parameterization: str = "eps",
                clipped_eps: bool = False, guidance_scale=None, classifier=None, classifier_scale=None,
                clip: float | None = None, generator: torch.Generator | None = None, progress: bool = False,
                callback: Callable | None = None, backend: str | None = None) -> torch.Tensor:
    """DDIM(eta) sampling over ``times`` (see :func:`ddim_coeffs`; arguments as :func:`sample_ancestral`).
    With a float ``eta == 0`` the run is deterministic and draws no noise."""
    stochastic = not (isinstance(eta, (int, float)) and eta == 0)
    return _run_two_level(lambda gt, gs: ddim_coeffs(gt, gs, parameterization, eta, clipped_eps), model, z, schedule,
                          times, parameterization=parameterization, guidance_scale=guidance_scale,
                          classifier=classifier, classifier_scale=classifier_scale, clip=clip, generator=generator,
                          stochastic=stochastic, progress=progress, callback=callback, backend=backend, desc="ddim")


def sample_langevin(model, z: torch.Tensor, schedule, t, n_steps: int, step_size, *, parameterization: str = "score",
                    guidance_scale=None, classifier=None, classifier_scale=None,
                    generator: torch.Generator | None = None, progress: bool = False, callback: Callable | None = None,
                    backend: str | None = None) -> torch.Tensor:
    """Langevin dynamics at one fixed level t (float or (B,) per sample): ``n_steps`` steps of
    :func:`langevin_coeffs` with ``step_size`` (float or (B,)). Samples q_t, the data noised to t."""
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive int, got {n_steps!r}")
    t = torch.as_tensor(t)
    grid = _Grid(schedule, torch.stack([t, t]) if t.dim() <= 1 else t, z)
    ev = _Evaluator(model, parameterization, guidance_scale, classifier, classifier_scale, z)
    step = _per_sample("step_size", step_size, z.shape[0], z.device, grid.cdt)
    with torch.no_grad():
        coeffs = langevin_coeffs(grid.gamma[0], step, parameterization)
        alpha, sigma = grid.alpha_sigma(0)
        for k in _range(n_steps, progress, "langevin"):
            m, kw = ev(z, grid.times[0], alpha, sigma)
            z = reverse_step(z, m, coeffs, generator=generator, stochastic=True, backend=backend, **kw)
            if callback is not None:
                callback(k, grid.times[0], z)
    return z


def sample_annealed_langevin(model, z: torch.Tensor, schedule, times, *, n_steps_each: int = 100,
                             epsilon: float | None = None, parameterization: str = "score", denoise: bool = False,
                             guidance_scale=None, classifier=None, classifier_scale=None,
                             generator: torch.Generator | None = None, progress: bool = False,
                             callback: Callable | None = None, backend: str | None = None) -> torch.Tensor:
    """Annealed Langevin dynamics (NCSN; Song & Ermon 2019, Alg. 1): for every level of ``times``
    (all K+1 of them, noisiest first), ``n_steps_each`` Langevin steps with step size
    :func:`annealed_langevin_step_sizes` (epsilon; None: NCSN's ratio to the last level).
    Returns z at the last level, or with ``denoise=True`` the Tweedie estimate x̂ there (NCSNv2's
    final denoising step, one more model call).
    ``callback(k, t, z)`` after every Langevin step k (counted over all levels)."""
    if not isinstance(n_steps_each, int) or n_steps_each < 1:
        raise ValueError(f"n_steps_each must be a positive int, got {n_steps_each!r}")
    grid = _Grid(schedule, times, z)
    ev = _Evaluator(model, parameterization, guidance_scale, classifier, classifier_scale, z)
    with torch.no_grad():
        steps = annealed_langevin_step_sizes(grid.gamma, epsilon)
        table = langevin_coeffs(grid.gamma, steps, parameterization)  # (L, 6, B)
        total = grid.times.shape[0] * n_steps_each
        for k in _range(total, progress, "annealed langevin"):
            i = k // n_steps_each
            alpha, sigma = grid.alpha_sigma(i)
            m, kw = ev(z, grid.times[i], alpha, sigma)
            z = reverse_step(z, m, table[i], generator=generator, stochastic=True, backend=backend, **kw)
            if callback is not None:
                callback(k, grid.times[i], z)
        if denoise:
            z = _denoise(ev, z, grid, parameterization, backend)
    return z


def _denoise(ev: _Evaluator, z, grid: _Grid, parameterization: str, backend) -> torch.Tensor:
    """z -> x̂(z) at the last level of the grid, as one reverse_step (c_x = 1)."""
    alpha, sigma = grid.alpha_sigma(-1)
    a_z, a_m = x0_coeffs(parameterization, alpha, sigma)
    zero = torch.zeros_like(alpha)
    m, kw = ev(z, grid.times[-1], alpha, sigma)
    return reverse_step(z, m, _stack(a_z, a_m, zero, zero, torch.ones_like(alpha), zero), stochastic=False,
                        backend=backend, **kw)


def sample_pc(model, z: torch.Tensor, schedule, times, *, snr: float = 0.16, n_corrector: int = 1,
              parameterization: str = "eps", norm: str = "sample", guidance_scale=None, classifier=None,
              classifier_scale=None, generator: torch.Generator | None = None, progress: bool = False,
              callback: Callable | None = None, backend: str | None = None) -> torch.Tensor:
    """Predictor-corrector sampling (Song et al. 2021, Alg. 3 / score_sde's ``pc_sampler``): at each
    step, ``n_corrector`` Langevin corrector steps at level t (:func:`langevin_corrector_coeffs`,
    signal-to-noise ratio ``snr``), then the reverse-diffusion predictor t → s
    (:func:`reverse_diffusion_coeffs`).

    ``norm``: "sample" takes ||ŝ|| and ||n|| per sample; "batch" their batch means (score_sde).
    The corrector's coefficients depend on the norms, so they are built each step with torch ops
    on the device (no host synchronisation); the guided model output is materialised to take
    ||ŝ|| (ŝ = s_z z + s_m m).
    """
    if norm not in ("sample", "batch"):
        raise ValueError(f"norm must be 'sample' or 'batch', got {norm!r}")
    if not isinstance(n_corrector, int) or n_corrector < 0:
        raise ValueError(f"n_corrector must be an int >= 0, got {n_corrector!r}")
    grid = _Grid(schedule, times, z)
    ev = _Evaluator(model, parameterization, guidance_scale, classifier, classifier_scale, z)
    cdt = grid.cdt

    def norms(x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1) if x.dim() > 1 else x[:, None]  # reshape(B, -1) fails for B = 0
        n = torch.linalg.vector_norm(flat.to(cdt), dim=1)
        return n.mean().expand_as(n) if norm == "batch" else n

    with torch.no_grad():
        predictor = reverse_diffusion_coeffs(grid.gamma[:-1], grid.gamma[1:], parameterization)
        for i in _range(grid.steps, progress, "pc"):
            t, alpha, sigma = grid.times[i], *grid.alpha_sigma(i)
            s_z, s_m = score_coeffs(parameterization, alpha, sigma)
            for _ in range(n_corrector):
                m = ev.combined(z, t, alpha, sigma)
                score = _bcast(s_z, z) * z.to(cdt) + _bcast(s_m, z) * m.to(cdt)
                n = randn_like(z, generator)  # materialised: the step size needs its norm
                coeffs = langevin_corrector_coeffs(grid.gamma[i], grid.gamma[i + 1], norms(score), norms(n), snr,
                                                   parameterization)
                z = reverse_step(z, m, coeffs, noise=n, backend=backend)
            m, kw = ev(z, t, alpha, sigma)
            z = reverse_step(z, m, predictor[i], generator=generator, stochastic=True, backend=backend, **kw)
            if callback is not None:
                callback(i, grid.times[i + 1], z)
    return z


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


def sample_ode(model, z: torch.Tensor, schedule, times, *, method: str = "heun", parameterization: str = "eps",
               guidance_scale=None, classifier=None, classifier_scale=None, clip: float | None = None,
               progress: bool = False, callback: Callable | None = None, backend: str | None = None) -> torch.Tensor:
    """Deterministic sampling with the probability-flow ODE: ``method`` "euler" (one model call
    per step, :func:`ode_euler_coeffs`) or "heun" (two, :func:`ode_heun_coeffs`; two reverse_step
    calls per step, the second taking z_t through its noise slot). Heun's correction is skipped on
    a step to the clean level (a discrete grid ending in -1), decided once before the loop (the
    one host read of a sampler here, and only for integer grids)."""
    if method not in ("euler", "heun"):
        raise ValueError(f"method must be 'euler' or 'heun', got {method!r}")
    grid = _Grid(schedule, times, z)
    ev = _Evaluator(model, parameterization, guidance_scale, classifier, classifier_scale, z)
    last_clean = False
    if method == "heun" and not grid.times.is_floating_point():
        last = grid.times[-1]
        last_clean = bool((last < 0).all().item())  # once, before the loop
        if not last_clean and bool((last < 0).any().item()):
            raise ValueError("sample_ode: the last level must be clean (t < 0) for all samples or for none")
    with torch.no_grad():
        euler = ode_euler_coeffs(grid.gamma[:-1], grid.gamma[1:], parameterization)
        heun = ode_heun_coeffs(grid.gamma[:-1], grid.gamma[1:], parameterization)
        for i in _range(grid.steps, progress, f"ode ({method})"):
            alpha, sigma = grid.alpha_sigma(i)
            m, kw = ev(z, grid.times[i], alpha, sigma)
            z_pred = reverse_step(z, m, euler[i], clip=clip, stochastic=False, backend=backend, **kw)
            if method == "heun" and not (last_clean and i == grid.steps - 1):
                alpha_s, sigma_s = grid.alpha_sigma(i + 1)
                m2, kw2 = ev(z_pred, grid.times[i + 1], alpha_s, sigma_s)
                z_pred = reverse_step(z_pred, m2, heun[i], clip=clip, noise=z, backend=backend, **kw2)
            z = z_pred
            if callback is not None:
                callback(i, grid.times[i + 1], z)
    return z


__all__ = [
    "PARAMETERIZATIONS", "uniform_times", "discrete_times", "gammas", "x0_coeffs", "eps_coeffs", "score_coeffs",
    "ancestral_coeffs", "ddim_coeffs", "langevin_coeffs", "annealed_langevin_step_sizes", "reverse_diffusion_coeffs",
    "langevin_corrector_coeffs", "ode_euler_coeffs", "ode_heun_coeffs", "sample_ancestral", "sample_ddim",
    "sample_langevin", "sample_annealed_langevin", "sample_pc", "sample_ode",
]
__dir__ = public_dir(__all__)
