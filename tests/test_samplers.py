"""Samplers: coefficient builders + reverse_step against textbook updates written out here,
diffusers parity, whole runs on a 2-D Gaussian mixture, and no host synchronisation in the loops.

Equality rule (tests/numerics.py): our result against the textbook formula evaluated in float64 on
the same inputs, within K times the running error bound of what we compute (the coefficient
builder and reference.reverse_step, at the precision the op computes in) plus the textbook's own
float64 bound. Whole loops are bounded the same way: running_error follows the model, the
coefficient tables and every step of the sampler run on the reference backend. Every random input
is drawn from a seeded generator (or torch's default one, seeded per test by conftest.py).
"""

from __future__ import annotations

import contextlib
import math
import sys

import pytest
import torch
from torch.utils._python_dispatch import _disable_current_modes

import numerics
import vdm_fast
from vdm_fast import reference, samplers, schedules
from gmm import GMM, default_gmm, energy_distance
from sync_trap import SyncTrap

PARAMS = ("eps", "x0", "v", "score")
BACKEND = None  # the default backend: the reference today, the fused kernels once they are built


# --- textbook formulas, in alpha_bar (Luo's notation), float64 ------------------------------------


def abar(g):
    return torch.sigmoid(-g.double())


def col(v, like):
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


def tb_xhat(param, z, m, ab):
    a, s = col(ab.sqrt(), z), col((1 - ab).sqrt(), z)
    return {"eps": (z - s * m) / a, "x0": m, "v": a * z - s * m, "score": (z + s * s * m) / a}[param]


def tb_eps(param, z, m, ab):
    a, s = col(ab.sqrt(), z), col((1 - ab).sqrt(), z)
    return {"eps": m, "x0": (z - a * m) / s, "v": a * m + s * z, "score": -s * m}[param]


def tb_score(param, z, m, ab):
    return -tb_eps(param, z, m, ab) / col((1 - ab).sqrt(), z)


def tb_ancestral(param, z, m, n, g_t, g_s, variance, clip):
    ab_t, ab_s = abar(g_t), abar(g_s)
    xh = tb_xhat(param, z, m, ab_t)
    if clip is not None:
        xh = xh.clamp(-clip, clip)
    a_ts = ab_t / ab_s
    b_ts = 1 - a_ts
    mean = col(ab_s.sqrt() * b_ts / (1 - ab_t), z) * xh + col(a_ts.sqrt() * (1 - ab_s) / (1 - ab_t), z) * z
    var = (1 - ab_s) / (1 - ab_t) * b_ts if variance == "posterior" else torch.where(ab_s < 1, b_ts, 0 * b_ts)
    return mean + col(var.sqrt(), z) * n


def tb_ddim(param, z, m, n, g_t, g_s, eta, clip, clipped_eps):
    ab_t, ab_s = abar(g_t), abar(g_s)
    xh = tb_xhat(param, z, m, ab_t)
    if clip is not None:
        xh = xh.clamp(-clip, clip)
    e = (z - col(ab_t.sqrt(), z) * xh) / col((1 - ab_t).sqrt(), z) if clipped_eps else tb_eps(param, z, m, ab_t)
    std = eta * ((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)).sqrt()
    return col(ab_s.sqrt(), z) * xh + col((1 - ab_s - std ** 2).sqrt(), z) * e + col(std, z) * n


def random_case(dtype=torch.float64, shape=(7, 3, 4), seed=0):
    gen = torch.Generator().manual_seed(seed)
    b = shape[0]
    z = torch.randn(shape, generator=gen, dtype=torch.float64)
    m = torch.randn(shape, generator=gen, dtype=torch.float64)
    n = torch.randn(shape, generator=gen, dtype=torch.float64)
    g_t = torch.rand(b, generator=gen, dtype=torch.float64) * 10 - 5
    g_s = g_t - 0.1 - 3 * torch.rand(b, generator=gen, dtype=torch.float64)
    g_s[-1] = -math.inf  # one sample steps to the clean level
    return z, m, n, g_t, g_s


def op(z, m, coeffs, dtype, **kw):
    noise = kw.pop("noise")
    return vdm_fast.reverse_step(z.to(dtype), m.to(dtype), coeffs, noise=noise.to(dtype), backend=BACKEND, **kw)


def assert_matches_textbook(got, ours, textbook, inputs, dtype, msg=""):
    """``got`` (builder + op on ``inputs`` at ``dtype``'s precision) equals ``textbook`` evaluated in
    float64 on the same inputs, within K times the running error bound of ``ours`` (the same builder
    with reference.reverse_step) at the op's compute precision, plus the textbook's own float64 bound."""
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    bound = numerics.running_error(ours, inputs, dtype=cdt).bound
    want = numerics.running_error(textbook, inputs, dtype=torch.float64)
    numerics.assert_within_bound(got, want.value, numerics.K * bound + want.bound, k=1, msg=msg)


def rounded_case(dtype, seed, scale_m=False):
    """random_case's inputs rounded once to what the op and builders see (data in ``dtype``, gammas
    in the compute dtype): both sides of a comparison take these same numbers."""
    z, m, n, g_t, g_s = random_case(seed=seed)
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    return z.to(dtype), (m * 0.3 if scale_m else m).to(dtype), n.to(dtype), g_t.to(cdt), g_s.to(cdt)


# --- one step: builders + op == textbook ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("param", PARAMS)
@pytest.mark.parametrize("variance", ["posterior", "beta"])
@pytest.mark.parametrize("clip", [None, 1.0])
def test_ancestral_step_matches_textbook(dtype, param, variance, clip):
    # eps and score models: m scaled so that x̂ stays of order 1 and the clamp is active on some elements only
    inputs = rounded_case(dtype, seed=0, scale_m=param in ("eps", "score"))
    z, m, n, g_t, g_s = inputs
    coeffs = samplers.ancestral_coeffs(g_t, g_s, param, variance)
    assert coeffs.shape == (6, 7) and coeffs.dtype == g_t.dtype
    got = op(z, m, coeffs, dtype, clip=clip, noise=n)
    assert_matches_textbook(
        got,
        lambda z, m, n, gt, gs: reference.reverse_step(z, m, samplers.ancestral_coeffs(gt, gs, param, variance),
                                                       clip=clip, noise=n),
        lambda z, m, n, gt, gs: tb_ancestral(param, z, m, n, gt, gs, variance, clip), inputs, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("param", PARAMS)
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("clip,clipped_eps", [(None, False), (1.0, False), (1.0, True)])
def test_ddim_step_matches_textbook(dtype, param, eta, clip, clipped_eps):
    inputs = rounded_case(dtype, seed=1, scale_m=param in ("eps", "score"))
    z, m, n, g_t, g_s = inputs
    got = op(z, m, samplers.ddim_coeffs(g_t, g_s, param, eta, clipped_eps), dtype, clip=clip, noise=n)
    assert_matches_textbook(
        got,
        lambda z, m, n, gt, gs: reference.reverse_step(z, m, samplers.ddim_coeffs(gt, gs, param, eta, clipped_eps),
                                                       clip=clip, noise=n),
        lambda z, m, n, gt, gs: tb_ddim(param, z, m, n, gt, gs, eta, clip, clipped_eps), inputs, dtype)


def test_ddim_eta_per_sample():
    z, m, n, g_t, g_s = random_case(seed=2)
    eta = torch.linspace(0, 1, 7, dtype=torch.float64)
    got = op(z, m, samplers.ddim_coeffs(g_t, g_s, "eps", eta), torch.float64, noise=n)
    bound = numerics.running_error(
        lambda z, m, n, gt, gs, e: reference.reverse_step(z, m, samplers.ddim_coeffs(gt, gs, "eps", e), noise=n),
        (z, m, n, g_t, g_s, eta)).bound
    for b in range(7):
        one = slice(b, b + 1)
        want = numerics.running_error(lambda z, m, n, gt, gs: tb_ddim("eps", z, m, n, gt, gs, eta[b].item(), None, False),
                                      (z[one], m[one], n[one], g_t[one], g_s[one]))
        numerics.assert_within_bound(got[one], want.value, numerics.K * bound[one] + want.bound, k=1, msg=f"eta={eta[b]}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("param", PARAMS)
def test_langevin_step_matches_textbook(dtype, param):
    z, m, n, g_t, _ = rounded_case(dtype, seed=3)
    step = (torch.rand(7, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 0.1).to(g_t.dtype)
    got = op(z, m, samplers.langevin_coeffs(g_t, step, param), dtype, noise=n)

    def textbook(z, m, n, g, step):
        return z + col(step / 2, z) * tb_score(param, z, m, abar(g)) + col(step.sqrt(), z) * n

    assert_matches_textbook(
        got, lambda z, m, n, g, step: reference.reverse_step(z, m, samplers.langevin_coeffs(g, step, param), noise=n),
        textbook, (z, m, n, g_t, step), dtype)


@pytest.mark.parametrize("param", PARAMS)
def test_pc_steps_match_score_sde(param):
    z, m, n, g_t, g_s = random_case(seed=4)
    g_s[-1] = g_t[-1] - 1.0  # the clean-level case is tested on its own below

    def predictor(z, m, n, g_t, g_s):  # score_sde ReverseDiffusionPredictor, VP discretisation
        ab_t, ab_s = abar(g_t), abar(g_s)
        beta = 1 - ab_t / ab_s
        score = tb_score(param, z, m, ab_t)
        return col(2 - (1 - beta).sqrt(), z) * z + col(beta, z) * score + col(beta.sqrt(), z) * n

    got = op(z, m, samplers.reverse_diffusion_coeffs(g_t, g_s, param), torch.float64, noise=n)
    assert_matches_textbook(
        got, lambda z, m, n, gt, gs: reference.reverse_step(z, m, samplers.reverse_diffusion_coeffs(gt, gs, param),
                                                            noise=n),
        predictor, (z, m, n, g_t, g_s), torch.float64, msg="predictor")

    # corrector (score_sde LangevinCorrector, per-sample norms): the norms are inputs of both sides
    snr = 0.16
    s_norm = tb_score(param, z, m, abar(g_t)).reshape(7, -1).norm(dim=1)
    n_norm = n.reshape(7, -1).norm(dim=1)

    def corrector(z, m, n, g_t, g_s, s_norm, n_norm):
        ab_t, ab_s = abar(g_t), abar(g_s)
        step = 2 * (ab_t / ab_s) * (snr * n_norm / s_norm) ** 2
        return z + col(step, z) * tb_score(param, z, m, ab_t) + col((2 * step).sqrt(), z) * n

    got = op(z, m, samplers.langevin_corrector_coeffs(g_t, g_s, s_norm, n_norm, snr, param), torch.float64, noise=n)
    assert_matches_textbook(
        got, lambda z, m, n, gt, gs, sn, nn_: reference.reverse_step(
            z, m, samplers.langevin_corrector_coeffs(gt, gs, sn, nn_, snr, param), noise=n),
        corrector, (z, m, n, g_t, g_s, s_norm, n_norm), torch.float64, msg="corrector")


def test_predictor_to_clean_level_is_tweedie():
    z, m, n, g_t, g_s = random_case(seed=5)
    got = op(z, m, samplers.reverse_diffusion_coeffs(g_t, g_s, "eps"), torch.float64, noise=n)
    assert_matches_textbook(
        got[-1:], lambda z, m, n, gt, gs: reference.reverse_step(z, m, samplers.reverse_diffusion_coeffs(gt, gs, "eps"),
                                                                 noise=n)[-1:],
        lambda z, m, n, gt, gs: tb_xhat("eps", z, m, abar(gt))[-1:], (z, m, n, g_t, g_s), torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("param", PARAMS)
def test_ode_euler_step_is_edm_euler(dtype, param):
    inputs = rounded_case(dtype, seed=6, scale_m=param in ("eps", "score"))
    z, m, n, g_t, g_s = inputs
    got = op(z, m, samplers.ode_euler_coeffs(g_t, g_s, param), dtype, noise=n)

    def edm_euler(z, m, n, g_t, g_s):
        ab_t, ab_s = abar(g_t), abar(g_s)
        # Karras et al. 2022, Alg. 1 in x̃ = z / alpha, sigmã = sigma / alpha: d = (x̃ - x̂) / sigmã
        st_t, st_s = ((1 - ab_t) / ab_t).sqrt(), ((1 - ab_s) / ab_s).sqrt()
        xt = z / col(ab_t.sqrt(), z)
        d = (xt - tb_xhat(param, z, m, ab_t)) / col(st_t, z)
        return col(ab_s.sqrt(), z) * (xt + col(st_s - st_t, z) * d)

    assert_matches_textbook(
        got, lambda z, m, n, gt, gs: reference.reverse_step(z, m, samplers.ode_euler_coeffs(gt, gs, param), noise=n),
        edm_euler, inputs, dtype)


# --- whole loops == textbook loops (same noise), float64 --------------------------------------------


def toy_model(param):
    """A smooth model with some dependence on z and t (not a real denoiser: the update formulas
    are what is checked)."""
    def f(z, t):
        tt = t.double() if t.is_floating_point() else t.double() / 1000
        out = (0.3 * torch.tanh(z) + 0.2 * col(tt, z) * z.flip(0)).to(z.dtype)
        return out if param != "score" else -z + 0.1 * out
    return f


def schedule_and_times(kind):
    if kind == "continuous":
        return schedules.LinearGamma(-8.0, 5.0), samplers.uniform_times(6, dtype=torch.float64)
    return schedules.DiscreteSchedule.linear(), samplers.discrete_times(1000, 6)


def draw(z, gen):
    """The noise the kernel draws for a step on z (vdm_fast.randn_like: the same stream), drawn
    outside running_error's mode: an exact input of the step, as it is of ours."""
    with _disable_current_modes():
        return vdm_fast.randn_like(z, gen)


@contextlib.contextmanager
def reference_backend():
    """The samplers' steps on the reference backend (plain torch ops, which running_error follows),
    with the noise the kernels draw from the same generator (``draw``)."""
    real = samplers.reverse_step

    def step(z, m, coeffs, *, generator=None, stochastic=None, noise=None, backend=None, **kw):
        if noise is None and stochastic:
            noise, stochastic = draw(z, generator), None
        return real(z, m, coeffs, noise=noise, stochastic=stochastic, backend="reference", **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(samplers, "reverse_step", step)
        mp.setattr(samplers, "randn_like", draw)
        yield


def sampler_reference(run, z0, dtype=None):
    """running_error of the sampler run ``run(z0)`` on the reference backend: the float64 truth and
    the bound of the run at ``dtype``'s precision (z0's compute dtype by default)."""
    with reference_backend():
        return numerics.running_error(run, (z0,), dtype=dtype)


def assert_loop_matches_textbook(got, run, textbook, z0, msg=""):
    """A whole loop (float64) equals its textbook loop on the same noise: within K times the running
    error bound of the sampler's own run plus the textbook loop's own bound (each grows with the
    steps as the mode follows them)."""
    bound = sampler_reference(run, z0).bound
    want = numerics.running_error(textbook, (z0,))
    numerics.assert_within_bound(got, want.value, numerics.K * bound + want.bound, k=1, msg=msg)


@pytest.mark.parametrize("kind", ["continuous", "discrete"])
@pytest.mark.parametrize("param", PARAMS)
def test_sample_ancestral_and_ddim_loops(kind, param):
    sch, times = schedule_and_times(kind)
    model = toy_model(param)
    z0 = torch.randn(5, 2, 3, dtype=torch.float64)
    runs = {
        "ancestral": lambda z: samplers.sample_ancestral(model, z, sch, times, parameterization=param, clip=1.5,
                                                         generator=torch.Generator().manual_seed(3), backend=BACKEND),
        "ddim": lambda z: samplers.sample_ddim(model, z, sch, times, eta=0.7, parameterization=param, clip=1.5,
                                               generator=torch.Generator().manual_seed(3), backend=BACKEND),
    }
    for name, run in runs.items():
        def textbook(z):
            g = samplers.gammas(sch, times, torch.float64)
            gen = torch.Generator().manual_seed(3)
            for i in range(len(times) - 1):
                t = times[i].expand(5)
                n = draw(z, gen)  # the stream the kernel draws from
                g_t, g_s = g[i].expand(5), g[i + 1].expand(5)
                if name == "ancestral":
                    z = tb_ancestral(param, z, model(z, t), n, g_t, g_s, "posterior", 1.5)
                else:
                    z = tb_ddim(param, z, model(z, t), n, g_t, g_s, 0.7, 1.5, False)
            return z

        assert_loop_matches_textbook(run(z0), run, textbook, z0, msg=name)


def edm_heun_in_mpmath(param, z0, times, g):
    """Karras et al. 2022, Alg. 1 (Heun, no churn) in x̃ = z / alpha, sigmã = sigma / alpha on
    ``toy_model(param)``, in 50-digit arithmetic (mpmath): a truth whose own error is far below a
    float64 ulp. (Evaluated in float64 this form is worse conditioned than ours: the correction
    divides x̃' - x̂' by sigmã at the last level, 0.01 on the discrete grid, so its running error
    bound would exceed our run's by orders of magnitude.)"""
    import mpmath
    import numpy as np

    with mpmath.workdps(50):
        def mp(x):  # float64 values, exactly
            return np.vectorize(lambda v: mpmath.mpf(float(v)), otypes=[object])(x.double().numpy())

        tanh, sqrt = np.vectorize(mpmath.tanh, otypes=[object]), mpmath.sqrt
        tt = mp(times) if times.is_floating_point() else mp(times) / 1000

        def model(z, i):
            out = 0.3 * tanh(z) + 0.2 * tt[i] * z[::-1]
            return out if param != "score" else -z + 0.1 * out

        def x_hat(z, m, ab):
            a, s = sqrt(ab), sqrt(1 - ab)
            return {"eps": (z - s * m) / a, "x0": m, "v": a * z - s * m, "score": (z + s * s * m) / a}[param]

        z = mp(z0)
        abar = [1 / (1 + mpmath.exp(v)) for v in mp(g)]  # sigmoid(-gamma); gamma = -inf: 1
        for i in range(len(times) - 1):
            ab_t, ab_s = abar[i], abar[i + 1]
            st_t, st_s = sqrt((1 - ab_t) / ab_t), sqrt((1 - ab_s) / ab_s)
            x = z / sqrt(ab_t)
            d = (x - x_hat(z, model(z, i), ab_t)) / st_t
            x_next = x + (st_s - st_t) * d
            if st_s > 0:  # the correction is skipped at sigma = 0
                z_next = sqrt(ab_s) * x_next
                d2 = (x_next - x_hat(z_next, model(z_next, i + 1), ab_s)) / st_s
                x_next = x + (st_s - st_t) * (d + d2) / 2
            z = sqrt(ab_s) * x_next
        return torch.tensor(np.vectorize(float)(z).astype(np.float64))


@pytest.mark.parametrize("kind", ["continuous", "discrete"])
@pytest.mark.parametrize("param", PARAMS)
def test_sample_ode_heun_loop_is_edm_heun(kind, param):
    sch, times = schedule_and_times(kind)
    model = toy_model(param)
    z0 = torch.randn(5, 4, dtype=torch.float64)

    def run(z):
        return samplers.sample_ode(model, z, sch, times, method="heun", parameterization=param, backend=BACKEND)

    # The levels as the sampler computes them (float64; its run's bound counts their rounding).
    want = edm_heun_in_mpmath(param, z0, times, samplers.gammas(sch, times, torch.float64))
    bound = sampler_reference(run, z0).bound
    numerics.assert_within_bound(run(z0), want, bound)


@pytest.mark.parametrize("norm", ["sample", "batch"])
def test_sample_pc_loop_is_score_sde(norm):
    sch, times = schedule_and_times("continuous")
    model = toy_model("score")
    z0 = torch.randn(5, 6, dtype=torch.float64)

    def run(z):
        return samplers.sample_pc(model, z, sch, times, snr=0.2, n_corrector=2, parameterization="score", norm=norm,
                                  generator=torch.Generator().manual_seed(11), backend=BACKEND)

    def textbook(z):
        gen = torch.Generator().manual_seed(11)
        g = samplers.gammas(sch, times, torch.float64)
        for i in range(len(times) - 1):
            t = times[i].expand(5)
            ab_t, ab_s = abar(g[i]), abar(g[i + 1])
            a = ab_t / ab_s
            for _ in range(2):
                s = model(z, t)
                n = draw(z, gen)  # the stream the kernel draws from
                sn, nn_ = s.norm(dim=1), n.norm(dim=1)
                if norm == "batch":
                    sn, nn_ = sn.mean(), nn_.mean()
                step = 2 * a * (0.2 * nn_ / sn) ** 2
                z = z + col(step.expand(5), z) * s + col((2 * step).sqrt().expand(5), z) * n
            s = model(z, t)
            n = draw(z, gen)  # the stream the kernel draws from
            beta = 1 - a
            z = (2 - (1 - beta).sqrt()) * z + beta * s + beta.sqrt() * n
        return z

    assert_loop_matches_textbook(run(z0), run, textbook, z0)


def test_sample_annealed_langevin_loop_is_ncsn():
    sch, times = schedule_and_times("continuous")
    model = toy_model("score")
    z0 = torch.randn(5, 3, dtype=torch.float64)

    def run(z):
        return samplers.sample_annealed_langevin(model, z, sch, times, n_steps_each=3, epsilon=1e-4,
                                                 generator=torch.Generator().manual_seed(5), backend=BACKEND)

    def textbook(z):
        g = samplers.gammas(sch, times, torch.float64)
        sig_ve = (g / 2).exp()  # sigmã = sigma / alpha: NCSN's VE noise level of each VP level
        # NCSN Alg. 1 in VE coordinates x̃ = z / alpha_i at each level, mapped back to z after each step.
        gen = torch.Generator().manual_seed(5)
        for i in range(len(times)):
            a2 = abar(g[i])
            step_ve = 1e-4 * sig_ve[i] ** 2 / sig_ve[-1] ** 2
            for _ in range(3):
                n = draw(z, gen)  # the stream the kernel draws from
                x = z / a2.sqrt()
                x = x + step_ve / 2 * model(z, times[i].expand(5)) * a2.sqrt() + step_ve.sqrt() * n
                z = x * a2.sqrt()
        return z

    assert_loop_matches_textbook(run(z0), run, textbook, z0)


def test_sample_langevin_loop():
    sch = schedules.LinearGamma()
    model = toy_model("score")
    z0 = torch.randn(4, 3, dtype=torch.float64)
    step = torch.tensor([0.01, 0.02, 0.03, 0.04], dtype=torch.float64)

    def run(z):
        return samplers.sample_langevin(model, z, sch, 0.4, 5, step, generator=torch.Generator().manual_seed(2),
                                        backend=BACKEND)

    def textbook(z):
        gen = torch.Generator().manual_seed(2)
        for _ in range(5):
            n = draw(z, gen)  # the stream the kernel draws from
            z = z + col(step / 2, z) * model(z, torch.full((4,), 0.4)) + col(step.sqrt(), z) * n
        return z

    assert_loop_matches_textbook(run(z0), run, textbook, z0)


# --- time grids, schedules, per-sample times -----------------------------------------------------------


def test_uniform_times():
    t = samplers.uniform_times(4)
    assert t.dtype == torch.float32
    assert torch.equal(t, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))  # multiples of 1/4: exact in float32
    with pytest.raises(ValueError, match="steps"):
        samplers.uniform_times(0)


def test_discrete_gammas_clean_level():
    d = schedules.DiscreteSchedule.linear()
    g = samplers.gammas(d, torch.tensor([999, 0, -1]), torch.float64)
    assert g[2] == -math.inf and g[0] == d.gammas[999] and g[1] == d.gammas[0]


def test_per_sample_times_equal_separate_runs():
    sch = schedules.LinearGamma(-8.0, 5.0)
    z0 = torch.randn(3, 4, dtype=torch.float64)
    grids = torch.stack([torch.linspace(1, 0, 5), torch.linspace(0.9, 0.1, 5), torch.tensor([1.0, 0.7, 0.4, 0.3, 0.0])],
                        dim=1).double()  # (K+1, B)
    # a model without cross-sample terms: each row equals its own run
    plain = lambda z, t: 0.3 * torch.tanh(z) * col(t, z)  # noqa: E731
    got = samplers.sample_ddim(plain, z0, sch, grids, backend=BACKEND)
    # Both runs within the running error bound of the batched run on the reference backend (float64
    # data: K + 1, the reference's own float64 error included, as numerics.check_against_reference).
    truth = numerics.running_error(lambda z: samplers.sample_ddim(plain, z, sch, grids, backend="reference"), (z0,))
    numerics.assert_within_bound(got, truth.value, truth.bound, k=numerics.K + 1, msg="batched")
    for b in range(3):
        one = samplers.sample_ddim(plain, z0[b:b + 1], sch, grids[:, b], backend=BACKEND)
        numerics.assert_within_bound(one, truth.value[b:b + 1], truth.bound[b:b + 1], k=numerics.K + 1,
                                     msg=f"sample {b} alone")


class TinyLearnedGamma(torch.nn.Module):
    """A learned-schedule stand-in: an nn.Module whose gamma(t) has no dtype argument."""

    def __init__(self):
        super().__init__()
        self.gamma_min = torch.nn.Parameter(torch.tensor(-8.0))
        self.gamma_max = torch.nn.Parameter(torch.tensor(5.0))

    def gamma(self, t):
        return self.gamma_min + (self.gamma_max - self.gamma_min) * t


def test_learned_schedule_module():
    fixed = schedules.LinearGamma(-8.0, 5.0)
    model = toy_model("eps")
    z0 = torch.randn(4, 3)
    times = samplers.uniform_times(5)
    gen = torch.Generator().manual_seed(0)
    b = samplers.sample_ancestral(model, z0, fixed, times, generator=gen, backend=BACKEND)
    # A float64 module: exact, both schedules evaluate gamma = -8 + 13 t with the same float64
    # operations (the loops build in float64), and the runs are the same operations from there on.
    learned = TinyLearnedGamma().double()
    gen = torch.Generator().manual_seed(0)
    a = samplers.sample_ancestral(model, z0, learned, times, generator=gen, backend=BACKEND)
    assert torch.equal(a, b)
    assert learned.gamma_min.grad is None
    # A float32 module (a float32 network cannot take float64 times) is evaluated in float32, then
    # the table is built from its gammas in float64.
    learned = TinyLearnedGamma()
    assert torch.equal(samplers.gammas(learned, times), fixed.gamma(times, torch.float32).double())
    samplers.sample_ancestral(model, z0, learned, times, generator=torch.Generator().manual_seed(0), backend=BACKEND)
    assert learned.gamma_min.grad is None


def test_callback_and_progress():
    sch = schedules.LinearGamma()
    seen = []
    samplers.sample_ddim(toy_model("eps"), torch.randn(3, 2), sch, samplers.uniform_times(4), progress=True,
                         callback=lambda i, t, z: seen.append((i, float(t[0]), z.shape)), backend=BACKEND)
    assert [s[0] for s in seen] == [0, 1, 2, 3] and [s[1] for s in seen] == [0.75, 0.5, 0.25, 0.0]


@contextlib.contextmanager
def recorded_steps():
    """Every reverse_step call of the samplers, recorded as (z, model_out, coeffs, kwargs, output)."""
    calls, real = [], samplers.reverse_step

    def step(z, m, coeffs, **kw):
        out = real(z, m, coeffs, **kw)
        calls.append((z, m, coeffs, kw, out))
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(samplers, "reverse_step", step)
        yield calls


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_data(dtype):
    """Half data: coefficients in float32, model output cast to z's dtype. Checked step by step: the
    half run's coefficients are exactly the fp32 run's (the same float64 builders on the same grid,
    cast once), and every step equals the reference step on its own (half) inputs within the running error
    bound of float32 arithmetic plus the rounding of the result to half. (The whole-loop bound does
    not apply here: it follows absolute values through every step, and x̂ = (z - sigma m) / alpha,
    1/alpha up to 12, makes it exceed the result itself after six half-precision steps.)"""
    sch, times = schedule_and_times("continuous")
    model = toy_model("eps")
    z = torch.randn(6, 5)
    for run in (samplers.sample_ddim, samplers.sample_ode, samplers.sample_pc):
        with recorded_steps() as half:
            got = run(model, z.to(dtype), sch, times.float(), backend=BACKEND)
        assert got.dtype == dtype and torch.isfinite(got.float()).all()
        if run is samplers.sample_pc:
            continue  # stochastic: its in-kernel noise is not an input to compare with
        with recorded_steps() as full:
            run(model, z, sch, times.float(), backend=BACKEND)
        assert len(half) == len(full)
        for k, ((z_k, m_k, coeffs, kw, out), fp32_call) in enumerate(zip(half, full)):
            assert z_k.dtype == m_k.dtype == dtype and coeffs.dtype == torch.float32
            assert torch.equal(coeffs, fp32_call[2]), f"{run.__name__} step {k}: coefficients differ from fp32's"
            truth = numerics.running_error(
                lambda z, m, c, n: reference.reverse_step(z, m, c, clip=kw.get("clip"), noise=n),
                (z_k, m_k, coeffs, kw.get("noise")), dtype=torch.float32)
            numerics.assert_within_bound(out, truth.value, truth.bound, msg=f"{run.__name__} call {k}")


def test_tables_built_in_float64_and_cast_once():
    """The loops build gamma and the coefficient table in float64 and cast the finished table once
    to the compute dtype of the data (DESIGN.md §5). Built from float32 gammas, as before, the
    c = -expm1(gamma_s - gamma_t) of neighbouring levels carried their rounding divided by the gap
    between them: the posterior variance at t = 960 of a 1000-step linear table was 4.7e-5 relative
    off (about 390 float32 ulps). Now the float32 table is the float64 table rounded once, and its
    posterior standard deviations are within one float32 rounding of DDPM's beta-tilde computed from
    the betas in float64 (so the variances within two float32 ulps and a square of one)."""
    sch = schedules.DiscreteSchedule.linear(1000)
    times = samplers.discrete_times(1000, 1000)  # 999, ..., 0, -1: step i goes from t = 999 - i
    with recorded_steps() as calls:
        samplers.sample_ancestral(lambda z, t: torch.zeros_like(z), torch.zeros(1, 1), sch, times, backend=BACKEND)
    table = torch.stack([coeffs for _, _, coeffs, _, _ in calls])  # (1000, 6, 1)
    assert table.dtype == torch.float32
    g = samplers.gammas(sch, times)
    assert g.dtype == torch.float64
    assert torch.equal(table, samplers.ancestral_coeffs(g[:-1, None], g[1:, None]).float())

    def posterior_std(betas):  # DDPM's beta-tilde_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)
        ab = torch.cumprod(1 - betas, 0)
        ab_prev = torch.cat([torch.ones(1, dtype=betas.dtype), ab[:-1]])
        return (betas * (1 - ab_prev) / (1 - ab)).sqrt().flip(0)

    truth = numerics.running_error(posterior_std, (sch.betas,))
    numerics.assert_within_bound(table[:, 5, 0], truth.value, truth.bound, msg="posterior std, float32 table")
    i = 999 - 960
    eps32 = torch.finfo(torch.float32).eps
    rel = abs(table[i, 5, 0].double().item() ** 2 / truth.value[i].item() ** 2 - 1)
    assert rel <= 2 * eps32 + eps32**2 + numerics.K * 2 * truth.bound[i].item() / truth.value[i].item(), rel


def test_empty_batch():
    sch, times = schedule_and_times("discrete")
    z = torch.randn(0, 3)
    for run in (samplers.sample_ancestral, samplers.sample_ddim, samplers.sample_pc, samplers.sample_ode,
                samplers.sample_annealed_langevin):
        assert run(toy_model("eps"), z, sch, times[:3], parameterization="eps", backend=BACKEND).shape == (0, 3)


def test_inputs_not_modified():
    z = torch.randn(3, 2)
    z_copy = z.clone()
    samplers.sample_ancestral(toy_model("eps"), z, schedules.LinearGamma(), samplers.uniform_times(3),
                              backend=BACKEND)
    assert torch.equal(z, z_copy)


def test_bad_arguments():
    sch, model, z = schedules.LinearGamma(), toy_model("eps"), torch.randn(3, 2)
    with pytest.raises(ValueError, match="parameterization"):
        samplers.sample_ddim(model, z, sch, samplers.uniform_times(3), parameterization="mu")
    with pytest.raises(ValueError, match="times"):
        samplers.sample_ddim(model, z, sch, torch.ones(4, 5))
    with pytest.raises(ValueError, match="times"):
        samplers.sample_ddim(model, z, sch, torch.ones(1))
    with pytest.raises(ValueError, match="guidance_scale"):
        samplers.sample_ddim(model, z, sch, samplers.uniform_times(3), guidance_scale=2.0)
    with pytest.raises(ValueError, match="variance"):
        samplers.ancestral_coeffs(torch.zeros(3), torch.zeros(3) - 1, variance="large")
    with pytest.raises(ValueError, match="method"):
        samplers.sample_ode(model, z, sch, samplers.uniform_times(3), method="rk4")
    with pytest.raises(TypeError, match="gamma"):
        samplers.sample_ddim(model, z, object(), samplers.uniform_times(3))
    with pytest.raises(ValueError, match="norm"):
        samplers.sample_pc(model, z, sch, samplers.uniform_times(3), norm="max")


# --- diffusers parity -------------------------------------------------------------------------------------
# Each step is run four ways: ours and diffusers' in float32, and diffusers' own step code on float64
# data twice, with its alphas_cumprod in float64 (the table ours is built from: our truth) and with
# its float32 table (the truth of its float32 run, which differs from ours by that table: float32
# cumprod, a few ulps off). Ours is within K x the running error bound of our builder +
# reference.reverse_step at float32 of the first; diffusers' float32 step within K x the bound of
# its own step at float32 (its float32 table an exact input) of the second.


DIFFUSERS_PRED = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


def _step_inputs(seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 8, 8, generator=gen), torch.randn(4, 3, 8, 8, generator=gen)


@contextlib.contextmanager
def diffusers_tables(sched, acp, noise):
    """``sched`` with alphas_cumprod ``acp`` (and DDPM's ``one`` / DDIM's final alpha_bar from it, in
    its dtype), drawing ``noise``; restored afterwards."""
    with _disable_current_modes():  # an exact 1 (diffusers' torch.tensor(1.0)), not a rounded literal
        one = torch.ones((), dtype=acp.dtype)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sched, "alphas_cumprod", acp)
        if hasattr(sched, "one"):
            mp.setattr(sched, "one", one)
        if hasattr(sched, "final_alpha_cumprod"):
            mp.setattr(sched, "final_alpha_cumprod", one if sched.config.set_alpha_to_one else acp[0])
        mp.setattr(sys.modules[type(sched).__module__], "randn_tensor", lambda *a, dtype=None, **k: noise.to(dtype))
        yield sched


def assert_step_matches_diffusers(got, want, sched, acp64, ours, inputs, step, noise, msg=""):
    """``got`` (ours, float32) and ``want`` (diffusers' float32 step) against diffusers' step code in
    float64 (module comment above). ``ours(*inputs)``: our step on the reference backend, its inputs
    (sample, model_output, float64 gammas: each rounded once to float32, as the op's are);
    ``step(sched, sample, model_output)``: diffusers' step."""
    sample, model_output = inputs[:2]
    with diffusers_tables(sched, acp64, noise):
        truth = step(sched, sample.double(), model_output.double())
    bound = numerics.running_error(ours, inputs, dtype=torch.float32).bound
    numerics.assert_within_bound(got, truth, bound, msg=f"ours {msg}")

    def theirs(acp, sample, model_output):
        with diffusers_tables(sched, acp, noise):
            return step(sched, sample, model_output)

    theirs = numerics.running_error(theirs, (sched.alphas_cumprod, sample, model_output))  # float32: exact inputs
    numerics.assert_within_bound(want, theirs.value, theirs.bound, msg=f"diffusers' float32 step {msg}")


@pytest.mark.parametrize("param", ["eps", "x0", "v"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("inference_steps", [None, 50])
def test_ddpm_step_matches_diffusers(param, clip, variance_type, inference_steps):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear",
                                    prediction_type=DIFFUSERS_PRED[param],
                                    clip_sample=clip, variance_type=variance_type)
    ours = schedules.DiscreteSchedule(sched.betas.double())
    if inference_steps:
        sched.set_timesteps(inference_steps)
        grid = samplers.discrete_times(1000, inference_steps)
        assert torch.equal(grid[:-1], sched.timesteps)
    else:
        grid = torch.cat([torch.arange(999, -1, -1), torch.tensor([-1])])
    variance = {"fixed_small": "posterior", "fixed_large": "beta"}[variance_type]
    clip_value = 1.0 if clip else None
    for k in (0, 1, len(grid) // 2, len(grid) - 2):
        t, s = int(grid[k]), int(grid[k + 1])
        sample, model_out = _step_inputs(k)
        if param == "eps":
            model_out = model_out * 0.3
        want = sched.step(model_out, t, sample, generator=torch.Generator().manual_seed(7)).prev_sample
        noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(7))
        g64 = samplers.gammas(ours, torch.tensor([t, s]).repeat_interleave(4).reshape(2, 4), torch.float64)
        # What the sampler hands the builder: the table's gamma rounded to float32. At t = 999 on the
        # 1000-step grid that is 6e-7 of a gap of 0.02 between the levels, i.e. 3e-5 of c = 1 - SNR
        # ratio: the bound there is up to 9x the old fixed rtol 1e-5 / atol 3e-5, which held only
        # because these particular gammas happen to round by much less than their worst case.
        g = g64.float()
        coeffs = samplers.ancestral_coeffs(g[0], g[1], param, variance)
        got = vdm_fast.reverse_step(sample, model_out, coeffs, clip=clip_value, noise=noise, backend=BACKEND)
        assert_step_matches_diffusers(
            got, want, sched, ours.alphas_cumprod,
            lambda z, m, g_t, g_s: reference.reverse_step(z, m, samplers.ancestral_coeffs(g_t, g_s, param, variance),
                                                          clip=clip_value, noise=noise),
            (sample, model_out, g64[0], g64[1]),
            lambda sch, z, m: sch.step(m, t, z, generator=torch.Generator().manual_seed(7)).prev_sample, noise,
            msg=f"t={t}")


@pytest.mark.parametrize("param", ["eps", "x0", "v"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("use_clipped", [False, True])
@pytest.mark.parametrize("spacing,alpha_to_one", [("leading", True), ("trailing", True), ("leading", False)])
def test_ddim_step_matches_diffusers(param, clip, eta, use_clipped, spacing, alpha_to_one):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                                    prediction_type=DIFFUSERS_PRED[param], clip_sample=clip, timestep_spacing=spacing,
                                    set_alpha_to_one=alpha_to_one)
    sched.set_timesteps(25)
    ours = schedules.DiscreteSchedule(sched.betas.double())
    grid = samplers.discrete_times(1000, 25, spacing=spacing)
    assert torch.equal(grid[:-1], sched.timesteps)
    if not alpha_to_one:
        grid[-1] = 0  # diffusers' final alpha_bar is then alphas_cumprod[0]
    clip_value = 1.0 if clip else None
    for k in (0, 3, len(grid) - 2):
        t, s = int(grid[k]), int(grid[k + 1])
        if spacing == "trailing" and k < len(grid) - 2:
            s = t - 1000 // 25  # diffusers' prev_timestep rule
        sample, model_out = _step_inputs(k + 100)
        if param == "eps":
            model_out = model_out * 0.3
        noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(9))
        want = sched.step(model_out, t, sample, eta=eta, use_clipped_model_output=use_clipped,
                          variance_noise=noise).prev_sample
        g64 = samplers.gammas(ours, torch.tensor([t, s])[:, None].expand(2, 4), torch.float64)
        g = g64.float()  # what the sampler hands the builder: the table's gamma rounded to float32
        coeffs = samplers.ddim_coeffs(g[0], g[1], param, eta, clipped_eps=use_clipped)
        got = vdm_fast.reverse_step(sample, model_out, coeffs, clip=clip_value, noise=noise, backend=BACKEND)
        assert_step_matches_diffusers(
            got, want, sched, ours.alphas_cumprod,
            lambda z, m, g_t, g_s: reference.reverse_step(
                z, m, samplers.ddim_coeffs(g_t, g_s, param, eta, clipped_eps=use_clipped), clip=clip_value, noise=noise),
            (sample, model_out, g64[0], g64[1]),
            lambda sch, z, m: sch.step(m, t, z, eta=eta, use_clipped_model_output=use_clipped,
                                       variance_noise=noise.to(z.dtype)).prev_sample, noise, msg=f"t={t}")


# --- whole runs on a 2-D Gaussian mixture -------------------------------------------------------------------

N = 1500  # sampler runs
N_TARGET = 4000  # exact draws from the mixture
# Energy distance of N exact draws to the N_TARGET target draws: mean 1.0e-3, max 3.3e-3 over 30
# seeds; shifting the mean by 0.1 gives 1.1e-2, scaling by 1.1 gives 1.9e-2. A sampler passes
# below 5e-3 (so the test has power against errors of a few hundredths in location or scale).
ED_TOL = 5e-3


@pytest.fixture(scope="module")
def target():
    gmm = default_gmm()
    x, _ = gmm.sample(N_TARGET, torch.Generator().manual_seed(0))
    return gmm, x


def check_matches(out: torch.Tensor, gmm: GMM, x: torch.Tensor):
    out = out.double()
    assert torch.isfinite(out).all()
    ed = energy_distance(out, x)
    mean = (gmm.weights[:, None] * gmm.means).sum(0)
    # 4.5 standard errors of a mean of N draws (the mixture's x-variance is 1.2: SE 0.028)
    se = (torch.cov(x.T).diagonal() / out.shape[0]).sqrt()
    assert ((out.mean(0) - mean).abs() < 4.5 * se).all(), (out.mean(0), ed)
    # Monte Carlo, not rounding: the difference of two sample covariances (N sampler draws, N_TARGET
    # target draws) has standard error sqrt(Var((x_i - mu_i)(x_j - mu_j)) (1/N + 1/N_TARGET)), from
    # the mixture's fourth moments 0.024 for var(x), 0.014 for cov(x, y), 0.012 for var(y): 0.1 is
    # 4.2 standard errors for the widest entry, 7 to 8 for the others.
    torch.testing.assert_close(torch.cov(out.T), torch.cov(x.T), atol=0.1, rtol=0)
    assert ed < ED_TOL, ed


def test_energy_distance_has_power(target):
    gmm, x = target
    y, _ = gmm.sample(N, torch.Generator().manual_seed(1))
    assert energy_distance(y, x) < ED_TOL
    assert energy_distance(y + torch.tensor([0.1, 0.0], dtype=torch.float64), x) > ED_TOL
    assert energy_distance(y * 1.1, x) > ED_TOL


CONT = schedules.LinearGamma(-10.0, 6.0)


def _from_z0(z, sch=CONT):
    """z_0 / alpha_0: at gamma(0) = -10, sigma_0 / alpha_0 = 0.007, far below the mixture's scale."""
    return z / torch.sigmoid(-sch.gamma(torch.zeros(1))).sqrt()


def _z(seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(N, 2, generator=gen), gen


def check_sampler(target, sampler, schedule, times, parameterization=None, *, noise=True, from_z0=False, **kw):
    """``sampler`` run from z ~ N(0, I) (seed 1) with the mixture's exact model in
    ``parameterization`` (the model's and sampler's default when None), its noise drawn from the
    generator z came from when ``noise``, matches the target (check_matches; ``from_z0``: the
    draws are z_0, rescaled by 1/alpha_0 first)."""
    gmm, x = target
    z, gen = _z()
    if parameterization is None:
        model = gmm.model(schedule)
    else:
        model = gmm.model(schedule, parameterization)
        kw["parameterization"] = parameterization
    if noise:
        kw["generator"] = gen
    out = sampler(model, z, schedule, times, backend=BACKEND, **kw)
    check_matches(_from_z0(out) if from_z0 else out, gmm, x)


@pytest.mark.parametrize("param,variance", [("eps", "posterior"), ("v", "beta")])
def test_gmm_ancestral_continuous(target, param, variance):
    check_sampler(target, samplers.sample_ancestral, CONT, samplers.uniform_times(100), param, variance=variance,
                  from_z0=True)


def test_gmm_ancestral_discrete(target):
    check_sampler(target, samplers.sample_ancestral, schedules.DiscreteSchedule.cosine(),
                  samplers.discrete_times(1000, 100), "x0")


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_gmm_ddim(target, eta):
    check_sampler(target, samplers.sample_ddim, schedules.DiscreteSchedule.linear(), samplers.discrete_times(1000, 50),
                  eta=eta)


def test_gmm_annealed_langevin(target):
    sch = schedules.LinearGamma(-8.0, 6.0)  # uniform in gamma: geometric sigmã from 20 to 0.018
    check_sampler(target, samplers.sample_annealed_langevin, sch, samplers.uniform_times(30), "score",
                  n_steps_each=20, denoise=True)


def test_gmm_pc_batch_norms(target):
    check_sampler(target, samplers.sample_pc, CONT, samplers.uniform_times(100), norm="batch", from_z0=True)


def test_gmm_pc_per_sample_norms(target):
    # Per-sample norms need enough dimensions to concentrate: 16 independent 2-D pairs per sample.
    gmm, x = target
    base = gmm.model(CONT)

    def model(z, t):
        n, p, _ = z.shape
        return base(z.reshape(n * p, 2), t.repeat_interleave(p)).reshape(z.shape)

    gen = torch.Generator().manual_seed(1)
    z = torch.randn(N // 15, 16, 2, generator=gen)
    out = samplers.sample_pc(model, z, CONT, samplers.uniform_times(100), generator=gen, backend=BACKEND)
    check_matches(_from_z0(out).reshape(-1, 2)[:N], gmm, x)


@pytest.mark.parametrize("method,steps", [("euler", 100), ("heun", 25)])
def test_gmm_ode(target, method, steps):
    check_sampler(target, samplers.sample_ode, CONT, samplers.uniform_times(steps), "score", noise=False,
                  method=method, from_z0=True)


def test_gmm_ode_heun_discrete(target):
    check_sampler(target, samplers.sample_ode, schedules.DiscreteSchedule.linear(), samplers.discrete_times(1000, 25),
                  "v", noise=False)


# --- no host-device synchronisation ----------------------------------------------------------------------------

def test_sync_trap_catches():
    with SyncTrap() as trap:
        x = torch.ones(2)
        bool(x[0])
        x.sum().item()
        x.nonzero()
    assert trap.calls == ["__bool__", "item", "nonzero"]


def _sync_free_model():
    return lambda z, t: 0.3 * torch.tanh(z) * col(t, z)


RUNS = {
    "ancestral": lambda m, z, s, t: samplers.sample_ancestral(m, z, s, t, clip=1.0, backend=BACKEND),
    "ancestral_beta": lambda m, z, s, t: samplers.sample_ancestral(m, z, s, t, variance="beta", backend=BACKEND),
    "ddim": lambda m, z, s, t: samplers.sample_ddim(m, z, s, t, clip=1.0, backend=BACKEND),
    "ddim_eta": lambda m, z, s, t: samplers.sample_ddim(m, z, s, t, eta=0.5, backend=BACKEND),
    "annealed": lambda m, z, s, t: samplers.sample_annealed_langevin(m, z, s, t, n_steps_each=2, denoise=True,
                                                                     parameterization="eps", backend=BACKEND),
    "langevin": lambda m, z, s, t: samplers.sample_langevin(m, z, s, t[1], 3, 0.01, parameterization="eps",
                                                            backend=BACKEND),
    "pc": lambda m, z, s, t: samplers.sample_pc(m, z, s, t, backend=BACKEND),
    "pc_batch": lambda m, z, s, t: samplers.sample_pc(m, z, s, t, norm="batch", backend=BACKEND),
    "ode_euler": lambda m, z, s, t: samplers.sample_ode(m, z, s, t, method="euler", backend=BACKEND),
    "ode_heun": lambda m, z, s, t: samplers.sample_ode(m, z, s, t, method="heun", backend=BACKEND),
    "euler_ancestral": lambda m, z, s, t: samplers.sample_euler_ancestral(m, z, s, t, backend=BACKEND),
    "dpmpp_2m": lambda m, z, s, t: samplers.sample_dpmpp_2m(m, z, s, t, clip=1.0, backend=BACKEND),
    "unipc": lambda m, z, s, t: samplers.sample_unipc(m, z, s, t, backend=BACKEND),
}


@pytest.mark.parametrize("name", sorted(RUNS))
@pytest.mark.parametrize("kind", ["continuous", "discrete"])
def test_no_host_sync(name, kind):
    sch, times = schedule_and_times(kind)
    if kind == "discrete" and name == "langevin":
        times = times[:-1]
    z = torch.randn(4, 3)
    vdm_fast.reverse_step(z, z, torch.zeros(6, 4), noise=z, backend=BACKEND)  # warm the backend choice
    with SyncTrap() as trap:
        RUNS[name](_sync_free_model(), z, sch, times)
    # the one documented exception: Heun on an integer grid reads the last timestep once, before the loop
    allowed = 2 if (name == "ode_heun" and kind == "discrete") else 0
    assert len(trap.calls) <= allowed, trap.calls


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(RUNS))
def test_no_cuda_sync_inside_loop(name):
    """On a GPU, torch's own sync detector: steps 1..K-1 run under set_sync_debug_mode("error")
    (switched on by the callback after step 0, so set-up copies before the loop are allowed)."""
    sch, times = schedule_and_times("continuous")
    z = torch.randn(4, 3, device="cuda")

    def arm(i, t, zz):
        if i == 0:
            torch.cuda.set_sync_debug_mode("error")

    def model(zz, t):
        return 0.3 * torch.tanh(zz) * col(t, zz)

    runs = {
        "ancestral": lambda: samplers.sample_ancestral(model, z, sch, times, clip=1.0, callback=arm),
        "ancestral_beta": lambda: samplers.sample_ancestral(model, z, sch, times, variance="beta", callback=arm),
        "ddim": lambda: samplers.sample_ddim(model, z, sch, times, clip=1.0, callback=arm),
        "ddim_eta": lambda: samplers.sample_ddim(model, z, sch, times, eta=0.5, callback=arm),
        "annealed": lambda: samplers.sample_annealed_langevin(model, z, sch, times, n_steps_each=2,
                                                              parameterization="eps", callback=arm),
        "langevin": lambda: samplers.sample_langevin(model, z, sch, 0.5, 3, 0.01, parameterization="eps", callback=arm),
        "pc": lambda: samplers.sample_pc(model, z, sch, times, callback=arm),
        "pc_batch": lambda: samplers.sample_pc(model, z, sch, times, norm="batch", callback=arm),
        "ode_euler": lambda: samplers.sample_ode(model, z, sch, times, method="euler", callback=arm),
        "ode_heun": lambda: samplers.sample_ode(model, z, sch, times, method="heun", callback=arm),
        "euler_ancestral": lambda: samplers.sample_euler_ancestral(model, z, sch, times, callback=arm),
        "dpmpp_2m": lambda: samplers.sample_dpmpp_2m(model, z, sch, times, clip=1.0, callback=arm),
        "unipc": lambda: samplers.sample_unipc(model, z, sch, times, callback=arm),
    }
    try:
        out = runs[name]()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("eta, error", [(1.5, ValueError), (-0.1, ValueError), (torch.tensor([0.5, 1.2]), RuntimeError)],
                         ids=["above_one", "negative", "one_sample_above"])
def test_ddim_eta_outside_unit_interval_raises(eta, error):
    """Beyond 1 the step's variance would exceed the level's (the coefficient table holds NaN, as
    diffusers' does): the sampler refuses it rather than return NaN or a clamped other step."""
    with pytest.raises(error, match="eta"):  # a tensor eta is checked on its device (no host sync)
        samplers.sample_ddim(toy_model("eps"), torch.randn(2, 3), schedules.LinearGamma(), samplers.uniform_times(3),
                             eta=eta, backend=BACKEND)
