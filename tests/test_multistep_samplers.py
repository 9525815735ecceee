"""Karras grids, the k-diffusion interface and the samplers of issue 17: Euler-ancestral,
DPM-Solver++(2M) and UniPC (Euler and Heun are ``sample_ode``'s, tested in test_samplers.py).

Builders are checked against k-diffusion's / diffusers' update written out here in their own
variables (x̃ = z/alpha, sigmã; lambda = log alpha/sigma), float64: the coefficients are built in
float64 from expm1/softplus forms, the textbook evaluates exp/log directly, and on the grids used
here (neighbouring levels at least 0.05 apart in gamma) both are within ~1e2 ulps of the exact
value, so 1e-12 relative to the output's scale is a bound with room and far below any formula
error. Whole loops are compared with diffusers' schedulers run on float64 data with their sigmas
replaced by the float64 levels of our table (then their arithmetic and ours agree to rounding:
1e-10 relative over a run), and run on the 2-D Gaussian mixture (moments and energy distance,
test_samplers.check_matches).
"""

from __future__ import annotations

import math

import pytest
import torch

from vdm_fast import karras, samplers, schedules
from vdm_fast.coefficients import dpmpp_2m_coeffs, euler_ancestral_coeffs, gammas, unipc_corrector_coeffs
from vdm_fast.parameterization import alpha_sigma, x0_coeffs
from vdm_fast import randn_like, reference

from gmm import default_gmm
from helpers import backend_params
from test_samplers import N, check_matches, target  # noqa: F401 (fixture)

diffusers = pytest.importorskip("diffusers")
import diffusers.schedulers.scheduling_euler_ancestral_discrete as diffusers_euler_a  # noqa: E402

PARAMS = ("eps", "x0", "v", "score")


def _col(v, like):
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


def _case(seed=0, batch=5):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, 3, 4, generator=gen, dtype=torch.float64)
    m = torch.randn(batch, 3, 4, generator=gen, dtype=torch.float64)
    prev = torch.randn(batch, 3, 4, generator=gen, dtype=torch.float64)
    g_t = torch.empty(batch, dtype=torch.float64).uniform_(-4, 4, generator=gen)
    g_s = g_t - torch.empty(batch, dtype=torch.float64).uniform_(0.3, 2.0, generator=gen)  # less noisy
    g_p = g_t + torch.empty(batch, dtype=torch.float64).uniform_(0.3, 2.0, generator=gen)  # noisier
    return z, m, prev, g_t, g_s, g_p


def _x_hat(param, z, g):
    alpha, sigma = alpha_sigma(g)
    a_z, a_m = x0_coeffs(param, alpha, sigma)
    return lambda m: _col(a_z, z) * z + _col(a_m, z) * m


def _close(got, want):
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12 * max(1.0, want.abs().max().item()))


# --- builders against the textbook ---------------------------------------------------------------------------


@pytest.mark.parametrize("param", PARAMS)
@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_euler_ancestral_is_k_diffusion(param, eta):
    z, m, _, g_t, g_s, _ = _case(1)
    n = torch.randn_like(z)
    got = reference.reverse_step(z, m, euler_ancestral_coeffs(g_t, g_s, param, eta), noise=n)
    # k-diffusion's sample_euler_ancestral in x̃ = z / alpha (get_ancestral_step with eta).
    alpha_t, _ = alpha_sigma(g_t)
    alpha_s, _ = alpha_sigma(g_s)
    s_t, s_s = torch.exp(g_t / 2), torch.exp(g_s / 2)
    s_up = torch.minimum(s_s, eta * (s_s**2 * (s_t**2 - s_s**2) / s_t**2) ** 0.5)
    s_down = (s_s**2 - s_up**2) ** 0.5
    x = z / _col(alpha_t, z)
    d = (x - _x_hat(param, z, g_t)(m)) / _col(s_t, z)
    want = _col(alpha_s, z) * (x + d * _col(s_down - s_t, z) + n * _col(s_up, z))
    _close(got, want)


def _lam(g):
    return -g / 2


@pytest.mark.parametrize("param", PARAMS)
@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
def test_dpmpp_2m_is_diffusers_update(param, solver_type):
    z, m, prev, g_t, g_s, g_p = _case(2)
    got = reference.reverse_step(z, m, dpmpp_2m_coeffs(g_t, g_s, g_p, param, solver_type), noise=prev)
    # diffusers' multistep_dpm_solver_second_order_update (dpmsolver++), in alpha, sigma, lambda.
    alpha_t, sigma_t = alpha_sigma(g_s)  # diffusers' t is the level stepped to
    _, sigma_s0 = alpha_sigma(g_t)
    h, h_0 = _lam(g_s) - _lam(g_t), _lam(g_t) - _lam(g_p)
    r0 = h_0 / h
    m0, m1 = _x_hat(param, z, g_t)(m), prev
    d0, d1 = m0, _col(1 / r0, z) * (m0 - m1)
    e = torch.exp(-h) - 1
    want = _col(sigma_t / sigma_s0, z) * z - _col(alpha_t * e, z) * d0
    if solver_type == "midpoint":
        want = want - 0.5 * _col(alpha_t * e, z) * d1
    else:
        want = want + _col(alpha_t * (e / h + 1), z) * d1
    _close(got, want)
    # first order: gamma_prev None or NaN, and any step to the clean level
    first = _col(sigma_t / sigma_s0, z) * z - _col(alpha_t * e, z) * m0
    _close(reference.reverse_step(z, m, dpmpp_2m_coeffs(g_t, g_s, None, param, solver_type)), first)
    clean = torch.full_like(g_s, -math.inf)
    _close(reference.reverse_step(z, m, dpmpp_2m_coeffs(g_t, clean, g_p, param, solver_type), noise=prev), m0)


@pytest.mark.parametrize("param", ["eps", "v"])
@pytest.mark.parametrize("order", [1, 2])
def test_unipc_corrector_is_diffusers_update(param, order):
    z, m_s, prev, g_t, g_s, g_p = _case(3)
    x_last = torch.randn_like(z)
    d = torch.randn_like(z)  # x̂ at t
    history, correct = unipc_corrector_coeffs(g_t, g_s, g_p if order == 2 else None, param)
    known = reference.reverse_step(x_last, d, history, noise=prev)
    got = reference.reverse_step(z, m_s, correct, noise=known)
    # diffusers' multistep_uni_c_bh_update (predict_x0, bh2), per sample (rhos from its 2x2 solve).
    want = torch.empty_like(z)
    for b in range(z.shape[0]):
        alpha_t, sigma_t = alpha_sigma(g_s[b])
        _, sigma_s0 = alpha_sigma(g_t[b])
        h = _lam(g_s[b]) - _lam(g_t[b])
        hh = -h
        h_phi_1 = torch.expm1(hh)
        b_h = torch.expm1(hh)
        model_t = _x_hat(param, z[b:b + 1], g_s[b:b + 1])(m_s[b:b + 1])[0]
        if order == 1:
            rhos, corr = torch.tensor([0.5], dtype=torch.float64), 0
        else:
            rk = (_lam(g_p[b]) - _lam(g_t[b])) / h
            rks = torch.stack([rk, torch.ones((), dtype=torch.float64)])
            h_phi_k, fact, rows, bs = h_phi_1 / hh - 1, 1, [], []
            for i in range(1, 3):
                rows.append(rks ** (i - 1))
                bs.append(h_phi_k * fact / b_h)
                fact *= i + 1
                h_phi_k = h_phi_k / hh - 1 / fact
            rhos = torch.linalg.solve(torch.stack(rows), torch.stack(bs))
            corr = rhos[0] * (prev[b] - d[b]) / rk
        x_t_ = sigma_t / sigma_s0 * x_last[b] - alpha_t * h_phi_1 * d[b]
        want[b] = x_t_ - alpha_t * b_h * (corr + rhos[-1] * (model_t - d[b]))
    _close(got, want)


# --- Karras grids and the k-diffusion interface ---------------------------------------------------------------


def test_karras_sigmas_are_edm_eq5():
    s = karras.karras_sigmas(5, 0.002, 80.0, 7.0)
    i = torch.arange(5, dtype=torch.float64)
    want = (80.0 ** (1 / 7) + i / 4 * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    torch.testing.assert_close(s, torch.cat([want, torch.zeros(1, dtype=torch.float64)]), rtol=1e-14, atol=0)
    for bad in (dict(steps=0), dict(sigma_min=0.0), dict(sigma_min=90.0), dict(rho=0.0)):
        kw = dict(steps=5, sigma_min=0.002, sigma_max=80.0, rho=7.0) | bad
        with pytest.raises(ValueError, match=next(iter(bad))):
            karras.karras_sigmas(kw["steps"], kw["sigma_min"], kw["sigma_max"], kw["rho"])


def test_karras_times_on_a_table_are_diffusers_karras_timesteps():
    theirs = diffusers.EulerDiscreteScheduler(use_karras_sigmas=True)
    theirs.set_timesteps(12)
    table = schedules.DiscreteSchedule(theirs.betas.double())
    times = karras.karras_times(table, 12)
    assert times[-1] == -1 and times.dtype == torch.float64
    torch.testing.assert_close(karras.karras_times(karras.FractionalSchedule(table), 12), times, rtol=0, atol=0)
    # diffusers builds its sigmas from a float32 alphas_cumprod: 1 - abar near t = 0 (about 1e-4) carries
    # float32 rounding of abar (6e-8) divided by it, up to ~1e-3 relative in sigma². Fractional timesteps
    # agree to 1% of a timestep and sigmas to 1e-4 relative (measured 5e-3 and 4e-5).
    torch.testing.assert_close(times[:-1], theirs.timesteps.double(), rtol=0, atol=1e-2)
    sig = torch.exp(gammas(karras.FractionalSchedule(table), times) / 2)
    torch.testing.assert_close(sig, theirs.sigmas.double(), rtol=1e-4, atol=0)
    # a plain table refuses float times (continuous times in [0, 1] passed by mistake would read 0..1)
    with pytest.raises(TypeError, match="FractionalSchedule"):
        gammas(table, times)


@pytest.mark.parametrize("schedule", [schedules.LinearGamma(-10.0, 6.0), schedules.MonotoneGamma(-8.0, 5.0)],
                         ids=["linear", "monotone"])
def test_karras_times_on_a_continuous_schedule(schedule):
    times = karras.karras_times(schedule, 8, sigma_min=0.05, sigma_max=10.0)
    assert times.shape == (8,) and (times[:-1] > times[1:]).all() and ((times >= 0) & (times <= 1)).all()
    with torch.no_grad():
        g = gammas(schedule, times)
    torch.testing.assert_close(torch.exp(g / 2), karras.karras_sigmas(8, 0.05, 10.0)[:-1], rtol=1e-10, atol=0)


def test_interpolated_gamma_is_linear_in_log_sigma():
    table = schedules.DiscreteSchedule.linear(50)
    t = torch.tensor([0.0, 3.25, 48.5, 49.0, -1.0], dtype=torch.float64)
    g = karras.interpolated_gamma(table, t)
    want = torch.stack([table.gammas[0], 0.75 * table.gammas[3] + 0.25 * table.gammas[4],
                        0.5 * table.gammas[48] + 0.5 * table.gammas[49], table.gammas[49]])
    torch.testing.assert_close(g[:4], want, rtol=1e-15, atol=0)
    assert g[4] == -math.inf
    torch.testing.assert_close(karras.times_for_gammas(table, g), t, rtol=0, atol=1e-12)
    with pytest.raises(RuntimeError, match="fractional timesteps must lie in"):
        karras.interpolated_gamma(table, torch.tensor([49.5], dtype=torch.float64))
    # integer timesteps on FractionalSchedule read the table's entries exactly, -1 the clean level
    ints = torch.tensor([49, 17, 0, -1])
    assert torch.equal(karras.FractionalSchedule(table).gamma(ints, torch.float64), gammas(table, ints))


def test_denoiser_round_trip_and_sigma_schedule():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 2, generator=gen, dtype=torch.float64)
    sigma = torch.tensor([0.1, 1.0, 7.0], dtype=torch.float64)

    def denoiser(x, s):  # any D(x̃, sigmã)
        return torch.tanh(x) / _col(1 + s, x)

    wrapped = karras.Denoiser(karras.from_denoiser(denoiser), karras.SigmaSchedule(), "x0")
    torch.testing.assert_close(wrapped(x, sigma), denoiser(x, sigma), rtol=1e-14, atol=0)
    # An eps model on a table as D(x̃, sigmã) = x̃ - sigmã eps(z, t): the GMM's exact model is E[x | z].
    gmm, table = default_gmm(), schedules.DiscreteSchedule.cosine(200)
    eps_model = gmm.model(table, "eps")
    d = karras.Denoiser(lambda z, t: eps_model(z, t.round().long()), table, "eps")
    t = torch.tensor([20, 100, 150])
    alpha, sig = table.alpha_sigma(t, torch.float64)
    s_tilde = sig / alpha
    x0 = gmm.model(table, "x0")(x * _col(alpha, x), t)
    torch.testing.assert_close(d(x, s_tilde), x0, rtol=1e-9, atol=1e-9)
    with pytest.raises(RuntimeError, match="sigma"):
        karras.SigmaSchedule().gamma(torch.tensor([-0.5]))
    with pytest.raises(TypeError, match="floating-point"):
        karras.SigmaSchedule().gamma(torch.tensor([1]))


# --- loops against diffusers' schedulers (float64 levels on both sides) ---------------------------------------


def _theirs_float64(sched, table: schedules.DiscreteSchedule):
    """diffusers' scheduler with its sigmas replaced by the float64 levels of our table at its
    timesteps (then its arithmetic is float64, as ours)."""
    t = sched.timesteps.long()
    sig = torch.exp(table.gammas[t] / 2)
    sched.sigmas = torch.cat([sig, sig.new_zeros(1)])
    return sched


@pytest.mark.parametrize("kind, ours, kw", [
    ("DPMSolverMultistepScheduler", samplers.sample_dpmpp_2m, {}),
    ("DPMSolverMultistepScheduler", samplers.sample_dpmpp_2m, {"solver_type": "heun"}),
    ("UniPCMultistepScheduler", samplers.sample_unipc, {}),
], ids=["dpmpp_2m", "dpmpp_2m_heun", "unipc"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_loop_equals_diffusers_scheduler(kind, ours, kw, prediction_type):
    param = {"epsilon": "eps", "v_prediction": "v"}[prediction_type]
    theirs = getattr(diffusers, kind)(prediction_type=prediction_type, **kw)
    theirs.set_timesteps(20)
    table = schedules.DiscreteSchedule(theirs.betas.double())
    _theirs_float64(theirs, table)
    model = default_gmm().model(table, param)
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x = z.clone()
    for t in theirs.timesteps:
        x = theirs.step(model(x, t.long().expand(64)), t, x).prev_sample
    times = torch.cat([theirs.timesteps.long(), torch.tensor([-1])])
    got = ours(model, z, table, times, parameterization=param, **kw)
    # diffusers' DPM step rounds the sample to float32 on every step (its "upcast"): 20 roundings of
    # 2^-24 relative, amplified at most a few times by the later steps; UniPC stays in float64.
    tol = 1e-10 if kind == "UniPCMultistepScheduler" else 20 * 4 * 2.0**-24
    torch.testing.assert_close(got, x, rtol=0, atol=tol * x.abs().max().item())


def test_euler_ancestral_equals_diffusers_with_its_noise_and_the_loop_draws_randn_like(monkeypatch):
    theirs = diffusers.EulerAncestralDiscreteScheduler()  # its step reads only sigmas: given ours below
    theirs.set_timesteps(15)
    table = schedules.DiscreteSchedule(theirs.betas.double())
    times = karras.karras_times(table, 15)
    g = gammas(karras.FractionalSchedule(table), times)
    theirs.sigmas = torch.exp(g / 2)  # their Karras grid, in float64
    model = default_gmm().model(table, "eps")

    def at(z, i):  # the model at fractional timestep times[i] (rounded: any fixed function will do)
        return model(z, times[i].round().long().expand(z.shape[0]))

    batch = 32
    z0 = torch.randn(batch, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    noises = [torch.randn(batch, 2, generator=torch.Generator().manual_seed(10 + i), dtype=torch.float64)
              for i in range(15)]
    # diffusers, in x̃ = z sqrt(1 + sigma²), its randn_tensor replaced by the recorded draws
    draws = iter(noises)
    monkeypatch.setattr(diffusers_euler_a, "randn_tensor", lambda *a, **k: next(draws))
    x = z0 * (1 + theirs.sigmas[0] ** 2).sqrt()
    for i, t in enumerate(theirs.timesteps):
        x = theirs.step(at(theirs.scale_model_input(x, t), i), t, x).prev_sample
    # ours, the builder step by step with the same noises (z-space, clean level last: z = x̃ = x)
    table6 = euler_ancestral_coeffs(g[:-1, None], g[1:, None], "eps")  # (K, 6, 1)
    z = z0.clone()
    for i in range(15):
        z = reference.reverse_step(z, at(z, i), table6[i].expand(6, batch), noise=noises[i])
    # diffusers' step rounds the sample to float32 on every step (as in test_loop_equals_diffusers_scheduler)
    torch.testing.assert_close(z, x, rtol=0, atol=15 * 4 * 2.0**-24 * x.abs().max().item())
    # the loop draws its noise in the kernel: randn_like's stream of the same generator
    got = samplers.sample_euler_ancestral(lambda z, t: model(z, t.round().long()), z0,
                                          karras.FractionalSchedule(table), times,
                                          generator=torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(7)
    z = z0.clone()
    for i in range(15):
        z = reference.reverse_step(z, at(z, i), table6[i].expand(6, batch), noise=randn_like(z, gen))
    torch.testing.assert_close(got, z, rtol=0, atol=1e-10 * z.abs().max().item())


# --- whole runs on the 2-D mixture -------------------------------------------------------------------------


def _run(target, sampler, schedule, times, param="eps", from_z0=None, **kw):
    gmm, x = target
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(N, 2, generator=gen)
    out = sampler(gmm.model(schedule, param), z, schedule, times, parameterization=param, **kw)
    if from_z0 is not None:  # a continuous grid ends at its last level, still noisy: z / alpha there
        out = out / from_z0
    check_matches(out, gmm, x)


DISCRETE = schedules.DiscreteSchedule.linear()
CONT = schedules.LinearGamma(-10.0, 6.0)


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_gmm_euler_ancestral_discrete(target, eta):
    _run(target, samplers.sample_euler_ancestral, DISCRETE, samplers.discrete_times(1000, 50), eta=eta,
         generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("sampler", [samplers.sample_dpmpp_2m, samplers.sample_unipc], ids=["dpmpp_2m", "unipc"])
@pytest.mark.parametrize("param", ["eps", "v"])
def test_gmm_multistep_discrete(target, sampler, param):
    _run(target, sampler, DISCRETE, samplers.discrete_times(1000, 15, spacing="trailing"), param)


def _euler(*args, **kw):
    return samplers.sample_ode(*args, method="euler", **kw)


@pytest.mark.parametrize("sampler, steps", [(samplers.sample_dpmpp_2m, 15), (samplers.sample_unipc, 15),
                                            (samplers.sample_ode, 15), (_euler, 60)],
                         ids=["dpmpp_2m", "unipc", "heun", "euler"])
def test_gmm_karras_grid_continuous(target, sampler, steps):
    # second-order methods need 15 steps here, first-order Euler (like ancestral sampling) more
    times = karras.karras_times(CONT, steps, sigma_min=0.004, sigma_max=20.0)
    with torch.no_grad():
        alpha_last = alpha_sigma(gammas(CONT, times[-1:]))[0].float()
    _run(target, sampler, CONT, times, "eps", from_z0=alpha_last)


def test_gmm_karras_grid_discrete_fractional_timesteps(target):
    gmm, x = target

    fractional = karras.FractionalSchedule(DISCRETE)

    def model(z, t):  # the exact model at fractional timesteps: the mixture's eps at the interpolated level
        alpha, sigma = alpha_sigma(gammas(fractional, t))
        return gmm.model(karras.SigmaSchedule(), "eps")(z, (sigma / alpha).to(z.dtype))
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(N, 2, generator=gen)
    # Euler-ancestral is first order: like ancestral sampling it needs ~100 steps here (25 give a
    # covariance 0.2 off), as test_samplers' ancestral runs.
    out = samplers.sample_euler_ancestral(model, z, fractional, karras.karras_times(DISCRETE, 100), generator=gen)
    check_matches(out, gmm, x)


@pytest.mark.parametrize("sampler", [samplers.sample_dpmpp_2m, samplers.sample_ode], ids=["dpmpp_2m", "heun"])
def test_gmm_k_diffusion_denoiser_on_sigma_schedule(target, sampler):
    """A k-diffusion model D(x̃, sigmã) plugged in with from_denoiser, EDM's grid (sigma 0.002..80,
    then 0: Heun takes the Euler step to the clean level, as EDM's Alg. 1)."""
    gmm, x = target
    exact_x0 = gmm.model(karras.SigmaSchedule(), "x0")

    def denoiser(x_tilde, sigma):  # k-diffusion's interface: D(x̃, sigmã) = E[x | x̃]
        z = x_tilde / _col((1 + sigma.double() ** 2).sqrt(), x_tilde).to(x_tilde.dtype)
        return exact_x0(z, sigma)

    sigmas = karras.karras_sigmas(20, 0.002, 80.0)
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(N, 2, generator=gen) * (80.0 / math.sqrt(1 + 80.0**2))
    out = sampler(karras.from_denoiser(denoiser), z, karras.SigmaSchedule(), sigmas, parameterization="x0")
    check_matches(out, gmm, x)


# --- backends, per-sample grids, edge cases ----------------------------------------------------------------


@pytest.mark.parametrize("backend", backend_params("reverse_step"))
@pytest.mark.parametrize("sampler", [samplers.sample_dpmpp_2m, samplers.sample_unipc, samplers.sample_euler_ancestral],
                         ids=["dpmpp_2m", "unipc", "euler_a"])
def test_loops_on_every_backend_equal_the_reference(backend, sampler):
    name, device = backend
    gmm = default_gmm()
    z = torch.randn(6, 2, generator=torch.Generator().manual_seed(3)).to(device)
    times = samplers.discrete_times(1000, 6)
    noisy = sampler is samplers.sample_euler_ancestral

    def run(backend_name):
        kw = {"generator": torch.Generator(device).manual_seed(4)} if noisy else {}
        return sampler(gmm.model(DISCRETE), z, DISCRETE, times, backend=backend_name, **kw).cpu()

    got, want = run(name), run("reference")
    # float32 data, coefficients from one float64 table: the fused pass and the reference's torch ops
    # differ by a few float32 roundings per step (the Philox normals agree to float32 rounding).
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_per_sample_grids_equal_separate_runs():
    gmm = default_gmm()
    z = torch.randn(4, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    a, b = samplers.discrete_times(1000, 8), samplers.discrete_times(1000, 8, spacing="trailing")
    both = torch.stack([a, a, b, b], dim=1)
    model = gmm.model(DISCRETE)
    for sampler in (samplers.sample_dpmpp_2m, samplers.sample_unipc):
        got = sampler(model, z, DISCRETE, both)
        want = torch.cat([sampler(model, z[:2], DISCRETE, a), sampler(model, z[2:], DISCRETE, b)])
        torch.testing.assert_close(got, want, rtol=0, atol=1e-14)


def test_empty_batch_and_one_step_and_bad_arguments():
    gmm = default_gmm()
    for sampler in (samplers.sample_dpmpp_2m, samplers.sample_unipc, samplers.sample_euler_ancestral):
        empty = sampler(gmm.model(DISCRETE), torch.zeros(0, 2), DISCRETE, samplers.discrete_times(1000, 4))
        assert empty.shape == (0, 2)
        z = torch.randn(3, 2)
        one = sampler(gmm.model(DISCRETE), z, DISCRETE, samplers.discrete_times(1000, 1))  # one step: x̂
        assert torch.isfinite(one).all()
    with pytest.raises(ValueError, match="solver_type"):
        samplers.sample_dpmpp_2m(gmm.model(DISCRETE), z, DISCRETE, samplers.discrete_times(1000, 4), solver_type="x")
    with pytest.raises(ValueError, match="eta must lie in"):
        samplers.sample_euler_ancestral(gmm.model(DISCRETE), z, DISCRETE, samplers.discrete_times(1000, 4), eta=1.5)
