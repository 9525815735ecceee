"""Coefficient tables of diffusers' DDPM and DDIM steps in the form of ``vdm_fast.reverse_step``.

``reverse_step`` computes x̂ = a_z z + a_m m (clamped when asked) and
z_next = c_z z + c_m m + c_x x̂ + c_n n. Each function here takes float64 tensors over a batch
of timesteps (alphas_cumprod at t and at the previous timestep) and returns the rows of that
form, plus the rows that make ``reverse_step`` return x̂ itself (a_z, a_m, 0, 0, 1, 0), which is
how ``pred_original_sample`` is produced. No diffusers import, so the float64 "truth" in the tests
can reuse them.

The steps are the samplers' own builders (``vdm_fast.coefficients``, DESIGN.md §5) on the levels
gamma = log((1 - alpha_bar) / alpha_bar) of diffusers' table: DDPM's posterior mean and variance
(DDPM eqs. 6-7) are ``ancestral_coeffs``, DDIM(eta) (DDIM eqs. 12 and 16) is ``ddim_coeffs``. What
is diffusers' own is kept here (DESIGN.md §8):

- a missing previous timestep is alpha_bar = 1 (DDPM; DDIM with ``set_alpha_to_one``) or
  ``final_alpha_cumprod`` (the caller passes it as ``ab_prev``);
- DDPM adds noise only where t > 0, and its variances are: the posterior variance clamped at
  1e-20 (``fixed_small``, ``fixed_small_log``: diffusers takes its log), beta_t = 1 -
  alpha_bar_t / alpha_bar_prev (``fixed_large``, and ``fixed_large_log``, GLIDE's max_log, as
  std sqrt(beta_t) where diffusers' step is NaN), beta_t also on a step to alpha_bar_prev = 1 with
  t > 0 (an offset grid's last step), where the samplers' "beta" variance is 0;
- the learned variances multiply the noise per element outside this table (noise row 1, and the
  log-variance bounds of ``learned_range`` in rows 12-13);
- without clipping or thresholding, x̂ is folded into the z and m rows (``_table``).

Row layout of a table (ROWS x B, float64):
  0-5   step coefficients (a_z, a_m, c_z, c_m, c_x, c_n)
  6-11  pred_original_sample coefficients (a_z, a_m, 0, 0, 1, 0)
  12-13 min_log, max_log of the DDPM variance (learned_range interpolates between them per element)
"""

from __future__ import annotations

import torch

from ..coefficients import ancestral_coeffs, ddim_coeffs
from ..parameterization import DIFFUSERS_NAMES, gamma_from_alpha_bar, one_minus_alpha_sq_ratio

ROWS = 14
STEP, X0, MIN_LOG, MAX_LOG = slice(0, 6), slice(6, 12), 12, 13

# diffusers' prediction_type -> the parameterization of DESIGN.md §2 (only diffusers' spellings: a
# drop-in's config must stay one stock diffusers can load and run)
PREDICTION_TYPES = DIFFUSERS_NAMES
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")
LEARNED = ("learned", "learned_range")


def _parameterization(prediction_type: str) -> str:
    try:
        return PREDICTION_TYPES[prediction_type]
    except KeyError:
        raise ValueError(f"prediction_type given as {prediction_type} must be one of "
                         f"{', '.join(PREDICTION_TYPES)}") from None


def _table(a_z, a_m, c_z, c_m, c_x, c_n, min_log=None, max_log=None, fold: bool = False) -> torch.Tensor:
    zero, one = torch.zeros_like(a_z), torch.ones_like(a_z)
    if fold:  # no clipping: c_x x̂ = c_x a_z z + c_x a_m m, summed in float64 here rather than in float32
        # by the kernel, where x̂ can be hundreds (epsilon at large t) and its rounding would show.
        c_z, c_m, c_x = c_z + c_x * a_z, c_m + c_x * a_m, zero
    min_log = zero if min_log is None else min_log
    max_log = zero if max_log is None else max_log
    return torch.stack([a_z, a_m, c_z, c_m, c_x, c_n, a_z, a_m, zero, zero, one, zero, min_log, max_log])


def ddpm(ab: torch.Tensor, ab_prev: torch.Tensor, t: torch.Tensor, prediction_type: str, variance_type: str,
         fold: bool = False) -> torch.Tensor:
    """DDPM ancestral step (posterior mean, DDPM eq. 7) as a (ROWS, B) table.

    ``fold``: no clipping will be applied (see ``_table``).
    ``ab``/``ab_prev``: alphas_cumprod at t and at the previous timestep (1 where there is none);
    ``t``: the timesteps (noise only where t > 0, as diffusers). For the learned variance types the
    noise row is 1 (0 at t = 0): the per-element standard deviation multiplies the noise before
    the fused op, since it is not a per-sample scalar.
    """
    if variance_type not in VARIANCE_TYPES:
        raise ValueError(f"variance_type given as {variance_type} must be one of {', '.join(VARIANCE_TYPES)}")
    g_t, g_prev = gamma_from_alpha_bar(ab), gamma_from_alpha_bar(ab_prev)
    a_z, a_m, c_z, c_m, c_x, posterior_std = ancestral_coeffs(g_t, g_prev, _parameterization(prediction_type),
                                                               "posterior").unbind(-2)
    # The posterior variance, clamped as diffusers does because its log is taken.
    variance = (posterior_std * posterior_std).clamp(min=1e-20)
    beta_t = one_minus_alpha_sq_ratio(g_t, g_prev)
    if variance_type in ("fixed_small", "fixed_small_log"):
        std = variance.sqrt()  # fixed_small_log: exp(log(var) / 2), the same number
    elif variance_type in ("fixed_large", "fixed_large_log"):
        # fixed_large_log is GLIDE's "max_log": log(beta_t) as the log-variance, i.e. std = sqrt(beta_t).
        # diffusers' step takes log(beta_t) ** 0.5 there, which is NaN; see the module docstring of
        # vdm_fast.integrations.diffusers.
        std = beta_t.sqrt()
    else:
        std = torch.ones_like(beta_t)
    c_n = torch.where(t > 0, std, torch.zeros_like(std))
    return _table(a_z, a_m, c_z, c_m, c_x, c_n, variance.log(), beta_t.log(), fold=fold)


def ddim(ab: torch.Tensor, ab_prev: torch.Tensor, prediction_type: str, eta: float,
         use_clipped_model_output: bool, fold: bool = False) -> torch.Tensor:
    """DDIM step (DDIM eqs. 12 and 16) as a (ROWS, B) table.

    ``ab_prev`` is alphas_cumprod at t - T // num_inference_steps (final_alpha_cumprod below 0).
    z_next = sqrt(ab_prev) x̂ + sqrt(1 - ab_prev - std^2) ε̂ + std n, with ε̂ written in z and m
    (or in z and the clipped x̂ when ``use_clipped_model_output``, as GLIDE re-derives it).
    """
    step = ddim_coeffs(gamma_from_alpha_bar(ab), gamma_from_alpha_bar(ab_prev), _parameterization(prediction_type),
                       eta, use_clipped_model_output)
    return _table(*step.unbind(-2), fold=fold)
