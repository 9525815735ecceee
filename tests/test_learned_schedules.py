"""Learned schedules: LearnedLinearGamma and MonotoneGamma (VDM's monotone network, rescaled).

Truth checks: monotone, exact endpoints, gamma_prime equal to autograd's derivative, and
gradients of the ELBO reach every parameter (nonzero, equal through every backend and equal to a
direct pure-PyTorch ELBO written here from DESIGN.md §3).
"""

import math

import pytest
import torch

from vdm_fast import elbo as elbo_mod
from vdm_fast.schedules import LearnedLinearGamma, LinearGamma, MonotoneGamma

# Ops without a fused kernel yet fall back to the reference with a warning: expected here.
pytestmark = pytest.mark.filterwarnings("ignore:.*no fused kernel:RuntimeWarning")


def _scrambled_monotone(learn_endpoints=True, n_features=16, seed=1):
    """A MonotoneGamma far from its (nearly linear) initialisation, signs of raw weights mixed."""
    g = torch.Generator().manual_seed(seed)
    sched = MonotoneGamma(-9.0, 6.0, learn_endpoints=learn_endpoints, n_features=n_features).double()
    with torch.no_grad():
        sched.l1_weight.fill_(-0.3)  # used as |w|: the sign must not matter
        sched.l2_weight.copy_(3 * torch.randn(n_features, generator=g, dtype=torch.float64))
        sched.l2_bias.copy_(2 * torch.randn(n_features, generator=g, dtype=torch.float64))
        sched.l3_weight.copy_(torch.randn(n_features, generator=g, dtype=torch.float64))
        if learn_endpoints:
            sched.b.add_(0.5)
            sched.w.mul_(-1.1)  # gamma_max = b + |w|
    return sched


SCHEDULES = {
    "linear": lambda: LearnedLinearGamma(-9.0, 6.0).double(),
    "monotone": _scrambled_monotone,
    "monotone_fixed_ends": lambda: _scrambled_monotone(learn_endpoints=False),
}


@pytest.mark.parametrize("name", SCHEDULES)
def test_monotone_and_hits_endpoints(name):
    sched = SCHEDULES[name]()
    t = torch.linspace(0, 1, 4001, dtype=torch.float64)
    g = sched.gamma(t, torch.float64).detach()
    assert bool((g[1:] > g[:-1]).all()), "gamma must be strictly increasing"
    assert abs(g[0].item() - sched.gamma_min.item()) < 1e-12
    assert abs(g[-1].item() - sched.gamma_max.item()) < 1e-12
    assert sched.gamma_min.item() < sched.gamma_max.item()
    assert bool((sched.gamma_prime(t, torch.float64) > 0).all())


def test_monotone_network_really_is_nonlinear_after_scrambling():
    # Guards the tests above against a degenerate (linear) schedule passing them trivially.
    sched = _scrambled_monotone()
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    g = sched.gamma(t, torch.float64).detach()
    linear = sched.gamma_min + (sched.gamma_max - sched.gamma_min) * t
    assert (g - linear.detach()).abs().max().item() > 0.1


def test_fixed_endpoints_stay_fixed():
    sched = _scrambled_monotone(learn_endpoints=False)
    names = {n for n, _ in sched.named_parameters()}
    assert "b" not in names and "w" not in names
    assert sched.gamma_min.item() == -9.0 and sched.gamma_max.item() == 6.0
    g = sched.gamma(torch.tensor([0.0, 1.0], dtype=torch.float64), torch.float64)
    torch.testing.assert_close(g.detach(), torch.tensor([-9.0, 6.0], dtype=torch.float64), rtol=0, atol=1e-12)


def test_monotone_initialisation_is_nearly_linear():
    sched = MonotoneGamma()  # VDM defaults: -13.3 .. 5.0
    t = torch.linspace(0, 1, 101)
    lin = LinearGamma().gamma(t)
    assert (sched.gamma(t).detach() - lin).abs().max().item() < 18.3 * 2e-3


@pytest.mark.parametrize("name", SCHEDULES)
def test_gamma_prime_equals_autograd(name):
    sched = SCHEDULES[name]()
    t = torch.rand(257, dtype=torch.float64, requires_grad=True)
    (dg,) = torch.autograd.grad(sched.gamma(t, torch.float64).sum(), t)
    torch.testing.assert_close(sched.gamma_prime(t, torch.float64), dg, rtol=1e-10, atol=1e-10)


def test_linear_gamma_prime_is_the_range_and_matches_fixed_schedule():
    sched = LearnedLinearGamma()
    t = torch.rand(9)
    torch.testing.assert_close(sched.gamma(t).detach(), LinearGamma().gamma(t))
    torch.testing.assert_close(sched.gamma_prime(t).detach(), torch.full((9,), 18.3))
    alpha, sigma = sched.alpha_sigma(t)
    torch.testing.assert_close((alpha**2 + sigma**2).detach(), torch.ones(9))
    torch.testing.assert_close(sched.snr(t).detach(), (alpha**2 / sigma**2).detach(), rtol=1e-5, atol=0)


def test_any_time_shape_and_dtypes():
    sched = _scrambled_monotone().float()
    t = torch.rand(3, 5)
    assert sched.gamma(t).shape == (3, 5) and sched.gamma(t).dtype == torch.float32
    assert sched.gamma(t, torch.float64).dtype == torch.float64
    assert sched.gamma(torch.tensor(0.5)).shape == ()
    with pytest.raises(TypeError, match="dtype"):
        sched.gamma(t, torch.float16)
    with pytest.raises(TypeError, match="t must be floating-point"):
        sched.gamma(torch.tensor([1, 2]))


def test_bad_arguments():
    for cls in (LearnedLinearGamma, MonotoneGamma):
        with pytest.raises(ValueError, match="gamma_min"):
            cls(gamma_min=1.0, gamma_max=1.0)
    with pytest.raises(ValueError, match="n_features"):
        MonotoneGamma(n_features=0)


def test_state_dict_round_trip():
    a = _scrambled_monotone()
    b = MonotoneGamma(n_features=16).double()
    b.load_state_dict(a.state_dict())
    t = torch.rand(11, dtype=torch.float64)
    torch.testing.assert_close(b.gamma(t, torch.float64), a.gamma(t, torch.float64))


# --- gradients of the ELBO reach the schedule ------------------------------------------------------


def _direct_elbo(model, x0, sched, t, noise, recon_noise):
    """The continuous-time negative ELBO written from DESIGN.md §3 with plain torch (no ops)."""
    view = (-1,) + (1,) * (x0.dim() - 1)
    g_t = sched.gamma(t, torch.float64)
    a_t, s_t = torch.sigmoid(-g_t).sqrt().reshape(view), torch.sigmoid(g_t).sqrt().reshape(view)
    z_t = a_t * x0 + s_t * noise
    eps_hat = model(z_t, t)
    diffusion = 0.5 * sched.gamma_prime(t, torch.float64) * ((noise - eps_hat) ** 2).flatten(1).sum(1)
    g = sched.gamma(torch.tensor([0.0, 1.0], dtype=torch.float64), torch.float64)
    a0, s0 = torch.sigmoid(-g[0]).sqrt(), torch.sigmoid(g[0]).sqrt()
    a1, s1 = torch.sigmoid(-g[1]).sqrt(), torch.sigmoid(g[1]).sqrt()
    z0 = a0 * x0 + s0 * recon_noise
    centres = 2 * (torch.arange(256, dtype=torch.float64) + 0.5) / 256 - 1
    logits = -0.5 * ((z0[..., None] - a0 * centres) / s0) ** 2
    k = torch.round((x0 + 1) * 128 - 0.5).long()
    recon = -torch.log_softmax(logits, -1).gather(-1, k[..., None]).squeeze(-1).flatten(1).sum(1)
    prior = 0.5 * (a1**2 * x0**2 + s1**2 - 1 - torch.log(s1**2)).flatten(1).sum(1)
    return recon + prior + diffusion


def _grads(sched, loss):
    params = [p for p in sched.parameters()]
    return torch.autograd.grad(loss, params)


@pytest.mark.parametrize("name", SCHEDULES)
def test_elbo_gradients_reach_schedule_and_match_direct_autograd(name):
    sched = SCHEDULES[name]()
    g = torch.Generator().manual_seed(3)
    B = 6
    x0 = (2 * (torch.randint(0, 256, (B, 2, 3, 3), generator=g) + 0.5) / 256 - 1).double()
    t = elbo_mod.sample_time(B, generator=g, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    rnoise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    # The network sees log-SNR (as in the demo), so gradients flow through the model too.
    model = lambda z, tt: 0.7 * z * torch.tanh(sched.gamma(tt, torch.float64)).reshape(-1, 1, 1, 1)  # noqa: E731

    direct = _direct_elbo(model, x0, sched, t, noise, rnoise)
    expected = _grads(sched, direct.sum())
    assert all(gr.abs().max().item() > 0 for gr in expected), "every schedule parameter must get a gradient"
    for backend in (None, "reference"):
        terms = elbo_mod.elbo(model, x0, sched, t=t, noise=noise, recon_noise=rnoise, backend=backend)
        torch.testing.assert_close(terms.total, direct, rtol=1e-10, atol=1e-9)
        got = _grads(sched, terms.total.sum())
        for (pname, _), a, e in zip(sched.named_parameters(), got, expected):
            torch.testing.assert_close(a, e, rtol=1e-8, atol=1e-9, msg=lambda m, p=pname: f"{p} ({backend}): {m}")


@pytest.mark.parametrize("name", SCHEDULES)
def test_t_step_and_other_parameterization_gradients_reach_schedule(name):
    sched = SCHEDULES[name]()
    x0 = (torch.rand(4, 8, dtype=torch.float64) * 2 - 1)
    model = lambda z, tt: 0.5 * z  # noqa: E731  (an x0 / v model: gradients come only through the weights)
    for param in ("x0", "v"):
        for T in (None, 7):
            total = elbo_mod.elbo(model, x0, sched, T=T, parameterization=param,
                                  generator=torch.Generator().manual_seed(0)).total.sum()
            for (pname, _), gr in zip(sched.named_parameters(), _grads(sched, total)):
                assert math.isfinite(gr.abs().sum().item()) and gr.abs().max().item() > 0, (param, T, pname)
