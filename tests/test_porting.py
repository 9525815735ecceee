"""docs/PORTING.md, "Port your loop": each worked example run side by side with a minimal, faithful
re-implementation of the original code (written here from the originals' formulas, not copied).

- improved-diffusion's GaussianDiffusion.p_sample loop (eps model, fixed small / large variance,
  clip_denoised), its tables numpy float64;
- denoising-diffusion-pytorch's GaussianDiffusion (lucidrains): p_sample and ddim_sample with its
  registered (float32) buffers, objective "pred_v";
- diffusers' examples/unconditional_image_generation/train_unconditional.py: add_noise + mse_loss.

float64: the vdm_fast lines give the originals' tensors to ~1e-12 (whole loops). float32: one step
at a time from the same inputs, each side held to the running error bound of its own formula at
float32 (tests/numerics.py: every rounding, including the buffers' rounding to float32), so the two
differ by at most the sum of the bounds.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import numerics
import vdm_fast
from vdm_fast import reference, tables
from vdm_fast.parameterization import alpha_sigma

F64, F32 = torch.float64, torch.float32


def _bcast(c, x):
    return c.reshape(-1, *([1] * (x.dim() - 1)))


def tiny_model(dtype, seed=0):
    """A small time-dependent network: conv(x) scaled by a function of t (any parameterization)."""
    g = torch.Generator().manual_seed(seed)
    conv = torch.nn.Conv2d(3, 3, 3, padding=1).to(dtype)
    with torch.no_grad():
        conv.weight.copy_(0.2 * torch.randn(conv.weight.shape, generator=g, dtype=dtype))
        conv.bias.copy_(0.1 * torch.randn(conv.bias.shape, generator=g, dtype=dtype))

    def model(x, t):
        with torch.no_grad():
            return conv(x) * _bcast(1 + 0.001 * t.to(x.dtype), x)
    return model


# --- improved-diffusion ---------------------------------------------------------------------------


class IDGaussianDiffusion:
    """improved_diffusion/gaussian_diffusion.py, the parts p_sample_loop uses: numpy float64 tables,
    _extract_into_tensor (theirs casts to float32: ``dtype`` here), eps model, FIXED_SMALL/FIXED_LARGE."""

    def __init__(self, betas: np.ndarray, model_var_type: str, dtype=F32):
        self.betas, self.num_timesteps, self.dtype, self.model_var_type = betas, len(betas), dtype, model_var_type
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas, axis=0)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_log_variance_clipped = np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)

    def _extract(self, arr, t, x):
        return _bcast(torch.from_numpy(arr)[t].to(self.dtype), x)

    def p_sample(self, model, x, t, noise, clip_denoised=True):
        eps = model(x, t)
        if self.model_var_type == "fixed_large":
            log_var = np.log(np.append(self.posterior_variance[1], self.betas[1:]))
        else:
            log_var = self.posterior_log_variance_clipped
        x0 = self._extract(self.sqrt_recip_alphas_cumprod, t, x) * x - self._extract(self.sqrt_recipm1_alphas_cumprod, t, x) * eps
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        mean = self._extract(self.posterior_mean_coef1, t, x) * x0 + self._extract(self.posterior_mean_coef2, t, x) * x
        nonzero_mask = _bcast((t != 0).to(x.dtype), x)
        return mean + nonzero_mask * torch.exp(0.5 * self._extract(log_var, t, x)) * noise

    def p_sample_loop(self, model, img, noises):
        for i in reversed(range(self.num_timesteps)):
            t = torch.tensor([i] * img.shape[0])
            img = self.p_sample(model, img, t, noises[i])
        return img


def ported_id_loop(diffusion, model, img, noises, variance):
    """PORTING.md, example 1: the loop on vdm_fast (the coefficient table built once, before the loop)."""
    steps = torch.arange(diffusion.num_timesteps)
    table = tables.ddpm_step_coeffs(torch.from_numpy(diffusion.alphas_cumprod), steps, steps - 1, "eps", variance)
    for i in reversed(range(diffusion.num_timesteps)):
        t = torch.full((img.shape[0],), i)
        img = vdm_fast.reverse_step(img, model(img, t), table[:, i], clip=1.0, noise=noises[i])
    return img


def _id_betas(T):  # get_named_beta_schedule("linear", T): scaled by 1000 / T
    scale = 1000 / T
    return np.linspace(scale * 0.0001, scale * 0.02, T, dtype=np.float64)


@pytest.mark.parametrize("variance,var_type", [("posterior", "fixed_small"), ("beta", "fixed_large")])
def test_improved_diffusion_p_sample_loop_float64(variance, var_type):
    T, B = 60, 3
    diffusion = IDGaussianDiffusion(_id_betas(T), var_type, dtype=F64)
    model = tiny_model(F64)
    g = torch.Generator().manual_seed(1)
    img = torch.randn(B, 3, 6, 6, generator=g, dtype=F64)
    noises = [torch.randn(B, 3, 6, 6, generator=g, dtype=F64) for _ in range(T)]
    theirs = diffusion.p_sample_loop(model, img, noises)
    ours = ported_id_loop(diffusion, model, img, noises, variance)
    # 60 steps of float64 arithmetic from two formulas of one step (theirs forms 1/abar - 1 and 1 - abar by
    # subtraction: ~1e-12 relative at the first timestep); samples are O(1).
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-11)
    assert ours.abs().max().item() > 0.1  # a real sample, not a collapse to 0


def _per_step_float32(theirs_fn, theirs_inputs, coeffs64, z, m, n, clip):
    """|ours - theirs| <= K (bound of their float32 formula + bound of ours) + float64 disagreement."""
    truth_t = numerics.running_error(theirs_fn, theirs_inputs, dtype=F32)
    truth_o = numerics.running_error(lambda z, m, c, n: reference.reverse_step(z, m, c, clip=clip, noise=n),
                                     (z, m, coeffs64, n), dtype=F32)
    # The two float64 truths are one step by two formulas (differences ~1e-12 relative).
    torch.testing.assert_close(truth_o.value, truth_t.value, rtol=1e-9, atol=1e-12)
    return truth_t, truth_o


@pytest.mark.parametrize("variance,var_type", [("posterior", "fixed_small"), ("beta", "fixed_large")])
def test_improved_diffusion_p_sample_float32_within_bounds(variance, var_type):
    T, B = 1000, 7
    diffusion = IDGaussianDiffusion(_id_betas(T), var_type, dtype=F32)
    t = torch.tensor([0, 1, 2, 50, 500, 998, 999])
    g = torch.Generator().manual_seed(2)
    z, m, n = (torch.randn(B, 3, 4, 4, generator=g) for _ in range(3))
    theirs = diffusion.p_sample(lambda x, tt: m, z, t, n)
    coeffs = tables.ddpm_step_coeffs(torch.from_numpy(diffusion.alphas_cumprod), t, t - 1, "eps", variance)
    ours = vdm_fast.reverse_step(z, m, coeffs, clip=1.0, noise=n)

    log_var = diffusion.posterior_log_variance_clipped if var_type == "fixed_small" else \
        np.log(np.append(diffusion.posterior_variance[1], diffusion.betas[1:]))
    cols = [torch.from_numpy(a)[t] for a in (diffusion.sqrt_recip_alphas_cumprod, diffusion.sqrt_recipm1_alphas_cumprod,
                                             diffusion.posterior_mean_coef1, diffusion.posterior_mean_coef2, log_var)]
    mask = (t != 0).double()

    def their_step(z, m, n, r, rm1, c1, c2, lv, mask):  # p_sample on gathered float64 columns (rounded to float32)
        x0 = (_bcast(r, z) * z - _bcast(rm1, z) * m).clamp(-1, 1)
        return _bcast(c1, z) * x0 + _bcast(c2, z) * z + _bcast(mask, z) * torch.exp(0.5 * _bcast(lv, z)) * n

    truth_t, truth_o = _per_step_float32(their_step, (z, m, n, *cols, mask), coeffs, z, m, n, 1.0)
    numerics.assert_within_bound(theirs, truth_t.value, truth_t.bound, msg="improved-diffusion float32")
    numerics.assert_within_bound(ours, truth_o.value, truth_o.bound, msg="vdm_fast float32")
    assert ((ours.double() - theirs.double()).abs() <= numerics.K * (truth_t.bound + truth_o.bound) + 1e-9).all()


# --- denoising-diffusion-pytorch (lucidrains) --------------------------------------------------------


def ld_cosine_beta_schedule(timesteps, s=0.008):
    steps = timesteps + 1
    t = torch.linspace(0, timesteps, steps, dtype=F64) / timesteps
    abar = torch.cos((t + s) / (1 + s) * math.pi * 0.5) ** 2
    abar = abar / abar[0]
    return torch.clip(1 - (abar[1:] / abar[:-1]), 0, 0.999)


class LDGaussianDiffusion:
    """denoising_diffusion_pytorch.GaussianDiffusion, the sampling parts, objective "pred_v": buffers
    computed in float64 and registered as float32 (``dtype`` here), p_sample / ddim_sample."""

    def __init__(self, model, timesteps, dtype=F32):
        self.model, self.num_timesteps = model, timesteps
        betas = ld_cosine_beta_schedule(timesteps)
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = F.pad(alphas_cumprod[:-1], (1, 0), value=1.0)
        reg = lambda v: v.to(dtype)  # noqa: E731  (register_buffer(name, val.to(torch.float32)))
        self.betas, self.alphas_cumprod = reg(betas), reg(alphas_cumprod)
        self.sqrt_alphas_cumprod = reg(torch.sqrt(alphas_cumprod))
        self.sqrt_one_minus_alphas_cumprod = reg(torch.sqrt(1.0 - alphas_cumprod))
        self.sqrt_recip_alphas_cumprod = reg(torch.sqrt(1.0 / alphas_cumprod))
        self.sqrt_recipm1_alphas_cumprod = reg(torch.sqrt(1.0 / alphas_cumprod - 1))
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        self.posterior_log_variance_clipped = reg(torch.log(posterior_variance.clamp(min=1e-20)))
        self.posterior_mean_coef1 = reg(betas * torch.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod))
        self.posterior_mean_coef2 = reg((1.0 - alphas_cumprod_prev) * torch.sqrt(alphas) / (1.0 - alphas_cumprod))

    @staticmethod
    def _extract(a, t, x):
        return _bcast(a.gather(-1, t), x)

    def model_predictions(self, x, t, clip_x_start=False, rederive_pred_noise=False):
        v = self.model(x, t)
        x_start = self._extract(self.sqrt_alphas_cumprod, t, x) * x - self._extract(self.sqrt_one_minus_alphas_cumprod, t, x) * v
        if clip_x_start:
            x_start = x_start.clamp(-1.0, 1.0)
        pred_noise = (self._extract(self.sqrt_recip_alphas_cumprod, t, x) * x - x_start) / \
            self._extract(self.sqrt_recipm1_alphas_cumprod, t, x)
        return pred_noise, x_start

    def p_sample(self, x, t: int, noise):
        bt = torch.full((x.shape[0],), t, dtype=torch.long)
        _, x_start = self.model_predictions(x, bt)
        x_start = x_start.clamp(-1.0, 1.0)  # p_mean_variance(clip_denoised=True)
        mean = self._extract(self.posterior_mean_coef1, bt, x) * x_start + self._extract(self.posterior_mean_coef2, bt, x) * x
        noise = noise if t > 0 else 0.0
        return mean + (0.5 * self._extract(self.posterior_log_variance_clipped, bt, x)).exp() * noise

    def p_sample_loop(self, img, noises):
        for t in reversed(range(0, self.num_timesteps)):
            img = self.p_sample(img, t, noises[t])
        return img

    def ddim_sample(self, img, sampling_timesteps, eta, noises):
        times = torch.linspace(-1, self.num_timesteps - 1, steps=sampling_timesteps + 1)
        times = list(reversed(times.int().tolist()))
        for k, (time, time_next) in enumerate(zip(times[:-1], times[1:])):
            time_cond = torch.full((img.shape[0],), time, dtype=torch.long)
            pred_noise, x_start = self.model_predictions(img, time_cond, clip_x_start=True, rederive_pred_noise=True)
            if time_next < 0:
                img = x_start
                continue
            alpha, alpha_next = self.alphas_cumprod[time], self.alphas_cumprod[time_next]
            sigma = eta * ((1 - alpha / alpha_next) * (1 - alpha_next) / (1 - alpha)).sqrt()
            c = (1 - alpha_next - sigma**2).sqrt()
            img = x_start * alpha_next.sqrt() + c * pred_noise + sigma * noises[k]
        return img


def ported_ld_p_sample_loop(diffusion, img, noises):
    """PORTING.md, example 2a. The float64 betas from the codebase's schedule function (its buffers are
    float32 roundings of them)."""
    betas = ld_cosine_beta_schedule(diffusion.num_timesteps)
    for t in reversed(range(diffusion.num_timesteps)):
        tt = torch.full((img.shape[0],), t)
        coeffs = tables.ddpm_step_coeffs(None, tt, tt - 1, "v", betas=betas)
        img = vdm_fast.reverse_step(img, diffusion.model(img, tt), coeffs, clip=1.0, noise=noises[t])
    return img


def ported_ld_ddim(diffusion, img, sampling_timesteps, eta, noises):
    """PORTING.md, example 2b."""
    betas = ld_cosine_beta_schedule(diffusion.num_timesteps)
    times = torch.linspace(-1, diffusion.num_timesteps - 1, steps=sampling_timesteps + 1).int().flip(0).long()
    for k in range(sampling_timesteps):
        t, t_next = times[k].expand(img.shape[0]), times[k + 1].expand(img.shape[0])
        coeffs = tables.ddim_step_coeffs(None, t, t_next, eta, "v", clipped_eps=True, betas=betas)
        img = vdm_fast.reverse_step(img, diffusion.model(img, t), coeffs, clip=1.0, noise=noises[k])
    return img


def test_lucidrains_p_sample_loop_float64():
    T, B = 50, 3
    diffusion = LDGaussianDiffusion(tiny_model(F64, 3), T, dtype=F64)
    g = torch.Generator().manual_seed(4)
    img = torch.randn(B, 3, 6, 6, generator=g, dtype=F64)
    noises = [torch.randn(B, 3, 6, 6, generator=g, dtype=F64) for _ in range(T)]
    ours, theirs = ported_ld_p_sample_loop(diffusion, img, noises), diffusion.p_sample_loop(img, noises)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-11)  # as for improved-diffusion
    assert ours.abs().max().item() > 0.1


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_lucidrains_ddim_sample_float64(eta):
    T, S, B = 100, 12, 3
    diffusion = LDGaussianDiffusion(tiny_model(F64, 5), T, dtype=F64)
    g = torch.Generator().manual_seed(6)
    img = torch.randn(B, 3, 6, 6, generator=g, dtype=F64)
    noises = [torch.randn(B, 3, 6, 6, generator=g, dtype=F64) for _ in range(S)]
    ours, theirs = ported_ld_ddim(diffusion, img, S, eta, noises), diffusion.ddim_sample(img, S, eta, noises)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-11)
    assert ours.abs().max().item() > 0.1


def test_lucidrains_steps_float32_within_bounds():
    T, B = 1000, 6
    diffusion = LDGaussianDiffusion(None, T, dtype=F32)
    ref64 = LDGaussianDiffusion(None, T, dtype=F64)  # the same buffers before their rounding to float32
    g = torch.Generator().manual_seed(7)
    z, m, n = (torch.randn(B, 3, 4, 4, generator=g) for _ in range(3))
    t = torch.tensor([0, 1, 3, 400, 998, 999])

    # p_sample, one timestep at a time (theirs takes an int)
    coeffs = tables.ddpm_step_coeffs(None, t, t - 1, "v", betas=ld_cosine_beta_schedule(T))
    ours = vdm_fast.reverse_step(z, m, coeffs, clip=1.0, noise=n)
    theirs = []
    for i in range(B):  # one timestep per call, the model's output for that sample
        diffusion.model = lambda x, tt, i=i: m[i:i + 1]
        theirs.append(diffusion.p_sample(z[i:i + 1], int(t[i]), n[i:i + 1]))
    theirs = torch.cat(theirs)
    cols = [a[t] for a in (ref64.sqrt_alphas_cumprod, ref64.sqrt_one_minus_alphas_cumprod, ref64.posterior_mean_coef1,
                           ref64.posterior_mean_coef2, ref64.posterior_log_variance_clipped)]
    mask = (t > 0).double()

    def their_p_sample(z, m, n, sa, s1a, c1, c2, lv, mask):
        x0 = (_bcast(sa, z) * z - _bcast(s1a, z) * m).clamp(-1, 1)
        return _bcast(c1, z) * x0 + _bcast(c2, z) * z + (0.5 * _bcast(lv, z)).exp() * (_bcast(mask, z) * n)

    # Both from the float64 table: their buffers are its float32 roundings (counted by running_error, which
    # rounds the float64 columns to float32 first), our coefficients are built from it in float64.
    truth_t, truth_o = _per_step_float32(their_p_sample, (z, m, n, *cols, mask), coeffs, z, m, n, 1.0)
    numerics.assert_within_bound(theirs, truth_t.value, truth_t.bound, msg="lucidrains p_sample float32")
    numerics.assert_within_bound(ours, truth_o.value, truth_o.bound, msg="vdm_fast float32")
    assert ((ours.double() - theirs.double()).abs() <= numerics.K * (truth_t.bound + truth_o.bound) + 1e-9).all()


# --- diffusers' train_unconditional -------------------------------------------------------------------


def test_diffusers_train_unconditional_step():
    diffusers = pytest.importorskip("diffusers")
    noise_scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000)
    B = 8
    g = torch.Generator().manual_seed(8)
    clean_images = torch.rand(B, 3, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(clean_images.shape, generator=g)
    timesteps = torch.tensor([0, 1, 5, 20, 300, 700, 998, 999])
    model = tiny_model(F32, 9)

    # the original lines
    noisy_images = noise_scheduler.add_noise(clean_images, noise, timesteps)
    model_output = model(noisy_images, timesteps)
    loss = F.mse_loss(model_output.float(), noise.float())

    # the vdm_fast lines (PORTING.md, example 3): the scheduler's own table
    gam = tables.gammas_from_alphas_cumprod(noise_scheduler.alphas_cumprod)[timesteps]
    alpha, sigma = (c.float() for c in alpha_sigma(gam))
    noisy = vdm_fast.q_sample(clean_images, alpha, sigma, noise)
    out = model(noisy, timesteps)
    loss_ours = vdm_fast.sq_error(out, clean_images, noise, alpha, sigma, "epsilon").mean() / clean_images[0].numel()

    # add_noise: both scale the same float32 alphas_cumprod entries: theirs abar ** 0.5 and (1 - abar) ** 0.5
    # in float32 (1 - abar exact for abar >= 1/2, else one rounding), ours from float64 rounded once to float32:
    # each coefficient within 2u relative on either side, then one product, one sum (u each): per element
    # 6u (|alpha x| + |sigma n|) on the difference, u = 2^-24.
    u = 2.0**-24
    a_, s_ = alpha.double()[:, None, None, None], sigma.double()[:, None, None, None]
    bound = 6 * u * (a_ * clean_images.double().abs() + s_ * noise.double().abs())
    assert ((noisy.double() - noisy_images.double()).abs() <= bound).all()
    # the loss: a mean of N = B D squares of differences of O(1) values (each to 2u relative) plus their
    # float32 sums (at most (N - 1) u relative, recursive summation, either side) from nearly equal model
    # outputs (the inputs differ by the bound above; the conv is 1-Lipschitz-ish here: measured, not assumed:
    # the outputs' difference enters below through its own size).
    N = clean_images.numel()
    d_out = (out.double() - model_output.double()).abs().max().item()
    rel = 2 * (N + 1) * u
    loss_bound = rel * (loss.item() + loss_ours.item()) + 2 * d_out * (out.double() - noise.double()).abs().mean().item() \
        + d_out**2
    assert abs(loss_ours.item() - loss.item()) <= loss_bound
    # and the noisy images differ by rounding only: the network's inputs are the same to float32 precision
    assert d_out <= 1e-5

    # the drop-in scheduler (one import) is q_sample with coefficients from the betas in float64
    from vdm_fast.integrations.diffusers import DDPMScheduler
    drop_in = DDPMScheduler(num_train_timesteps=1000)
    sched = vdm_fast.schedules.DiscreteSchedule(drop_in.betas)
    a32, s32 = sched.alpha_sigma(timesteps)
    torch.testing.assert_close(drop_in.add_noise(clean_images, noise, timesteps),
                               vdm_fast.q_sample(clean_images, a32, s32, noise), rtol=0, atol=0)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_lucidrains_ddim_step_float32_within_bounds(eta):
    T, B = 1000, 5
    diffusion = LDGaussianDiffusion(None, T, dtype=F32)
    ref64 = LDGaussianDiffusion(None, T, dtype=F64)
    g = torch.Generator().manual_seed(10)
    z, m, n = (torch.randn(B, 3, 4, 4, generator=g) for _ in range(3))
    t, t_next = torch.tensor([999, 900, 500, 100, 20]), torch.tensor([949, 850, 450, 50, 0])
    coeffs = tables.ddim_step_coeffs(None, t, t_next, eta, "v", clipped_eps=True, betas=ld_cosine_beta_schedule(T))
    ours = vdm_fast.reverse_step(z, m, coeffs, clip=1.0, noise=n)
    theirs = []
    for i in range(B):  # their loop body for one (time, time_next) pair, one sample each
        diffusion.model = lambda x, tt, i=i: m[i:i + 1]
        pred_noise, x_start = diffusion.model_predictions(z[i:i + 1], t[i:i + 1], clip_x_start=True)
        alpha, alpha_next = diffusion.alphas_cumprod[t[i]], diffusion.alphas_cumprod[t_next[i]]
        sigma = eta * ((1 - alpha / alpha_next) * (1 - alpha_next) / (1 - alpha)).sqrt()
        c = (1 - alpha_next - sigma**2).sqrt()
        theirs.append(x_start * alpha_next.sqrt() + c * pred_noise + sigma * n[i:i + 1])
    theirs = torch.cat(theirs)
    cols = [a[t] for a in (ref64.sqrt_alphas_cumprod, ref64.sqrt_one_minus_alphas_cumprod,
                           ref64.sqrt_recip_alphas_cumprod, ref64.sqrt_recipm1_alphas_cumprod, ref64.alphas_cumprod)]
    cols.append(ref64.alphas_cumprod[t_next])

    def their_ddim(z, m, n, sa, s1a, sr, srm1, a, an):
        x_start = (_bcast(sa, z) * z - _bcast(s1a, z) * m).clamp(-1, 1)
        pred_noise = (_bcast(sr, z) * z - x_start) / _bcast(srm1, z)
        sigma = eta * ((1 - a / an) * (1 - an) / (1 - a)).sqrt()
        c = (1 - an - sigma**2).sqrt()
        return x_start * _bcast(an.sqrt(), z) + _bcast(c, z) * pred_noise + _bcast(sigma, z) * n

    truth_t, truth_o = _per_step_float32(their_ddim, (z, m, n, *cols), coeffs, z, m, n, 1.0)
    numerics.assert_within_bound(theirs, truth_t.value, truth_t.bound, msg="lucidrains ddim float32")
    numerics.assert_within_bound(ours, truth_o.value, truth_o.bound, msg="vdm_fast float32")
    assert ((ours.double() - theirs.double()).abs() <= numerics.K * (truth_t.bound + truth_o.bound) + 1e-9).all()
