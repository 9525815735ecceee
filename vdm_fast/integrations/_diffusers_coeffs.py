"""Coefficient tables of diffusers' DDPM and DDIM steps in the form of ``vdm_fast.reverse_step``.

``reverse_step`` computes x̂ = a_z z + a_m m (clamped when asked) and
z_next = c_z z + c_m m + c_x x̂ + c_n n. Each function here takes float64 tensors over a batch
of timesteps (alphas_cumprod at t and at the previous timestep) and returns the rows of that
form, plus the rows that make ``reverse_step`` return x̂ itself (a_z, a_m, 0, 0, 1, 0), which is
how ``pred_original_sample`` is produced. The formulas are diffusers' (DDPM paper eqs. 6-7 and
15, DDIM paper eqs. 12 and 16) rearranged so that everything multiplying a tensor is a
per-sample scalar; no diffusers import, so the fp64 "truth" in the tests can reuse them.

Row layout of a table (ROWS x B, float64):
  0-5   step coefficients (a_z, a_m, c_z, c_m, c_x, c_n)
  6-11  pred_original_sample coefficients (a_z, a_m, 0, 0, 1, 0)
  12-13 min_log, max_log of the DDPM variance (learned_range interpolates between them per element)
"""

from __future__ import annotations

import torch

ROWS = 14
STEP, X0, MIN_LOG, MAX_LOG = slice(0, 6), slice(6, 12), 12, 13

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")
LEARNED = ("learned", "learned_range")


def x0_rows(prediction_type: str, sqrt_ab: torch.Tensor, sqrt_one_minus_ab: torch.Tensor):
    """(a_z, a_m) with x̂ = a_z z + a_m m for each parameterization (DDPM eq. 15; v: Salimans & Ho)."""
    if prediction_type == "epsilon":  # x̂ = (z - sqrt(1 - abar) eps) / sqrt(abar)
        return 1.0 / sqrt_ab, -sqrt_one_minus_ab / sqrt_ab
    if prediction_type == "sample":
        return torch.zeros_like(sqrt_ab), torch.ones_like(sqrt_ab)
    if prediction_type == "v_prediction":  # x̂ = sqrt(abar) z - sqrt(1 - abar) v
        return sqrt_ab, -sqrt_one_minus_ab
    raise ValueError(f"prediction_type given as {prediction_type} must be one of {', '.join(PREDICTION_TYPES)}")


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
    a_z, a_m = x0_rows(prediction_type, ab.sqrt(), (1 - ab).sqrt())
    alpha_t = ab / ab_prev
    beta_t = 1 - alpha_t
    c_x = ab_prev.sqrt() * beta_t / (1 - ab)  # coefficient of x̂ in the posterior mean
    c_z = alpha_t.sqrt() * (1 - ab_prev) / (1 - ab)  # coefficient of z_t
    # Posterior variance, clamped as diffusers does because its log is taken.
    variance = ((1 - ab_prev) / (1 - ab) * beta_t).clamp(min=1e-20)
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
    return _table(a_z, a_m, c_z, torch.zeros_like(c_z), c_x, c_n, variance.log(), beta_t.log(), fold=fold)


def ddim(ab: torch.Tensor, ab_prev: torch.Tensor, prediction_type: str, eta: float,
         use_clipped_model_output: bool, fold: bool = False) -> torch.Tensor:
    """DDIM step (DDIM eqs. 12 and 16) as a (ROWS, B) table.

    ``ab_prev`` is alphas_cumprod at t - T // num_inference_steps (final_alpha_cumprod below 0).
    z_next = sqrt(ab_prev) x̂ + sqrt(1 - ab_prev - std^2) ε̂ + std n, with ε̂ written in z and m
    (or in z and the clipped x̂ when ``use_clipped_model_output``, as GLIDE re-derives it).
    """
    sqrt_ab, sqrt_one_minus_ab = ab.sqrt(), (1 - ab).sqrt()
    a_z, a_m = x0_rows(prediction_type, sqrt_ab, sqrt_one_minus_ab)
    variance = (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
    std = eta * variance.sqrt()
    dir2 = 1 - ab_prev - std**2
    if eta <= 1:
        dir2 = dir2.clamp(min=0)  # rounding only: the exact value is (1-ab_prev)(ab_prev-ab)/(ab_prev(1-ab)) >= 0
    direction = dir2.sqrt()  # coefficient of ε̂ ("direction pointing to x_t")
    zero = torch.zeros_like(ab)
    if use_clipped_model_output:  # ε̂ = (z - sqrt(ab) x̂_clipped) / sqrt(1 - ab)
        c_z, c_m = direction / sqrt_one_minus_ab, zero
        c_x = ab_prev.sqrt() - direction * sqrt_ab / sqrt_one_minus_ab
    else:
        if prediction_type == "epsilon":
            e_z, e_m = zero, torch.ones_like(ab)
        elif prediction_type == "sample":  # ε̂ = (z - sqrt(ab) m) / sqrt(1 - ab)
            e_z, e_m = 1 / sqrt_one_minus_ab, -sqrt_ab / sqrt_one_minus_ab
        else:  # v_prediction: ε̂ = sqrt(ab) v + sqrt(1 - ab) z
            e_z, e_m = sqrt_one_minus_ab, sqrt_ab
        c_z, c_m, c_x = direction * e_z, direction * e_m, ab_prev.sqrt()
    c_n = std if eta > 0 else zero
    return _table(a_z, a_m, c_z, c_m, c_x, c_n, fold=fold)
