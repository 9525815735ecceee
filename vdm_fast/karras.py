"""Karras (EDM) noise grids and k-diffusion's denoiser interface, on vdm_fast's schedules.

Karras et al. (2022) and k-diffusion write a diffusion in the variance-exploding variables
x̃ = z/alpha and sigmã = sigma/alpha = exp(gamma/2), with a denoiser D(x̃, sigmã) ≈ E[x | x̃]. vdm_fast
samples in z (variance preserving) with a model m(z, t) and a schedule gamma(t); the two are the
same process (DESIGN.md §2), and this module translates:

- :class:`SigmaSchedule`: sigmã itself as the time variable (t = sigmã, gamma(t) = 2 log t, t = 0
  the clean level), so a k-diffusion grid of sigmas *is* a ``times`` grid for the samplers.
- :func:`karras_sigmas` (EDM eq. 5, k-diffusion's ``get_sigmas_karras``) and :func:`karras_times`,
  the same levels as times of any schedule: fractional timesteps of a table (what diffusers'
  ``use_karras_sigmas`` feeds the model), run on :class:`FractionalSchedule` (the table read between
  its entries), times in [0, 1] of a continuous schedule.
- :func:`from_denoiser`: a k-diffusion model D(x̃, sigmã) as a vdm_fast ``model(z, t)`` on
  :class:`SigmaSchedule` (parameterization ``"x0"``), so it runs in every sampler of
  ``vdm_fast.samplers``; :class:`Denoiser` goes the other way (a vdm_fast model and schedule as
  D(x̃, sigmã), for k-diffusion's own samplers).

Fractional timesteps of a table are linear in gamma between neighbouring entries, i.e. linear in
log sigmã: k-diffusion's ``DiscreteSchedule.t_to_sigma`` and diffusers' ``_sigma_to_t``.
"""

from __future__ import annotations

import torch

from . import parameterization as _param
from .schedules import DiscreteSchedule, Schedule
from ._namespace import public_dir

_BISECTIONS = 64  # halvings of [0, 1]: below float64's resolution of t


class SigmaSchedule(Schedule):
    """Time is the variance-exploding noise level: t = sigmã = sigma/alpha >= 0, gamma(t) = 2 log t.

    t = 0 is the clean level (gamma = -inf). A grid of sigmas (k-diffusion's, or
    :func:`karras_sigmas`) is the ``times`` of a sampler run on this schedule, and a model on it
    receives sigmã as its time argument (what k-diffusion's denoisers take).
    """

    def gamma(self, t, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        t = torch.as_tensor(t)
        if not t.is_floating_point():
            raise TypeError(f"SigmaSchedule: t must be floating-point noise levels sigma >= 0, got dtype {t.dtype}")
        if t.numel():
            torch._assert_async(((t >= 0) & ~t.isnan()).all(), "SigmaSchedule: t (the noise level sigma) must be >= 0")
        return 2 * torch.log(t.to(dtype))


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0, *,
                  dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """The EDM grid (Karras et al. 2022, eq. 5), descending, followed by 0 (the clean level):
    sigma_i = (sigma_max^(1/rho) + i/(steps-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho for
    i = 0..steps-1, as k-diffusion's ``get_sigmas_karras``. ``steps + 1`` levels: ``steps`` sampler
    steps, the last one to sigma = 0. Times for :class:`SigmaSchedule`."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"sigma_min and sigma_max must satisfy 0 < sigma_min < sigma_max, got {sigma_min}, "
                         f"{sigma_max}")
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(device=device, dtype=dtype)


def interpolated_gamma(schedule: DiscreteSchedule, t: torch.Tensor, dtype: torch.dtype = torch.float64):
    """gamma of a table at fractional timesteps t in [0, T-1], linear between neighbouring entries
    (linear in log sigmã: k-diffusion's ``t_to_sigma``); t < 0 is the clean level (-inf)."""
    t = torch.as_tensor(t)
    table = schedule.gammas.to(device=t.device, dtype=torch.float64)
    last = schedule.num_timesteps - 1
    if t.numel():
        torch._assert_async((t <= last).all() & ~t.isnan().any(),
                            f"t: fractional timesteps must lie in [0, {last}] (or be < 0, the clean level)")
    u = t.to(torch.float64).clamp(0, last)
    low = u.floor().long().clamp(max=max(last - 1, 0))
    high = (low + 1).clamp(max=last)
    w = u - low
    g = torch.lerp(table[low], table[high], w)
    return torch.where(t < 0, torch.full_like(g, -float("inf")), g).to(dtype)


class FractionalSchedule(Schedule):
    """A ``DiscreteSchedule`` read at fractional timesteps: gamma(t) for float t in [0, T-1] is
    :func:`interpolated_gamma` (linear between neighbouring entries, i.e. in log sigmã), t < 0 the
    clean level; integer t index the table as before. The schedule a Karras grid of a table
    (:func:`karras_times`) runs on: a plain ``DiscreteSchedule`` refuses float times, so that
    continuous times in [0, 1] passed to a table by mistake raise rather than read timesteps 0..1."""

    def __init__(self, table: DiscreteSchedule):
        if not isinstance(table, DiscreteSchedule):
            raise TypeError(f"table must be a DiscreteSchedule, got {type(table).__name__}")
        self.table = table

    @property
    def num_timesteps(self) -> int:
        return self.table.num_timesteps

    def gamma(self, t, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        # Integer timesteps need no branch of their own: the interpolation weight is 0 there, and
        # lerp returns the entry exactly.
        return interpolated_gamma(self.table, t, dtype)


def times_for_gammas(schedule, gamma: torch.Tensor) -> torch.Tensor:
    """The times at which ``schedule`` reaches the levels ``gamma`` (float64 tensor, any shape):
    sigmã = exp(gamma/2) for :class:`SigmaSchedule`; fractional timesteps for a ``DiscreteSchedule``
    (the inverse of :func:`interpolated_gamma`, -1 for gamma = -inf); for a continuous schedule
    (increasing gamma on [0, 1]) t found by bisection in float64. Levels outside a schedule's range
    are clamped to its ends (t = 0 or 1, timestep 0 or T-1)."""
    g = torch.as_tensor(gamma, dtype=torch.float64)
    if isinstance(schedule, SigmaSchedule):
        return torch.exp(0.5 * g)
    if isinstance(schedule, FractionalSchedule):
        schedule = schedule.table
    if isinstance(schedule, DiscreteSchedule):
        table = schedule.gammas.to(g.device)
        last = schedule.num_timesteps - 1
        if last == 0:
            return torch.where(torch.isinf(g) & (g < 0), torch.full_like(g, -1.0), torch.zeros_like(g))
        high = torch.searchsorted(table, g.contiguous()).clamp(1, last)
        low = high - 1
        w = ((g - table[low]) / (table[high] - table[low])).clamp(0, 1)
        t = low + w
        return torch.where(torch.isinf(g) & (g < 0), torch.full_like(t, -1.0), t)
    if not hasattr(schedule, "gamma"):
        raise TypeError(f"schedule must have a gamma(t) method, got {type(schedule).__name__}")
    lo, hi = torch.zeros_like(g), torch.ones_like(g)
    with torch.no_grad():
        for _ in range(_BISECTIONS):
            mid = 0.5 * (lo + hi)
            below = _gamma64(schedule, mid) < g
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return 0.5 * (lo + hi)


def _gamma64(schedule, t: torch.Tensor) -> torch.Tensor:
    if isinstance(schedule, Schedule):
        return schedule.gamma(t.reshape(-1), torch.float64).reshape(t.shape).to(torch.float64)
    return schedule.gamma(t.reshape(-1)).reshape(t.shape).to(torch.float64)


def karras_times(schedule, steps: int, *, rho: float = 7.0, sigma_min: float | None = None,
                 sigma_max: float | None = None, device=None) -> torch.Tensor:
    """The Karras grid of :func:`karras_sigmas` as ``times`` of ``schedule``, for the samplers.

    - :class:`SigmaSchedule`: the sigmas themselves, ending in 0 (the last step denoises).
    - ``DiscreteSchedule`` (or a :class:`FractionalSchedule` of one): fractional timesteps (float64),
      followed by -1 (the clean level), as diffusers' schedulers with ``use_karras_sigmas=True`` set
      them; run them on ``FractionalSchedule(table)``; the model receives fractional timesteps.
      sigma_min/sigma_max default to the table's first and last sigmã.
    - continuous schedules (anything else with an increasing ``gamma(t)`` on [0, 1]): times in
      [0, 1] (float64) from 1 down to the time of sigma_min, with no clean level appended (the other
      continuous grids end at t = 0 too); the range defaults to [sigmã(0), sigmã(1)].
    """
    if isinstance(schedule, SigmaSchedule):
        if sigma_min is None or sigma_max is None:
            raise ValueError("SigmaSchedule: karras_times needs sigma_min and sigma_max")
        return karras_sigmas(steps, sigma_min, sigma_max, rho, device=device)
    if isinstance(schedule, FractionalSchedule):
        schedule = schedule.table
    if isinstance(schedule, DiscreteSchedule):
        ends = torch.exp(0.5 * schedule.gammas[[0, -1]])
    else:
        ends = torch.exp(0.5 * _gamma64(schedule, torch.tensor([0.0, 1.0], dtype=torch.float64)))
    lo = float(ends[0]) if sigma_min is None else float(sigma_min)
    hi = float(ends[1]) if sigma_max is None else float(sigma_max)
    sigmas = karras_sigmas(steps, lo, hi, rho)
    if not isinstance(schedule, DiscreteSchedule):
        sigmas = sigmas[:-1]
        if steps == 1:
            raise ValueError("steps: a continuous schedule's Karras grid needs steps >= 2 (it ends at sigma_min, "
                             "not at the clean level)")
    return times_for_gammas(schedule, 2 * torch.log(sigmas)).to(device)


def _as_batch(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


class from_denoiser:  # noqa: N801 (used like a function: model = from_denoiser(D))
    """A k-diffusion denoiser D(x̃, sigmã) -> x̂ as a vdm_fast ``model(z, t)`` on :class:`SigmaSchedule`,
    parameterization ``"x0"``: z = x̃ / sqrt(1 + sigmã²), so the model evaluates D(z sqrt(1 + t²), t)
    (one scaling of z per call, the inverse of diffusers' ``scale_model_input``). Start a run from
    z ~ N(0, sigma_max² / (1 + sigma_max²) I), k-diffusion's x̃ = sigma_max n in z; at the clean level
    (sigmã = 0) z = x̃ = x."""

    def __init__(self, denoiser):
        if not callable(denoiser):
            raise TypeError(f"denoiser must be callable as denoiser(x, sigma), got {type(denoiser).__name__}")
        self.denoiser = denoiser

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        scale = torch.sqrt(1 + sigma.to(torch.float64) ** 2).to(z.dtype)
        return self.denoiser(z * _as_batch(scale, z), sigma.to(z.dtype))


class Denoiser:
    """A vdm_fast model and schedule as a k-diffusion denoiser D(x̃, sigmã) -> x̂.

    ``model(z, t)`` outputs ``parameterization`` on ``schedule``; D evaluates it at
    z = x̃ / sqrt(1 + sigmã²) and the time of level sigmã (:func:`times_for_gammas`: fractional
    timesteps on a table) and returns x̂. sigma: a float or a (B,) tensor."""

    def __init__(self, model, schedule, parameterization: str = "eps"):
        self.model, self.schedule = model, schedule
        self.parameterization = _param.check(parameterization)

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
        if sigma.dim() == 0:
            sigma = sigma.expand(x.shape[0])
        g = 2 * torch.log(sigma)
        alpha, sig = _param.alpha_sigma(g)
        z = x * _as_batch(alpha.to(x.dtype), x)
        m = self.model(z, times_for_gammas(self.schedule, g).to(x.dtype))  # fractional timesteps on a table
        a_z, a_m = _param.x0_coeffs(self.parameterization, alpha, sig)
        return (_as_batch(a_z, x) * z.double() + _as_batch(a_m, x) * m.double()).to(x.dtype)


__all__ = ["SigmaSchedule", "FractionalSchedule", "karras_sigmas", "karras_times", "interpolated_gamma",
           "times_for_gammas", "from_denoiser", "Denoiser"]
__dir__ = public_dir(__all__)
