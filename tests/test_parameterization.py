"""DESIGN.md §2 in one place (vdm_fast.parameterization): the conversions between the
parameterizations, the regression targets, the squared-error identity and the schedule quantities,
against hand formulas written here in alpha_bar (float64), and against each other (round trips);
and the kernels' own copies of the targets (csrc/targets.h, kernels/sq_error.py) on every backend
that runs here, against this module's.

Equality rule (tests/numerics.py): ours within K times the running error bound of ours, plus the
hand formula's own float64 bound (both run in float64 here, so both are float64 bounds).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import numerics
import vdm_fast
from helpers import backend_params
from vdm_fast import coefficients, parameterization as P

F64 = torch.float64
PARAMS = P.PARAMETERIZATIONS
PAIRS = list(itertools.product(PARAMS, PARAMS))


def col(v, like):
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


def case(seed=0, batch=9, dim=5):
    """Data, noise, a model output and gammas in [-8, 8] (float64)."""
    gen = torch.Generator().manual_seed(seed)
    x, eps, m = (torch.randn(batch, dim, generator=gen, dtype=F64) for _ in range(3))
    g = torch.rand(batch, generator=gen, dtype=F64) * 16 - 8
    return x, eps, m, g


def assert_matches_hand(ours, hand, inputs, msg=""):
    """ours(*inputs) within K times its running error bound plus the hand formula's own bound."""
    got = numerics.running_error(ours, inputs)
    want = numerics.running_error(hand, inputs)
    numerics.assert_within_bound(got.value, want.value, numerics.K * got.bound + want.bound, k=1, msg=msg)


# --- hand formulas, in alpha_bar (Luo's notation) --------------------------------------------------


def hand_alpha_bar(g):
    return 1 / (1 + torch.exp(g))  # alpha_bar = alpha² = SNR / (1 + SNR), SNR = exp(-gamma)


def hand_estimates(p, z, m, g):
    """x̂, ε̂, v̂, ŝ of a model output m of parameterization p at latent z (DESIGN.md §2)."""
    ab = col(hand_alpha_bar(g), z)
    a, s = ab.sqrt(), (1 - ab).sqrt()
    x = {"eps": (z - s * m) / a, "x0": m, "v": a * z - s * m, "score": (z + s * s * m) / a}[p]
    e = {"eps": m, "x0": (z - a * m) / s, "v": a * m + s * z, "score": -s * m}[p]
    return {"x0": x, "eps": e, "v": a * e - s * x, "score": -e / s}


def hand_x0_space_scale(p, g):
    """||x - x̂||² / ||p - p̂||²: 1, sigma²/alpha², sigma², sigma⁴/alpha² (DESIGN.md §2)."""
    ab = hand_alpha_bar(g)
    return {"x0": torch.ones_like(ab), "eps": (1 - ab) / ab, "v": 1 - ab, "score": (1 - ab) ** 2 / ab}[p]


def levels(g):
    alpha, sigma = P.alpha_sigma(g)
    return alpha, sigma


# --- conversions -----------------------------------------------------------------------------------


@pytest.mark.parametrize("source,target", PAIRS)
def test_conversions_match_hand_formulas(source, target):
    x, eps, m, g = case()
    z = col(hand_alpha_bar(g).sqrt(), x) * x + col((1 - hand_alpha_bar(g)).sqrt(), x) * eps

    def ours(z, m, g):
        alpha, sigma = levels(g)
        return P.convert(m, z, col(alpha, z), col(sigma, z), source, target)

    assert_matches_hand(ours, lambda z, m, g: hand_estimates(source, z, m, g)[target], (z, m, g),
                        msg=f"{source} -> {target}")


@pytest.mark.parametrize("source,target", PAIRS)
def test_round_trips(source, target):
    """source -> target -> source gives the model output back (x0 -> eps -> x0, ...)."""
    _, _, m, g = case(seed=1)
    z = torch.randn(m.shape, generator=torch.Generator().manual_seed(5), dtype=F64)

    def there_and_back(z, m, g):
        alpha, sigma = (col(v, z) for v in levels(g))
        return P.convert(P.convert(m, z, alpha, sigma, source, target), z, alpha, sigma, target, source)

    got = numerics.running_error(there_and_back, (z, m, g))
    numerics.assert_within_bound(got.value, m, numerics.K * got.bound, k=1, msg=f"{source} -> {target} -> {source}")


@pytest.mark.parametrize("source,target", PAIRS)
def test_true_output_converts_to_true_target(source, target):
    """The regression target of one parameterization, converted, is the other's: the conversions
    and the targets describe the same z = alpha x + sigma eps."""
    x, eps, _, g = case(seed=2)

    def converted(x, eps, g):
        alpha, sigma = (col(v, x) for v in levels(g))
        z = alpha * x + sigma * eps
        return P.convert(P.regression_target(source, x, eps, alpha, sigma), z, alpha, sigma, source, target)

    def target_of(x, eps, g):
        ab = col(hand_alpha_bar(g), x)
        a, s = ab.sqrt(), (1 - ab).sqrt()
        return {"eps": eps, "x0": x, "v": a * eps - s * x, "score": -eps / s}[target]

    assert_matches_hand(converted, target_of, (x, eps, g), msg=f"{source} -> {target}")


def test_named_coefficient_functions_are_the_conversions():
    _, _, _, g = case(seed=3)
    alpha, sigma = levels(g)
    for name, target in (("x0_coeffs", "x0"), ("eps_coeffs", "eps"), ("v_coeffs", "v"), ("score_coeffs", "score")):
        for p in PARAMS:
            a = getattr(P, name)(p, alpha, sigma)
            b = P.conversion_coeffs(p, target, alpha, sigma)
            assert all(torch.equal(u, w) for u, w in zip(a, b)), (name, p)


# --- squared errors between spaces ----------------------------------------------------------------


@pytest.mark.parametrize("source,space", PAIRS)
def test_sq_error_scale_matches_hand_formula(source, space):
    _, _, _, g = case(seed=4)
    assert_matches_hand(lambda g: P.sq_error_scale(source, g, space),
                        lambda g: hand_x0_space_scale(source, g) / hand_x0_space_scale(space, g), (g,),
                        msg=f"{source} in {space} space")


@pytest.mark.parametrize("source,space", PAIRS)
def test_sq_error_identity(source, space):
    """||q̂ - q||² = sq_error_scale(p, gamma, q) ||p̂ - p||² for any model output: the estimates of
    q are linear in m with slope c_m, the conversion's, so the scale is c_m²; checked on an
    inexact model output against the true targets."""
    x, eps, m, g = case(seed=5)

    def both_sides(x, eps, m, g):
        alpha, sigma = (col(v, x) for v in levels(g))
        z = alpha * x + sigma * eps
        err_q = ((P.convert(m, z, alpha, sigma, source, space) - P.regression_target(space, x, eps, alpha, sigma))
                 ** 2).sum(1)
        err_p = ((m - P.regression_target(source, x, eps, alpha, sigma)) ** 2).sum(1)
        return torch.stack([err_q, P.sq_error_scale(source, g, space) * err_p])

    got = numerics.running_error(both_sides, (x, eps, m, g))
    numerics.assert_within_bound(got.value[0], got.value[1], got.bound[0] + got.bound[1], msg=f"{source} in {space}")


def test_sq_error_scale_at_the_ends_of_a_schedule():
    """Exact limits where the ELBO weights use them: zero terminal SNR (gamma = +inf) and the
    clean level (gamma = -inf)."""
    ends = torch.tensor([math.inf, -math.inf], dtype=F64)
    want = {("x0", "eps"): [0.0, math.inf], ("v", "eps"): [0.0, 1.0], ("score", "eps"): [1.0, 0.0],
            ("eps", "eps"): [1.0, 1.0], ("x0", "x0"): [1.0, 1.0], ("v", "x0"): [1.0, 0.0],
            ("eps", "x0"): [math.inf, 0.0]}
    for (p, space), values in want.items():
        assert P.sq_error_scale(p, ends, space).tolist() == values, (p, space)


# --- gamma -> alpha, sigma and ratios -------------------------------------------------------------


def test_alpha_sigma_snr_and_gamma_round_trip():
    _, _, _, g = case(seed=6)
    assert_matches_hand(lambda g: torch.stack(P.alpha_sigma(g)),
                        lambda g: torch.stack([hand_alpha_bar(g).sqrt(), (1 - hand_alpha_bar(g)).sqrt()]), (g,))
    assert_matches_hand(lambda g: P.snr(g), lambda g: hand_alpha_bar(g) / (1 - hand_alpha_bar(g)), (g,))
    assert_matches_hand(lambda g: P.gamma_from_alpha_bar(P.alpha_sigma_squared(g)[0]), lambda g: g, (g,))
    ends = torch.tensor([-math.inf, math.inf], dtype=F64)
    assert [v.tolist() for v in P.alpha_sigma(ends)] == [[1.0, 0.0], [0.0, 1.0]]
    assert P.gamma_from_alpha_bar(torch.tensor([1.0, 0.0], dtype=F64)).tolist() == [-math.inf, math.inf]


@pytest.mark.parametrize("power", [1.0, 0.5, 2.0])
def test_ratios_match_hand_formulas(power):
    _, _, _, g_a = case(seed=7)
    g_b = g_a - 0.01 - 2 * torch.rand(g_a.shape, generator=torch.Generator().manual_seed(8), dtype=F64)

    def ab(g):
        return hand_alpha_bar(g)

    def snr(g):
        return ab(g) / (1 - ab(g))

    cases = {
        "alpha_ratio": (lambda a, b: P.alpha_ratio(a, b, power), lambda a, b: (ab(a) / ab(b)) ** (power / 2)),
        "sigma_ratio": (lambda a, b: P.sigma_ratio(a, b, power),
                        lambda a, b: ((1 - ab(a)) / (1 - ab(b))) ** (power / 2)),
        "snr_ratio": (lambda a, b: P.snr_ratio(a, b, power), lambda a, b: (snr(a) / snr(b)) ** power),
        "one_minus_snr_ratio": (lambda a, b: P.one_minus_snr_ratio(a, b, power),
                                lambda a, b: 1 - (snr(a) / snr(b)) ** power),
    }
    if power == 1.0:
        cases["one_minus_alpha_sq_ratio"] = (P.one_minus_alpha_sq_ratio, lambda a, b: 1 - ab(a) / ab(b))
    for name, (ours, hand) in cases.items():
        for first, second in ((g_a, g_b), (g_b, g_a)):
            assert_matches_hand(ours, hand, (first, second), msg=f"{name}, power {power}")


def test_score_shift_scale_matches_guidance_table():
    """DESIGN.md §5: a score shift k g is the output shift eps -sigma k, x0 k sigma²/alpha,
    v -k sigma/alpha, score k."""
    _, _, _, g = case(seed=9)

    def hand(p):
        def f(g):
            ab = hand_alpha_bar(g)
            a, s = ab.sqrt(), (1 - ab).sqrt()
            return {"eps": -s, "x0": s * s / a, "v": -s / a, "score": torch.ones_like(s)}[p]
        return f

    for p in PARAMS:
        assert_matches_hand(lambda g: P.score_shift_scale(p, *levels(g)), hand(p), (g,), msg=p)


# --- the kernels' copies of the targets ---------------------------------------------------------------


@pytest.mark.parametrize("backend", backend_params("sq_error", include_reference=True))
@pytest.mark.parametrize("target", PARAMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_sq_error_kernel_targets_equal_parameterization(backend, target, dtype):
    """The target each sq_error kernel builds in-kernel (read off the gradient at pred = 0:
    d/dpred sum (pred - target)² = -2 target, exactly) against regression_target."""
    name, device = backend
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    gen = torch.Generator().manual_seed(10)
    x0, noise = (torch.randn(5, 3, 7, generator=gen).to(device, dtype) for _ in range(2))
    alpha = torch.rand(5, generator=gen).to(device, cdt)
    sigma = (0.2 + 0.8 * torch.rand(5, generator=gen)).to(device, cdt)

    def kernel_target(x0, noise, alpha, sigma):
        pred = torch.zeros_like(x0, requires_grad=True)
        out = vdm_fast.sq_error(pred, x0, noise, alpha, sigma, target=target, backend=name)
        (grad,) = torch.autograd.grad(out, pred, torch.ones_like(out))
        return -0.5 * grad

    def ours(x0, noise, alpha, sigma):
        return P.regression_target(target, x0, noise, col(alpha, x0), col(sigma, x0))

    numerics.check_against_reference(kernel_target, ours, (x0, noise, alpha, sigma), msg=f"{name} {target}")


# --- names ------------------------------------------------------------------------------------------


def test_unknown_names_raise_naming_the_argument():
    one = torch.ones(2, dtype=F64)
    with pytest.raises(ValueError, match="parameterization"):
        P.x0_coeffs("mu", one, one)
    with pytest.raises(ValueError, match="target"):
        P.conversion_coeffs("eps", "mu", one, one)
    with pytest.raises(ValueError, match="target"):
        P.regression_target("mu", one, one, one, one)
    with pytest.raises(ValueError, match="space"):
        P.sq_error_scale("eps", one, "mu")


@pytest.mark.parametrize("module", [P, coefficients], ids=lambda m: m.__name__)
def test_namespace_is_its_all(module):
    assert dir(module) == sorted(module.__all__)
    assert all(hasattr(module, name) for name in module.__all__)
