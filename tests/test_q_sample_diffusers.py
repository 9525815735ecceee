"""q_sample against diffusers' DDPMScheduler.add_noise, and the precision DESIGN.md §2 promises.

Equality rule (tests/numerics.py): ours within K times the running error bound of our formula
(q_sample on alpha, sigma computed in float32 from the table's float64 gamma, Schedule.alpha_sigma)
of diffusers' add_noise run on float64 data with its alphas_cumprod in float64, plus that truth's
float64 bound; diffusers' float32 result within K times the bound of its own code at float32 of the
same code on float64 data with its float32 table.
"""

import pytest
import torch

import numerics
import vdm_fast
from vdm_fast import reference, schedules

diffusers = pytest.importorskip("diffusers")


def _ours(g, x0, noise):
    """q_sample on Schedule.alpha_sigma's coefficients (float32 from gamma)."""
    return reference.q_sample(x0, torch.sigmoid(-g).sqrt(), torch.sigmoid(g).sqrt(), noise)


def _add_noise(sched, acp, x0, noise, t):
    """diffusers' add_noise with its alphas_cumprod replaced by ``acp``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sched, "alphas_cumprod", acp)
        return sched.add_noise(x0, noise, t)


@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
def test_matches_add_noise_fp32(beta_schedule):
    theirs = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule)
    ours = schedules.DiscreteSchedule(theirs.betas.double())
    x0, noise = torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)
    t = torch.tensor([0, 1, 2, 10, 250, 500, 998, 999])
    expected = theirs.add_noise(x0, noise, t)
    alpha, sigma = ours.alpha_sigma(t)
    got = vdm_fast.q_sample(x0, alpha, sigma, noise)
    # diffusers accumulates alphas_cumprod in float32 (ours: float64): each is held to its own truth.
    bound = numerics.running_error(_ours, (ours.gammas[t], x0, noise), dtype=torch.float32).bound
    truth = numerics.running_error(lambda acp, x, n: _add_noise(theirs, acp, x, n, t), (ours.alphas_cumprod, x0, noise),
                                   dtype=torch.float64)
    numerics.assert_within_bound(got, truth.value, numerics.K * bound + truth.bound, k=1, msg="ours")
    truth = numerics.running_error(lambda acp, x, n: _add_noise(theirs, acp, x, n, t),
                                   (theirs.alphas_cumprod, x0, noise), dtype=torch.float32)
    numerics.assert_within_bound(expected, truth.value, truth.bound, msg="diffusers' add_noise")


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

    alpha, sigma = ours.alpha_sigma(t)
    got = vdm_fast.q_sample(x0, alpha, sigma, noise)
    # Float32 arithmetic on the half data (its running error bound, the float64 gamma rounded once)
    # and one rounding of the result to the output dtype, which assert_within_bound adds.
    want = numerics.running_error(_ours, (ours.gammas[t], x0, noise), dtype=torch.float32)
    numerics.assert_within_bound(got, want.value, want.bound, msg=str(dtype))
    # and the noise is really there: z differs from x0 wherever sigma*noise exceeds an ulp of x0
    s64 = ours.sigma(t, torch.float64)
    visible = (s64[:, None, None, None] * noise.double()).abs() > torch.finfo(dtype).eps * x0.double().abs() * 2
    assert bool((got != x0)[visible].all()) and bool(visible.any())
