"""Porting VDM (google-research/vdm, model_vdm.py): its network schedule's parameters
(MonotoneGamma.from_vdm / to_vdm), its initialisation, T-step times on the grid, and its decoder on
the rescaled latent. VDM's own formulas are re-implemented here in float64 numpy, independently
of vdm_fast."""

import numpy as np
import pytest
import torch

import vdm_fast
from vdm_fast.elbo import VDMLoss, diffusion_weight, elbo
from vdm_fast.schedules import VDM_INIT_STD, LinearGamma, MonotoneGamma

F64 = torch.float64


def vdm_nnet_gamma(params, t):
    """VDM's NoiseSchedule_NNet.__call__ in float64 numpy: l1(t) + l3(2 (sigmoid(l2(2 (t - .5))) - .5)) / n,
    DenseMonotone = inputs @ |kernel| + bias."""
    t = np.asarray(t, dtype=np.float64).reshape(-1, 1)
    h = t @ np.abs(params["l1"]["kernel"]) + params["l1"]["bias"]
    if "l2" in params:
        n = params["l2"]["kernel"].shape[1]
        u = (2.0 * (t - 0.5)) @ np.abs(params["l2"]["kernel"]) + params["l2"]["bias"]
        f = 2 * (1 / (1 + np.exp(-u)) - 0.5)
        h = h + (f @ np.abs(params["l3"]["kernel"])) / n
    return h[:, 0]


def random_vdm_params(n, seed, scale=3.0):
    """A trained-looking network: mixed signs (VDM takes |W|), features far from linear."""
    rng = np.random.default_rng(seed)
    return {"l1": {"kernel": rng.normal(size=(1, 1)) * 10, "bias": rng.normal(size=(1,)) * 5 - 10},
            "l2": {"kernel": rng.normal(size=(1, n)) * scale, "bias": rng.normal(size=(n,)) * 2},
            "l3": {"kernel": rng.normal(size=(n, 1)) * 20}}


T_GRID = np.concatenate([np.linspace(0, 1, 1001), np.random.default_rng(9).random(200)])


@pytest.mark.parametrize("n", [1, 7, 1024])
def test_from_vdm_gives_vdm_gamma_float64(n):
    params = random_vdm_params(n, seed=n)
    sched = MonotoneGamma.from_vdm(params, dtype=F64)
    assert sched.n_features == n
    ours = sched.gamma(torch.from_numpy(T_GRID), F64).detach().numpy()
    theirs = vdm_nnet_gamma(params, T_GRID)
    # Two float64 evaluations of one function (ours rescaled: gamma_min + (g_max - g_min) shape(t));
    # |gamma| <= ~60 here, each sums n features: a few hundred ulps of the largest term at most.
    scale = np.abs(theirs).max() + np.abs(params["l3"]["kernel"]).mean() + abs(params["l1"]["kernel"][0, 0])
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-13 * scale)
    # gamma' (the continuous-time weight) matches VDM's derivative (jax.jvp there) too: central differences
    # of VDM's function, step 1e-5 (truncation ~1e-10 * gamma''', rounding ~1e-16 * |gamma| / 1e-5).
    t = np.linspace(0.01, 0.99, 51)
    fd = (vdm_nnet_gamma(params, t + 1e-5) - vdm_nnet_gamma(params, t - 1e-5)) / 2e-5
    ours_p = sched.gamma_prime(torch.from_numpy(t), F64).detach().numpy()
    np.testing.assert_allclose(ours_p, fd, rtol=1e-6, atol=1e-6 * np.abs(fd).max())


def test_from_vdm_accepts_torch_tensors_float32_and_keeps_the_global_rng():
    params = random_vdm_params(16, seed=3)
    as_torch = {k: {n: torch.from_numpy(v).float() for n, v in d.items()} for k, d in params.items()}
    state = torch.get_rng_state()
    sched = MonotoneGamma.from_vdm(as_torch, learn_endpoints=False)
    assert torch.equal(torch.get_rng_state(), state)
    assert sched.l2_weight.dtype == torch.float32 and "b" not in dict(sched.named_parameters())
    f32 = {k: {n: v.numpy().astype(np.float64) for n, v in d.items()} for k, d in as_torch.items()}
    theirs = vdm_nnet_gamma(f32, T_GRID)
    ours = sched.gamma(torch.from_numpy(T_GRID).float()).detach().double().numpy()
    # float32 parameters and arithmetic: a few float32 roundings of the largest term.
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5 * np.abs(theirs).max())


def test_vdm_nonlinear_false_converts_to_its_linear_schedule():
    params = {"l1": {"kernel": np.array([[-18.3]]), "bias": np.array([-13.3])}}
    sched = MonotoneGamma.from_vdm(params, dtype=F64)
    t = torch.linspace(0, 1, 11, dtype=F64)
    torch.testing.assert_close(sched.gamma(t, F64).detach(), LinearGamma(-13.3, 5.0).gamma(t, F64), rtol=0, atol=1e-13)


def test_to_vdm_round_trips_and_reproduces_our_gamma():
    sched = MonotoneGamma(-11.0, 7.0, n_features=32).double()
    with torch.no_grad():
        sched.l2_weight.copy_(3 * torch.randn(32, dtype=F64))
        sched.l2_bias.copy_(torch.randn(32, dtype=F64))
        sched.l3_weight.copy_(torch.randn(32, dtype=F64))
        sched.l1_weight.fill_(-0.3)
    params = sched.to_vdm()
    assert params["l1"]["kernel"].shape == (1, 1) and params["l1"]["bias"].shape == (1,)
    assert params["l2"]["kernel"].shape == (1, 32) and params["l2"]["bias"].shape == (32,)
    assert params["l3"]["kernel"].shape == (32, 1) and set(params["l3"]) == {"kernel"}
    ours = sched.gamma(torch.from_numpy(T_GRID), F64).detach().numpy()
    np.testing.assert_allclose(vdm_nnet_gamma(params, T_GRID), ours, rtol=0, atol=1e-13 * 20)
    back = MonotoneGamma.from_vdm(params, dtype=F64)
    np.testing.assert_allclose(back.gamma(torch.from_numpy(T_GRID), F64).detach().numpy(), ours, rtol=0, atol=1e-13 * 20)
    assert abs(back.gamma_min.item() + 11.0) < 1e-12 and abs(back.gamma_max.item() - 7.0) < 1e-12


def test_from_vdm_errors_name_what_cannot_be_converted():
    good = random_vdm_params(4, seed=1)
    with pytest.raises(ValueError, match=r"params\['l2'\]\['bias'\] must have shape \(4,\)"):
        MonotoneGamma.from_vdm({**good, "l2": {"kernel": good["l2"]["kernel"], "bias": np.zeros(5)}})
    with pytest.raises(ValueError, match=r"params\['l3'\]\['kernel'\] is missing"):
        MonotoneGamma.from_vdm({**good, "l3": {}})
    with pytest.raises(ValueError, match=r"params\['l1'\]\['kernel'\] must have shape \(1, 1\)"):
        MonotoneGamma.from_vdm({**good, "l1": {"kernel": np.ones((1, 2)), "bias": np.zeros(1)}})
    with pytest.raises(ValueError, match=r"params\['l3'\] must have no 'bias'"):
        MonotoneGamma.from_vdm({**good, "l3": {"kernel": good["l3"]["kernel"], "bias": np.zeros(1)}})
    with pytest.raises(ValueError, match=r"params\['params'\]\['gamma'\]"):
        MonotoneGamma.from_vdm({"params": {"gamma": good}})
    with pytest.raises(ValueError, match="constant in t"):
        MonotoneGamma.from_vdm({"l1": {"kernel": np.zeros((1, 1)), "bias": np.zeros(1)}})
    with pytest.raises(TypeError, match="params must be a mapping"):
        MonotoneGamma.from_vdm([1, 2])


def test_initialisation_follows_vdm_for_l2_and_optionally_l3():
    # VDM: l2 and l3 kernels from flax initializers.normal() = N(0, 0.01^2), l2 bias 0. Seeded (conftest);
    # the sample std of 4096 normals is within 5 % of the true one with probability 1 - 1e-5.
    sched = MonotoneGamma(n_features=4096)
    assert VDM_INIT_STD == 0.01
    assert abs(sched.l2_weight.std().item() / 0.01 - 1) < 0.05 and sched.l2_bias.abs().max().item() == 0
    assert torch.all(sched.l3_weight == 1e-3)
    drawn = MonotoneGamma(n_features=4096, l3_init=None)
    assert abs(drawn.l3_weight.std().item() / 0.01 - 1) < 0.05


# --- discrete T: times on the grid ---------------------------------------------------------------------


def test_t_step_times_off_the_grid_raise_naming_t_and_T():
    sched, T = LinearGamma(), 10
    x = torch.rand(4, 3, dtype=F64) * 2 - 1
    model = lambda z, t: 0.1 * z  # noqa: E731
    u = torch.tensor([0.05, 0.37, 0.5, 0.99], dtype=F64)  # VDM's raw u: not on the grid
    for call in (lambda: elbo(model, x, sched, T=T, t=u),
                 lambda: VDMLoss(sched, T=T)(model, x, t=u),
                 lambda: VDMLoss(sched, weighting="simple", T=T)(model, x, t=u),
                 lambda: diffusion_weight(sched, u, "eps", T)):
        with pytest.raises(RuntimeError, match=r"t must lie on the T-step grid i/T, i = 1\.\.10 \(T = 10\)"):
            call()
    with pytest.raises(RuntimeError, match="T-step grid"):  # t = 0 is not a T-step time (i >= 1)
        elbo(model, x, sched, T=T, t=torch.tensor([0.0, 0.1, 0.2, 0.3], dtype=F64))


def test_grid_check_traces_without_a_graph_break():
    """The check is torch._assert_async (no host read): a fullgraph compile of the T-step bound holds it."""
    sched = LinearGamma()
    x, n = torch.rand(4, 3) * 2 - 1, torch.randn(4, 3)

    def total(x, t):
        return elbo(lambda z, tt: 0.1 * z, x, sched, T=10, t=t, noise=n, recon_noise=n).total

    compiled = torch.compile(total, fullgraph=True)
    on_grid = torch.tensor([0.1, 0.2, 0.3, 1.0])
    torch.testing.assert_close(compiled(x, on_grid), total(x, on_grid), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="T-step grid"):
        compiled(x, torch.tensor([0.15, 0.2, 0.3, 1.0]))


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_t_step_with_vdm_rounding_gives_vdm_loss(dtype):
    """VDM's discrete-time diffusion loss, re-implemented: t = ceil(u T)/T, s = t - 1/T,
    L = T/2 expm1(g_t - g_s) ||eps - eps_hat||^2. Rounded as the error message says, ours equals it."""
    sched, T = LinearGamma(-13.3, 5.0), 1000
    g = torch.Generator().manual_seed(5)
    x = (torch.rand(6, 3, 2, 2, generator=g, dtype=F64) * 2 - 1).to(dtype)
    u = torch.rand(6, generator=g, dtype=F64).to(dtype)
    eps = torch.randn(x.shape, generator=g, dtype=F64).to(dtype)
    model = lambda z, t: 0.3 * z  # noqa: E731
    t = torch.ceil(u * T) / T
    ours = elbo(model, x, sched, T=T, t=t, noise=eps, recon_noise=eps, decoder=None).diffusion.double()
    td = t.double()
    gt, gs = -13.3 + 18.3 * td, -13.3 + 18.3 * (td - 1 / T)
    a, s = torch.sigmoid(-gt).sqrt(), torch.sigmoid(gt).sqrt()
    z = a[:, None, None, None] * x.double() + s[:, None, None, None] * eps.double()
    theirs = 0.5 * T * torch.expm1(gt - gs) * ((eps.double() - 0.3 * z) ** 2).sum((1, 2, 3))
    # float64: two orders of evaluation; float32: data, z_t and the squared error in float32 (D = 12
    # terms of size ~1: relative ~1e-6), the weight in float64 from float32 times.
    rtol = 1e-12 if dtype == F64 else 1e-5
    torch.testing.assert_close(ours, theirs, rtol=rtol, atol=0)


# --- the decoder on VDM's rescaled latent -------------------------------------------------------------


def vdm_logprob(k, z_rescaled, g0):
    """VDM's EncDec.logprob in float64: logits -1/2 ((z - x_k) exp(-g0/2))^2 over the 256 bin centres,
    log-softmax, the true bin's entry, summed per sample."""
    x_vals = 2 * ((torch.arange(256, dtype=F64) + 0.5) / 256) - 1
    inv = torch.exp(-0.5 * g0)[:, None, None]
    zz = z_rescaled.reshape(z_rescaled.shape[0], -1)
    logits = -0.5 * ((zz[..., None] - x_vals) * inv) ** 2
    lp = torch.log_softmax(logits, -1).gather(-1, k.reshape(k.shape[0], -1, 1))[..., 0]
    return lp.sum(-1)


@pytest.mark.parametrize("g0", [-13.3, -6.0, -1.0])
def test_recon_nll_on_rescaled_latent_equals_vdm_decoder(g0):
    g = torch.Generator().manual_seed(11)
    B = 5
    k = torch.randint(0, 256, (B, 3, 4, 4), generator=g)
    x0 = 2 * ((k.double() + 0.5) / 256) - 1
    gamma0 = torch.full((B,), g0, dtype=F64) + 0.1 * torch.arange(B, dtype=F64)
    alpha0, sigma0 = torch.sigmoid(-gamma0).sqrt(), torch.sigmoid(gamma0).sqrt()
    eps = torch.randn(x0.shape, generator=g, dtype=F64)
    v = lambda c: c[:, None, None, None]  # noqa: E731
    z0 = v(alpha0) * x0 + v(sigma0) * eps
    z_rescaled = x0 + v(torch.exp(0.5 * gamma0)) * eps  # VDM's z_0_rescaled
    theirs = -vdm_logprob(k, z_rescaled, gamma0)
    rescaled = vdm_fast.recon_nll(x0, z0 / v(alpha0), torch.ones(B, dtype=F64), torch.exp(0.5 * gamma0))
    plain = vdm_fast.recon_nll(x0, z0, alpha0, sigma0)
    # float64; the nll is a sum of 48 terms each of order 1 at most (log-softmax of a peaked parabola);
    # z0 / alpha0 vs VDM's x + exp(g0/2) eps differ by rounding (relative 1e-16 of |z| <= ~2).
    for ours in (rescaled, plain):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
