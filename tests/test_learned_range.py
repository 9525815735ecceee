"""Learned-range variances (improved-diffusion's learn_sigma / ModelVarType.LEARNED_RANGE): the
ancestral sampler, calc_bpd_loop and the hybrid loss L_simple + L_vlb.

The oracle is a short float64 transcription of their GaussianDiffusion (alpha_bar-form tables,
p_mean_variance, p_sample_loop, _vb_terms_bpd, training_losses with RESCALED_MSE, calc_bpd_loop),
written here from their published semantics. Both sides run under the running error bound
(tests/numerics.py) on the same inputs (ours on the reference backend, with the noise the kernels
draw), and their bounds add. If improved_diffusion itself is importable, the same comparisons run
against it (skipped otherwise).
"""

import contextlib
import math

import pytest
import torch
from torch.utils._python_dispatch import _disable_current_modes

import numerics
from improved_diffusion_math import discretized_gaussian_log_likelihood, mean_flat, normal_kl
import vdm_fast
from vdm_fast import bpd, samplers
from vdm_fast.coefficients import discrete_times
from vdm_fast.guidance import classifier_free_pair
from vdm_fast.respace import respace, space_timesteps
from vdm_fast.schedules import DiscreteSchedule, LinearGamma

pytestmark = pytest.mark.filterwarnings("ignore:.*no fused kernel:RuntimeWarning")

F64 = torch.float64
LN2 = math.log(2.0)


# --- improved-diffusion, transcribed (float64) ----------------------------------------------------------


class Theirs:
    """GaussianDiffusion(EPSILON, LEARNED_RANGE) on ``betas``."""

    def __init__(self, betas):
        self.betas, self.T = betas, betas.numel()
        self.ac = torch.cumprod(1 - betas, 0)
        acp = torch.cat([torch.ones(1, dtype=F64), self.ac[:-1]])
        self.post_var = betas * (1 - acp) / (1 - self.ac)
        self.post_lv = torch.log(torch.cat([self.post_var[1:2], self.post_var[1:]]))
        self.coef1 = betas * acp.sqrt() / (1 - self.ac)
        self.coef2 = (1 - acp) * (1 - betas).sqrt() / (1 - self.ac)

    @staticmethod
    def ex(a, t, x):
        return a[t].reshape((-1,) + (1,) * (x.dim() - 1))

    def q_sample(self, x0, t, noise):
        return self.ex(self.ac.sqrt(), t, x0) * x0 + self.ex((1 - self.ac).sqrt(), t, x0) * noise

    def p_mean_variance(self, out, x, t, clip):
        eps, v = out.split(x.shape[1], 1)
        frac = (v + 1) / 2
        log_var = frac * self.ex(torch.log(self.betas), t, x) + (1 - frac) * self.ex(self.post_lv, t, x)
        x0 = self.ex((1 / self.ac).sqrt(), t, x) * x - self.ex((1 / self.ac - 1).sqrt(), t, x) * eps
        if clip:
            x0 = x0.clamp(-1, 1)
        return self.ex(self.coef1, t, x) * x0 + self.ex(self.coef2, t, x) * x, log_var, x0

    def p_sample_loop(self, model, x, noises, clip):
        for i, t in enumerate(reversed(range(self.T))):
            tb = torch.full((x.shape[0],), t)
            mean, log_var, _ = self.p_mean_variance(model(x, tb), x, tb, clip)
            x = mean + (t != 0) * torch.exp(0.5 * log_var) * noises[i]
        return x

    def vb_terms_bpd(self, out, x0, x_t, t, clip):
        true_mean = self.ex(self.coef1, t, x0) * x0 + self.ex(self.coef2, t, x0) * x_t
        mean, log_var, x0_hat = self.p_mean_variance(out, x_t, t, clip)
        kl = mean_flat(normal_kl(true_mean, self.ex(self.post_lv, t, x0), mean, log_var)) / LN2
        nll = -mean_flat(discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var)) / LN2
        return torch.where(t == 0, nll, kl), x0_hat

    def training_losses(self, model, x0, t, noise):  # LossType.RESCALED_MSE
        x_t = self.q_sample(x0, t, noise)
        out = model(x_t, t)
        eps, v = out.split(x0.shape[1], 1)
        frozen = torch.cat([eps.detach(), v], 1)
        vb = self.vb_terms_bpd(frozen, x0, x_t, t, clip=False)[0] * (self.T / 1000.0)
        mse = mean_flat((noise - eps) ** 2)
        return {"loss": mse + vb, "mse": mse, "vb": vb}

    def calc_bpd_loop(self, model, x0, noises, clip):
        vb, xstart_mse, mse = [], [], []
        for i, t in enumerate(reversed(range(self.T))):
            tb = torch.full((x0.shape[0],), t)
            x_t = self.q_sample(x0, tb, noises[i])
            out, x0_hat = self.vb_terms_bpd(model(x_t, tb), x0, x_t, tb, clip)
            vb.append(out)
            xstart_mse.append(mean_flat((x0_hat - x0) ** 2))
            eps = (self.ex((1 / self.ac).sqrt(), tb, x0) * x_t - x0_hat) / self.ex((1 / self.ac - 1).sqrt(), tb, x0)
            mse.append(mean_flat((eps - noises[i]) ** 2))
        vb, xstart_mse, mse = (torch.stack(v, 1) for v in (vb, xstart_mse, mse))
        t_last = torch.full((x0.shape[0],), self.T - 1)
        q_mean, q_log_var = self.q_sample(x0, t_last, torch.zeros_like(x0)), self.ex(torch.log(1 - self.ac), t_last, x0)
        prior = mean_flat(normal_kl(q_mean, q_log_var, torch.zeros(()), torch.zeros(()))) / LN2
        return {"total_bpd": vb.sum(1) + prior, "prior_bpd": prior, "vb": vb, "xstart_mse": xstart_mse, "mse": mse}


class LearnedNet(torch.nn.Module):
    """A small random network of (z, t) with 2C output channels: eps, then v in (-1, 1)."""

    def __init__(self, shape, T):
        super().__init__()
        D = math.prod(shape)
        g = torch.Generator().manual_seed(11)
        self.w = torch.randn(D, 2 * D, generator=g, dtype=F64) / math.sqrt(D)
        self.b = torch.randn(2 * D, generator=g, dtype=F64)
        self.shape, self.T = shape, T

    def forward(self, z, t):
        h = torch.tanh(z.flatten(1) @ self.w + self.b * (t.to(F64)[:, None] / self.T))
        eps = 0.8 * z + 0.5 * h[:, :h.shape[1] // 2].reshape(z.shape)
        return torch.cat([eps, h[:, h.shape[1] // 2:].reshape(z.shape)], 1)


def _ddpm_data(B=4, shape=(2, 3, 3), seed=0):
    k = torch.randint(0, 256, (B,) + shape, generator=torch.Generator().manual_seed(seed))
    k.view(-1)[:4] = torch.tensor([0, 255, 0, 255])  # both open-ended edge bins
    return bpd.to_ddpm_grid(k, F64)


def _draw(z, gen):
    with _disable_current_modes():  # an exact input, drawn outside running_error's mode
        return vdm_fast.randn_like(z, gen)


@contextlib.contextmanager
def _reference_backend():
    """The sampler's steps on the reference backend (followed by running_error), noise from ``_draw``."""
    real = samplers.reverse_step

    def step(z, m, coeffs, *, backend=None, **kw):
        return real(z, m, coeffs, backend="reference", **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(samplers, "reverse_step", step)
        mp.setattr(samplers, "randn_like", _draw)
        yield


# --- the sampler ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("clip", [True, False])
def test_sample_ancestral_learned_range_matches_p_sample_loop(clip):
    T = 10
    table = DiscreteSchedule.linear(T, 1e-3, 0.2)
    net = LearnedNet((2, 3, 3), T)
    z0 = torch.randn(3, 2, 3, 3, generator=torch.Generator().manual_seed(4), dtype=F64)
    gen = torch.Generator().manual_seed(7)
    noises = [vdm_fast.randn_like(z0, gen) for _ in range(T)]  # the stream the loop draws, one per step

    def ours(z):
        return samplers.sample_ancestral(net, z, table, discrete_times(T, T), variance="learned_range",
                                         clip=1.0 if clip else None, generator=torch.Generator().manual_seed(7))

    def theirs(z):
        return Theirs(table.betas).p_sample_loop(net, z, noises, clip)

    got = ours(z0)
    with torch.no_grad(), _reference_backend():
        bound = numerics.running_error(ours, (z0,)).bound
    with torch.no_grad():
        want = numerics.running_error(theirs, (z0,))
    numerics.assert_within_bound(got, want.value, numerics.K * bound + want.bound, k=1)


def test_learned_range_on_a_respaced_table_and_on_the_subset_grid():
    # Their SpacedDiffusion: the respaced table's learned range is the grid's (log beta of the respaced
    # step, the respaced posterior's clipped log-variance), so both runs are the same steps.
    table = DiscreteSchedule.cosine(100)
    r = respace(table, space_timesteps(100, "ddim10"))
    net = LearnedNet((2, 2), 100)
    z = torch.randn(2, 2, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    a = samplers.sample_ancestral(r.wrap_model(net), z, r.schedule, discrete_times(10, 10), variance="learned_range",
                                  generator=torch.Generator().manual_seed(1))
    b = samplers.sample_ancestral(net, z, table, torch.cat([r.timestep_map.flip(0), torch.tensor([-1])]),
                                  variance="learned_range", generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    # v = -1 everywhere is the fixed small (posterior) variance: the "posterior" sampler on the same noise.
    lo = samplers.sample_ancestral(lambda z, t: torch.cat([net(z, t)[:, :2], -torch.ones_like(z)], 1), z, table,
                                   discrete_times(100, 10), variance="learned_range",
                                   generator=torch.Generator().manual_seed(1))
    post = samplers.sample_ancestral(lambda z, t: net(z, t)[:, :2], z, table, discrete_times(100, 10),
                                     generator=torch.Generator().manual_seed(1))
    # Steps before the last agree to rounding (the std exp(log var / 2) against sigma_s sqrt(c)); the last
    # adds no noise in both. Float64, ten steps: 1e-12 is far below a wrong variance (O(1e-2) here).
    torch.testing.assert_close(lo, post, rtol=1e-12, atol=1e-12)


def test_learned_range_classifier_free_uses_the_conditional_variance():
    table = DiscreteSchedule.linear(20, 1e-3, 0.2)
    net = LearnedNet((2, 2), 20)

    def fn(z, t, y):  # the unconditional half gets another variance, which must not be used
        out = net(z, t)
        return torch.cat([out[:, :2] + 0.1 * y[:, None, None], out[:, 2:] * (1 - 2 * (y[:, None, None] == 9))], 1)

    z = torch.randn(2, 2, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    labels = torch.tensor([1, 3])
    pair = classifier_free_pair(lambda z, t: (fn(z, t, labels), fn(z, t, torch.full_like(labels, 9))))
    guided = samplers.sample_ancestral(pair, z, table, discrete_times(20, 5),
                                       variance="learned_range", guidance_scale=1.0,
                                       generator=torch.Generator().manual_seed(2))
    cond = samplers.sample_ancestral(lambda z, t: fn(z, t, labels), z, table, discrete_times(20, 5),
                                     variance="learned_range", generator=torch.Generator().manual_seed(2))
    # w = 1 is the conditional model: uncond + 1 (cond - uncond) is cond to a rounding or two per step.
    torch.testing.assert_close(guided, cond, rtol=1e-12, atol=1e-12)


def test_sample_ancestral_learned_range_errors():
    net = LearnedNet((2, 2), 10)
    z = torch.zeros(2, 2, 2, dtype=F64)
    table = DiscreteSchedule.linear(10)
    with pytest.raises(TypeError, match="schedule must be a DiscreteSchedule"):
        samplers.sample_ancestral(net, z, LinearGamma(), samplers.uniform_times(4), variance="learned_range")
    with pytest.raises(TypeError, match="times must hold integer"):
        samplers.sample_ancestral(net, z, table, torch.tensor([9.0, 5.0, 0.0]), variance="learned_range")
    with pytest.raises(ValueError, match="times must have at least 2 steps"):
        samplers.sample_ancestral(net, z, table, torch.tensor([9, -1]), variance="learned_range")
    with pytest.raises(ValueError, match="twice the channels"):
        samplers.sample_ancestral(lambda z, t: z, z, table, discrete_times(10, 5), variance="learned_range")
    with pytest.raises(ValueError, match="variance must be one of"):
        samplers.sample_ancestral(net, z, table, discrete_times(10, 5), variance="learned")


# --- calc_bpd_loop -------------------------------------------------------------------------------------


@pytest.mark.parametrize("clip", [True, False])
def test_calc_bpd_loop_learned_range_matches_improved_diffusion(clip):
    T = 8
    table = DiscreteSchedule.linear(T, 1e-3, 0.2)
    x = _ddpm_data()
    net = LearnedNet((2, 3, 3), T)
    g = torch.Generator().manual_seed(3)
    noises = [torch.randn(x.shape, generator=g, dtype=F64) for _ in range(T)]  # calc_bpd_loop's draws, in order
    keys = ("total_bpd", "prior_bpd", "vb", "xstart_mse", "mse")

    def flat(out):
        return torch.cat([out[k].reshape(out[k].shape[0], -1) for k in keys], 1)

    def ours(b, x, backend=None):
        return flat(bpd.calc_bpd_loop(net, x, DiscreteSchedule(b), variance="learned_range", clip_denoised=clip,
                                      generator=torch.Generator().manual_seed(3), backend=backend))

    def theirs(b, x):
        return flat(Theirs(b).calc_bpd_loop(net, x, noises, clip))

    with torch.no_grad():
        got = ours(table.betas, x)
        truth = numerics.running_error(theirs, (table.betas, x))
        bound = numerics.running_error(lambda b, x: ours(b, x, "reference"), (table.betas, x)).bound + truth.bound
    numerics.assert_within_bound(got, truth.value, bound)
    out = bpd.calc_bpd_loop(net, x, table, variance="learned_range", clip_denoised=clip,
                            generator=torch.Generator().manual_seed(3))
    asc = bpd.calc_bpd_loop(net, x, table, variance="learned_range", clip_denoised=clip, order="ascending",
                            generator=torch.Generator().manual_seed(3))
    for k in ("vb", "xstart_mse", "mse"):
        assert out[k].shape == (4, T) and torch.equal(asc[k], out[k].flip(1)), k
    # total_bpd sums the columns in the other order: the same sum within its rounding.
    numerics.assert_within_bound(asc["total_bpd"], out["total_bpd"],
                                 numerics.running_error(lambda v: v.sum(1), (out["vb"],)).bound * 2, msg="total")


def test_calc_bpd_loop_learned_range_at_v_minus_one_is_fixed_small():
    # v = -1: log var = the clipped posterior log-variance, i.e. the fixed_small model; its KL is then the
    # equal-variance form that calc_bpd_loop's fixed path evaluates with one sq_error pass.
    T = 6
    table = DiscreteSchedule.linear(T, 1e-3, 0.2)
    x = _ddpm_data()
    net = LearnedNet((2, 3, 3), T)
    fixed = bpd.calc_bpd_loop(lambda z, t: net(z, t)[:, :2], x, table, generator=torch.Generator().manual_seed(0))
    learned = bpd.calc_bpd_loop(lambda z, t: torch.cat([net(z, t)[:, :2], -torch.ones_like(z)], 1), x, table,
                                variance="learned_range", generator=torch.Generator().manual_seed(0))
    for k in ("xstart_mse", "mse", "prior_bpd"):
        assert torch.equal(fixed[k], learned[k]), k
    # Two float64 formulas of the same KL (the full Gaussian KL of the means against D c_t + w_t ||x0 - x̂0||^2):
    # each a few roundings of terms of size <= 20 bits/dim: 1e-12 absolute is loose for them and tight for a
    # wrong variance (which changes vb by O(0.1)).
    torch.testing.assert_close(learned["vb"], fixed["vb"], rtol=0, atol=1e-12)


def test_calc_bpd_loop_learned_range_errors():
    x, table = _ddpm_data(), DiscreteSchedule.linear(5)
    with pytest.raises(ValueError, match="twice the channels"):
        bpd.calc_bpd_loop(lambda z, t: z, x, table, variance="learned_range")
    with pytest.raises(ValueError, match="channel dimension"):
        bpd.calc_bpd_loop(lambda z, t: z, torch.zeros(3, dtype=F64), table, variance="learned_range")
    with pytest.raises(ValueError, match="order"):
        bpd.calc_bpd_loop(lambda z, t: z, x, table, order="reversed")


# --- the hybrid loss -------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [100, 4000])
def test_hybrid_loss_matches_training_losses(T):
    table = DiscreteSchedule.linear(T, convention="improved-diffusion")
    x = _ddpm_data(B=6)
    net = LearnedNet((2, 3, 3), T)
    t = torch.tensor([0, 1, 2, T // 2, T - 2, T - 1])
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=F64)

    def ours(b, x, noise, backend=None):
        out = bpd.hybrid_loss(net, x, DiscreteSchedule(b), t, noise, backend=backend)
        return torch.stack([out.loss, out.mse, out.vb])

    def theirs(b, x, noise):
        out = Theirs(b).training_losses(net, x, t, noise)
        return torch.stack([out["loss"], out["mse"], out["vb"]])

    with torch.no_grad():
        got = ours(table.betas, x, noise)
        truth = numerics.running_error(theirs, (table.betas, x, noise))
        bound = numerics.running_error(lambda *a: ours(*a, "reference"), (table.betas, x, noise)).bound + truth.bound
    numerics.assert_within_bound(got, truth.value, bound)
    assert (got[2] != 0).all()  # every sample has a variational term (decoder at t = 0, KL elsewhere)


def test_hybrid_loss_gradients_stop_at_the_mean():
    # L_vlb reaches only the variance channels (their frozen_out), L_simple only the mean channels:
    # d loss / d out equals their training_losses' gradient, split that way.
    T = 100
    table = DiscreteSchedule.linear(T, convention="improved-diffusion")
    x = _ddpm_data(B=5)
    t = torch.tensor([0, 3, 50, 98, 99])
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    net = LearnedNet((2, 3, 3), T)
    captured = {}

    def model(z, tt):
        out = net(z, tt).detach().requires_grad_(True)
        captured.setdefault("outs", []).append(out)
        return out

    terms = bpd.hybrid_loss(model, x, table, t, noise)
    up = torch.arange(1.0, 6.0, dtype=F64)
    g_ours, = torch.autograd.grad((terms.loss * up).sum(), captured["outs"][-1])
    g_vb, = torch.autograd.grad((bpd.hybrid_loss(model, x, table, t, noise).vb * up).sum(), captured["outs"][-1])
    assert g_vb[:, :2].eq(0).all() and g_vb[:, 2:].abs().sum() > 0  # stop-gradient on the mean
    theirs = Theirs(table.betas).training_losses(model, x, t, noise)
    g_theirs, = torch.autograd.grad((theirs["loss"] * up).sum(), captured["outs"][-1])
    # float64 gradients of the same formulas in two forms (gamma vs alpha_bar tables): a few roundings each,
    # relative 1e-10 is loose for them and far below a missing or doubled term.
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-10, atol=1e-13)


def test_hybrid_loss_draws_and_checks():
    table = DiscreteSchedule.linear(50)
    x = _ddpm_data()
    net = LearnedNet((2, 3, 3), 50)
    a = bpd.hybrid_loss(net, x, table, generator=torch.Generator().manual_seed(0))
    b = bpd.hybrid_loss(net, x, table, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.loss, b.loss) and torch.equal(a.t, b.t) and a.t.dtype == torch.int64
    assert ((a.t >= 0) & (a.t < 50)).all()
    unscaled = bpd.hybrid_loss(net, x, table, a.t, noise=torch.zeros_like(x), rescale=False)
    scaled = bpd.hybrid_loss(net, x, table, a.t, noise=torch.zeros_like(x))
    torch.testing.assert_close(scaled.vb, unscaled.vb * (50 / 1000), rtol=4e-16, atol=0)
    with pytest.raises(TypeError, match="schedule"):
        bpd.hybrid_loss(net, x, LinearGamma())
    with pytest.raises(ValueError, match="t must be"):
        bpd.hybrid_loss(net, x, table, torch.tensor([0.5] * 4))
    with pytest.raises(ValueError, match="noise"):
        bpd.hybrid_loss(net, x, table, noise=torch.zeros(3))
    with pytest.raises(ValueError, match="twice the channels"):
        bpd.hybrid_loss(lambda z, t: z, x, table)


# --- against improved_diffusion itself, when it is installed ---------------------------------------------


def test_against_improved_diffusion_package():
    gd = pytest.importorskip("improved_diffusion.gaussian_diffusion")
    T = 100
    table = DiscreteSchedule.linear(T, convention="improved-diffusion")
    diffusion = gd.GaussianDiffusion(betas=gd.get_named_beta_schedule("linear", T).copy(),
                                     model_mean_type=gd.ModelMeanType.EPSILON,
                                     model_var_type=gd.ModelVarType.LEARNED_RANGE,
                                     loss_type=gd.LossType.RESCALED_MSE)
    torch.testing.assert_close(table.betas, torch.from_numpy(diffusion.betas), rtol=4 * 2**-53, atol=0)
    x = _ddpm_data(B=5)
    t = torch.tensor([0, 3, 50, 98, 99])
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    net = LearnedNet((2, 3, 3), T)
    with torch.no_grad():
        theirs = diffusion.training_losses(net, x, t, noise=noise)
        ours = bpd.hybrid_loss(net, x, table, t, noise)
    # Their _extract_into_tensor casts every table entry to float32 (``.float()``): the comparison can only
    # be as close as float32 coefficients allow (a relative 2^-24 each, through terms of size <= 10).
    for k in ("loss", "mse", "vb"):
        torch.testing.assert_close(getattr(ours, k), theirs[k].to(F64), rtol=1e-5, atol=1e-5)
