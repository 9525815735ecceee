"""Pure-PyTorch reference of every vdm_fast op: the oracle the fused kernels are tested against.

Each function here has the signature of the op of the same name in ``vdm_fast.ops``, with the
per-sample coefficients already normalised to (B,) tensors (``vdm_fast._checks.per_sample``).
The math follows DESIGN.md: it runs in the compute dtype (float32 for float16/bfloat16/float32
data, float64 for float64 data) and the result is cast back to the data's dtype, exactly what the
kernels promise. Written for clarity, not speed; autograd gives the gradients.
"""

from __future__ import annotations

import math

import torch

from . import parameterization
from ._checks import compute_dtype
from ._namespace import public_dir


def _per_sample_view(c: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (B,) coefficient as (B, 1, ..., 1), broadcastable against ``like``."""
    return c.reshape((c.shape[0],) + (1,) * (like.dim() - 1))


def q_sample(x0: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The forward process q(z_t | x): z_t = alpha_t * x0 + sigma_t * noise (Luo eq. 69)."""
    cdt = compute_dtype(x0.dtype)
    a = _per_sample_view(alpha.to(cdt), x0)
    s = _per_sample_view(sigma.to(cdt), x0)
    return (a * x0.to(cdt) + s * noise.to(cdt)).to(x0.dtype)


# --- ELBO terms (DESIGN.md §3, §4.3-4.5) ----------------------------------------------------------
# Per-sample results are returned in the compute dtype (float32, or float64 for float64 data):
# a sum over D elements is never rounded to a half dtype.

TARGETS = parameterization.PARAMETERIZATIONS
DECODERS = ("categorical",)
CDFS = ("erf", "tanh")


def _sum_per_sample(t: torch.Tensor) -> torch.Tensor:
    # reshape(B, -1) cannot infer -1 when B = 0: give D explicitly so empty batches work.
    return t.reshape(t.shape[0], math.prod(t.shape[1:])).sum(1)


def regression_target(x0, noise, alpha, sigma, target: str) -> torch.Tensor:
    """What a model of parameterization ``target`` should output (DESIGN.md §2,
    ``vdm_fast.parameterization.regression_target``), in the compute dtype."""
    cdt = compute_dtype(x0.dtype)
    a, s = _per_sample_view(alpha.to(cdt), x0), _per_sample_view(sigma.to(cdt), x0)
    return parameterization.regression_target(target, x0.to(cdt), noise.to(cdt), a, s)


def sq_error(pred, x0, noise, alpha, sigma, target: str = "eps") -> torch.Tensor:
    """sum over non-batch dims of (pred - target)^2, the target built from x0, noise, alpha, sigma."""
    cdt = compute_dtype(x0.dtype)
    return _sum_per_sample((pred.to(cdt) - regression_target(x0, noise, alpha, sigma, target)) ** 2)


def prior_kl(x0, alpha_1, sigma_1) -> torch.Tensor:
    """L_prior = KL(q(z_1|x) || N(0, I)) = 1/2 sum_i (alpha^2 x_i^2 + sigma^2 - 1 - log sigma^2), nats."""
    cdt = compute_dtype(x0.dtype)
    a2 = _per_sample_view(alpha_1.to(cdt), x0) ** 2
    s2 = _per_sample_view(sigma_1.to(cdt), x0) ** 2
    return 0.5 * _sum_per_sample(a2 * x0.to(cdt) ** 2 + s2 - 1 - torch.log(s2))


def bin_index(x0: torch.Tensor) -> torch.Tensor:
    """The 8-bit value k whose bin centre 2(k + 1/2)/256 - 1 is nearest to x0 (VDM data mapping)."""
    return torch.clamp(torch.round((x0.double() + 1) * 128 - 0.5), 0, 255).long()


def recon_nll(x0, z0, alpha_0, sigma_0, decoder: str = "categorical") -> torch.Tensor:
    """L_recon = -log p(x | z_0) for one draw of z_0, nats per sample.

    categorical (VDM): per element, logits over the 256 bin centres c_k are
    -1/2 (z_0 - alpha_0 c_k)^2 / sigma_0^2 (the likelihood of z_0 under each bin, DESIGN.md §3);
    the log-softmax is taken at the true bin of x0. This reference materialises the 256 logits.
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    cdt = compute_dtype(x0.dtype)
    centres = (2 * (torch.arange(256, device=x0.device, dtype=cdt) + 0.5) / 256 - 1)
    a = _per_sample_view(alpha_0.to(cdt), x0)[..., None]
    s = _per_sample_view(sigma_0.to(cdt), x0)[..., None]
    logits = -0.5 * ((z0.to(cdt)[..., None] - a * centres) / s) ** 2
    logp = torch.log_softmax(logits, dim=-1).gather(-1, bin_index(x0)[..., None]).squeeze(-1)
    return -_sum_per_sample(logp)


def _approx_standard_normal_cdf(x):
    # improved-diffusion's tanh approximation of the normal CDF, kept for comparability.
    return 0.5 * (1.0 + torch.tanh(torch.sqrt(torch.tensor(2.0 / torch.pi, dtype=x.dtype)) * (x + 0.044715 * x**3)))


def discretized_gaussian_nll(x0, mean, log_scale, cdf: str = "erf") -> torch.Tensor:
    """-log of the Gaussian N(mean, exp(log_scale)^2) mass of x0's 8-bit bin, nats per sample.

    Data on the DDPM grid k/127.5 - 1: the bin of x is [x - 1/255, x + 1/255], the edge bins
    (x < -0.999, x > 0.999) open-ended. ``cdf="tanh"`` reproduces improved-diffusion's
    ``discretized_gaussian_log_likelihood`` (tanh CDF, 1e-12 clamps); ``cdf="erf"`` is the exact
    normal CDF evaluated stably in log space (no clamps).
    """
    if cdf not in CDFS:
        raise ValueError(f"cdf must be one of {CDFS}, got {cdf!r}")
    cdt = compute_dtype(x0.dtype)
    x, m, ls = x0.to(cdt), mean.to(cdt), log_scale.to(cdt)
    inv_std = torch.exp(-ls)
    plus_in = inv_std * (x - m + 1.0 / 255)
    min_in = inv_std * (x - m - 1.0 / 255)
    if cdf == "tanh":
        cdf_plus = _approx_standard_normal_cdf(plus_in)
        cdf_min = _approx_standard_normal_cdf(min_in)
        log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
        log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
        log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    else:
        log_cdf_plus = torch.special.log_ndtr(plus_in)
        log_one_minus_cdf_min = torch.special.log_ndtr(-min_in)
        # log(Phi(b) - Phi(a)) for a < b, on the side of 0 where the tail is small:
        # for a > 0 use 1 - Phi symmetry, so both terms stay far from 1.
        flip = min_in > 0
        hi = torch.where(flip, -min_in, plus_in)
        lo = torch.where(flip, -plus_in, min_in)
        log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
        log_delta = log_hi + torch.log1p(-torch.exp(log_lo - log_hi))
    log_probs = torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))
    return -_sum_per_sample(log_probs)


def gaussian_kl(mean_q, log_var_q, mean_p, log_var_p) -> torch.Tensor:
    """KL(N(mean_q, exp(log_var_q)) || N(mean_p, exp(log_var_p))) of diagonal Gaussians, nats per sample.

    Per element 1/2 (-1 + log_var_p - log_var_q + exp(log_var_q - log_var_p)
    + (mean_q - mean_p)^2 exp(-log_var_p)): improved-diffusion's ``normal_kl``, the L_{t-1} terms of
    the variational bound (DDPM eq. 5) with learned variances. The variance ratio is one exp of the
    log-variance difference, so equal large log-variances do not overflow.
    """
    cdt = compute_dtype(mean_q.dtype)
    mq, lq, mp, lp = mean_q.to(cdt), log_var_q.to(cdt), mean_p.to(cdt), log_var_p.to(cdt)
    return 0.5 * _sum_per_sample(-1.0 + lp - lq + torch.exp(lq - lp) + (mq - mp) ** 2 * torch.exp(-lp))


# --- the reverse step (DESIGN.md §4.6) --------------------------------------------------------------

STEP_COEFFS = ("a_z", "a_m", "c_z", "c_m", "c_x", "c_n")


def reverse_step(z, model_out, coeffs, uncond=None, guidance_scale=None, classifier_grad=None,
                 grad_scale=None, clip=None, noise=None, generator=None) -> torch.Tensor:
    """One step of any sampler of DESIGN.md §5, per element:

    m = model_out, or uncond + w (model_out - uncond) with classifier-free guidance;
    m = m + grad_scale * classifier_grad (classifier guidance);
    x̂ = a_z z + a_m m, clamped to [-clip, clip] when clip is given;
    z_next = c_z z + c_m m + c_x x̂ + c_n n.

    ``coeffs`` is a (6, B) tensor in the compute dtype, rows (a_z, a_m, c_z, c_m, c_x, c_n);
    ``guidance_scale`` and ``grad_scale`` are (B,) or None; ``clip`` a float or None. ``noise``
    None draws standard normal noise (only when some c_n is non-zero).
    """
    return reverse_step_with_x0(z, model_out, coeffs, uncond, guidance_scale, classifier_grad, grad_scale, clip,
                                noise, generator)[0]


def reverse_step_with_x0(z, model_out, coeffs, uncond=None, guidance_scale=None, classifier_grad=None,
                         grad_scale=None, clip=None, noise=None, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``reverse_step`` and the x̂ it forms (clamped when clip is given), both in z's dtype."""
    cdt = compute_dtype(z.dtype)
    a_z, a_m, c_z, c_m, c_x, c_n = (_per_sample_view(c.to(cdt), z) for c in coeffs.unbind(0))
    zc, m = z.to(cdt), model_out.to(cdt)
    if uncond is not None:
        u = uncond.to(cdt)
        m = u + _per_sample_view(guidance_scale.to(cdt), z) * (m - u)
    if classifier_grad is not None:
        m = m + _per_sample_view(grad_scale.to(cdt), z) * classifier_grad.to(cdt)
    x_hat = a_z * zc + a_m * m
    if clip is not None:
        x_hat = x_hat.clamp(-clip, clip)
    out = c_z * zc + c_m * m + c_x * x_hat
    if noise is None and bool((coeffs[5] != 0).any()):
        noise = torch.randn(z.shape, dtype=z.dtype, device=z.device, generator=generator)
    if noise is not None:
        out = out + c_n * noise.to(cdt)
    return out.to(z.dtype), x_hat.to(z.dtype)


# --- Philox noise (DESIGN.md §6) --------------------------------------------------------------------
# The stream of csrc/philox.h in integer torch math: uint32 words held in int64 tensors and masked
# to 32 bits, so that it is an oracle independent of the kernels' uint32 arithmetic. Normals are
# the exact Box–Muller of the same uniforms, in float64, rounded to float32: the kernels (float32
# polynomials) must agree with them to a few float32 ulps.

_U32 = 0xFFFFFFFF
PHILOX_MUL = (0xD2511F53, 0xCD9E8D57)
PHILOX_WEYL = (0x9E3779B9, 0xBB67AE85)


def _mulhilo32(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of a * m for uint32 a (int64 tensor) and m, without int64 overflow."""
    p_hi, p_lo = (a >> 16) * m, (a & 0xFFFF) * m  # each < 2^48
    lo = ((p_hi & 0xFFFF) << 16) + p_lo
    return (p_hi >> 16) + (lo >> 32), lo & _U32


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 (Random123's philox4x32_R(10, ...)) on int64 tensors of uint32 values."""
    for _ in range(10):
        hi0, lo0 = _mulhilo32(c0, PHILOX_MUL[0])
        hi1, lo1 = _mulhilo32(c2, PHILOX_MUL[1])
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + PHILOX_WEYL[0]) & _U32, (k1 + PHILOX_WEYL[1]) & _U32
    return c0, c1, c2, c3


def philox_words(seed: int, offset: int, first_block: int, n_blocks: int, device=None) -> torch.Tensor:
    """The raw stream: (n_blocks, 4) int64 tensor of uint32 words of blocks first_block + k.

    Block c of stream (seed, offset) is Philox4x32-10 of counter (lo(c), hi(c), lo(offset),
    hi(offset)) under key (lo(seed), hi(seed)); seed, offset and c are taken mod 2^64.
    """
    seed, offset, first_block = seed % 2**64, offset % 2**64, first_block % 2**64
    lo = (first_block & _U32) + torch.arange(n_blocks, dtype=torch.int64, device=device)
    hi = ((first_block >> 32) + (lo >> 32)) & _U32
    lo = lo & _U32
    full = lambda v: torch.full_like(lo, v)  # noqa: E731
    words = philox4x32_10(lo, hi, full(offset & _U32), full(offset >> 32), full(seed & _U32), full(seed >> 32))
    return torch.stack(words, dim=1)


def philox_normals(seed: int, offset: int, n: int, device=None, first: int = 0) -> torch.Tensor:
    """Float32 standard normals of elements first .. first+n-1 of stream (seed, offset); first is
    a block boundary (a multiple of 4)."""
    if first % 4:
        raise ValueError(f"philox_normals: first must be a multiple of 4, got {first}")
    words = philox_words(seed, offset, first // 4, (n + 3) // 4, device)
    u = ((words >> 8) + 1).double() * 2.0**-24  # (0, 1], exact
    r0, r1 = torch.sqrt(-2 * torch.log(u[:, 0])), torch.sqrt(-2 * torch.log(u[:, 2]))
    t0, t1 = 2 * math.pi * u[:, 1], 2 * math.pi * u[:, 3]
    normals = torch.stack([r0 * torch.cos(t0), r0 * torch.sin(t0), r1 * torch.cos(t1), r1 * torch.sin(t1)], dim=1)
    return normals.reshape(-1)[:n].float()


def _seed_int(seed: torch.Tensor) -> int:
    return int(seed.reshape(()).item()) % 2**64


def randn_like(x: torch.Tensor, seed: torch.Tensor, offset: int) -> torch.Tensor:
    """Standard normal noise shaped like ``x`` (its dtype, drawn in float32): element i of the
    output's memory (layout rule: x's strides when x is batch-major dense, else contiguous) is
    element i of stream (seed, offset)."""
    from .kernels._layout import empty_out_like

    out = empty_out_like(x)
    flat = philox_normals(_seed_int(seed), offset, x.numel(), x.device).to(x.dtype)
    return torch.as_strided(flat, out.shape, out.stride())


def q_sample_randn(x0, alpha, sigma, seed, offset) -> tuple[torch.Tensor, torch.Tensor]:
    """(q_sample(x0, alpha, sigma, n), n) with n = randn_like(x0, seed, offset)."""
    noise = randn_like(x0, seed, offset)
    return q_sample(x0, alpha, sigma, noise), noise


__all__ = ["TARGETS", "DECODERS", "CDFS", "STEP_COEFFS", "PHILOX_MUL", "PHILOX_WEYL", "q_sample",
    "regression_target", "sq_error", "prior_kl", "bin_index", "recon_nll", "discretized_gaussian_nll",
    "gaussian_kl", "reverse_step", "reverse_step_with_x0", "philox4x32_10", "philox_words", "philox_normals", "randn_like", "q_sample_randn"]
__dir__ = public_dir(__all__)
