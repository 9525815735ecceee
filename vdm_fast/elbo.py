"""The variational lower bound of a diffusion model and training losses built on it (DESIGN.md §3).

-log p(x) <= L_recon + L_prior + L_diff, per sample, in nats (Kingma et al. 2021, eqs. 11-17;
Luo 2022, eq. 58). Everything that depends on the schedule is a per-sample scalar computed here
once (coefficient builders, DESIGN.md §1); the passes over the data are the public ops
``q_sample``, ``sq_error``, ``prior_kl`` and ``recon_nll``, which are differentiable in alpha and
sigma, so a learned schedule (``LearnedLinearGamma``, ``MonotoneGamma``) trains through them.

- L_recon = -log p(x | z_0), z_0 = alpha_0 x + sigma_0 eps', VDM's categorical decoder.
- L_prior = KL(q(z_1 | x) || N(0, I)).
- L_diff, continuous time: 1/2 gamma'(t) ||eps - eps_hat||^2, t ~ U(0, 1).
- L_diff, T steps (t = i/T, s = (i-1)/T, i ~ U{1..T}): (T/2) expm1(gamma_t - gamma_s) ||eps - eps_hat||^2.

Models may output any parameterization of DESIGN.md §2. The squared error is taken against that
parameterization's own target (``sq_error``) and multiplied by a weight that converts it
(``vdm_fast.parameterization.sq_error_scale``, DESIGN.md §2's identity of squared errors). The
weights are written so that they stay finite at zero terminal SNR (gamma_1 = +inf) wherever the
bound itself is: the T-step x0 and v weights are built from exp(-gamma_s) (1 - exp(-(gamma_t -
gamma_s))), never from a difference of infinities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from ._checks import _plain, compute_dtype, within
from .ops import prior_kl, q_sample, recon_nll, sq_error
from .parameterization import PARAMETERIZATIONS, alpha_sigma, check, one_minus_snr_ratio, snr, sq_error_scale
from .schedules import DiscreteSchedule, Schedule
from ._namespace import public_dir
WEIGHTINGS = ("elbo", "simple", "min_snr")
LN2 = math.log(2.0)


@dataclass(frozen=True)
class BitsPerDim:
    """Per-sample ELBO terms in bits/dim, each (B,)."""

    recon: torch.Tensor
    prior: torch.Tensor
    diffusion: torch.Tensor
    total: torch.Tensor


@dataclass(frozen=True)
class ELBOTerms:
    """Per-sample ELBO terms in nats, each (B,), summed over the ``num_dims`` non-batch elements."""

    recon: torch.Tensor
    prior: torch.Tensor
    diffusion: torch.Tensor
    num_dims: int

    @property
    def total(self) -> torch.Tensor:
        """The negative ELBO, an upper bound on -log p(x) (nats, (B,))."""
        return self.recon + self.prior + self.diffusion

    @property
    def bpd(self) -> torch.Tensor:
        """``total`` in bits/dim, (B,)."""
        return self.total / (self.num_dims * LN2)

    def bpd_terms(self) -> BitsPerDim:
        """Every term in bits/dim (nats / (D ln 2))."""
        k = 1.0 / (self.num_dims * LN2)
        return BitsPerDim(self.recon * k, self.prior * k, self.diffusion * k, self.total * k)


# --- time sampling ------------------------------------------------------------------------------


def sample_time(n: int, antithetic: bool = True, generator: torch.Generator | None = None, *,
                device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """n times in [0, 1). Antithetic (low-discrepancy, VDM): t_b = (u + b/n) mod 1 with one
    u ~ U(0, 1), so the batch covers [0, 1) evenly (DESIGN.md §3); else n i.i.d. uniforms.

    Drawn on the generator's device (the CPU without one), returned on ``device`` if given.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    where = generator.device if generator is not None else torch.device("cpu")
    if antithetic:
        u = torch.rand((), generator=generator, device=where, dtype=dtype)
        # remainder of a value in [0, 2) is exact in binary floating point: the result is in [0, 1).
        t = torch.remainder(u + torch.arange(n, device=where, dtype=dtype) / n, 1.0)
    else:
        t = torch.rand(n, generator=generator, device=where, dtype=dtype)
    return t if device is None else t.to(device)


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    where = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=where, dtype=x.dtype).to(x.device)


def _grid_times(u: torch.Tensor, T: int) -> torch.Tensor:
    """Map u in [0, 1) to the T-step grid t_i = i/T, i = floor(u T) + 1 in 1..T."""
    i = torch.clamp(torch.floor(u.double() * T), max=T - 1) + 1
    return (i / T).to(u.dtype)


def _check_grid(op: str, t: torch.Tensor, T: int) -> None:
    """T-step times must lie on the grid t_i = i/T, i = 1..T (to the rounding of t's dtype).

    Off the grid the T-step weight (T/2) expm1(gamma(t) - gamma(t - 1/T)) is that of a shifted
    grid: a finite number, but not the bound a caller porting VDM expects. VDM draws u ~ U(0, 1)
    and rounds it itself (``t = ceil(u T) / T``) before the model sees it; passing that u here
    would silently give other numbers. The check raises instead of rounding: ``t`` is also the
    time the model is evaluated at, so moving it would change what the caller's own code computed,
    and the rounding is a convention (VDM's ceil(u T); ours, for times we draw, floor(u T) + 1).
    Checked on the device without a host sync (torch._assert_async; at once on the CPU)."""
    x = _plain(t)
    if not x.numel() or not x.is_floating_point():  # integer times: the schedule rejects them itself
        return
    k = x.detach().to(torch.float64) * T
    i = torch.round(k)
    # t holds i/T rounded to its dtype: |t T - i| <= eps/2 * i <= eps/2 * T; 4 eps T leaves room.
    # (Past T ~ 1/(8 eps), 1e6 for float32, the dtype cannot tell neighbouring grid points apart and
    # only 1 <= i <= T is checked: pass float64 times there.)
    tol = 4 * torch.finfo(x.dtype).eps * T
    ok = ((k - i).abs() <= tol) & (i >= 1) & (i <= T)
    torch._assert_async(ok.all(), f"{op}: t must lie on the T-step grid i/T, i = 1..{T} (T = {T}); VDM's raw "
                                  f"u ~ U(0, 1) must be rounded first as VDM does: t = torch.ceil(u * T) / T")


# --- per-sample weights ---------------------------------------------------------------------------


def diffusion_weight(schedule, t: torch.Tensor, parameterization: str = "eps", T: int | None = None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """w(t) such that L_diff = w(t) * ||m - target||^2 for a model output m of ``parameterization``.

    Continuous (T None): 1/2 gamma'(t) in eps space, converted to the parameterization's own
    squared error (``parameterization.sq_error_scale``: 1, SNR, alpha^2, sigma^2 for eps, x0, v,
    score). T steps, s = t - 1/T: (T/2) expm1(gamma_t - gamma_s) in eps space for eps and score;
    (T/2) (SNR_s - SNR_t) in x0 space for x0 and v, converted from there (v: times sigma_t^2), so
    that both are finite at SNR_t = 0. The T-step difference gamma_t - gamma_s is computed in
    float64 (it is small for large T). With T, t must lie on the grid i/T, i = 1..T (else an error
    naming t and T: :func:`elbo`'s ``t``).
    """
    parameterization = check(parameterization)
    if T is None:
        if not hasattr(schedule, "gamma_prime"):
            raise TypeError(f"schedule: the continuous-time ELBO needs gamma_prime(t); "
                            f"{type(schedule).__name__} has none "
                            "(pass T for the T-step bound)")
        g = schedule.gamma(t, dtype)
        return 0.5 * schedule.gamma_prime(t, dtype) * sq_error_scale(parameterization, g, "eps")
    _check_grid("diffusion_weight", torch.as_tensor(t), T)
    f64 = torch.float64
    g_t = schedule.gamma(t, f64)
    # s = t - 1/T, clamped so that float32 rounding of t = 1/T cannot step below t = 0.
    g_s = schedule.gamma(torch.clamp(t.to(f64) - 1.0 / T, min=0.0), f64)
    if parameterization in ("eps", "score"):
        w, space = 0.5 * T * -one_minus_snr_ratio(g_s, g_t), "eps"  # (T/2)(SNR_s/SNR_t - 1)
    else:
        w, space = 0.5 * T * snr(g_s) * one_minus_snr_ratio(g_t, g_s), "x0"  # (T/2)(SNR_s - SNR_t)
    return (w * sq_error_scale(parameterization, g_t, space)).to(dtype)


def min_snr_weight(gamma: torch.Tensor, parameterization: str = "eps", snr_gamma: float = 5.0) -> torch.Tensor:
    """Min-SNR-gamma (Hang et al. 2023) as a weight on the squared error of ``parameterization``.

    The x0-space weight min(SNR, snr_gamma) converted (``parameterization.sq_error_scale``): eps:
    min(1, snr_gamma / SNR); v: min(SNR, snr_gamma) / (SNR + 1); score: min(1, snr_gamma / SNR)
    sigma^2. Converted from eps space (min(1, snr_gamma / SNR)) for eps and score and from x0 space
    for x0 and v, so that all are finite at SNR = 0.
    """
    parameterization = check(parameterization)
    if parameterization in ("eps", "score"):
        w, space = torch.clamp(snr_gamma / snr(gamma), max=1.0), "eps"
    else:
        w, space = torch.clamp(snr(gamma), max=snr_gamma), "x0"
    return w * sq_error_scale(parameterization, gamma, space)


# --- the bound ------------------------------------------------------------------------------------


def _check_common(x0, schedule, T, parameterization, t, noise, recon_noise) -> str:
    """The checks every bound makes; returns the parameterization's name (``check``)."""
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point() or x0.dim() == 0:
        raise TypeError("x0 must be a floating-point tensor with a batch dimension")
    if isinstance(schedule, DiscreteSchedule):
        raise TypeError("schedule: the VDM ELBO needs continuous time (gamma at t = 0 and 1); for a DiscreteSchedule "
                        "table use vdm_fast.bpd.calc_bpd_loop")
    if T is not None and (isinstance(T, bool) or not isinstance(T, int) or T < 1):
        raise ValueError(f"T must be None (continuous time) or an int >= 1, got {T!r}")
    parameterization = check(parameterization)
    if t is not None and (not isinstance(t, torch.Tensor) or t.shape != x0.shape[:1]):
        raise ValueError(f"t must be a tensor of shape ({x0.shape[0]},), got "
                         f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if t is not None:
        _check_time("elbo", schedule, t)
        if T is not None:
            _check_grid("elbo", t, T)
    for name, n in (("noise", noise), ("recon_noise", recon_noise)):
        if n is not None and (not isinstance(n, torch.Tensor) or n.shape != x0.shape):
            raise ValueError(f"{name} must be a tensor of the shape of x0 {tuple(x0.shape)}")
    return parameterization


def _check_time(op: str, schedule, t: torch.Tensor) -> None:
    """A caller's continuous times: floating, in [0, 1], no NaN (checked on the device, no host sync;
    vdm_fast's own schedules check their t themselves, a user's schedule is checked here)."""
    if not t.is_floating_point():
        raise TypeError(f"{op}: t must be floating-point time in [0, 1], got dtype {t.dtype}")
    if not isinstance(schedule, Schedule):
        within(op, "t", t, 0.0, 1.0, "continuous time")


def _draw_t(x0, t, T, antithetic, generator):
    if t is None:
        dt = torch.float64 if x0.dtype == torch.float64 else torch.float32
        t = sample_time(x0.shape[0], antithetic, generator, device=x0.device, dtype=dt)
        if T is not None:
            t = _grid_times(t, T)
    return t


def _model_out(model, z, t, x0):
    m = model(z, t)
    if not isinstance(m, torch.Tensor) or m.shape != x0.shape:
        raise ValueError(f"model(z, t) must return a tensor of the shape of x0 {tuple(x0.shape)}, got "
                         f"{tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__}")
    if not m.is_floating_point():  # an integer output would be cast silently
        raise TypeError(f"model(z, t) must return a floating-point tensor, got {m.dtype}")
    # In its own dtype: sq_error promotes (a bfloat16 output under autocast is read exactly, next to
    # float32 data), where a cast to x0's dtype would round a float32 output of bfloat16 data.
    return m


def elbo(model, x0: torch.Tensor, schedule, *, T: int | None = None, parameterization: str = "eps",
         t: torch.Tensor | None = None, noise: torch.Tensor | None = None, recon_noise: torch.Tensor | None = None,
         antithetic: bool = True, generator: torch.Generator | None = None, decoder: str | None = "categorical",
         backend: str | None = None) -> ELBOTerms:
    """One Monte Carlo estimate of the negative ELBO per sample (nats), by terms.

    Args:
        model: ``model(z_t, t) -> m``, m of the shape of x0 in ``parameterization``
            (``"eps"``, ``"x0"``, ``"v"`` or ``"score"``, DESIGN.md §2).
        x0: data in [-1, 1] on VDM's bin-centre grid 2(k + 1/2)/256 - 1, shape (B, ...).
        schedule: a continuous-time schedule (``LinearGamma``, ``LearnedLinearGamma``,
            ``MonotoneGamma`` or anything with ``gamma(t, dtype)`` and, for T None, ``gamma_prime``).
        T: None for the continuous-time bound, else the number of steps.
        t: (B,) times; continuous: in [0, 1]; T steps: on the grid i/T, i = 1..T (s = t - 1/T),
            to the rounding of t's dtype; other times raise (an error naming t and T, checked
            without a host sync), not rounded: VDM's raw u must be mapped as VDM maps it,
            ``torch.ceil(u * T) / T``, before it is passed (a time off the grid would give the
            bound of a shifted grid, silently; rounding it here would change the t the model
            is evaluated at behind the caller's back). Drawn with :func:`sample_time`
            (``antithetic``, ``generator``) when None.
        noise: eps for z_t; recon_noise: eps' for z_0. Drawn from ``generator`` when None.
        decoder: the reconstruction decoder of ``recon_nll``; None for no reconstruction term
            (recon = 0: continuous data, which has no 8-bit decoder, or a decoder evaluated
            separately). The decoder's data must lie in [-1, 1].
        backend: passed to every op (``"reference"`` to run the pure-PyTorch oracle).

    Returns:
        :class:`ELBOTerms` (recon, prior, diffusion, (B,) nats; ``.total``, ``.bpd``,
        ``.bpd_terms()``). Differentiable in the model's and the schedule's parameters.
    """
    parameterization = _check_common(x0, schedule, T, parameterization, t, noise, recon_noise)
    B = x0.shape[0]
    cdt = compute_dtype(x0.dtype)
    t = _draw_t(x0, t, T, antithetic, generator)
    noise = _randn_like(x0, generator) if noise is None else noise
    recon_noise = _randn_like(x0, generator) if recon_noise is None else recon_noise

    # Diffusion term: z_t, the model, and the parameterization's squared error, weighted.
    alpha_t, sigma_t = schedule.alpha_sigma(t, cdt)
    z_t = q_sample(x0, alpha_t, sigma_t, noise, backend=backend)
    m = _model_out(model, z_t, t, x0)
    err = sq_error(m, x0, noise, alpha_t, sigma_t, parameterization, backend=backend)
    diffusion = diffusion_weight(schedule, t, parameterization, T, cdt) * err

    # Endpoint terms: one schedule evaluation each, expanded to the batch.
    ends = torch.tensor([0.0, 1.0], dtype=cdt, device=x0.device)
    alpha_e, sigma_e = schedule.alpha_sigma(ends, cdt)
    if decoder is None:
        recon = torch.zeros(B, dtype=cdt, device=x0.device)
    else:
        z_0 = q_sample(x0, alpha_e[0].expand(B), sigma_e[0].expand(B), recon_noise, backend=backend)
        recon = recon_nll(x0, z_0, alpha_e[0].expand(B), sigma_e[0].expand(B), decoder, backend=backend)
    prior = prior_kl(x0, alpha_e[1].expand(B), sigma_e[1].expand(B), backend=backend)
    return ELBOTerms(recon, prior, diffusion, math.prod(x0.shape[1:]))


# --- the training objective ----------------------------------------------------------------------


class VDMLoss(nn.Module):
    """The diffusion training objective, for an existing training loop.

    ``loss = VDMLoss(schedule, weighting=...)``; ``loss(model, x0)`` draws t and the noise, runs
    ``model(z_t, t)`` once and returns the batch mean (``reduction="none"``: per sample). A
    learned schedule passed in becomes a submodule, so ``loss.parameters()`` holds its parameters.

    Weightings:
        ``"elbo"``: the negative ELBO in bits/dim (:func:`elbo`; continuous time, or T steps).
        ``"simple"``: DDPM's L_simple: the mean squared error of the model output against its
            parameterization's target (eps for eps models: Ho et al.'s ||eps - eps_hat||^2 / D).
        ``"min_snr"``: min-SNR-gamma (Hang et al. 2023): the same mean squared error times
            :func:`min_snr_weight` (eps and v forms, and x0/score), finite at zero terminal SNR.

    ``"simple"`` and ``"min_snr"`` also accept a ``DiscreteSchedule`` (integer timesteps drawn
    uniformly from 0..T-1, antithetically), the DDPM/diffusers setting; ``"elbo"`` needs a
    continuous-time schedule.
    """

    def __init__(self, schedule, *, weighting: str = "elbo", parameterization: str = "eps", T: int | None = None,
                 snr_gamma: float = 5.0, antithetic: bool = True, decoder: str = "categorical",
                 backend: str | None = None):
        super().__init__()
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        parameterization = check(parameterization)
        if weighting == "elbo" and isinstance(schedule, DiscreteSchedule):
            raise TypeError("schedule: weighting='elbo' needs a continuous-time schedule; for a DiscreteSchedule "
                            "use weighting='simple' or 'min_snr' (bits/dim: vdm_fast.bpd.calc_bpd_loop)")
        if not snr_gamma > 0:
            raise ValueError(f"snr_gamma must be > 0, got {snr_gamma}")
        self.schedule = schedule  # an nn.Module schedule registers as a submodule
        self.weighting, self.parameterization, self.T = weighting, parameterization, T
        self.snr_gamma, self.antithetic, self.decoder, self.backend = float(snr_gamma), antithetic, decoder, backend

    def forward(self, model, x0: torch.Tensor, *, t: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                recon_noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
                reduction: str = "mean") -> torch.Tensor:
        """The loss: a scalar (``reduction="mean"``) or (B,) (``"none"``)."""
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        if self.weighting == "elbo":
            per = elbo(model, x0, self.schedule, T=self.T, parameterization=self.parameterization, t=t, noise=noise,
                       recon_noise=recon_noise, antithetic=self.antithetic, generator=generator,
                       decoder=self.decoder, backend=self.backend).bpd
        else:
            per = self._regression(model, x0, t, noise, generator)
        return per.mean() if reduction == "mean" else per

    def _regression(self, model, x0, t, noise, generator):
        if not isinstance(x0, torch.Tensor) or not x0.is_floating_point() or x0.dim() == 0:
            raise TypeError("x0 must be a floating-point tensor with a batch dimension")
        cdt = compute_dtype(x0.dtype)
        if t is None:
            u = sample_time(x0.shape[0], self.antithetic, generator, device=x0.device,
                            dtype=torch.float64 if x0.dtype == torch.float64 else torch.float32)
            if isinstance(self.schedule, DiscreteSchedule):
                n = self.schedule.num_timesteps
                t = torch.clamp(torch.floor(u.double() * n), max=n - 1).long()
            else:
                t = u if self.T is None else _grid_times(u, self.T)
        elif isinstance(t, torch.Tensor) and t.is_floating_point():  # integer timesteps: the table checks them
            _check_time("VDMLoss", self.schedule, t)
            if self.T is not None:
                _check_grid("VDMLoss", t, self.T)
        noise = _randn_like(x0, generator) if noise is None else noise
        g = self.schedule.gamma(t, cdt)
        alpha, sigma = alpha_sigma(g)
        z_t = q_sample(x0, alpha, sigma, noise, backend=self.backend)
        m = _model_out(model, z_t, t, x0)
        err = sq_error(m, x0, noise, alpha, sigma, self.parameterization, backend=self.backend)
        mse = err / math.prod(x0.shape[1:])
        if self.weighting == "simple":
            return mse
        return min_snr_weight(g, self.parameterization, self.snr_gamma) * mse


__all__ = ["PARAMETERIZATIONS", "WEIGHTINGS", "BitsPerDim", "ELBOTerms", "sample_time", "diffusion_weight",
    "min_snr_weight", "elbo", "VDMLoss"]
__dir__ = public_dir(__all__)
