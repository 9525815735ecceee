"""Bits/dim in both conventions (vdm_fast.bpd).

- improved-diffusion's calc_bpd_loop: against a direct transcription of their published
  semantics written here with their table names (normal_kl, tanh CDF decoder, clipped posterior
  log-variance, fixed small/large variance), on a tiny random network; and against truth: for
  Gaussian data and the Bayes-optimal denoiser every KL term and the prior have closed forms.
- VDM: the average of ``elbo`` estimates over repeats; the data grids.

Equalities hold within running error bounds (tests/numerics.py): both computations run under the
bound from the same betas and data (tables built inside it), and their bounds add.
"""

import math

import pytest
import torch

import numerics
from improved_diffusion_math import discretized_gaussian_log_likelihood, mean_flat, normal_kl
from vdm_fast import bpd, elbo as elbo_mod, reference
from vdm_fast.schedules import DiscreteSchedule, LinearGamma

pytestmark = pytest.mark.filterwarnings("ignore:.*no fused kernel:RuntimeWarning")

F64 = torch.float64
LN2 = math.log(2.0)


# --- improved-diffusion, transcribed -----------------------------------------------------------------


def improved_diffusion_calc_bpd_loop(model, x_start, betas, variance, clip_denoised, generator, parameterization="eps"):
    T = betas.numel()
    alphas = 1.0 - betas
    ac = torch.cumprod(alphas, 0)
    acp = torch.cat([torch.ones(1, dtype=F64), ac[:-1]])
    sqrt_recip_ac, sqrt_recipm1_ac = torch.sqrt(1.0 / ac), torch.sqrt(1.0 / ac - 1)
    post_var = betas * (1.0 - acp) / (1.0 - ac)
    post_logvar_clipped = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
    coef1, coef2 = betas * torch.sqrt(acp) / (1.0 - ac), (1.0 - acp) * torch.sqrt(alphas) / (1.0 - ac)
    if variance == "fixed_large":
        model_logvar = torch.log(torch.cat([post_var[1:2], betas[1:]]))
    else:
        model_logvar = post_logvar_clipped
    B = x_start.shape[0]
    vb, xstart_mse, mse = [], [], []
    for t in reversed(range(T)):
        noise = torch.randn(x_start.shape, generator=generator, dtype=F64)
        x_t = ac[t].sqrt() * x_start + (1 - ac[t]).sqrt() * noise
        out = model(x_t, torch.full((B,), t))
        if parameterization == "eps":
            pred_xstart = sqrt_recip_ac[t] * x_t - sqrt_recipm1_ac[t] * out
        else:
            pred_xstart = out
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        model_mean = coef1[t] * pred_xstart + coef2[t] * x_t
        true_mean = coef1[t] * x_start + coef2[t] * x_t
        kl = mean_flat(normal_kl(true_mean, post_logvar_clipped[t], model_mean, model_logvar[t])) / LN2
        log_scales = 0.5 * model_logvar[t] * torch.ones_like(x_start)
        nll = -mean_flat(discretized_gaussian_log_likelihood(x_start, model_mean, log_scales)) / LN2
        vb.append(nll if t == 0 else kl)
        xstart_mse.append(mean_flat((pred_xstart - x_start) ** 2))
        eps = (sqrt_recip_ac[t] * x_t - pred_xstart) / sqrt_recipm1_ac[t]
        mse.append(mean_flat((eps - noise) ** 2))
    # Stacked in loop order, as theirs: column j is step T-1-j.
    vb, xstart_mse, mse = (torch.stack(v, 1) for v in (vb, xstart_mse, mse))
    zero = torch.zeros((), dtype=F64)
    prior = mean_flat(normal_kl(ac[-1].sqrt() * x_start, torch.log(1.0 - ac[-1]), zero, zero)) / LN2
    return {"total_bpd": vb.sum(1) + prior, "prior_bpd": prior, "vb": vb, "xstart_mse": xstart_mse, "mse": mse}


class TinyNet(torch.nn.Module):
    """A small random network of (z, t): its outputs make every term non-trivial."""

    def __init__(self, D, T):
        super().__init__()
        g = torch.Generator().manual_seed(11)
        self.w = torch.randn(D, D, generator=g, dtype=F64) / math.sqrt(D)
        self.b = torch.randn(D, generator=g, dtype=F64)
        self.T = T

    def forward(self, z, t):
        flat = z.flatten(1)
        h = torch.tanh(flat @ self.w + self.b * (t.to(F64)[:, None] / self.T))
        return (0.8 * flat + 0.5 * h).reshape(z.shape)


def _ddpm_data(B=5, shape=(2, 3, 3), seed=0):
    k = torch.randint(0, 256, (B,) + shape, generator=torch.Generator().manual_seed(seed))
    k.view(-1)[:4] = torch.tensor([0, 255, 0, 255])  # both open-ended edge bins
    return bpd.to_ddpm_grid(k, F64)


def _kl_coefficient_bound(betas, variance):
    """The running error of calc_bpd_loop's per-step KL coefficients c_t = (-1 - r + e^r) / 2,
    r = log var_true - log var_model, and w_t = coef1^2 e^(-log var_model) / 2, from the tables.

    calc_bpd_loop reads its table entries with .item(), where the bound cannot follow them. The
    tables (posterior log-variances, coef1, coef2) are the same numbers in ours and in the
    transcription (the same formulas from the same betas), and both loops are the same function of
    them, so their rounding cancels in the comparison; c_t and w_t are derived from them in ours
    only: their rounding is added by hand (per sample, D c_t + w_t ||x_0 - x̂_0||^2 over D ln 2)."""
    abar = torch.cumprod(1 - betas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=F64), abar[:-1]])
    post_var = betas * (1 - abar_prev) / (1 - abar)
    true_lv = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
    model_lv = true_lv if variance == "fixed_small" else torch.log(torch.cat([post_var[1:2], betas[1:]]))
    coef1 = betas * abar_prev.sqrt() / (1 - abar)

    def coefficients(true_lv, model_lv, coef1):
        r = true_lv - model_lv
        return 0.5 * (-1 - r + torch.exp(r)), 0.5 * coef1**2 * torch.exp(-model_lv)

    c = numerics.running_error(lambda *a: coefficients(*a)[0], (true_lv, model_lv, coef1)).bound
    w = numerics.running_error(lambda *a: coefficients(*a)[1], (true_lv, model_lv, coef1)).bound
    return c, w


def _bpd_bounds(net, x, betas, variance, clip, parameterization, seed):
    """Running error bounds of every output of ours and of the transcription (tables built inside
    the bound from the betas), summed, with ours' KL coefficients (_kl_coefficient_bound) added."""
    keys = ("total_bpd", "prior_bpd", "vb", "xstart_mse", "mse")

    def flat(out):
        return torch.cat([out[k].reshape(out[k].shape[0], -1) for k in keys], 1)

    def ours(b, x):
        return flat(bpd.calc_bpd_loop(net, x, DiscreteSchedule(b), parameterization=parameterization,
                                      variance=variance, clip_denoised=clip,
                                      generator=torch.Generator().manual_seed(seed), backend="reference"))

    def theirs(b, x):
        return flat(improved_diffusion_calc_bpd_loop(net, x, b, variance, clip, torch.Generator().manual_seed(seed),
                                                     parameterization))

    truth = numerics.running_error(theirs, (betas, x))
    bound = numerics.running_error(ours, (betas, x)).bound + truth.bound
    T = betas.numel()
    vb, xstart_mse = bound[:, 2:2 + T], truth.value[:, 2 + T:2 + 2 * T].flip(1)  # column t: step t
    c, w = _kl_coefficient_bound(betas, variance)
    extra = torch.cat([torch.zeros_like(vb[:, :1]), (c[1:] + w[1:] * xstart_mse[:, 1:]) / LN2], 1).flip(1)
    vb += extra
    bound[:, 0] += extra.sum(1)  # total_bpd
    return dict(zip(keys, bound.split([1, 1, T, T, T], 1))), truth


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("parameterization", ["eps", "x0"])
def test_calc_bpd_loop_matches_improved_diffusion(variance, clip, parameterization):
    table = DiscreteSchedule.linear(12, 1e-3, 0.2)
    x = _ddpm_data()
    net = TinyNet(18, 12)
    ours = bpd.calc_bpd_loop(net, x, table, parameterization=parameterization, variance=variance,
                             clip_denoised=clip, generator=torch.Generator().manual_seed(3))
    theirs = improved_diffusion_calc_bpd_loop(net, x, table.betas, variance, clip, torch.Generator().manual_seed(3),
                                              parameterization)
    assert set(ours) == set(theirs)
    # The tanh decoder (vb[:, 0]) subtracts two CDFs near 1 in the tails (conditioned like 1/P): its
    # bound reaches ~3e-6 relative where the old rtol 1e-9 relied on both sides rounding it alike.
    bounds, _ = _bpd_bounds(net, x, table.betas, variance, clip, parameterization, seed=3)
    for key in theirs:
        assert ours[key].shape == theirs[key].shape, key
        numerics.assert_within_bound(ours[key], theirs[key], bounds[key].reshape(theirs[key].shape), msg=key)


def test_calc_bpd_loop_cosine_table_and_layout():
    table = DiscreteSchedule.cosine(30)
    x = _ddpm_data(B=3)
    net = TinyNet(18, 30)
    out = bpd.calc_bpd_loop(net, x, table, generator=torch.Generator().manual_seed(1))
    theirs = improved_diffusion_calc_bpd_loop(net, x, table.betas, "fixed_small", True,
                                              torch.Generator().manual_seed(1))
    assert out["vb"].shape == (3, 30) and out["total_bpd"].shape == (3,)
    bounds, _ = _bpd_bounds(net, x, table.betas, "fixed_small", True, "eps", seed=1)
    numerics.assert_within_bound(out["total_bpd"], theirs["total_bpd"], bounds["total_bpd"].reshape(3), msg="total")
    assert torch.equal(out["total_bpd"], out["vb"].sum(1) + out["prior_bpd"])  # how total_bpd is formed


def test_calc_bpd_loop_erf_decoder_is_close_to_tanh():
    table = DiscreteSchedule.linear(8, 1e-3, 0.2)
    x = _ddpm_data()
    net = TinyNet(18, 8)
    a = bpd.calc_bpd_loop(net, x, table, cdf="tanh", generator=torch.Generator().manual_seed(0))
    b = bpd.calc_bpd_loop(net, x, table, cdf="erf", generator=torch.Generator().manual_seed(0))
    # Only the decoder (t = 0: the last column, improved-diffusion's order) differs: the rest is the same arithmetic.
    assert torch.equal(a["vb"][:, :-1], b["vb"][:, :-1])
    # Not a rounding tolerance: two different CDFs (|Phi_tanh - Phi| <= 1.8e-4 everywhere, moving a
    # bin of mass P by <= 3.6e-4 / P in log). These seeded data's decoder terms differ by < 0.01
    # bits/dim; 0.05 flags a decoder that is not the normal CDF's approximation.
    assert (a["vb"][:, -1] - b["vb"][:, -1]).abs().max().item() < 0.05


def test_calc_bpd_loop_unclipped_mse_is_snr_times_xstart_mse():
    table = DiscreteSchedule.linear(10, 1e-3, 0.2)
    net, x = TinyNet(18, 10), _ddpm_data()
    out = bpd.calc_bpd_loop(net, x, table, clip_denoised=False, order="ascending",
                            generator=torch.Generator().manual_seed(0))
    snr = table.snr(torch.arange(10), F64)

    # eps - eps_hat = (alpha / sigma)(x̂ - x): mse - SNR xstart_mse is 0 for any table values, so the
    # table enters as exact (shared) numbers; the bound is that of the difference, formed from one run.
    def difference(x):
        o = bpd.calc_bpd_loop(net, x, table, clip_denoised=False, order="ascending",
                              generator=torch.Generator().manual_seed(0), backend="reference")
        return o["mse"] - table.snr(torch.arange(10), F64) * o["xstart_mse"]

    bound = numerics.running_error(difference, (x,)).bound
    numerics.assert_within_bound(out["mse"] - snr * out["xstart_mse"], torch.zeros_like(bound), bound)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_calc_bpd_loop_terms_converge_to_gaussian_closed_form(variance):
    # x ~ N(0, S^2 I), optimal x_hat: E||x - x_hat||^2 / D = S^2 / (1 + S^2 SNR_t). Each KL term is
    # c_t + 1/2 coef1_t^2 / var_model_t * that, per dim; the prior 1/2 (abar S^2 + 1 - abar - 1 - log(1 - abar)).
    # S = 0.25 keeps the data inside the decoder's [-1, 1] (4 S): the decoder term is not checked
    # here, but its data must be in range; the handful of draws beyond 4 S are clamped (effect far
    # below the tolerance).
    S, T, B, D = 0.25, 10, 4096, 8
    table = DiscreteSchedule.linear(T, 1e-3, 0.2)
    x = (S * torch.randn(B, D, generator=torch.Generator().manual_seed(5), dtype=F64)).clamp(-1, 1)

    def optimal(z, t):
        a, s = table.alpha_sigma(t, F64)
        a, s = a[:, None], s[:, None]
        return s * z / (a**2 * S**2 + s**2)

    out = bpd.calc_bpd_loop(optimal, x, table, variance=variance, clip_denoised=False, order="ascending",
                            generator=torch.Generator().manual_seed(6))
    betas, abar = table.betas, table.alphas_cumprod
    abar_prev = torch.cat([torch.ones(1, dtype=F64), abar[:-1]])
    post_var = betas * (1 - abar_prev) / (1 - abar)
    true_lv = torch.log(post_var)
    model_lv = true_lv if variance == "fixed_small" else torch.log(betas)
    coef1 = betas * abar_prev.sqrt() / (1 - abar)
    snr = abar / (1 - abar)
    expected = (0.5 * (-1 + model_lv - true_lv + torch.exp(true_lv - model_lv))
                + 0.5 * coef1**2 / torch.exp(model_lv) * S**2 / (1 + S**2 * snr)) / LN2
    # Monte Carlo: each estimate within 4 standard errors of its closed form (a normal estimate
    # leaves that band with probability 6e-5); the seeded draws make the test deterministic.
    for t in range(1, T):
        col = out["vb"][:, t]
        se = col.std().item() / math.sqrt(B)
        assert se < 0.02 * expected[t].item()
        assert abs(col.mean().item() - expected[t].item()) < 4 * se, (t, col.mean().item(), expected[t].item())
    prior_expected = 0.5 * (abar[-1] * S**2 + (1 - abar[-1]) - 1 - torch.log(1 - abar[-1])) / LN2
    col = out["prior_bpd"]
    assert abs(col.mean().item() - prior_expected.item()) < 4 * col.std().item() / math.sqrt(B)


def test_calc_bpd_loop_bad_inputs():
    x, net = _ddpm_data(), TinyNet(18, 5)
    with pytest.raises(TypeError, match="schedule"):
        bpd.calc_bpd_loop(net, x, LinearGamma())
    with pytest.raises(ValueError, match="schedule"):
        bpd.calc_bpd_loop(net, x, DiscreteSchedule.linear(1))
    with pytest.raises(ValueError, match="variance"):
        bpd.calc_bpd_loop(net, x, DiscreteSchedule.linear(5), variance="learned")
    with pytest.raises(ValueError, match="parameterization"):
        bpd.calc_bpd_loop(net, x, DiscreteSchedule.linear(5), parameterization="noise")


# --- VDM convention ----------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [None, 20])
def test_vdm_bpd_is_the_average_of_elbo_estimates(T):
    sched = LinearGamma()
    k = torch.randint(0, 256, (4, 2, 3, 3), generator=torch.Generator().manual_seed(0))
    x = bpd.to_vdm_grid(k, F64)
    net = TinyNet(18, 1)
    got = bpd.vdm_bpd(net, x, sched, T=T, repeats=3, generator=torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    runs_nats = [elbo_mod.elbo(net, x, sched, T=T, generator=g) for _ in range(3)]
    runs = [r.bpd_terms() for r in runs_nats]
    # The same draws give the same per-run terms; only the averaging differs (ours adds the runs in
    # order and divides, the mean of the stack): the sum of both formulas' bounds.
    for name in ("recon", "prior", "diffusion", "total"):
        per_run = [getattr(r, name) for r in runs]
        expected = torch.stack(per_run).mean(0)
        bound = (numerics.running_error(lambda *v: (v[0] + v[1] + v[2]) / 3, per_run).bound
                 + numerics.running_error(lambda *v: torch.stack(v).mean(0), per_run).bound)
        numerics.assert_within_bound(getattr(got, name), expected, bound, msg=name)
    # total = the average of (recon + prior + diffusion) k per run, against the sum of the averaged
    # terms (k = 1 / (D ln 2)): two formulas from the per-run terms in nats.
    nats = [torch.stack([getattr(r, name) for r in runs_nats]) for name in ("recon", "prior", "diffusion")]
    k = 1.0 / (runs_nats[0].num_dims * LN2)

    def average(v):
        return (v[0] + v[1] + v[2]) / 3

    bound = (numerics.running_error(lambda r, p, d: average((r + p + d) * k), nats).bound
             + numerics.running_error(lambda r, p, d: average(r * k) + average(p * k) + average(d * k), nats).bound)
    numerics.assert_within_bound(got.total, got.recon + got.prior + got.diffusion, bound, msg="total")
    with pytest.raises(ValueError, match="repeats"):
        bpd.vdm_bpd(net, x, sched, repeats=0)


def test_vdm_bpd_of_gaussian_optimal_model_matches_closed_form_diffusion():
    # The diffusion part of VDM bits/dim for the Bayes-optimal model of N(0, S^2 I) data.
    S, D, B = 0.5, 16, 2048
    sched = LinearGamma(-5.0, 3.0)
    x = S * torch.randn(B, D, generator=torch.Generator().manual_seed(2), dtype=F64)

    def optimal(z, t):
        a, s = sched.alpha_sigma(t, F64)
        a, s = a[:, None], s[:, None]
        return s * z / (a**2 * S**2 + s**2)

    got = bpd.vdm_bpd(optimal, x, sched, repeats=4, generator=torch.Generator().manual_seed(3), decoder=None)
    snr0, snr1 = (sched.snr(torch.tensor(v, dtype=F64), F64).item() for v in (0.0, 1.0))
    truth = 0.5 * (math.log1p(S**2 * snr0) - math.log1p(S**2 * snr1)) / LN2  # per dim
    se = got.diffusion.std().item() / math.sqrt(B)
    # Monte Carlo: within 4 standard errors (probability 6e-5 outside for a normal estimate), seeded.
    assert se < 0.02 * truth and abs(got.diffusion.mean().item() - truth) < 4 * se


def test_data_grids():
    k = torch.arange(256)
    v = bpd.to_vdm_grid(k, F64)
    assert v[0].item() == -1 + 1 / 256 and v[-1].item() == 1 - 1 / 256
    assert torch.equal(reference.bin_index(v), k)
    d = bpd.to_ddpm_grid(k, F64)
    assert d[0].item() == -1.0 and d[-1].item() == 1.0
    assert bpd.to_vdm_grid(k).dtype == torch.float32
