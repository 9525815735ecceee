"""q_sample against diffusers' DDPMScheduler.add_noise, and the precision DESIGN.md §2 promises."""

import pytest
import torch

import vdm_fast
from vdm_fast import schedules

diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
def test_matches_add_noise_fp32(beta_schedule):
    theirs = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule)
    ours = schedules.DiscreteSchedule(theirs.betas.double())
    x0, noise = torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)
    t = torch.tensor([0, 1, 2, 10, 250, 500, 998, 999])
    expected = theirs.add_noise(x0, noise, t)
    alpha, sigma = ours.alpha_sigma(t)
    got = vdm_fast.q_sample(x0, alpha, sigma, noise)
    # diffusers accumulates alphas_cumprod in float32 (ours: float64), which moves its
    # coefficients by up to ~1e-6 relative at late timesteps: hence 1e-5, not float32 rounding.
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_first_timesteps_stay_noisy(dtype):
    """diffusers casts alphas_cumprod to the sample dtype before the square roots: at t=0..2 the
    noise coefficient sqrt(1 - abar) becomes exactly 0 in fp16/bf16 (abar rounds to 1). Ours is
    computed in float32 from gamma, so z keeps its noise and matches the float64 truth."""
    theirs = diffusers.DDPMScheduler(num_train_timesteps=1000)
    ours = schedules.DiscreteSchedule(theirs.betas.double())
    x0 = torch.randn(3, 4, 8, 8).to(dtype)
    noise = torch.randn(3, 4, 8, 8).to(dtype)
    t = torch.tensor([0, 1, 2])

    diffusers_z = theirs.add_noise(x0, noise, t)
    rounds_to_one = theirs.alphas_cumprod[t].to(dtype) == 1
    assert bool(rounds_to_one[0]), "abar(0) no longer rounds to 1 in this dtype; revisit this test"
    assert torch.equal(diffusers_z[rounds_to_one], x0[rounds_to_one]), "diffusers' noise coefficient is not 0 there"

    a64, s64 = ours.alpha_sigma(t, torch.float64)
    truth = a64[:, None, None, None] * x0.double() + s64[:, None, None, None] * noise.double()
    alpha, sigma = ours.alpha_sigma(t)
    got = vdm_fast.q_sample(x0, alpha, sigma, noise)
    # One rounding to the output dtype: error within half an ulp of |truth| (eps/2 relative).
    tol = torch.finfo(dtype).eps * truth.abs() + 1e-30
    assert bool(((got.double() - truth).abs() <= tol).all())
    # and the noise is really there: z differs from x0 wherever sigma*noise exceeds an ulp of x0
    visible = (s64[:, None, None, None] * noise.double()).abs() > torch.finfo(dtype).eps * x0.double().abs() * 2
    assert bool((got != x0)[visible].all()) and bool(visible.any())
