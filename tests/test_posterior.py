"""The posterior q(x_{t-1} | x_t, x_0) (vdm_fast.posterior) and the linear schedule conventions.

Against improved-diffusion's float64 formulas written here in their alpha_bar form (ours are in
gamma form: compared within the running error bounds of both, tests/numerics.py), including the
clipped log-variance at t = 0 and the learned-range bounds of a sampler grid (equal to the tables
of the respaced schedule).
"""

import math

import numpy as np
import pytest
import torch

import numerics
from vdm_fast import posterior
from vdm_fast.coefficients import gammas
from vdm_fast.respace import respace, space_timesteps
from vdm_fast.schedules import DiscreteSchedule, LinearGamma, linear_betas

F64 = torch.float64


def _theirs(betas):
    """improved-diffusion's GaussianDiffusion tables (float64, alpha_bar form)."""
    ac = torch.cumprod(1 - betas, 0)
    acp = torch.cat([torch.ones(1, dtype=F64), ac[:-1]])
    var = betas * (1 - acp) / (1 - ac)
    return dict(coef1=betas * acp.sqrt() / (1 - ac), coef2=(1 - acp) * (1 - betas).sqrt() / (1 - ac), variance=var,
                log_variance_clipped=torch.log(torch.cat([var[1:2], var[1:]])), log_beta=torch.log(betas))


@pytest.mark.parametrize("table", [DiscreteSchedule.linear(1000), DiscreteSchedule.cosine(100),
                                   DiscreteSchedule.linear(2, 0.1, 0.3)], ids=["linear", "cosine", "T2"])
def test_tables_match_improved_diffusion(table):
    ours, theirs = posterior.posterior_table(table), _theirs(table.betas)
    # Their alpha_bar form cancels in 1 - alpha_bar at small t (ours, in gamma form, does not): both run
    # under the running error bound (tests/numerics.py) from the same betas, and the bounds add.
    names = list(theirs)

    def flat(d):
        return torch.stack([d[k] for k in names])

    truth = numerics.running_error(lambda b: flat(_theirs(b)), (table.betas,))
    bound = numerics.running_error(lambda b: flat(vars(posterior.posterior_table(DiscreteSchedule(b)))),
                                   (table.betas,)).bound + truth.bound
    for i, name in enumerate(names):
        got = getattr(ours, name)
        assert got.dtype == F64 and got.shape == theirs[name].shape, name
        numerics.assert_within_bound(got, theirs[name], bound[i], msg=name)
    assert ours.variance[0].item() == 0.0  # the step to the clean level
    assert ours.log_variance_clipped[0] == ours.log_variance_clipped[1]
    assert torch.equal(posterior.posterior_log_variance_clipped(table), ours.log_variance_clipped)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_posterior_mean_variance(dtype):
    # The tables are checked against theirs above; here the lookup, broadcasting and arithmetic.
    table = DiscreteSchedule.linear(50, 1e-3, 0.1)
    g = torch.Generator().manual_seed(0)
    x0, z = torch.randn(5, 2, 3, generator=g, dtype=dtype), torch.randn(5, 2, 3, generator=g, dtype=dtype)
    t = torch.tensor([0, 1, 17, 48, 49])
    mean, var, log_var = posterior.posterior_mean_variance(x0, z, table, t)
    tab = posterior.posterior_table(table)
    v = (5, 1, 1)
    c1, c2 = tab.coef1[t].reshape(v), tab.coef2[t].reshape(v)
    want_mean = c1 * x0.double() + c2 * z.double()
    assert mean.dtype == var.dtype == log_var.dtype == dtype
    assert var.shape == log_var.shape == mean.shape == x0.shape
    # The coefficients rounded to the compute dtype, then a product each and a sum: within 4 roundings of
    # |coef1 x0| + |coef2 z| (0 in float64, where the same operations run on the same numbers).
    u = 0.0 if dtype == F64 else torch.finfo(dtype).eps / 2
    scale = (c1 * x0.double()).abs() + (c2 * z.double()).abs()
    assert ((mean.double() - want_mean).abs() <= 4 * u * scale).all()
    assert torch.equal(var, tab.variance[t].to(dtype).reshape(v).expand(x0.shape))
    assert torch.equal(log_var, tab.log_variance_clipped[t].to(dtype).reshape(v).expand(x0.shape))
    assert var[0].eq(0).all() and torch.equal(log_var[0], log_var[1])  # t = 0: variance 0, log-variance step 1's
    assert (var[1:] > 0).all()
    # A precomputed table gives the same numbers.
    again = posterior.posterior_mean_variance(x0, z, table, t, table=tab)
    assert all(torch.equal(a, b) for a, b in zip(again, (mean, var, log_var)))


def test_posterior_bad_inputs():
    table = DiscreteSchedule.linear(10)
    x = torch.zeros(2, 3)
    with pytest.raises(TypeError, match="schedule"):
        posterior.posterior_mean_variance(x, x, LinearGamma(), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="schedule needs at least 2"):
        posterior.posterior_table(DiscreteSchedule.linear(1))
    with pytest.raises(ValueError, match="z_t"):
        posterior.posterior_mean_variance(x, torch.zeros(2, 4), table, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="t must be a"):
        posterior.posterior_mean_variance(x, x, table, torch.tensor([0.5, 1.0]))
    with pytest.raises(RuntimeError, match="t: timesteps must lie in"):
        posterior.posterior_mean_variance(x, x, table, torch.tensor([0, 10]))
    with pytest.raises(TypeError, match="table"):
        posterior.posterior_mean_variance(x, x, table, torch.tensor([0, 1]), table={})
    with pytest.raises(ValueError, match="twice the channels"):
        posterior.split_variance_output(torch.zeros(2, 5), 3)


def test_learned_range_bounds_of_a_grid_are_the_respaced_tables():
    table = DiscreteSchedule.cosine(300)
    use = space_timesteps(300, "ddim30")
    spaced = posterior.posterior_table(respace(table, use).schedule)
    times = torch.cat([use.flip(0), torch.tensor([-1])])  # the subset grid, descending, to the clean level
    min_log, max_log = posterior.learned_range_bounds(gammas(table, times))
    # The respaced table's levels are the original's, so its tables (checked against theirs above) are
    # the grid's steps, the same formula on the same numbers: step i of the grid is respaced timestep
    # K-1-i. Only torch's vectorised and scalar libm paths may differ (a few ulp in softplus, expm1, log,
    # conditioned by the softplus difference of two levels, < 10 here): 1e-13 relative.
    torch.testing.assert_close(min_log, spaced.log_variance_clipped.flip(0), rtol=1e-13, atol=0)
    torch.testing.assert_close(max_log, spaced.log_beta.flip(0), rtol=1e-13, atol=0)
    assert torch.isfinite(min_log).all() and min_log[-1] == min_log[-2]  # the clean step: the previous step's
    # Per-sample (K+1, B) grids give the same rows per sample.
    two = posterior.learned_range_bounds(gammas(table, times)[:, None].expand(-1, 2))
    torch.testing.assert_close(two[0], min_log[:, None].expand(-1, 2), rtol=1e-13, atol=0)
    torch.testing.assert_close(two[1], max_log[:, None].expand(-1, 2), rtol=1e-13, atol=0)


def test_learned_range_log_variance_interpolates():
    lo, hi = torch.tensor(-7.0, dtype=F64), torch.tensor(-2.0, dtype=F64)
    v = torch.tensor([-1.0, 0.0, 1.0, 0.5], dtype=F64)
    got = posterior.learned_range_log_variance(v, lo, hi)
    assert got.tolist() == [-7.0, -4.5, -2.0, 0.75 * -2.0 + 0.25 * -7.0]


# --- linear schedule conventions ---------------------------------------------------------------------------


def test_linear_conventions():
    # improved-diffusion's get_named_beta_schedule("linear", T): np.linspace(scale 1e-4, scale 0.02, T), scale = 1000/T.
    def theirs(T):
        scale = 1000 / T
        return torch.from_numpy(np.linspace(scale * 0.0001, scale * 0.02, T, dtype=np.float64))

    ours_1000 = linear_betas(1000, convention="improved-diffusion")
    torch.testing.assert_close(ours_1000, theirs(1000), rtol=4 * 2**-53, atol=0)  # linspace: a rounding or two
    assert torch.equal(ours_1000, linear_betas(1000))  # at T = 1000 the conventions agree
    ours_4000 = linear_betas(4000, convention="improved-diffusion")
    torch.testing.assert_close(ours_4000, theirs(4000), rtol=4 * 2**-53, atol=0)
    assert ours_4000[0].item() == pytest.approx(2.5e-5, rel=1e-15) and ours_4000[-1].item() == pytest.approx(0.005)
    diffusers_4000 = linear_betas(4000)
    assert diffusers_4000[0].item() == pytest.approx(1e-4) and diffusers_4000[-1].item() == pytest.approx(0.02)
    t = DiscreteSchedule.linear(4000, convention="improved-diffusion")
    assert torch.equal(t.betas, ours_4000)
    assert math.isclose(DiscreteSchedule.linear(4000).betas[-1].item(), 0.02)
    with pytest.raises(ValueError, match="convention"):
        linear_betas(10, convention="ddpm")
