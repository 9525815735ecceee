"""vdm_fast.tables: a codebase's own alphas_cumprod / betas table -> reverse_step coefficients,
against the DDPM p_sample and DDIM update written out by hand from the table (float64)."""

import pytest
import torch

import vdm_fast
from vdm_fast import tables
from vdm_fast.schedules import cosine_betas, linear_betas

F64 = torch.float64


def _table(kind="linear"):
    betas = linear_betas(1000) if kind == "linear" else cosine_betas(1000)
    abar = torch.cumprod(1 - betas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=F64), abar[:-1]])
    return betas, abar, abar_prev


def _v(c):
    return c[:, None, None]


def hand_ddpm(abar, abar_prev, betas, t, z, m, noise, parameterization, variance, clip):
    """improved-diffusion's p_sample in float64: x̂ from the output, the q(x_{t-1} | x_t, x̂) mean
    (posterior_mean_coef1/2), fixed small (posterior_variance) or large (betas) variance, no noise at t = 0."""
    a, ap, b = abar[t], abar_prev[t], betas[t]
    if parameterization == "eps":
        x0 = _v((1 / a).sqrt()) * z - _v((1 / a - 1).sqrt()) * m
    elif parameterization == "v":
        x0 = _v(a.sqrt()) * z - _v((1 - a).sqrt()) * m
    else:
        x0 = m
    if clip:
        x0 = x0.clamp(-1, 1)
    coef1 = b * ap.sqrt() / (1 - a)
    coef2 = (1 - ap) * (1 - b).sqrt() / (1 - a)
    var = b * (1 - ap) / (1 - a) if variance == "posterior" else b
    mask = (t > 0).to(F64)
    return _v(coef1) * x0 + _v(coef2) * z + _v(mask * var.sqrt()) * noise


def hand_ddim(abar, t, t_prev, z, eps_out, noise, eta, clip, rederive):
    """DDIM (Song et al. eq. 12) as improved-diffusion's ddim_sample writes it, float64."""
    a = abar[t]
    ap = torch.where(t_prev >= 0, abar[t_prev.clamp(min=0)], torch.ones_like(a))
    x0 = _v((1 / a).sqrt()) * z - _v((1 / a - 1).sqrt()) * eps_out
    if clip:
        x0 = x0.clamp(-1, 1)
    eps = (_v((1 / a).sqrt()) * z - x0) / _v((1 / a - 1).sqrt()) if rederive else eps_out
    sigma = eta * ((1 - ap) / (1 - a)).sqrt() * (1 - a / ap).sqrt()
    return _v(ap.sqrt()) * x0 + _v((1 - ap - sigma**2).sqrt()) * eps + _v(sigma) * noise


def _data(B, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, 3, 5, generator=g, dtype=F64)
    m = torch.randn(B, 3, 5, generator=g, dtype=F64)
    n = torch.randn(B, 3, 5, generator=g, dtype=F64)
    return z, m, n


# Float64 tolerance: the hand formulas form 1 - abar and 1/abar - 1 by subtraction, which at t = 0
# (1 - abar = 1e-4) carries relative error 1e-16 / 1e-4 = 1e-12 into a_m and the posterior coefficients;
# the builders (gamma-based) are accurate to a few ulps. rtol 1e-10 leaves a factor 100 over that.
RTOL, ATOL = 1e-10, 1e-12
T_SET = torch.tensor([0, 1, 2, 17, 500, 998, 999])


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("parameterization", ["eps", "v", "x0"])
@pytest.mark.parametrize("variance", ["posterior", "beta"])
@pytest.mark.parametrize("clip", [False, True])
def test_ddpm_step_equals_p_sample(kind, parameterization, variance, clip):
    betas, abar, abar_prev = _table(kind)
    z, m, n = _data(len(T_SET), 1)
    coeffs = tables.ddpm_step_coeffs(abar, T_SET, T_SET - 1, parameterization, variance)
    assert coeffs.shape == (6, len(T_SET)) and coeffs.dtype == F64
    ours = vdm_fast.reverse_step(z, m, coeffs, clip=1.0 if clip else None, noise=n)
    theirs = hand_ddpm(abar, abar_prev, betas, T_SET, z, m, n, parameterization, variance, clip)
    torch.testing.assert_close(ours, theirs, rtol=RTOL, atol=ATOL)
    # t_prev None is t - 1
    torch.testing.assert_close(tables.ddpm_step_coeffs(abar, T_SET, None, parameterization, variance), coeffs,
                               rtol=0, atol=0)


def test_ddpm_coefficients_are_the_posterior_coefficients():
    betas, abar, abar_prev = _table()
    t = torch.arange(1, 1000)
    a_z, a_m, c_z, c_m, c_x, c_n = tables.ddpm_step_coeffs(abar, t, t - 1)
    a, ap, b = abar[t], abar_prev[t], betas[t]
    for got, want in ((a_z, (1 / a).sqrt()), (a_m, -(1 / a - 1).sqrt()), (c_z, (1 - ap) * (1 - b).sqrt() / (1 - a)),
                      (c_x, b * ap.sqrt() / (1 - a)), (c_n, (b * (1 - ap) / (1 - a)).sqrt())):
        torch.testing.assert_close(got, want, rtol=RTOL, atol=0)
    assert c_m.abs().max().item() == 0


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("clip", [False, True])
def test_ddim_step_equals_ddim_update(eta, clip):
    _, abar, _ = _table("cosine")
    t = torch.tensor([999, 979, 500, 20, 19, 5, 0])
    t_prev = torch.tensor([979, 959, 480, 0, -1, -1, -1])
    z, m, n = _data(len(t), 2)
    for rederive in (False, True):
        coeffs = tables.ddim_step_coeffs(abar, t, t_prev, eta, "eps", clipped_eps=rederive)
        ours = vdm_fast.reverse_step(z, m, coeffs, clip=1.0 if clip else None, noise=n)
        theirs = hand_ddim(abar, t, t_prev, z, m, n, eta, clip, rederive)
        torch.testing.assert_close(ours, theirs, rtol=RTOL, atol=ATOL)


def test_gammas_from_tables():
    betas, abar, _ = _table()
    want = torch.log(1 - abar) - torch.log(abar)  # loses ~1e-12 relative at t = 0 (1 - abar by subtraction)
    torch.testing.assert_close(tables.gammas_from_alphas_cumprod(abar), want, rtol=1e-11, atol=0)
    torch.testing.assert_close(tables.gammas_from_betas(betas), want, rtol=1e-11, atol=0)
    assert tables.gammas_from_betas(betas.float()).dtype == F64
    ends = tables.gammas_from_alphas_cumprod(torch.tensor([1.0, 0.5, 0.0]))
    assert ends.tolist() == [-float("inf"), 0.0, float("inf")]


def test_bad_arguments_name_themselves():
    _, abar, _ = _table()
    t = torch.tensor([5, 6])
    with pytest.raises(TypeError, match="t must hold integer timesteps"):
        tables.ddpm_step_coeffs(abar, t.double(), t - 1)
    with pytest.raises(TypeError, match="t_prev must hold integer timesteps"):
        tables.ddim_step_coeffs(abar, t, (t - 1).double())
    with pytest.raises(RuntimeError, match=r"t: timesteps must lie in 0\.\.999"):
        tables.ddpm_step_coeffs(abar, torch.tensor([1000]), torch.tensor([3]))
    with pytest.raises(RuntimeError, match="t_prev must be < t"):
        tables.ddim_step_coeffs(abar, t, t)
    with pytest.raises(ValueError, match="t and t_prev must be"):
        tables.ddim_step_coeffs(abar, t, t[:1] - 1)
    with pytest.raises(ValueError, match="alphas_cumprod must be a non-empty 1-D table"):
        tables.gammas_from_alphas_cumprod(abar[None])
    with pytest.raises(TypeError, match="alphas_cumprod must be a floating-point table"):
        tables.gammas_from_alphas_cumprod(torch.ones(3, dtype=torch.int64))
    with pytest.raises(RuntimeError, match=r"alphas_cumprod must lie in \[0, 1\]"):
        tables.gammas_from_alphas_cumprod(torch.tensor([0.5, 1.5]))
    with pytest.raises(RuntimeError, match=r"betas must lie in \(0, 1\]"):
        tables.gammas_from_betas(torch.tensor([0.0, 0.1]))
    with pytest.raises(ValueError, match="variance must be one of"):
        tables.ddpm_step_coeffs(abar, t, t - 1, variance="learned")


def test_betas_keyword_gives_the_same_steps_and_float32_tables_carry_their_rounding():
    betas, abar, _ = _table()
    t = torch.tensor([0, 3, 700])
    by_abar = tables.ddpm_step_coeffs(abar, t, t - 1)
    torch.testing.assert_close(tables.ddpm_step_coeffs(None, t, t - 1, betas=betas), by_abar, rtol=1e-11, atol=0)
    torch.testing.assert_close(tables.ddim_step_coeffs(None, t, t - 1, 0.3, betas=betas),
                               tables.ddim_step_coeffs(abar, t, t - 1, 0.3), rtol=1e-11, atol=0)
    # What the module docstring warns of: a float32 alphas_cumprod at t = 0 (1 - abar = 1e-4) keeps ~3 digits
    # of 1 - abar, so its steps are off far beyond float32 rounding; float32 betas of a linear table do not
    # (1 - beta and the sums of log1p(-beta) keep float32 precision there).
    rel = lambda c: ((c - by_abar).abs() / by_abar.abs().clamp(min=1e-300)).max().item()  # noqa: E731
    assert rel(tables.ddpm_step_coeffs(abar.float(), t, t - 1)) > 1e-5
    assert rel(tables.ddpm_step_coeffs(None, t, t - 1, betas=betas.float())) < 1e-6
    with pytest.raises(ValueError, match="exactly one of alphas_cumprod and betas"):
        tables.ddpm_step_coeffs(abar, t, t - 1, betas=betas)
    with pytest.raises(ValueError, match="exactly one of alphas_cumprod and betas"):
        tables.ddim_step_coeffs(None, t, t - 1)
