"""Schedules (DESIGN.md §2): the tables equal diffusers', gamma is consistent, dtypes are kept.

Equalities hold within running error bounds (tests/numerics.py): each side's formula evaluated
from the same betas (the tables built inside the bound, so their cumulative products and sums
count), at the precision it is computed in."""

import math

import pytest
import torch

import numerics
from vdm_fast import schedules

F64 = torch.float64


def _linear_betas():
    return torch.linspace(1e-4, 0.02, 1000, dtype=F64)  # DDPM's table, as linear_betas and diffusers build it


def test_linear_and_cosine_tables_match_diffusers():
    diffusers = pytest.importorskip("diffusers")
    # diffusers builds the linear table with a float32 torch.linspace, the cosine one in Python
    # floats rounded once to float32, and alphas_cumprod as a float32 cumprod of 1 - betas: each
    # bounded at float32 below; ours are the same formulas in float64 (their bound at float64).
    ours = schedules.DiscreteSchedule.linear(1000)
    theirs = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    betas = {dt: numerics.running_error(_linear_betas, (), dtype=dt) for dt in (torch.float32, F64)}
    abar = {dt: numerics.running_error(lambda: torch.cumprod(1.0 - _linear_betas(), 0), (), dtype=dt)
            for dt in (torch.float32, F64)}
    numerics.assert_within_bound(theirs.betas, ours.betas, betas[torch.float32].bound + betas[F64].bound,
                                 msg="linear betas")
    # A float32 cumprod of 1000 rounded factors 1 - beta: up to ~2000 u32 = 1e-4 relative at the end
    # (first order, worst case, the literal 1 counted as rounded); the old rtol 1e-5 was tuned on
    # roundings that cancel.
    numerics.assert_within_bound(theirs.alphas_cumprod, ours.alphas_cumprod,
                                 abar[torch.float32].bound + abar[F64].bound, msg="linear alphas_cumprod")

    ours = schedules.DiscreteSchedule.cosine(1000)
    theirs = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    # Both evaluate the cosine formula in float64 (diffusers then rounds once to float32, the
    # final rounding assert_within_bound allows): twice the float64 bound.
    betas64 = numerics.running_error(lambda: schedules.cosine_betas(1000), (), dtype=F64).bound
    numerics.assert_within_bound(theirs.betas, ours.betas, 2 * betas64, msg="cosine betas")
    # The float32 cumprod of their table (our float64 table, wider than float32, enters rounded
    # once), ours in float64, and the two float64 tables' difference (<= 2 betas64) carried
    # through the product (relative sensitivity 1 / (1 - beta_j) to each beta_j).
    abar32 = numerics.running_error(lambda b: torch.cumprod(1.0 - b, 0), (ours.betas,), dtype=torch.float32).bound
    abar64 = numerics.running_error(lambda b: torch.cumprod(1.0 - b, 0), (ours.betas,), dtype=F64).bound
    carried = ours.alphas_cumprod * (2 * betas64 / (1 - ours.betas)).cumsum(0)
    numerics.assert_within_bound(theirs.alphas_cumprod, ours.alphas_cumprod, abar32 + abar64 + carried,
                                 msg="cosine alphas_cumprod")


def _discrete(b):
    return schedules.DiscreteSchedule(b)


@pytest.mark.parametrize("sched", [schedules.DiscreteSchedule.linear(), schedules.DiscreteSchedule.cosine()], ids=["linear", "cosine"])
def test_discrete_quantities_are_consistent(sched):
    # Two formulas of each quantity from the same betas: our gamma table (log1p, cumsum, expm1)
    # against alphas_cumprod (cumprod); the bound is the sum of both formulas' bounds. 1 - abar
    # cancels near t = 0 (abar = 1 - 1e-4): the bounds of sigma^2 and SNR grow there, as they should.
    t = torch.arange(sched.num_timesteps)
    pairs = {
        "alpha^2": (lambda b: _discrete(b).alpha_sigma(t, F64)[0] ** 2, lambda b: _discrete(b).alphas_cumprod),
        "sigma^2": (lambda b: _discrete(b).alpha_sigma(t, F64)[1] ** 2, lambda b: 1 - _discrete(b).alphas_cumprod),
        "snr": (lambda b: _discrete(b).snr(t, F64),
                lambda b: _discrete(b).alphas_cumprod / (1 - _discrete(b).alphas_cumprod)),
    }
    ours = {"alpha^2": sched.alpha_sigma(t, F64)[0] ** 2, "sigma^2": sched.alpha_sigma(t, F64)[1] ** 2,
            "snr": sched.snr(t, F64)}
    for name, (f_ours, f_table) in pairs.items():
        mine, table = numerics.running_error(f_ours, (sched.betas,)), numerics.running_error(f_table, (sched.betas,))
        numerics.assert_within_bound(ours[name], table.value, mine.bound + table.bound, msg=name)
    assert torch.equal(sched.log_snr(t, F64), -sched.gamma(t, F64))  # log_snr is -gamma by definition
    assert bool((sched.gamma(t)[1:] > sched.gamma(t)[:-1]).all()), "gamma must increase with t"


def test_first_timestep_sigma_keeps_relative_precision():
    # 1 - abar at t=0 is beta_0 = 1e-4: sigma must be sqrt(1e-4) to float32 precision, not a
    # difference of two numbers near 1 (that would be off by ~u32 / 1e-4 = 6e-4 relative).
    # The bound: gamma_0 from the float64 table (its own bound), rounded to float32, then
    # sqrt(sigmoid(gamma)) in float32: ~6e-7 relative (sigmoid's 4 ulps and gamma_0 = -9.2 rounded;
    # the old 1e-6 sat just under 2x that).
    sched = schedules.DiscreteSchedule.linear()
    t0 = torch.tensor([0])
    sigma0 = sched.sigma(t0)
    gamma0 = numerics.running_error(lambda b: _discrete(b).gamma(t0, F64), (sched.betas,))
    s = numerics.running_error(lambda g: torch.sigmoid(g).sqrt(), (gamma0.value,), dtype=torch.float32)
    bound = s.bound + 0.5 * s.value * (1 - s.value**2) * gamma0.bound  # + |d sigma / d gamma| x the table's error
    numerics.assert_within_bound(sigma0, torch.tensor([math.sqrt(sched.betas[0].item())], dtype=F64), bound)


def test_vdm_linear_gamma_endpoints_and_derivative():
    sched = schedules.LinearGamma()
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    # The decimal values, each rounded once to float64 (u64 |value|), against the formula's bound.
    exact = torch.tensor([-13.3, -4.15, 5.0], dtype=F64)
    gamma = numerics.running_error(lambda t: sched.gamma(t, F64), (t,))
    numerics.assert_within_bound(sched.gamma(t, F64), exact, gamma.bound + numerics.unit_roundoff(F64) * exact.abs())
    prime = numerics.running_error(lambda t: sched.gamma_prime(t, F64), (t,))  # 5.0 - (-13.3), rounded
    numerics.assert_within_bound(sched.gamma_prime(t, F64), torch.full((3,), 18.3, dtype=F64),
                                 prime.bound + numerics.unit_roundoff(F64) * 18.3)
    alpha, sigma = sched.alpha_sigma(t, F64)
    # alpha^2 + sigma^2 = sigmoid(-g) + sigmoid(g) = 1 exactly; alpha^2 = sigmoid(-g) by definition.
    total = numerics.running_error(lambda t: (lambda a, s: a**2 + s**2)(*sched.alpha_sigma(t, F64)), (t,))
    numerics.assert_within_bound(alpha**2 + sigma**2, torch.ones(3, dtype=F64), total.bound)
    squared = numerics.running_error(lambda t: sched.alpha_sigma(t, F64)[0] ** 2, (t,))
    direct = numerics.running_error(lambda t: torch.sigmoid(-sched.gamma(t, F64)), (t,))
    numerics.assert_within_bound(alpha**2, torch.sigmoid(-sched.gamma(t, F64)), squared.bound + direct.bound)


def test_coefficients_follow_the_timesteps_device_and_requested_dtype():
    sched = schedules.DiscreteSchedule.linear()
    t = torch.tensor([0, 10, 999])
    assert sched.alpha(t).dtype == torch.float32
    assert sched.alpha(t, torch.float64).dtype == torch.float64
    assert sched.alpha(t.to("meta")).device.type == "meta"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int32])
def test_half_coefficients_are_refused(dtype):
    with pytest.raises(TypeError, match="dtype"):
        schedules.DiscreteSchedule.linear().alpha(torch.tensor([1]), dtype)


def test_bad_timesteps_name_the_argument():
    with pytest.raises(TypeError, match="t must"):
        schedules.DiscreteSchedule.linear().alpha(torch.tensor([0.5]))
    with pytest.raises(TypeError, match="t must"):
        schedules.LinearGamma().alpha(torch.tensor([1]))
    with pytest.raises(ValueError, match="gamma_min"):
        schedules.LinearGamma(5.0, -13.3)
    with pytest.raises(ValueError, match="betas"):
        schedules.DiscreteSchedule(torch.tensor([0.1, 1.5]))


@pytest.mark.parametrize("bad", [[-1], [0, 10], [1000]])
def test_discrete_timesteps_out_of_range_raise_naming_t(bad):
    sched = schedules.DiscreteSchedule.linear(10)
    with pytest.raises(RuntimeError, match=r"t: timesteps must lie in 0\.\.9"):
        sched.gamma(torch.tensor(bad))


def test_discrete_empty_timesteps():
    assert schedules.DiscreteSchedule.linear(10).gamma(torch.zeros(0, dtype=torch.long)).shape == (0,)
