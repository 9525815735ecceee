"""The ELBO (vdm_fast.elbo) against truth, not only against the reference.

Truth: for Gaussian data x ~ N(0, S^2 I) in D dims the Bayes-optimal denoiser is closed form,
eps_hat(z, t) = sigma z / (alpha^2 S^2 + sigma^2), its error E||x - x_hat||^2 = D S^2 / (1 + S^2 SNR),
and the terms of the bound have closed forms:

    continuous diffusion   D/2 [log(1 + S^2 SNR(0)) - log(1 + S^2 SNR(1))]
    T-step diffusion       sum_i 1/2 (SNR(s_i) - SNR(t_i)) D S^2 / (1 + S^2 SNR(t_i))
    prior                  D/2 (alpha_1^2 S^2 + sigma_1^2 - 1 - log sigma_1^2)

Monte Carlo estimates (fixed seed) must land within Z_TOL standard errors of them; the standard
error is also required to be small (< 2% of the value) so the test has power.

Two computations of one quantity (two formulas, two parameterizations, compiled and eager) agree
within running error bounds (tests/numerics.py): each runs under the bound from the same inputs,
models and closures included, and the two bounds add.
"""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence
from torch.func import functional_call

import numerics
from vdm_fast import elbo as elbo_mod
from vdm_fast.elbo import ELBOTerms, VDMLoss, elbo, sample_time
from vdm_fast.schedules import DiscreteSchedule, LearnedLinearGamma, LinearGamma, Schedule, linear_betas

pytestmark = pytest.mark.filterwarnings("ignore:.*no fused kernel:RuntimeWarning")

S = 0.5  # data scale
Z_TOL = 4.0  # standard errors: a normal estimate leaves +-4 SE with probability 6e-5 (the draws are seeded)
F64 = torch.float64


def _view(c, like):
    return c.reshape((-1,) + (1,) * (like.dim() - 1))


def optimal_eps_model(sched):
    """The Bayes-optimal eps prediction for x ~ N(0, S^2 I)."""
    def model(z, t):
        a, s = sched.alpha_sigma(t, F64)
        a, s = _view(a, z), _view(s, z)
        return s * z / (a**2 * S**2 + s**2)
    return model


def as_parameterization(eps_model, sched, parameterization):
    """The same model expressed in another parameterization (DESIGN.md §2)."""
    def model(z, t):
        a, s = sched.alpha_sigma(t, F64)
        a, s = _view(a, z), _view(s, z)
        e = eps_model(z, t)
        x_hat = (z - s * e) / a
        return {"eps": e, "x0": x_hat, "v": a * e - s * x_hat, "score": -e / s}[parameterization]
    return model


def closed_continuous(sched, D):
    snr0, snr1 = (sched.snr(torch.tensor(v, dtype=F64), F64).item() for v in (0.0, 1.0))
    return D / 2 * (math.log1p(S**2 * snr0) - math.log1p(S**2 * snr1))


def closed_t_step(sched, D, T, lower=False):
    """The T-step term: the sum over steps of 1/2 (SNR_s - SNR_t) g(SNR_t), g(v) = D S^2 / (1 + S^2 v),
    an upper Riemann sum in SNR of the continuous term's integrand g / 2 (decreasing); ``lower``:
    the lower sum, g at SNR_s."""
    i = torch.arange(1, T + 1, dtype=F64)
    snr_t, snr_s = sched.snr(i / T, F64), sched.snr((i - 1) / T, F64)
    at = snr_s if lower else snr_t
    return (0.5 * (snr_s - snr_t) * D * S**2 / (1 + S**2 * at)).sum().item()


def closed_prior(sched, D):
    a1, s1 = sched.alpha_sigma(torch.tensor(1.0, dtype=F64), F64)
    return D / 2 * (a1.item() ** 2 * S**2 + s1.item() ** 2 - 1 - math.log(s1.item() ** 2))


def _gaussian_terms(sched, T, n=8192, D=16, chunk=1024, seed=0, parameterization="eps"):
    """Per-sample ELBO terms of the optimal model on n Gaussian samples (chunks bound memory)."""
    g = torch.Generator().manual_seed(seed)
    model = as_parameterization(optimal_eps_model(sched), sched, parameterization)
    out = {"diffusion": [], "prior": []}
    for _ in range(n // chunk):
        x = S * torch.randn(chunk, D, generator=g, dtype=F64)
        terms = elbo(model, x, sched, T=T, parameterization=parameterization, antithetic=False, generator=g,
                     decoder=None)  # Gaussian data: no 8-bit decoder
        out["diffusion"].append(terms.diffusion)
        out["prior"].append(terms.prior)
    return {k: torch.cat(v) for k, v in out.items()}


def _assert_converges(samples, truth, what):
    mean = samples.mean().item()
    se = samples.std().item() / math.sqrt(samples.numel())
    assert se < 0.02 * abs(truth), f"{what}: standard error {se:.3g} too large for a meaningful test"
    assert abs(mean - truth) < Z_TOL * se, f"{what}: estimate {mean:.5g} vs closed form {truth:.5g} (SE {se:.3g})"


SCHEDS = {"vdm_linear": LinearGamma(), "narrow": LinearGamma(-5.0, 3.0)}


@pytest.mark.parametrize("name", SCHEDS)
def test_continuous_diffusion_term_converges_to_closed_form(name):
    sched = SCHEDS[name]
    terms = _gaussian_terms(sched, None)
    _assert_converges(terms["diffusion"], closed_continuous(sched, 16), "continuous L_diff")


@pytest.mark.parametrize("T", [1, 4, 20])
def test_t_step_diffusion_term_converges_to_closed_form(T):
    sched = SCHEDS["narrow"]
    terms = _gaussian_terms(sched, T)
    _assert_converges(terms["diffusion"], closed_t_step(sched, 16, T), f"T={T} L_diff")


@pytest.mark.parametrize("parameterization", ["x0", "v"])
def test_closed_forms_hold_in_other_parameterizations(parameterization):
    sched = SCHEDS["narrow"]
    terms = _gaussian_terms(sched, None, n=4096, parameterization=parameterization)
    _assert_converges(terms["diffusion"], closed_continuous(sched, 16), f"{parameterization} L_diff")


def test_prior_term_converges_to_closed_form():
    sched = LinearGamma(-5.0, 1.0)  # a large prior term, so it is measurable
    terms = _gaussian_terms(sched, None)
    _assert_converges(terms["prior"], closed_prior(sched, 16), "L_prior")


def test_t_step_closed_form_tends_to_continuous_and_is_above_it():
    # Kingma et al. 2021, §4.1: more steps give a lower (better) diffusion loss.
    sched = LinearGamma()
    cont = closed_continuous(sched, 16)
    vals = [closed_t_step(sched, 16, T) for T in (10, 100, 1000, 100000)]
    assert all(a > b for a, b in zip(vals, vals[1:])) and vals[-1] > cont
    # Discretisation, not rounding: the continuous term lies between the upper (T-step) and lower
    # Riemann sums, so the gap is at most their difference (1.6e-2 of ~95 at T = 1e5; the float64
    # rounding of these sums, ~1e-11, is far below it).
    assert vals[-1] - cont <= vals[-1] - closed_t_step(sched, 16, 100000, lower=True)


def test_t_step_estimator_tends_to_continuous_estimator_on_the_same_draws():
    sched = LinearGamma()
    g = torch.Generator().manual_seed(1)
    x = S * torch.randn(64, 3, 4, 4, generator=g, dtype=F64)
    t = sample_time(64, generator=g, dtype=F64)
    noise = torch.randn(x.shape, generator=g, dtype=F64)
    model = lambda z, tt: 0.8 * optimal_eps_model(sched)(z, tt) + 0.1 * z  # noqa: E731  (not optimal)
    cont = elbo(model, x, sched, t=t, noise=noise, recon_noise=noise, decoder=None).diffusion
    errs = []
    for T in (100, 1000, 10000, 100000):
        t_grid = (torch.floor(t * T) + 1) / T
        disc = elbo(model, x, sched, T=T, t=t_grid, noise=noise, recon_noise=noise, decoder=None).diffusion
        errs.append(((disc - cont).abs() / cont).max().item())

    def dlog(tt):  # d/dt log L_diff(t) per sample (the weight gamma'/2 is constant: d/dt log ||eps - eps_hat||^2)
        tt = tt.clone().requires_grad_()
        d = elbo(model, x, sched, t=tt, noise=noise, recon_noise=noise, decoder=None, backend="reference").diffusion
        return torch.autograd.grad(d.log().sum(), tt)[0]

    # Discretisation, not rounding: disc / cont = r_T ||eps - eps_hat(t_grid)||^2 / ||eps - eps_hat(t)||^2
    # with r_T = expm1(gamma'/T) / (gamma'/T) (the T-step weight over gamma'/2) and 0 < t_grid - t <= 1/T,
    # so |disc / cont - 1| <= r_T exp(L / T) - 1, L the largest |d/dt log ||eps - eps_hat||^2| (taken at
    # both ends of the 1e-5-long steps); first order in 1/T, so each tenfold T divides the error by ~10.
    T, g_prime = 100000, sched.gamma_max - sched.gamma_min
    L = torch.maximum(dlog(t).abs(), dlog(t_grid).abs()).max().item()
    assert errs[-1] <= math.expm1(g_prime / T) / (g_prime / T) * math.exp(L / T) - 1, errs
    assert all(b < a / 5 for a, b in zip(errs, errs[1:])), errs


# --- Luo's identity and the T-step term as T x KL ---------------------------------------------------


def _posterior(sched, s, t, z_t, x):
    """q(z_s | z_t, x) for the VP process (Kingma et al. 2021, App. A.2, with alpha_{t|s} of App. A.1)."""
    a_t, s_t = (_view(c, x) for c in sched.alpha_sigma(t, F64))
    a_s, s_s = (_view(c, x) for c in sched.alpha_sigma(s, F64))
    a_ts = a_t / a_s
    var_ts = s_t**2 - a_ts**2 * s_s**2
    mean = a_ts * s_s**2 / s_t**2 * z_t + a_s * var_ts / s_t**2 * x
    return mean, (var_ts * s_s**2 / s_t**2).sqrt()


def test_luo_equal_variance_kl_and_t_step_term():
    sched, T = LinearGamma(-8.0, 4.0), 10
    g = torch.Generator().manual_seed(2)
    x = torch.rand(8, 2, 5, 3, generator=g, dtype=F64) * 2 - 1
    i = torch.randint(1, T + 1, (8,), generator=g).to(F64)
    t, s = i / T, (i - 1) / T
    noise = torch.randn(x.shape, generator=g, dtype=F64)
    model = lambda z, tt: 0.6 * z + 0.2  # noqa: E731  (an arbitrary eps model)

    def x_hat_of(x, t, noise):
        a_t, s_t = (_view(c, x) for c in sched.alpha_sigma(t, F64))
        z_t = a_t * x + s_t * noise
        return z_t, (z_t - s_t * model(z_t, t)) / a_t

    def kl_of(x, t, s, noise):
        z_t, x_hat = x_hat_of(x, t, noise)
        mq, sd = _posterior(sched, s, t, z_t, x)
        mp, _ = _posterior(sched, s, t, z_t, x_hat)
        return kl_divergence(Normal(mq, sd), Normal(mp, sd)).flatten(1).sum(1)

    def luo_of(x, t, s, noise):
        _, x_hat = x_hat_of(x, t, noise)
        return 0.5 * (sched.snr(s, F64) - sched.snr(t, F64)) * ((x - x_hat) ** 2).flatten(1).sum(1)

    # Two formulas of one KL: the posterior means cancel (they differ by a_s var/s_t^2 (x - x_hat)),
    # which the KL's bound carries; the bound of the comparison is the sum of both formulas' bounds.
    kl, luo = (numerics.running_error(f, (x, t, s, noise)) for f in (kl_of, luo_of))
    numerics.assert_within_bound(luo.value, kl.value, kl.bound + luo.bound, msg="Luo's form")

    terms = elbo(model, x, sched, T=T, t=t, noise=noise, recon_noise=noise)
    ours = numerics.running_error(lambda x, t, n: elbo(model, x, sched, T=T, t=t, noise=n, recon_noise=n,
                                                       backend="reference").diffusion, (x, t, noise))
    t_kl = numerics.running_error(lambda *a: T * kl_of(*a), (x, t, s, noise))
    numerics.assert_within_bound(terms.diffusion, t_kl.value, ours.bound + t_kl.bound, msg="T x KL")


# --- parameterizations --------------------------------------------------------------------------


@pytest.mark.parametrize("T", [None, 1, 13])
def test_four_parameterizations_give_the_same_elbo(T):
    sched = LinearGamma()
    g = torch.Generator().manual_seed(4)
    x = torch.rand(7, 3, 2, 2, generator=g, dtype=F64) * 2 - 1
    t = sample_time(7, generator=g, dtype=F64)
    if T is not None:
        t = (torch.floor(t * T) + 1) / T
    noise, rnoise = torch.randn(x.shape, generator=g, dtype=F64), torch.randn(x.shape, generator=g, dtype=F64)
    eps_model = lambda z, tt: 0.5 * z - 0.1 * z**2  # noqa: E731
    ref = elbo(eps_model, x, sched, T=T, t=t, noise=noise, recon_noise=rnoise)

    def bounds(p):
        """Running error bounds of (diffusion, total) for the model in parameterization p."""
        model = eps_model if p == "eps" else as_parameterization(eps_model, sched, p)

        def terms(x, t, n, r):
            e = elbo(model, x, sched, T=T, parameterization=p, t=t, noise=n, recon_noise=r, backend="reference")
            return torch.stack([e.diffusion, e.total])
        return numerics.running_error(terms, (x, t, noise, rnoise)).bound

    eps_bound = bounds("eps")
    for p in ("x0", "v", "score"):
        got = elbo(as_parameterization(eps_model, sched, p), x, sched, T=T, parameterization=p, t=t, noise=noise,
                   recon_noise=rnoise)
        bound = eps_bound + bounds(p)  # two formulas (the conversion and its weight, and eps): both bounds
        numerics.assert_within_bound(got.diffusion, ref.diffusion, bound[0], msg=f"{p} diffusion")
        numerics.assert_within_bound(got.total, ref.total, bound[1], msg=f"{p} total")


# --- zero terminal SNR --------------------------------------------------------------------------


class ZeroTerminalGamma(Schedule):
    """gamma(t) = -3 - 2 log(1 - t): SNR = e^3 (1 - t)^2, exactly 0 at t = 1 (gamma = +inf)."""

    def gamma(self, t, dtype=torch.float32):
        t = torch.as_tensor(t).to(dtype)
        return -3.0 - 2 * torch.log1p(-t)

    def gamma_prime(self, t, dtype=torch.float32):
        return 2 / (1 - torch.as_tensor(t).to(dtype))


@pytest.mark.parametrize("parameterization", ["x0", "v"])
def test_t_step_bound_is_finite_at_zero_terminal_snr(parameterization):
    sched, T = ZeroTerminalGamma(), 10
    x = torch.rand(5, 6, dtype=F64) * 2 - 1
    t = torch.ones(5, dtype=F64)  # the last step, SNR(t) = 0
    noise = torch.randn(x.shape, dtype=F64)
    model = lambda z, tt: 0.3 * z  # noqa: E731
    terms = elbo(model, x, sched, T=T, parameterization=parameterization, t=t, noise=noise, recon_noise=noise)
    assert bool(torch.isfinite(terms.total).all()) and terms.prior.abs().max().item() == 0.0
    # Limit: (T/2) SNR(s) ||x - x_hat||^2, x_hat = alpha z - sigma m = -m for v (alpha = 0, sigma = 1).
    def limit(x, t, noise):
        x_hat = model(noise, t) if parameterization == "x0" else -model(noise, t)
        snr_s = sched.snr(torch.tensor(1 - 1 / T, dtype=F64), F64)
        return T / 2 * snr_s * ((x - x_hat) ** 2).sum(1)

    # The bound through gamma_t = +inf: infinite intermediates carry no error (tests/numerics.py), and
    # what they feed (sigmoid(-inf) = 0, expm1(-inf) = -1) has zero derivative there.
    ours = numerics.running_error(lambda x, t, n: elbo(model, x, sched, T=T, parameterization=parameterization, t=t,
                                                       noise=n, recon_noise=n, backend="reference").diffusion,
                                  (x, t, noise))
    want = numerics.running_error(limit, (x, t, noise))
    numerics.assert_within_bound(terms.diffusion, want.value, ours.bound + want.bound)


# --- time sampling ------------------------------------------------------------------------------


def test_sample_time_antithetic_covers_unit_interval_evenly():
    t = sample_time(50, antithetic=True, generator=torch.Generator().manual_seed(0))
    assert t.shape == (50,) and t.dtype == torch.float32
    assert bool(((t >= 0) & (t < 1)).all())
    # t_b = (u + b/B) mod 1 in float32, u the generator's first draw: the bound of u + b/B (the
    # remainder of a value in [0, 2) by 1 is exact), and a gap's is that of its two ends.
    u = torch.rand((), generator=torch.Generator().manual_seed(0))
    ends = numerics.running_error(lambda u: u + torch.arange(50, dtype=u.dtype) / 50, (u,), dtype=torch.float32)
    truth = torch.remainder(ends.value, 1.0)
    order = truth.argsort()
    gaps = torch.sort(t).values.diff()
    numerics.assert_within_bound(gaps, truth[order].diff(), ends.bound[order][1:] + ends.bound[order][:-1], msg="gaps")
    # Consecutive entries differ by 1/B modulo 1: two ends, the float32 difference and the remainder.
    diff = t[1:] - t[:-1]
    bound = ends.bound[1:] + ends.bound[:-1] + numerics.unit_roundoff(torch.float32) * diff.double().abs()
    numerics.assert_within_bound(torch.remainder(diff, 1.0), torch.full((49,), 1 / 50, dtype=F64), bound, msg="steps")


def test_sample_time_reproducible_and_iid_mode():
    a = sample_time(9, generator=torch.Generator().manual_seed(5))
    b = sample_time(9, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    c = sample_time(4096, antithetic=False, generator=torch.Generator().manual_seed(5), dtype=F64)
    assert c.dtype == F64 and bool(((c >= 0) & (c < 1)).all())
    gaps = torch.sort(c).values.diff()
    # Not an even grid: i.i.d. gaps are ~exponential with std ~1/4096 = 2.4e-4; an even grid's vary by rounding only.
    assert gaps.std().item() > 1e-5
    assert abs(c.mean().item() - 0.5) < 4 * math.sqrt(1 / 12 / 4096)  # 4 standard errors of a mean of 4096 uniforms
    assert sample_time(0).shape == (0,)
    with pytest.raises(ValueError, match="n must be"):
        sample_time(-1)


def test_antithetic_times_reduce_the_variance_of_the_batch_mean():
    # Fix x and eps across the batch so the estimator varies only through t: the batch mean of a
    # smooth f(t) over stratified times has far less variance than over i.i.d. times.
    sched = SCHEDS["narrow"]
    model = lambda z, t: 0.5 * z  # noqa: E731
    g = torch.Generator().manual_seed(6)
    x = torch.full((32, 4), 0.3, dtype=F64)
    noise = torch.randn(1, 4, generator=g, dtype=F64).expand(32, 4)
    means = {True: [], False: []}
    for _ in range(100):
        for anti in (True, False):
            t = sample_time(32, antithetic=anti, generator=g, dtype=F64)
            means[anti].append(elbo(model, x, sched, t=t, noise=noise, recon_noise=noise).diffusion.mean().item())
    var = {k: torch.tensor(v, dtype=F64).var().item() for k, v in means.items()}
    # Statistical: stratified times reduce the variance of a smooth f's batch mean by ~B^2 (~1e-3 for
    # B = 32); 0.05 leaves room for two variance estimates from 100 seeded repeats (relative SE ~14%).
    assert var[True] < 0.05 * var[False], var


# --- units, draws, inputs -----------------------------------------------------------------------


def test_terms_units_and_bpd():
    sched = LearnedLinearGamma()
    x = torch.rand(4, 3, 5, 5) * 2 - 1
    terms = elbo(lambda z, t: 0.1 * z, x, sched, generator=torch.Generator().manual_seed(0))
    assert isinstance(terms, ELBOTerms) and terms.num_dims == 75
    for v in (terms.recon, terms.prior, terms.diffusion, terms.total, terms.bpd):
        assert v.shape == (4,)
    assert torch.equal(terms.total, terms.recon + terms.prior + terms.diffusion)  # how total is defined
    assert torch.equal(terms.bpd, terms.total / (75 * math.log(2)))  # how bpd is defined
    bpd = terms.bpd_terms()
    for name in ("recon", "prior", "diffusion", "total"):
        v = getattr(terms, name)
        # times the rounded 1 / (D ln 2), against a division by D ln 2: both formulas' float32 bounds
        bound = (numerics.running_error(lambda v: v * (1.0 / (75 * math.log(2))), (v,)).bound
                 + numerics.running_error(lambda v: v / (75 * math.log(2)), (v,)).bound)
        numerics.assert_within_bound(getattr(bpd, name), v / (75 * math.log(2)), bound, msg=name)


def test_draws_come_from_the_generator_in_a_fixed_order():
    sched = LinearGamma()
    x = torch.rand(6, 8) * 2 - 1
    model = lambda z, t: 0.2 * z  # noqa: E731
    a = elbo(model, x, sched, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    t = sample_time(6, generator=g)
    noise, rnoise = torch.randn(x.shape, generator=g), torch.randn(x.shape, generator=g)
    b = elbo(model, x, sched, t=t, noise=noise, recon_noise=rnoise)
    assert torch.equal(a.total, b.total)


def test_empty_batch_and_float32():
    sched = LinearGamma()
    terms = elbo(lambda z, t: z, torch.zeros(0, 3, 2), sched)
    assert terms.total.shape == (0,)
    x = torch.rand(3, 4) * 2 - 1
    terms = elbo(lambda z, t: 0 * z, x, sched, T=5)
    assert terms.total.dtype == torch.float32 and bool(torch.isfinite(terms.total).all())


def test_bad_inputs_raise_naming_the_argument():
    sched, x = LinearGamma(), torch.rand(3, 4)
    model = lambda z, t: z  # noqa: E731
    with pytest.raises(ValueError, match="parameterization"):
        elbo(model, x, sched, parameterization="noise")
    with pytest.raises(ValueError, match="T must be"):
        elbo(model, x, sched, T=0)
    with pytest.raises(TypeError, match="schedule"):
        elbo(model, x, DiscreteSchedule.linear(10))
    with pytest.raises(ValueError, match="t must be"):
        elbo(model, x, sched, t=torch.rand(4))
    with pytest.raises(ValueError, match="noise"):
        elbo(model, x, sched, noise=torch.rand(3, 5))
    with pytest.raises(ValueError, match="model"):
        elbo(lambda z, t: z[:, :2], x, sched)
    with pytest.raises(TypeError, match="gamma_prime"):
        elbo(model, x, _NoPrime())
    with pytest.raises(TypeError, match="x0"):
        elbo(model, torch.ones(3, 4, dtype=torch.long), sched)


class _NoPrime(Schedule):
    def gamma(self, t, dtype=torch.float32):
        return LinearGamma().gamma(t, dtype)


def test_inputs_not_modified():
    x = torch.rand(3, 4) * 2 - 1
    t, noise, rn = torch.rand(3), torch.randn(3, 4), torch.randn(3, 4)
    copies = [v.clone() for v in (x, t, noise, rn)]
    elbo(lambda z, tt: 0.5 * z, x, LinearGamma(), t=t, noise=noise, recon_noise=rn)
    for a, b in zip((x, t, noise, rn), copies):
        assert torch.equal(a, b)


# --- VDMLoss ------------------------------------------------------------------------------------


def _draws(B, shape, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return (sample_time(B, generator=g, dtype=dtype), torch.randn((B,) + shape, generator=g, dtype=dtype),
            torch.randn((B,) + shape, generator=g, dtype=dtype))


def test_vdm_loss_elbo_is_mean_bpd_and_trains_the_schedule():
    sched = LearnedLinearGamma()
    loss_fn = VDMLoss(sched)
    assert {n for n, _ in loss_fn.named_parameters()} == {"schedule.b", "schedule.w"}
    x = torch.rand(5, 2, 3, dtype=F64) * 2 - 1
    t, noise, rn = _draws(5, (2, 3))
    model = lambda z, tt: 0.4 * z  # noqa: E731
    loss = loss_fn(model, x, t=t, noise=noise, recon_noise=rn)
    ref = elbo(model, x, sched, t=t, noise=noise, recon_noise=rn).bpd
    assert torch.equal(loss, ref.mean())  # the same call, the same arithmetic
    assert torch.equal(loss_fn(model, x, t=t, noise=noise, recon_noise=rn, reduction="none"), ref)
    loss.backward()
    assert sched.b.grad.abs().item() > 0 and sched.w.grad.abs().item() > 0


def _table_loss_bound(betas, x, noise, model, t, **loss_kwargs):
    """The running error bound of VDMLoss on a DiscreteSchedule built from ``betas`` inside the
    bound (its gamma table's log1p, cumsum and expm1 count), per sample: the other side of these
    comparisons reads alphas_cumprod, another formula from the same betas."""
    def loss(betas, x, noise):
        return VDMLoss(DiscreteSchedule(betas), backend="reference", **loss_kwargs)(model, x, t=t, noise=noise,
                                                                                  reduction="none")
    return numerics.running_error(loss, (betas, x, noise)).bound


def test_vdm_loss_simple_is_ddpm_mse():
    table = DiscreteSchedule.linear(1000)
    x = torch.rand(6, 3, 4, dtype=F64) * 2 - 1
    t = torch.randint(0, 1000, (6,))
    noise = torch.randn(x.shape, dtype=F64)
    model = lambda z, tt: 0.3 * z  # noqa: E731
    loss = VDMLoss(table, weighting="simple")(model, x, t=t, noise=noise, reduction="none")

    def ddpm(betas, x, noise):
        abar = DiscreteSchedule(betas).alphas_cumprod[t].reshape(-1, 1, 1)
        z = abar.sqrt() * x + (1 - abar).sqrt() * noise
        return ((model(z, t) - noise) ** 2).mean((1, 2))

    ours = _table_loss_bound(table.betas, x, noise, model, t, weighting="simple")
    want = numerics.running_error(ddpm, (table.betas, x, noise))
    numerics.assert_within_bound(loss, want.value, ours + want.bound)


@pytest.mark.parametrize("parameterization", ["eps", "v", "x0"])
def test_vdm_loss_min_snr_matches_hang_et_al(parameterization):
    table, k = DiscreteSchedule.cosine(1000), 5.0
    x = torch.rand(6, 3, 4, dtype=F64) * 2 - 1
    t = torch.tensor([0, 10, 200, 500, 900, 999])
    noise = torch.randn(x.shape, dtype=F64)
    model = lambda z, tt: 0.3 * z  # noqa: E731
    loss = VDMLoss(table, weighting="min_snr", parameterization=parameterization, snr_gamma=k)(
        model, x, t=t, noise=noise, reduction="none")

    def hang(betas, x, noise):
        abar = DiscreteSchedule(betas).alphas_cumprod[t]
        snr = abar / (1 - abar)  # diffusers' compute_snr
        a, s = abar.sqrt().reshape(-1, 1, 1), (1 - abar).sqrt().reshape(-1, 1, 1)
        z = a * x + s * noise
        target = {"eps": noise, "v": a * noise - s * x, "x0": x}[parameterization]
        mse = ((model(z, t) - target) ** 2).mean((1, 2))
        weight = {"eps": torch.clamp(snr, max=k) / snr, "v": torch.clamp(snr, max=k) / (snr + 1),
                  "x0": torch.clamp(snr, max=k)}[parameterization]
        return weight * mse

    ours = _table_loss_bound(table.betas, x, noise, model, t, weighting="min_snr", parameterization=parameterization,
                             snr_gamma=k)
    want = numerics.running_error(hang, (table.betas, x, noise))
    numerics.assert_within_bound(loss, want.value, ours + want.bound)


@pytest.mark.parametrize("weighting", ["simple", "min_snr"])
@pytest.mark.parametrize("parameterization", ["eps", "v", "x0"])
def test_vdm_loss_finite_at_zero_terminal_snr(weighting, parameterization):
    betas = linear_betas(50)
    betas[-1] = 1.0  # alpha_bar_{T-1} = 0: zero terminal SNR (Lin et al. 2024)
    table = DiscreteSchedule(betas)
    assert math.isinf(table.gamma(torch.tensor([49]), F64).item())
    x = torch.rand(4, 5, dtype=F64) * 2 - 1
    model = lambda z, tt: 0.3 * z  # noqa: E731
    loss_fn = VDMLoss(table, weighting=weighting, parameterization=parameterization)
    per = loss_fn(model, x, t=torch.full((4,), 49), reduction="none")
    assert bool(torch.isfinite(per).all()), per
    mixed = loss_fn(model, x, t=torch.tensor([0, 20, 48, 49]))
    assert math.isfinite(mixed.item())


@pytest.mark.parametrize("parameterization", ["x0", "v"])
def test_vdm_loss_elbo_finite_at_zero_terminal_snr(parameterization):
    loss_fn = VDMLoss(ZeroTerminalGamma(), weighting="elbo", parameterization=parameterization, T=8)
    x = torch.rand(3, 4, dtype=F64) * 2 - 1
    assert math.isfinite(loss_fn(lambda z, tt: 0.1 * z, x, t=torch.tensor([1.0, 0.5, 0.125], dtype=F64)).item())


def test_vdm_loss_draws_and_continuous_schedule():
    loss_fn = VDMLoss(LinearGamma(), weighting="min_snr", parameterization="v")
    x = torch.rand(8, 3) * 2 - 1
    a = loss_fn(lambda z, t: 0.1 * z, x, generator=torch.Generator().manual_seed(0))
    b = loss_fn(lambda z, t: 0.1 * z, x, generator=torch.Generator().manual_seed(0))
    assert a.shape == () and torch.equal(a, b)


def test_vdm_loss_bad_arguments():
    with pytest.raises(ValueError, match="weighting"):
        VDMLoss(LinearGamma(), weighting="snr")
    with pytest.raises(ValueError, match="parameterization"):
        VDMLoss(LinearGamma(), parameterization="noise")
    with pytest.raises(TypeError, match="schedule"):
        VDMLoss(DiscreteSchedule.linear(10), weighting="elbo")
    with pytest.raises(ValueError, match="snr_gamma"):
        VDMLoss(LinearGamma(), weighting="min_snr", snr_gamma=0.0)
    with pytest.raises(ValueError, match="reduction"):
        VDMLoss(LinearGamma())(lambda z, t: z, torch.rand(2, 3), reduction="sum")


def test_diffusion_weight_rejects_unknown_parameterization():
    with pytest.raises(ValueError, match="parameterization"):
        elbo_mod.diffusion_weight(LinearGamma(), torch.rand(3), "noise")
    with pytest.raises(ValueError, match="parameterization"):
        elbo_mod.min_snr_weight(torch.rand(3), "noise")


class _BPD(torch.nn.Module):
    """bits/dim of the ELBO of ``net`` under ``sched``, as a module of both (for functional_call)."""

    def __init__(self, sched, net):
        super().__init__()
        self.sched, self.net = sched, net

    def forward(self, x, t, noise, rn, backend=None):
        return elbo(lambda z, tt: self.net(z), x, self.sched, t=t, noise=noise, recon_noise=rn, backend=backend).bpd


def test_torch_compile_fullgraph_matches_eager_and_trains_schedule():
    sched = LearnedLinearGamma()
    net = torch.nn.Conv2d(3, 3, 1)  # initialised from the seeded global generator, as are the inputs
    x = torch.rand(4, 3, 4, 4) * 2 - 1
    t, noise, rn = torch.rand(4), torch.randn(4, 3, 4, 4), torch.randn(4, 3, 4, 4)

    def bpd(x, t, noise, rn):
        return elbo(lambda z, tt: net(z), x, sched, t=t, noise=noise, recon_noise=rn).bpd

    compiled = torch.compile(bpd, fullgraph=True)(x, t, noise, rn)
    eager = bpd(x, t, noise, rn)
    (g_c,) = torch.autograd.grad(compiled.sum(), [sched.b])
    (g_e,) = torch.autograd.grad(eager.sum(), [sched.b])
    # Each within the float32 running error bound of the reference ELBO, value and d/d gamma_min, the
    # schedule's and the net's parameters inputs of the bound. At gamma_min = -13.3 the decoder's
    # (z0 - alpha_0 c_k) / sigma_0 cancels at sigma_0 = 1.3e-3: bounds ~3e-5 relative for bits/dim and
    # ~1e-2 for its gradient, above the old compiled-vs-eager rtol 1.3e-6 (tuned: both ran the same kernels).
    loss = _BPD(sched, net)
    names, params = zip(*loss.named_parameters())
    truth = numerics.running_error(
        lambda x, t, n, r, *p: functional_call(loss, dict(zip(names, p)), (x, t, n, r), {"backend": "reference"}),
        (x, t, noise, rn, *params), wrt=(4 + names.index("sched.b"),))
    for label, value, grad in (("compiled", compiled, g_c), ("eager", eager, g_e)):
        numerics.assert_within_bound(value, truth.value, truth.bound, msg=f"{label} bpd")
        numerics.assert_within_bound(grad, truth.grads[0], truth.grad_bounds[0], msg=f"{label} d/d gamma_min")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_data_gives_float32_terms(dtype):
    x = (torch.rand(4, 3, 4, 4) * 2 - 1).to(dtype)
    model = lambda z, t: (0.5 * z.float()).to(dtype)  # noqa: E731
    terms = elbo(model, x, LearnedLinearGamma(), generator=torch.Generator().manual_seed(0))
    for v in (terms.recon, terms.prior, terms.diffusion):
        assert v.dtype == torch.float32 and bool(torch.isfinite(v).all())
