"""The parameterizations of a model's output and the schedule quantities they are written in:
DESIGN.md §2 in one place.

A model evaluated at z = alpha x + sigma eps outputs m in one of four parameterizations: "eps"
(the noise), "x0" (the data), "v" (v = alpha eps - sigma x) or "score" (grad_z log q(z) =
-eps / sigma). Every Python formula that relates them lives here, and the rest of vdm_fast calls
these functions (the kernels keep their own copies of the regression targets, csrc/targets.h and
kernels/sq_error.py; tests/test_parameterization.py holds them to this module):

- **the schedule**: gamma = -log SNR; alpha² = sigmoid(-gamma), sigma² = sigmoid(gamma), and the
  ratios of two levels as exp/expm1/softplus of gamma differences (``alpha_ratio``,
  ``one_minus_snr_ratio``, ...). Nothing is formed as 1 - alpha_bar, so nothing cancels at either
  end of a schedule, and zero terminal SNR (gamma = +inf) and the clean level (gamma = -inf) are
  exact limits;
- **conversions**: every estimate (x̂, ε̂, v̂, ŝ) is linear in the latent z and the output m with
  per-sample coefficients (``x0_coeffs``, ``eps_coeffs``, ``v_coeffs``, ``score_coeffs``);
- **regression targets**: what a model of each parameterization should output
  (``regression_target``);
- **squared errors between spaces**: ||x - x̂||² = (sigma²/alpha²)||eps - ε̂||² =
  sigma²||v - v̂||² = (sigma⁴/alpha²)||score - ŝ||² (``sq_error_scale``);
- **classifier guidance**: the shift of m that shifts the score by one unit (``score_shift_scale``).

Functions take tensors of any broadcastable shape and compute in their dtype: the callers choose
it (the coefficient builders call them in float64, DESIGN.md §5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._namespace import public_dir

PARAMETERIZATIONS = ("eps", "x0", "v", "score")
# diffusers' prediction_type spellings of the same parameterizations, accepted wherever a
# parameterization or a regression target is named.
DIFFUSERS_NAMES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}


def check(parameterization: str, name: str = "parameterization") -> str:
    """The parameterization's name in PARAMETERIZATIONS (diffusers' spelling translated), else a
    ValueError naming ``name``. Callers use the returned name."""
    if isinstance(parameterization, str):
        parameterization = DIFFUSERS_NAMES.get(parameterization, parameterization)
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"{name} must be one of {PARAMETERIZATIONS} (or diffusers' {tuple(DIFFUSERS_NAMES)}), "
                         f"got {parameterization!r}")
    return parameterization


# --- gamma -> alpha, sigma, SNR, and ratios of two levels --------------------------------------------


def alpha_sigma_squared(gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha², sigma²) = (sigmoid(-gamma), sigmoid(gamma)): variance preserving, and neither
    underflows to zero where the other is close to one."""
    return torch.sigmoid(-gamma), torch.sigmoid(gamma)


def alpha_sigma(gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, sigma), the signal and noise scales of the level gamma."""
    alpha_sq, sigma_sq = alpha_sigma_squared(gamma)
    return alpha_sq.sqrt(), sigma_sq.sqrt()


def snr(gamma: torch.Tensor) -> torch.Tensor:
    """SNR = alpha²/sigma² = exp(-gamma)."""
    return torch.exp(-gamma)


def gamma_from_alpha_bar(alpha_bar: torch.Tensor) -> torch.Tensor:
    """gamma = log((1 - alpha_bar) / alpha_bar), with 1 - alpha_bar inside log1p so that alpha_bar
    close to 1 (the first timesteps of a DDPM table) keeps its relative precision. alpha_bar = 1
    gives -inf (the clean level), alpha_bar = 0 gives +inf (zero terminal SNR)."""
    return torch.log1p(-alpha_bar) - torch.log(alpha_bar)


def gamma_from_log_alpha_bar(log_alpha_bar: torch.Tensor) -> torch.Tensor:
    """The same from log(alpha_bar) (a DDPM table as the cumulative sum of log(1 - beta)), with
    1 - alpha_bar = -expm1(log alpha_bar): exact where alpha_bar rounds to 1."""
    return torch.log(-torch.expm1(log_alpha_bar)) - log_alpha_bar


def _times(power: float, x: torch.Tensor) -> torch.Tensor:
    # power * x, without a multiplication by 1 (an extra rounding of x where it is inexact).
    return x if power == 1 else power * x


def alpha_ratio(gamma_a: torch.Tensor, gamma_b: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """(alpha_a / alpha_b) ** power = exp(power/2 (softplus(gamma_b) - softplus(gamma_a))), since
    log alpha² = -softplus(gamma)."""
    return torch.exp(_times(0.5 * power, F.softplus(gamma_b) - F.softplus(gamma_a)))


def sigma_ratio(gamma_a: torch.Tensor, gamma_b: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """(sigma_a / sigma_b) ** power = exp(power/2 (softplus(-gamma_b) - softplus(-gamma_a))), since
    log sigma² = -softplus(-gamma)."""
    return torch.exp(_times(0.5 * power, F.softplus(-gamma_b) - F.softplus(-gamma_a)))


def snr_ratio(gamma_a: torch.Tensor, gamma_b: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """(SNR_a / SNR_b) ** power = exp(power (gamma_b - gamma_a)). With power 1/2 it is the ratio
    of the variance-exploding noise levels sigmã_b / sigmã_a (sigmã = sigma/alpha = exp(gamma/2))."""
    return torch.exp(_times(power, gamma_b - gamma_a))


def one_minus_snr_ratio(gamma_a: torch.Tensor, gamma_b: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """1 - (SNR_a / SNR_b) ** power = -expm1(power (gamma_b - gamma_a)): exact for neighbouring
    levels, where the ratio is close to 1 (1 - SNR_t/SNR_s is the c of the ancestral step)."""
    return -torch.expm1(_times(power, gamma_b - gamma_a))


def one_minus_alpha_sq_ratio(gamma_a: torch.Tensor, gamma_b: torch.Tensor) -> torch.Tensor:
    """1 - alpha_a² / alpha_b² = -expm1(softplus(gamma_b) - softplus(gamma_a)): DDPM's beta of
    the step from level a to level b (1 - alpha_bar_t / alpha_bar_prev)."""
    return -torch.expm1(F.softplus(gamma_b) - F.softplus(gamma_a))


# --- conversions between parameterizations --------------------------------------------------------


def x0_coeffs(parameterization: str, alpha, sigma):
    """(a_z, a_m) with x̂ = a_z z + a_m m for a model output m of ``parameterization``."""
    p = check(parameterization)
    if p == "eps":  # x̂ = (z - sigma m) / alpha
        return 1 / alpha, -sigma / alpha
    if p == "x0":
        return torch.zeros_like(alpha), torch.ones_like(alpha)
    if p == "v":  # x̂ = alpha z - sigma m
        return alpha, -sigma
    return 1 / alpha, sigma * sigma / alpha  # score: Tweedie, x̂ = (z + sigma² m) / alpha


def eps_coeffs(parameterization: str, alpha, sigma):
    """(e_z, e_m) with ε̂ = e_z z + e_m m."""
    p = check(parameterization)
    if p == "eps":
        return torch.zeros_like(alpha), torch.ones_like(alpha)
    if p == "x0":  # ε̂ = (z - alpha m) / sigma
        return 1 / sigma, -alpha / sigma
    if p == "v":  # ε̂ = sigma z + alpha m
        return sigma, alpha
    return torch.zeros_like(alpha), -sigma  # score: ε̂ = -sigma m


def score_coeffs(parameterization: str, alpha, sigma):
    """(s_z, s_m) with ŝ = grad_z log q(z) = s_z z + s_m m = -ε̂ / sigma."""
    e_z, e_m = eps_coeffs(parameterization, alpha, sigma)
    if parameterization == "score":
        return e_z, torch.ones_like(alpha)
    return -e_z / sigma, -e_m / sigma


def v_coeffs(parameterization: str, alpha, sigma):
    """(v_z, v_m) with v̂ = v_z z + v_m m = alpha ε̂ - sigma x̂."""
    if check(parameterization) == "v":
        return torch.zeros_like(alpha), torch.ones_like(alpha)
    a_z, a_m = x0_coeffs(parameterization, alpha, sigma)
    e_z, e_m = eps_coeffs(parameterization, alpha, sigma)
    return alpha * e_z - sigma * a_z, alpha * e_m - sigma * a_m


_COEFFS = {"x0": x0_coeffs, "eps": eps_coeffs, "v": v_coeffs, "score": score_coeffs}


def conversion_coeffs(source: str, target: str, alpha, sigma):
    """(c_z, c_m): the estimate of ``target`` implied by the output m of a ``source`` model at z is
    c_z z + c_m m."""
    return _COEFFS[check(target, "target")](source, alpha, sigma)


def convert(m: torch.Tensor, z: torch.Tensor, alpha, sigma, source: str, target: str) -> torch.Tensor:
    """The estimate of ``target`` (x̂, ε̂, v̂ or ŝ) from the output ``m`` of a ``source`` model at
    latent ``z``; alpha and sigma broadcast against z (per sample: shaped (B, 1, ..., 1))."""
    c_z, c_m = conversion_coeffs(source, target, alpha, sigma)
    return c_z * z + c_m * m


# --- regression targets ---------------------------------------------------------------------------


def regression_target(parameterization: str, x0: torch.Tensor, noise: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """What a model of ``parameterization`` should output at z = alpha x0 + sigma noise. A target
    reads only what it needs: the eps and score targets do not depend on x0, nor x0's on noise."""
    p = check(parameterization, "target")
    if p == "eps":
        return noise
    if p == "x0":
        return x0
    if p == "v":
        return alpha * noise - sigma * x0
    return -noise / sigma  # score


# --- squared errors between spaces, guidance ------------------------------------------------------

# ||x - x̂||² = (alpha²)^a (sigma²)^s ||p - p̂||² for the estimates x̂, p̂ of one model output
# (DESIGN.md §2): the exponents (a, s) of each parameterization p.
_X0_SPACE_EXPONENTS = {"x0": (0, 0), "eps": (-1, 1), "v": (0, 1), "score": (-1, 2)}


def sq_error_scale(parameterization: str, gamma: torch.Tensor, space: str = "eps") -> torch.Tensor:
    """F with ||q - q̂||² = F ||p - p̂||² for the estimates of one model output, p the
    ``parameterization`` and q the ``space``: e.g. (p, "eps") -> 1, SNR, alpha², sigma² for eps, x0,
    v, score. F = (alpha²)^a (sigma²)^s is evaluated in the form with one transcendental function
    (SNR^a when a + s = 0, a power of a sigmoid when a or s is 0), so that it is exact at
    gamma = ±inf wherever the conversion is finite."""
    a_p, s_p = _X0_SPACE_EXPONENTS[check(parameterization)]
    a_q, s_q = _X0_SPACE_EXPONENTS[check(space, "space")]
    a, s = a_p - a_q, s_p - s_q
    if a == 0 and s == 0:
        return torch.ones_like(gamma)
    if a + s == 0:  # (alpha²/sigma²)^a
        return _snr_power(gamma, a)
    alpha_sq, sigma_sq = alpha_sigma_squared(gamma)
    if a == 0:
        return _power(sigma_sq, s)
    if s == 0:
        return _power(alpha_sq, a)
    return _snr_power(gamma, a) * _power(sigma_sq, a + s)  # (alpha²/sigma²)^a (sigma²)^(a + s)


def _snr_power(gamma: torch.Tensor, a: int) -> torch.Tensor:
    """SNR^a = exp(-a gamma)."""
    if a == 1:
        return snr(gamma)
    return torch.exp(gamma) if a == -1 else torch.exp(-a * gamma)


def _power(x: torch.Tensor, k: int) -> torch.Tensor:
    return x if k == 1 else x**k


def score_shift_scale(parameterization: str, alpha, sigma):
    """The change of the model output m that changes the score it implies by one unit: 1 / s_m
    (``score_coeffs``), so guidance that adds k g to the score adds k g / s_m to m. score: 1;
    eps: -sigma; x0: sigma²/alpha; v: -sigma/alpha."""
    _, s_m = score_coeffs(check(parameterization), alpha, sigma)
    return 1 / s_m


__all__ = [
    "PARAMETERIZATIONS", "DIFFUSERS_NAMES", "check", "alpha_sigma_squared", "alpha_sigma", "snr", "gamma_from_alpha_bar",
    "alpha_ratio", "sigma_ratio", "snr_ratio", "one_minus_snr_ratio", "one_minus_alpha_sq_ratio", "x0_coeffs",
    "eps_coeffs", "score_coeffs", "v_coeffs", "conversion_coeffs", "convert", "regression_target", "sq_error_scale",
    "score_shift_scale",
]
__dir__ = public_dir(__all__)
