"""Samplers: coefficient builders + reverse_step against textbook updates written out here,
diffusers parity, whole runs on a 2-D Gaussian mixture, and no host synchronisation in the loops."""

from __future__ import annotations

import math

import pytest
import torch

import vdm_fast
from vdm_fast import samplers, schedules
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
    out = vdm_fast.reverse_step(z.to(dtype), m.to(dtype), coeffs, noise=noise.to(dtype), backend=BACKEND, **kw)
    return out.double()


def tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)


# --- one step: builders + op == textbook ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("param", PARAMS)
@pytest.mark.parametrize("variance", ["posterior", "beta"])
@pytest.mark.parametrize("clip", [None, 1.0])
def test_ancestral_step_matches_textbook(dtype, param, variance, clip):
    z, m, n, g_t, g_s = random_case()
    if param in ("eps", "score"):
        m = m * 0.3  # keep x̂ of order 1 so the fp32 comparison is about the step, not 1/alpha
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    coeffs = samplers.ancestral_coeffs(g_t.to(cdt), g_s.to(cdt), param, variance)
    assert coeffs.shape == (6, 7) and coeffs.dtype == cdt
    got = op(z, m, coeffs, dtype, clip=clip, noise=n)
    zd, md, nd = (x.to(dtype).double() for x in (z, m, n))
    want = tb_ancestral(param, zd, md, nd, g_t, g_s, variance, clip)
    torch.testing.assert_close(got, want, **tol(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("param", PARAMS)
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("clip,clipped_eps", [(None, False), (1.0, False), (1.0, True)])
def test_ddim_step_matches_textbook(dtype, param, eta, clip, clipped_eps):
    z, m, n, g_t, g_s = random_case(seed=1)
    if param in ("eps", "score"):
        m = m * 0.3
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    coeffs = samplers.ddim_coeffs(g_t.to(cdt), g_s.to(cdt), param, eta, clipped_eps)
    got = op(z, m, coeffs, dtype, clip=clip, noise=n)
    want = tb_ddim(param, z.to(dtype).double(), m.to(dtype).double(), n.to(dtype).double(), g_t, g_s, eta, clip,
                   clipped_eps)
    torch.testing.assert_close(got, want, **tol(dtype))


def test_ddim_eta_per_sample():
    z, m, n, g_t, g_s = random_case(seed=2)
    eta = torch.linspace(0, 1, 7, dtype=torch.float64)
    got = op(z, m, samplers.ddim_coeffs(g_t, g_s, "eps", eta), torch.float64, noise=n)
    for b in range(7):
        one = slice(b, b + 1)
        want = tb_ddim("eps", z[one], m[one], n[one], g_t[one], g_s[one], eta[b].item(), None, False)
        torch.testing.assert_close(got[b:b + 1], want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("param", PARAMS)
def test_langevin_step_matches_textbook(dtype, param):
    z, m, n, g_t, _ = random_case(seed=3)
    step = torch.rand(7, dtype=torch.float64) * 0.1
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    got = op(z, m, samplers.langevin_coeffs(g_t.to(cdt), step.to(cdt), param), dtype, noise=n)
    zd, md, nd = (x.to(dtype).double() for x in (z, m, n))
    want = zd + col(step / 2, z) * tb_score(param, zd, md, abar(g_t)) + col(step.sqrt(), z) * nd
    torch.testing.assert_close(got, want, **tol(dtype))


@pytest.mark.parametrize("param", PARAMS)
def test_pc_steps_match_score_sde(param):
    z, m, n, g_t, g_s = random_case(seed=4)
    g_s[-1] = g_t[-1] - 1.0  # the clean-level case is tested on its own below
    ab_t, ab_s = abar(g_t), abar(g_s)
    beta = 1 - ab_t / ab_s
    score = tb_score(param, z, m, ab_t)
    # predictor (score_sde ReverseDiffusionPredictor, VP discretisation)
    got = op(z, m, samplers.reverse_diffusion_coeffs(g_t, g_s, param), torch.float64, noise=n)
    want = col(2 - (1 - beta).sqrt(), z) * z + col(beta, z) * score + col(beta.sqrt(), z) * n
    torch.testing.assert_close(got, want)
    # corrector (score_sde LangevinCorrector, per-sample norms)
    snr = 0.16
    s_norm = score.reshape(7, -1).norm(dim=1)
    n_norm = n.reshape(7, -1).norm(dim=1)
    step = 2 * (1 - beta) * (snr * n_norm / s_norm) ** 2
    got = op(z, m, samplers.langevin_corrector_coeffs(g_t, g_s, s_norm, n_norm, snr, param), torch.float64, noise=n)
    want = z + col(step, z) * score + col((2 * step).sqrt(), z) * n
    torch.testing.assert_close(got, want)


def test_predictor_to_clean_level_is_tweedie():
    z, m, n, g_t, g_s = random_case(seed=5)
    got = op(z, m, samplers.reverse_diffusion_coeffs(g_t, g_s, "eps"), torch.float64, noise=n)
    torch.testing.assert_close(got[-1], tb_xhat("eps", z, m, abar(g_t))[-1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("param", PARAMS)
def test_ode_euler_step_is_edm_euler(dtype, param):
    z, m, n, g_t, g_s = random_case(seed=6)
    if param in ("eps", "score"):
        m = m * 0.3
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    got = op(z, m, samplers.ode_euler_coeffs(g_t.to(cdt), g_s.to(cdt), param), dtype, noise=n)
    zd, md = z.to(dtype).double(), m.to(dtype).double()
    ab_t, ab_s = abar(g_t), abar(g_s)
    # Karras et al. 2022, Alg. 1 in x̃ = z / alpha, sigmã = sigma / alpha: d = (x̃ - x̂) / sigmã
    st_t, st_s = ((1 - ab_t) / ab_t).sqrt(), ((1 - ab_s) / ab_s).sqrt()
    xt = zd / col(ab_t.sqrt(), z)
    d = (xt - tb_xhat(param, zd, md, ab_t)) / col(st_t, z)
    want = col(ab_s.sqrt(), z) * (xt + col(st_s - st_t, z) * d)
    torch.testing.assert_close(got, want, **tol(dtype))


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


@pytest.mark.parametrize("kind", ["continuous", "discrete"])
@pytest.mark.parametrize("param", PARAMS)
def test_sample_ancestral_and_ddim_loops(kind, param):
    sch, times = schedule_and_times(kind)
    model = toy_model(param)
    z0 = torch.randn(5, 2, 3, dtype=torch.float64)
    g = samplers.gammas(sch, times, torch.float64)
    for name in ("ancestral", "ddim"):
        gen = torch.Generator().manual_seed(3)
        if name == "ancestral":
            got = samplers.sample_ancestral(model, z0, sch, times, parameterization=param, clip=1.5, generator=gen,
                                            backend=BACKEND)
        else:
            got = samplers.sample_ddim(model, z0, sch, times, eta=0.7, parameterization=param, clip=1.5,
                                       generator=gen, backend=BACKEND)
        gen = torch.Generator().manual_seed(3)
        z = z0.clone()
        for i in range(len(times) - 1):
            t = times[i].expand(5)
            n = vdm_fast.randn_like(z, gen)  # the stream the kernel draws from
            g_t, g_s = g[i].expand(5), g[i + 1].expand(5)
            if name == "ancestral":
                z = tb_ancestral(param, z, model(z, t), n, g_t, g_s, "posterior", 1.5)
            else:
                z = tb_ddim(param, z, model(z, t), n, g_t, g_s, 0.7, 1.5, False)
        torch.testing.assert_close(got, z, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", ["continuous", "discrete"])
@pytest.mark.parametrize("param", PARAMS)
def test_sample_ode_heun_loop_is_edm_heun(kind, param):
    sch, times = schedule_and_times(kind)
    model = toy_model(param)
    z0 = torch.randn(5, 4, dtype=torch.float64)
    got = samplers.sample_ode(model, z0, sch, times, method="heun", parameterization=param, backend=BACKEND)
    g = samplers.gammas(sch, times, torch.float64)
    z = z0.clone()
    for i in range(len(times) - 1):
        ab_t, ab_s = abar(g[i]), abar(g[i + 1])
        st_t, st_s = ((1 - ab_t) / ab_t).sqrt(), ((1 - ab_s) / ab_s).sqrt()
        x = z / ab_t.sqrt()
        d = (x - tb_xhat(param, z, model(z, times[i].expand(5)), ab_t.expand(5))) / st_t
        x_next = x + (st_s - st_t) * d
        if st_s > 0:  # Karras et al. Alg. 1: the correction is skipped at sigma = 0
            z_next = ab_s.sqrt() * x_next
            d2 = (x_next - tb_xhat(param, z_next, model(z_next, times[i + 1].expand(5)), ab_s.expand(5))) / st_s
            x_next = x + (st_s - st_t) * (d + d2) / 2
        z = ab_s.sqrt() * x_next
    torch.testing.assert_close(got, z, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("norm", ["sample", "batch"])
def test_sample_pc_loop_is_score_sde(norm):
    sch, times = schedule_and_times("continuous")
    model = toy_model("score")
    z0 = torch.randn(5, 6, dtype=torch.float64)
    gen = torch.Generator().manual_seed(11)
    got = samplers.sample_pc(model, z0, sch, times, snr=0.2, n_corrector=2, parameterization="score", norm=norm,
                             generator=gen, backend=BACKEND)
    gen = torch.Generator().manual_seed(11)
    g = samplers.gammas(sch, times, torch.float64)
    z = z0.clone()
    for i in range(len(times) - 1):
        t = times[i].expand(5)
        ab_t, ab_s = abar(g[i]), abar(g[i + 1])
        a = ab_t / ab_s
        for _ in range(2):
            s = model(z, t)
            n = vdm_fast.randn_like(z, gen)  # the stream the kernel draws from
            sn, nn_ = s.norm(dim=1), n.norm(dim=1)
            if norm == "batch":
                sn, nn_ = sn.mean(), nn_.mean()
            step = 2 * a * (0.2 * nn_ / sn) ** 2
            z = z + col(step.expand(5), z) * s + col((2 * step).sqrt().expand(5), z) * n
        s = model(z, t)
        n = vdm_fast.randn_like(z, gen)  # the stream the kernel draws from
        beta = 1 - a
        z = (2 - (1 - beta).sqrt()) * z + beta * s + beta.sqrt() * n
    torch.testing.assert_close(got, z, rtol=1e-9, atol=1e-9)


def test_sample_annealed_langevin_loop_is_ncsn():
    sch, times = schedule_and_times("continuous")
    model = toy_model("score")
    z0 = torch.randn(5, 3, dtype=torch.float64)
    gen = torch.Generator().manual_seed(5)
    got = samplers.sample_annealed_langevin(model, z0, sch, times, n_steps_each=3, epsilon=1e-4,
                                            generator=gen, backend=BACKEND)
    g = samplers.gammas(sch, times, torch.float64)
    sig_ve = (g / 2).exp()  # sigmã = sigma / alpha: NCSN's VE noise level of each VP level
    # NCSN Alg. 1 in VE coordinates x̃ = z / alpha_i at each level, mapped back to z after each step.
    z = z0.clone()
    gen = torch.Generator().manual_seed(5)
    for i in range(len(times)):
        a2 = abar(g[i])
        step_ve = 1e-4 * sig_ve[i] ** 2 / sig_ve[-1] ** 2
        for _ in range(3):
            n = vdm_fast.randn_like(z, gen)  # the stream the kernel draws from
            x = z / a2.sqrt()
            x = x + step_ve / 2 * model(z, times[i].expand(5)) * a2.sqrt() + step_ve.sqrt() * n
            z = x * a2.sqrt()
    torch.testing.assert_close(got, z, rtol=1e-9, atol=1e-9)


def test_sample_langevin_loop():
    sch = schedules.LinearGamma()
    model = toy_model("score")
    z0 = torch.randn(4, 3, dtype=torch.float64)
    step = torch.tensor([0.01, 0.02, 0.03, 0.04], dtype=torch.float64)
    gen = torch.Generator().manual_seed(2)
    got = samplers.sample_langevin(model, z0, sch, 0.4, 5, step, generator=gen, backend=BACKEND)
    gen = torch.Generator().manual_seed(2)
    z = z0.clone()
    for _ in range(5):
        n = vdm_fast.randn_like(z, gen)  # the stream the kernel draws from
        z = z + col(step / 2, z) * model(z, torch.full((4,), 0.4)) + col(step.sqrt(), z) * n
    torch.testing.assert_close(got, z, rtol=1e-9, atol=1e-9)


# --- time grids, schedules, per-sample times -----------------------------------------------------------


def test_uniform_times():
    t = samplers.uniform_times(4)
    assert t.dtype == torch.float32
    torch.testing.assert_close(t, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
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
    for b in range(3):
        one = samplers.sample_ddim(plain, z0[b:b + 1], sch, grids[:, b], backend=BACKEND)
        torch.testing.assert_close(got[b:b + 1], one)


class TinyLearnedGamma(torch.nn.Module):
    """A learned-schedule stand-in: an nn.Module whose gamma(t) has no dtype argument."""

    def __init__(self):
        super().__init__()
        self.gamma_min = torch.nn.Parameter(torch.tensor(-8.0))
        self.gamma_max = torch.nn.Parameter(torch.tensor(5.0))

    def gamma(self, t):
        return self.gamma_min + (self.gamma_max - self.gamma_min) * t


def test_learned_schedule_module():
    learned, fixed = TinyLearnedGamma(), schedules.LinearGamma(-8.0, 5.0)
    model = toy_model("eps")
    z0 = torch.randn(4, 3)
    gen = torch.Generator().manual_seed(0)
    a = samplers.sample_ancestral(model, z0, learned, samplers.uniform_times(5), generator=gen, backend=BACKEND)
    gen = torch.Generator().manual_seed(0)
    b = samplers.sample_ancestral(model, z0, fixed, samplers.uniform_times(5), generator=gen, backend=BACKEND)
    torch.testing.assert_close(a, b)
    assert learned.gamma_min.grad is None


def test_callback_and_progress():
    sch = schedules.LinearGamma()
    seen = []
    samplers.sample_ddim(toy_model("eps"), torch.randn(3, 2), sch, samplers.uniform_times(4), progress=True,
                         callback=lambda i, t, z: seen.append((i, float(t[0]), z.shape)), backend=BACKEND)
    assert [s[0] for s in seen] == [0, 1, 2, 3] and [s[1] for s in seen] == [0.75, 0.5, 0.25, 0.0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_data(dtype):
    """Half data: coefficients in float32, model output cast to z's dtype, result near the fp32 run."""
    sch, times = schedule_and_times("continuous")
    model = toy_model("eps")
    z = torch.randn(6, 5)
    for run in (samplers.sample_ddim, samplers.sample_ode, samplers.sample_pc):
        want = run(model, z, sch, times.float(), backend=BACKEND) if run is not samplers.sample_pc else None
        got = run(model, z.to(dtype), sch, times.float(), backend=BACKEND)
        assert got.dtype == dtype and torch.isfinite(got.float()).all()
        if want is not None:
            torch.testing.assert_close(got.float(), want, rtol=0.05, atol=0.05)


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


DIFFUSERS_PRED = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


def _step_inputs(seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 8, 8, generator=gen), torch.randn(4, 3, 8, 8, generator=gen)


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
    for k in (0, 1, len(grid) // 2, len(grid) - 2):
        t, s = int(grid[k]), int(grid[k + 1])
        sample, model_out = _step_inputs(k)
        if param == "eps":
            model_out = model_out * 0.3
        want = sched.step(model_out, t, sample, generator=torch.Generator().manual_seed(7)).prev_sample
        noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(7))
        g = samplers.gammas(ours, torch.tensor([t, s]).repeat_interleave(4).reshape(2, 4))
        coeffs = samplers.ancestral_coeffs(g[0], g[1], param, variance)
        got = vdm_fast.reverse_step(sample, model_out, coeffs, clip=1.0 if clip else None, noise=noise, backend=BACKEND)
        # fp32 on both sides; diffusers rounds alphas_cumprod to fp32 first, we round gamma
        torch.testing.assert_close(got, want, rtol=1e-5, atol=3e-5)


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
        g = samplers.gammas(ours, torch.tensor([t, s])[:, None].expand(2, 4))
        coeffs = samplers.ddim_coeffs(g[0], g[1], param, eta, clipped_eps=use_clipped)
        got = vdm_fast.reverse_step(sample, model_out, coeffs, clip=1.0 if clip else None, noise=noise, backend=BACKEND)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=3e-5)


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


@pytest.mark.parametrize("param,variance", [("eps", "posterior"), ("v", "beta")])
def test_gmm_ancestral_continuous(target, param, variance):
    gmm, x = target
    z, gen = _z()
    out = samplers.sample_ancestral(gmm.model(CONT, param), z, CONT, samplers.uniform_times(100),
                                    parameterization=param,
                                    variance=variance, generator=gen, backend=BACKEND)
    check_matches(_from_z0(out), gmm, x)


def test_gmm_ancestral_discrete(target):
    gmm, x = target
    d = schedules.DiscreteSchedule.cosine()
    z, gen = _z()
    out = samplers.sample_ancestral(gmm.model(d, "x0"), z, d, samplers.discrete_times(1000, 100), parameterization="x0",
                                    generator=gen, backend=BACKEND)
    check_matches(out, gmm, x)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_gmm_ddim(target, eta):
    gmm, x = target
    d = schedules.DiscreteSchedule.linear()
    z, gen = _z()
    out = samplers.sample_ddim(gmm.model(d), z, d, samplers.discrete_times(1000, 50), eta=eta, generator=gen,
                               backend=BACKEND)
    check_matches(out, gmm, x)


def test_gmm_annealed_langevin(target):
    gmm, x = target
    sch = schedules.LinearGamma(-8.0, 6.0)  # uniform in gamma: geometric sigmã from 20 to 0.018
    z, gen = _z()
    out = samplers.sample_annealed_langevin(gmm.model(sch, "score"), z, sch, samplers.uniform_times(30),
                                            n_steps_each=20, denoise=True, generator=gen, backend=BACKEND)
    check_matches(out, gmm, x)


def test_gmm_pc_batch_norms(target):
    gmm, x = target
    z, gen = _z()
    out = samplers.sample_pc(gmm.model(CONT), z, CONT, samplers.uniform_times(100), norm="batch", generator=gen,
                             backend=BACKEND)
    check_matches(_from_z0(out), gmm, x)


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
    gmm, x = target
    z, _ = _z()
    out = samplers.sample_ode(gmm.model(CONT, "score"), z, CONT, samplers.uniform_times(steps), method=method,
                              parameterization="score", backend=BACKEND)
    check_matches(_from_z0(out), gmm, x)


def test_gmm_ode_heun_discrete(target):
    gmm, x = target
    d = schedules.DiscreteSchedule.linear()
    z, _ = _z()
    out = samplers.sample_ode(gmm.model(d, "v"), z, d, samplers.discrete_times(1000, 25), parameterization="v",
                              backend=BACKEND)
    check_matches(out, gmm, x)


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
    }
    try:
        out = runs[name]()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(out).all()
