"""Schedules (DESIGN.md §2): the tables equal diffusers', gamma is consistent, dtypes are kept."""

import math

import pytest
import torch

from vdm_fast import schedules


def test_linear_and_cosine_tables_match_diffusers():
    diffusers = pytest.importorskip("diffusers")
    for ours, kind in [(schedules.DiscreteSchedule.linear(1000), "linear"),
                       (schedules.DiscreteSchedule.cosine(1000), "squaredcos_cap_v2")]:
        theirs = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=kind)
        torch.testing.assert_close(ours.betas.float(), theirs.betas, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(ours.alphas_cumprod.float(), theirs.alphas_cumprod, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("sched", [schedules.DiscreteSchedule.linear(), schedules.DiscreteSchedule.cosine()], ids=["linear", "cosine"])
def test_discrete_quantities_are_consistent(sched):
    t = torch.arange(sched.num_timesteps)
    abar = sched.alphas_cumprod
    alpha, sigma = sched.alpha_sigma(t, torch.float64)
    torch.testing.assert_close(alpha**2, abar, rtol=1e-12, atol=0)
    torch.testing.assert_close(sigma**2, 1 - abar, rtol=1e-10, atol=0)
    torch.testing.assert_close(sched.snr(t, torch.float64), abar / (1 - abar), rtol=1e-10, atol=0)
    torch.testing.assert_close(sched.log_snr(t, torch.float64), -sched.gamma(t, torch.float64))
    assert bool((sched.gamma(t)[1:] > sched.gamma(t)[:-1]).all()), "gamma must increase with t"


def test_first_timestep_sigma_keeps_relative_precision():
    # 1 - abar at t=0 is beta_0 = 1e-4: sigma must be sqrt(1e-4) to float32 precision, not a
    # difference of two numbers near 1.
    sched = schedules.DiscreteSchedule.linear()
    sigma0 = sched.sigma(torch.tensor([0]))
    assert abs(sigma0.item() - math.sqrt(1e-4)) / math.sqrt(1e-4) < 1e-6


def test_vdm_linear_gamma_endpoints_and_derivative():
    sched = schedules.LinearGamma()
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(sched.gamma(t, torch.float64), torch.tensor([-13.3, -4.15, 5.0], dtype=torch.float64))
    torch.testing.assert_close(sched.gamma_prime(t, torch.float64), torch.full((3,), 18.3, dtype=torch.float64))
    alpha, sigma = sched.alpha_sigma(t, torch.float64)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(alpha**2, torch.sigmoid(-sched.gamma(t, torch.float64)))


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
