"""Sampling loops on the fused ``reverse_step`` op (DESIGN.md §4.6, §5).

Every sampler step here is one call of :func:`vdm_fast.reverse_step`::

    x̂      = a_z z + a_m m                 (clamped to [-clip, clip] when clip is given)
    z_next = c_z z + c_m m + c_x x̂ + c_n n

with m the model output (after guidance) and six per-sample scalars. The scalars come from the
coefficient builders of :mod:`vdm_fast.coefficients` (re-exported here: ``samplers.ddim_coeffs``
is ``coefficients.ddim_coeffs``), the conversions between parameterizations from
:mod:`vdm_fast.parameterization`; this module evaluates the model and calls the op.

Time grids (``times``): a descending 1-D tensor of K + 1 levels (K steps, step i goes from
times[i] to times[i + 1]) or a (K + 1, B) tensor (per-sample times). Continuous schedules (anything
with ``gamma(t)``: ``LinearGamma``, learned schedules) take float times in [0, 1]:
:func:`uniform_times` gives 1 → 0. Discrete tables (``DiscreteSchedule``) take integer timesteps;
a negative timestep is the clean level: :func:`discrete_times` gives diffusers' grids ending in -1.

The loops return z at the last level of ``times``: for continuous schedules that is z_0 (t = 0,
still carrying the noise sigma_0 of the schedule; decode it as VDM does), for a discrete grid
ending in -1 it is the sample x.

Coefficients are built in float64 (gamma of the whole grid, then the (K, 6, B) table) and cast
once to the compute dtype of the data (float32, float64 for float64 data): from float32 gammas the
c = -expm1(gamma_s - gamma_t) of neighbouring levels cancels (DESIGN.md §5).

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

from . import guidance as _guidance
from ._checks import compute_dtype
# The builders and the conversions are re-exported under their old names (samplers.ddim_coeffs,
# samplers.x0_coeffs, ...: the README and user code call them through this module).
from .coefficients import (BUILD_DTYPE, ancestral_coeffs, annealed_langevin_step_sizes, ddim_coeffs, denoise_coeffs,
                           discrete_times, dpmpp_2m_coeffs, euler_ancestral_coeffs, gammas, langevin_coeffs,
                           langevin_corrector_coeffs, ode_euler_coeffs, ode_heun_coeffs, reverse_diffusion_coeffs,
                           uniform_times, unipc_corrector_coeffs)
from .karras import FractionalSchedule, SigmaSchedule
from .ops.randn_like import randn_like
from .ops.reverse_step import reverse_step, reverse_step_with_x0
from .parameterization import PARAMETERIZATIONS, alpha_sigma, check, eps_coeffs, score_coeffs, x0_coeffs
from .posterior import learned_range_bounds, learned_range_log_variance, split_variance_output
from .schedules import DiscreteSchedule
from ._namespace import public_dir


# --- the loops ------------------------------------------------------------------------------------------


class _Grid:
    """The time grid of one run on the data's device: model times per step, gamma per level (float64),
    and the coefficient tables built from it."""

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
        if times.is_floating_point():
            # NaN times give NaN levels, and every later step NaN samples. (vdm_fast's continuous
            # schedules also check the range [0, 1] themselves.) No host sync: _assert_async.
            torch._assert_async(~times.isnan().any(), "times must not hold NaN")
        elif times.numel():
            # A negative timestep is the clean level (gamma = -inf): only the last level may be
            # clean, a step out of it would be non-finite.
            torch._assert_async((times[:-1] >= 0).all(), "times: only the last level of an integer grid may be "
                                "negative (the clean level)")
        self.times = times.contiguous()  # (K+1, B): what the model is fed, row by row
        self.cdt = compute_dtype(z.dtype)
        with torch.no_grad():
            self.gamma = gammas(schedule, self.times, BUILD_DTYPE)  # (K+1, B)
            alpha, sigma = alpha_sigma(self.gamma)
        # The levels in the compute dtype, for what is formed per step (guidance scales, the score).
        self.alpha, self.sigma = alpha.to(self.cdt), sigma.to(self.cdt)
        self.steps = times.shape[0] - 1

    def alpha_sigma(self, i: int):
        """(alpha, sigma) of level i, (B,) each in the compute dtype."""
        return self.alpha[i], self.sigma[i]

    def cast(self, coeffs: torch.Tensor) -> torch.Tensor:
        """A coefficient table built in float64, cast once to the compute dtype of the data."""
        return coeffs.to(self.cdt)

    def step_table(self, builder: Callable) -> torch.Tensor:
        """builder(gamma_t, gamma_s) for every step t -> s of the grid: the (K, 6, B) table."""
        return self.cast(builder(self.gamma[:-1], self.gamma[1:]))


class _Evaluator:
    """Calls the user's model and turns guidance into reverse_step arguments.

    model: ``model(z, t) -> m``, or a ``guidance.ClassifierFree`` (then ``guidance_scale`` is
    required); ``classifier``: a ``guidance.Classifier`` with ``classifier_scale``.
    """

    def __init__(self, model, parameterization, guidance_scale, classifier, classifier_scale, z):
        self.model = model
        self.param = check(parameterization)
        self.cfg = isinstance(model, _guidance.ClassifierFree)
        batch, dev, cdt = z.shape[0], z.device, compute_dtype(z.dtype)
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
            m, uncond = self.model.outputs(z, t)  # checked there
            kwargs.update(uncond=uncond.to(z.dtype), guidance_scale=self.w)
            m = m.to(z.dtype)
        else:
            m = _guidance.check_output("model(z, t)", self.model(z, t), z).to(z.dtype)
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
        table = grid.step_table(coeff_fn)  # (K, 6, B)
        for i in _range(grid.steps, progress, desc):
            alpha, sigma = grid.alpha_sigma(i)
            m, kw = ev(z, grid.times[i], alpha, sigma)
            z = reverse_step(z, m, table[i], clip=clip, generator=generator, stochastic=stochastic, backend=backend,
                             **kw)
            if callback is not None:
                callback(i, grid.times[i + 1], z)
    return z


ANCESTRAL_VARIANCES = ("posterior", "beta", "learned_range")


class _VarianceSplit:
    """A learned-variance model (2C channels, improved-diffusion's ``learn_sigma``) seen by
    :class:`_Evaluator` as a plain one: ``self.model`` returns the mean half and keeps the variance
    half of its last call in ``self.variance`` (the conditional output's, for a classifier-free
    guided model: the guided mean takes the conditional model's variance)."""

    def __init__(self, model, channels: int):
        self.variance = None
        if isinstance(model, _guidance.ClassifierFree):
            def outputs(z, t):
                out = model._outputs(z, t)
                if not isinstance(out, (tuple, list)) or len(out) != 2:
                    raise TypeError(f"a classifier-free model must return a pair (cond, uncond) of tensors, "
                                    f"got {type(out).__name__}")
                cond, self.variance = split_variance_output(out[0], channels, "the classifier-free model (cond)")
                uncond, _ = split_variance_output(out[1], channels, "the classifier-free model (uncond)")
                return cond, uncond

            self.model = _guidance.ClassifierFree(outputs)
        elif callable(model):
            def mean_half(z, t):
                m, self.variance = split_variance_output(model(z, t), channels)
                return m

            self.model = mean_half
        else:
            raise TypeError(f"model must be callable as model(z, t), got {type(model).__name__}")


def _sample_learned_range(model, z, schedule, times, *, parameterization, guidance_scale, classifier,
                          classifier_scale, clip, generator, progress, callback, backend):
    """sample_ancestral with improved-diffusion's learned-range variance (its ``p_sample_loop`` with
    ``ModelVarType.LEARNED_RANGE``): per element std = exp(log var / 2), log var from
    ``posterior.learned_range_log_variance`` between the step's clipped posterior log-variance and
    log beta (``posterior.learned_range_bounds``). The std is not a per-sample scalar, so it
    multiplies the noise before the fused step (noise = std n, drawn from ``generator`` with
    ``randn_like``, and c_n = 1; 0 on the step to the clean level, their ``nonzero_mask``)."""
    op = "sample_ancestral(variance='learned_range')"
    if not isinstance(schedule, DiscreteSchedule):
        raise TypeError(f"{op}: schedule must be a DiscreteSchedule (the range is log beta_t to the posterior's "
                        f"log-variance of a discrete table), got {type(schedule).__name__}")
    if torch.as_tensor(times).is_floating_point():  # before the grid: the table would refuse them less clearly
        raise TypeError(f"{op}: times must hold integer timesteps of the table (e.g. discrete_times), got "
                        f"{torch.as_tensor(times).dtype}")
    grid = _Grid(schedule, times, z)
    if grid.steps < 2:
        raise ValueError(f"{op}: times must have at least 2 steps (the clipped log-variance of the step to the "
                         f"clean level is the previous step's), got {grid.steps}")
    if z.dim() < 2:
        raise ValueError(f"{op}: z must have a channel dimension (dim 1), got shape {tuple(z.shape)}")
    split = _VarianceSplit(model, z.shape[1])
    ev = _Evaluator(split.model, parameterization, guidance_scale, classifier, classifier_scale, z)
    with torch.no_grad():
        coeffs = ancestral_coeffs(grid.gamma[:-1], grid.gamma[1:], parameterization, "posterior")  # (K, 6, B)
        coeffs[:, 5] = (~torch.isneginf(grid.gamma[1:])).to(coeffs.dtype)  # the noise comes in scaled
        table = grid.cast(coeffs)
        min_log, max_log = (grid.cast(b) for b in learned_range_bounds(grid.gamma))  # (K, B)
        for i in _range(grid.steps, progress, "ancestral (learned range)"):
            alpha, sigma = grid.alpha_sigma(i)
            m, kw = ev(z, grid.times[i], alpha, sigma)
            log_var = learned_range_log_variance(split.variance.to(grid.cdt), _bcast(min_log[i], z),
                                                 _bcast(max_log[i], z))
            noise = (torch.exp(0.5 * log_var) * randn_like(z, generator).to(grid.cdt)).to(z.dtype)
            z = reverse_step(z, m, table[i], clip=clip, noise=noise, backend=backend, **kw)
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
        variance: "posterior" (beta-tilde) or "beta" (see :func:`ancestral_coeffs`), or
            "learned_range" (improved-diffusion's ``learn_sigma``: the model outputs twice the
            channels of z, dim 1, the mean half in ``parameterization`` and the variance values v
            in [-1, 1]; per element log var = frac log beta + (1 - frac) min_log, frac = (v + 1)/2,
            min_log the step's posterior log-variance, clipped at the clean level as theirs;
            a ``DiscreteSchedule`` with integer ``times`` of at least 2 steps only, e.g.
            ``discrete_times`` or a respaced table, ``vdm_fast.respace``). Classifier-free
            guidance: a ``guidance.classifier_free_pair`` model whose cond and uncond outputs both
            have 2C channels; the conditional output's variance is used.
        guidance_scale: classifier-free scale w per sample (w = 1: conditional model).
        classifier, classifier_scale: classifier guidance (``guidance.classifier``), scale per sample.
        clip: clamp x̂ to [-clip, clip]. generator: for the noise. progress: tqdm bar.
        callback: ``callback(i, t, z)`` after step i, z at level t = times[i + 1].
        backend: the reverse_step backend.
    Returns:
        z at the last level of ``times``.
    """
    if variance not in ANCESTRAL_VARIANCES:
        raise ValueError(f"variance must be one of {ANCESTRAL_VARIANCES}, got {variance!r}")
    if variance == "learned_range":
        return _sample_learned_range(model, z, schedule, times, parameterization=parameterization,
                                     guidance_scale=guidance_scale, classifier=classifier,
                                     classifier_scale=classifier_scale, clip=clip, generator=generator,
                                     progress=progress, callback=callback, backend=backend)
    return _run_two_level(lambda gt, gs: ancestral_coeffs(gt, gs, parameterization, variance), model, z, schedule,
                          times, parameterization=parameterization, guidance_scale=guidance_scale,
                          classifier=classifier, classifier_scale=classifier_scale, clip=clip, generator=generator,
                          stochastic=True, progress=progress, callback=callback, backend=backend, desc="ancestral")


def sample_ddim(model, z: torch.Tensor, schedule, times, *, eta=0.0, parameterization: str = "eps",
                clipped_eps: bool = False, guidance_scale=None, classifier=None, classifier_scale=None,
                clip: float | None = None, generator: torch.Generator | None = None, progress: bool = False,
                callback: Callable | None = None, backend: str | None = None) -> torch.Tensor:
    """DDIM(eta) sampling over ``times`` (see :func:`ddim_coeffs`; arguments as :func:`sample_ancestral`).
    With a float ``eta == 0`` the run is deterministic and draws no noise. eta must lie in [0, 1]
    (beyond 1 the step's variance would exceed the level's: the table holds NaN, as diffusers')."""
    stochastic = _check_eta("sample_ddim", eta)
    return _run_two_level(lambda gt, gs: ddim_coeffs(gt, gs, parameterization, eta, clipped_eps), model, z, schedule,
                          times, parameterization=parameterization, guidance_scale=guidance_scale,
                          classifier=classifier, classifier_scale=classifier_scale, clip=clip, generator=generator,
                          stochastic=stochastic, progress=progress, callback=callback, backend=backend, desc="ddim")


def _check_eta(op: str, eta) -> bool:
    """eta in [0, 1] (on the device for a tensor: no host sync); whether the run is stochastic."""
    if isinstance(eta, torch.Tensor):
        torch._assert_async(((eta >= 0) & (eta <= 1)).all(), f"{op}: eta must lie in [0, 1]")
    elif not 0 <= eta <= 1:
        raise ValueError(f"{op}: eta must lie in [0, 1], got {eta!r}")
    return not (isinstance(eta, (int, float)) and eta == 0)


def sample_euler_ancestral(model, z: torch.Tensor, schedule, times, *, eta=1.0, parameterization: str = "eps",
                           guidance_scale=None, classifier=None, classifier_scale=None, clip: float | None = None,
                           generator: torch.Generator | None = None, progress: bool = False,
                           callback: Callable | None = None, backend: str | None = None) -> torch.Tensor:
    """Euler-ancestral sampling (k-diffusion's ``sample_euler_ancestral``, diffusers'
    ``EulerAncestralDiscreteScheduler``; :func:`euler_ancestral_coeffs`) over ``times``, e.g. a
    Karras grid (``vdm_fast.karras.karras_times``). It is DDIM(eta) with ε̂ re-derived from x̂, so
    this is :func:`sample_ddim` with ``clipped_eps=True``. Arguments as :func:`sample_ancestral`."""
    stochastic = _check_eta("sample_euler_ancestral", eta)
    return _run_two_level(lambda gt, gs: euler_ancestral_coeffs(gt, gs, parameterization, eta), model, z, schedule,
                          times, parameterization=parameterization, guidance_scale=guidance_scale,
                          classifier=classifier, classifier_scale=classifier_scale, clip=clip, generator=generator,
                          stochastic=stochastic, progress=progress, callback=callback, backend=backend,
                          desc="euler ancestral")


def _second_order(i: int, steps: int) -> bool:
    """Whether multistep step i uses the previous x̂: not on the first step (there is none) nor the last
    (lower order at the end, as diffusers' ``lower_order_final`` and k-diffusion's step to sigma 0)."""
    return 1 <= i <= steps - 2


def _previous_levels(gamma: torch.Tensor) -> torch.Tensor:
    """(K, B): the level of the previous x̂ for each step of a (K+1, B) grid, NaN where the step is first order."""
    steps = gamma.shape[0] - 1
    prev = torch.full_like(gamma[:-1], float("nan"))
    if steps >= 3:
        prev[1:steps - 1] = gamma[:steps - 2]
    return prev


def sample_dpmpp_2m(model, z: torch.Tensor, schedule, times, *, solver_type: str = "midpoint",
                    parameterization: str = "eps", guidance_scale=None, classifier=None, classifier_scale=None,
                    clip: float | None = None, progress: bool = False, callback: Callable | None = None,
                    backend: str | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) (:func:`dpmpp_2m_coeffs`; ``solver_type`` "midpoint" or "heun") over
    ``times``: one model call and one fused pass per step, the previous x̂ entering through the
    noise slot of ``reverse_step_with_x0`` (which returns this step's x̂). First order on the first
    step and the last (diffusers' ``lower_order_final``; on a grid ending at the clean level that
    is also k-diffusion's ``sample_dpmpp_2m``). ``clip`` clamps x̂ (the multistep history holds the
    clamped x̂, as diffusers' thresholding). Deterministic. Other arguments as :func:`sample_ancestral`."""
    grid = _Grid(schedule, times, z)
    ev = _Evaluator(model, parameterization, guidance_scale, classifier, classifier_scale, z)
    with torch.no_grad():
        g = grid.gamma
        table = grid.cast(dpmpp_2m_coeffs(g[:-1], g[1:], _previous_levels(g), parameterization, solver_type))
        x_hat_prev = None
        for i in _range(grid.steps, progress, "dpm-solver++(2m)"):
            alpha, sigma = grid.alpha_sigma(i)
            m, kw = ev(z, grid.times[i], alpha, sigma)
            history = x_hat_prev if _second_order(i, grid.steps) else None
            z, x_hat_prev = reverse_step_with_x0(z, m, table[i], clip=clip, noise=history,
                                                 stochastic=history is not None, backend=backend, **kw)
            if callback is not None:
                callback(i, grid.times[i + 1], z)
    return z


def sample_unipc(model, z: torch.Tensor, schedule, times, *, parameterization: str = "eps", corrector: bool = True,
                 guidance_scale=None, classifier=None, classifier_scale=None, clip: float | None = None,
                 progress: bool = False, callback: Callable | None = None, backend: str | None = None) -> torch.Tensor:
    """UniPC-2 (Zhao et al. 2023; diffusers' ``UniPCMultistepScheduler`` with its defaults
    ``solver_order=2``, ``predict_x0``, ``solver_type="bh2"``, ``lower_order_final``): the UniP
    predictor (DPM-Solver++(2M)'s midpoint weights) and, from the second step on, the UniC corrector
    of the previous prediction with the model output just computed (:func:`unipc_corrector_coeffs`;
    no extra model call). One model call per step; three fused passes with the corrector (combine
    the known terms, correct and form x̂, predict), one without (``corrector=False``: UniP alone,
    i.e. :func:`sample_dpmpp_2m`). The last prediction is not corrected, as in diffusers.
    Deterministic. Other arguments as :func:`sample_ancestral`."""
    grid = _Grid(schedule, times, z)
    ev = _Evaluator(model, parameterization, guidance_scale, classifier, classifier_scale, z)
    with torch.no_grad():
        g = grid.gamma
        prev = _previous_levels(g)
        predict = grid.cast(dpmpp_2m_coeffs(g[:-1], g[1:], prev, parameterization, "midpoint"))
        # The predictor applied to x̂ itself (model output = x̂: a_z = 0, a_m = 1), after a correction.
        predict_x0 = grid.cast(dpmpp_2m_coeffs(g[:-1], g[1:], prev, "x0", "midpoint"))
        history, correct = (grid.cast(c) for c in unipc_corrector_coeffs(g[:-2], g[1:-1], prev[:-1], parameterization))
        x_last = x_hat = x_hat_prev = None  # the sample the last prediction started from, x̂ there, x̂ before
        for i in _range(grid.steps, progress, "unipc"):
            alpha, sigma = grid.alpha_sigma(i)
            m, kw = ev(z, grid.times[i], alpha, sigma)
            second = _second_order(i, grid.steps)
            if corrector and i > 0:
                order2 = _second_order(i - 1, grid.steps)  # the corrector has the order of the prediction
                known = reverse_step(x_last, x_hat, history[i - 1], noise=x_hat_prev if order2 else None,
                                     stochastic=order2, backend=backend)
                z, x_new = reverse_step_with_x0(z, m, correct[i - 1], clip=clip, noise=known, backend=backend, **kw)
                x_last = z
                z_next = reverse_step(z, x_new, predict_x0[i], noise=x_hat if second else None, stochastic=second,
                                      backend=backend)
            else:
                x_last = z
                z_next, x_new = reverse_step_with_x0(z, m, predict[i], clip=clip, noise=x_hat if second else None,
                                                     stochastic=second, backend=backend, **kw)
            z, x_hat_prev, x_hat = z_next, x_hat, x_new
            if callback is not None:
                callback(i, grid.times[i + 1], z)
    return z


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
    step = _per_sample("step_size", step_size, z.shape[0], z.device, BUILD_DTYPE)
    with torch.no_grad():
        coeffs = grid.cast(langevin_coeffs(grid.gamma[0], step, parameterization))
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
        table = grid.cast(langevin_coeffs(grid.gamma, steps, parameterization))  # (L, 6, B)
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
    coeffs = grid.cast(denoise_coeffs(grid.gamma[-1], parameterization))
    m, kw = ev(z, grid.times[-1], *grid.alpha_sigma(-1))
    return reverse_step(z, m, coeffs, stochastic=False, backend=backend, **kw)


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
        predictor = grid.step_table(lambda gt, gs: reverse_diffusion_coeffs(gt, gs, parameterization))
        for i in _range(grid.steps, progress, "pc"):
            t, alpha, sigma = grid.times[i], *grid.alpha_sigma(i)
            s_z, s_m = (grid.cast(c) for c in score_coeffs(parameterization, *alpha_sigma(grid.gamma[i])))
            for _ in range(n_corrector):
                m = ev.combined(z, t, alpha, sigma)
                score = _bcast(s_z, z) * z.to(cdt) + _bcast(s_m, z) * m.to(cdt)
                n = randn_like(z, generator)  # materialised: the step size needs its norm
                coeffs = grid.cast(langevin_corrector_coeffs(grid.gamma[i], grid.gamma[i + 1], norms(score),
                                                             norms(n), snr, parameterization))
                z = reverse_step(z, m, coeffs, noise=n, backend=backend)
            m, kw = ev(z, t, alpha, sigma)
            z = reverse_step(z, m, predictor[i], generator=generator, stochastic=True, backend=backend, **kw)
            if callback is not None:
                callback(i, grid.times[i + 1], z)
    return z


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


def _may_reach_clean(schedule, times: torch.Tensor) -> bool:
    """Whether a grid can end at the clean level (gamma = -inf): integer timesteps of a table (-1),
    a table read at fractional timesteps (t < 0) or sigmã = 0 on a SigmaSchedule. Continuous
    schedules on [0, 1] stop at gamma(0), finite."""
    if isinstance(schedule, DiscreteSchedule):
        return not times.is_floating_point()
    return isinstance(schedule, (FractionalSchedule, SigmaSchedule))


def sample_ode(model, z: torch.Tensor, schedule, times, *, method: str = "heun", parameterization: str = "eps",
               guidance_scale=None, classifier=None, classifier_scale=None, clip: float | None = None,
               progress: bool = False, callback: Callable | None = None, backend: str | None = None) -> torch.Tensor:
    """Deterministic sampling with the probability-flow ODE: ``method`` "euler" (one model call
    per step, :func:`ode_euler_coeffs`) or "heun" (two, :func:`ode_heun_coeffs`; two reverse_step
    calls per step, the second taking z_t through its noise slot). Heun's correction is skipped on
    a step to the clean level (a discrete grid ending in -1, sigma 0 on a Karras grid), decided
    once before the loop (the one host read of a sampler here, and only for grids that can end
    clean: ``_may_reach_clean``)."""
    if method not in ("euler", "heun"):
        raise ValueError(f"method must be 'euler' or 'heun', got {method!r}")
    grid = _Grid(schedule, times, z)
    ev = _Evaluator(model, parameterization, guidance_scale, classifier, classifier_scale, z)
    last_clean = False
    if method == "heun" and _may_reach_clean(schedule, grid.times):
        clean = torch.isneginf(grid.gamma[-1])
        last_clean = bool(clean.all().item())  # once, before the loop
        if not last_clean and bool(clean.any().item()):
            raise ValueError("sample_ode: the last level must be clean (t < 0, or sigma 0) for all samples or for none")
    with torch.no_grad():
        euler = grid.step_table(lambda gt, gs: ode_euler_coeffs(gt, gs, parameterization))
        heun = grid.step_table(lambda gt, gs: ode_heun_coeffs(gt, gs, parameterization))
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
    "PARAMETERIZATIONS", "ANCESTRAL_VARIANCES", "uniform_times", "discrete_times", "gammas", "x0_coeffs",
    "eps_coeffs", "score_coeffs", "ancestral_coeffs", "ddim_coeffs", "langevin_coeffs",
    "annealed_langevin_step_sizes", "reverse_diffusion_coeffs", "langevin_corrector_coeffs", "ode_euler_coeffs",
    "ode_heun_coeffs", "euler_ancestral_coeffs", "dpmpp_2m_coeffs", "unipc_corrector_coeffs", "sample_ancestral",
    "sample_ddim", "sample_euler_ancestral", "sample_dpmpp_2m", "sample_unipc", "sample_langevin",
    "sample_annealed_langevin", "sample_pc", "sample_ode",
]
__dir__ = public_dir(__all__)
