"""Per-sample sums do not lose small terms next to large ones (issue 18, item 2), in every reduction.

Each sample holds, at the start of every 1024-element block, one large term (about 100 nats for
discretized_gaussian_nll and the squared-error sums, 800 for recon_nll, 10 for q_sample's gradient
sums) and then 1023 small ones below half an ulp of it in float32. A float32 running sum absorbs
every small term once it holds a large one: a bias of 6e-4 nats per block in discretized_gaussian_nll
(5e-6 of the sum), 8e-3 in recon_nll. The per-element terms are computed in float32 (a few ulps
each), so against the float64 truth a float32 kernel must agree within 8 * 2^-24 (5e-7) of the sum
of the terms' magnitudes: a bound the absorbed-sum bias exceeds, and that any correctly rounded
accumulation meets. Every CPU loop sums in double: scalar loops in one double, vectorised ones in a
double per SIMD lane (float lane partials absorbed the small terms sharing a lane with the large
one: 127 of them per block with AVX2's 8 lanes, beyond the bound; tests/test_cpu_paths.py runs this
file at every CPU level).
"""

from __future__ import annotations

import math

import pytest
import torch

import vdm_fast
from vdm_fast import reference

from helpers import backend_params

BLOCK, BLOCKS = 1024, 4
D = BLOCK * BLOCKS
BOUND = 8 * 2.0**-24


def _large_at_block_starts(batch: int) -> torch.Tensor:
    large = torch.zeros(batch, D, dtype=torch.bool)
    large[:, ::BLOCK] = True
    return large


def _check(got: torch.Tensor, truth_terms: torch.Tensor, small_below: float, large_above: float) -> None:
    truth = truth_terms.sum(-1)
    magnitude = truth_terms.abs().sum(-1)
    small = truth_terms[~_large_at_block_starts(truth_terms.shape[0])]
    # the construction has its power: every small term below half an ulp of the large one
    assert small.max() < small_below and truth_terms[:, 0].min() > large_above
    assert small_below < 0.5 * 2.0 ** (math.floor(math.log2(large_above)) - 23)  # half a float32 ulp
    err = (got.double().cpu() - truth).abs()
    assert (err <= BOUND * magnitude).all(), (err / magnitude).max()


@pytest.mark.parametrize("backend", backend_params("discretized_gaussian_nll", include_reference=True))
def test_discretized_gaussian_nll_keeps_small_terms(backend):
    """erf only: improved-diffusion's tanh CDF forms the bin mass as a difference of two CDFs near 1,
    so each small term carries an absolute error of about 2^-24 in float32 (PyTorch's own, and the
    reference's), as large as the summation bias this test looks for. The tanh path shares the
    summation loop (dgauss_segment and its Triton / CUDA counterparts)."""
    cdf = "erf"
    name, device = backend
    batch = 2
    x = torch.zeros(batch, D, dtype=torch.float64)  # bin [-1/255, 1/255]
    # scale 0.2/255: the bin is +-5 scales wide, mass outside 5.7e-7; a mean 3/255 away: ~100 nats
    mean = torch.where(_large_at_block_starts(batch), 3.0 / 255, 0.0).double()
    log_scale = torch.full_like(x, math.log(0.2 / 255))
    # per-element terms: the float64 reference on one-element samples
    terms = reference.discretized_gaussian_nll(x.reshape(-1, 1), mean.reshape(-1, 1), log_scale.reshape(-1, 1),
                                               cdf).reshape(batch, D)
    got = vdm_fast.discretized_gaussian_nll(x.float().to(device), mean.float().to(device),
                                            log_scale.float().to(device), cdf, backend=name)
    _check(got, terms, 9e-7, 50)


@pytest.mark.parametrize("backend", backend_params("recon_nll", include_reference=True))
def test_recon_nll_keeps_small_terms(backend):
    name, device = backend
    batch = 2
    k = torch.full((batch, D), 100)
    x = (2 * (k + 0.5) / 256 - 1).double()  # VDM's bin centres
    alpha = torch.full((batch,), 0.999, dtype=torch.float64)
    sigma = torch.full((batch,), 0.999 * 0.2 / 127.5, dtype=torch.float64)  # 0.2 of half a bin width
    # z at the centre: the neighbours are 5 scales away (small terms, 7.5e-6); 8 bins off for the
    # large ones (about 800 nats, half an ulp 3e-5)
    z = alpha[:, None] * (x + torch.where(_large_at_block_starts(batch), 8 * 2 / 256, 0.0))
    terms = reference.recon_nll(x.reshape(-1, 1), z.reshape(-1, 1), alpha.repeat_interleave(D),
                                sigma.repeat_interleave(D)).reshape(batch, D)
    got = vdm_fast.recon_nll(x.float().to(device), z.float().to(device), alpha.float().to(device),
                             sigma.float().to(device), backend=name)
    _check(got, terms, 1e-5, 500)


# --- the bandwidth-bound reductions: lane-parallel float partials over blocks, combined in double ----------------
#
# One large term (a residual of 10: 100) at the start of every 1024-element block, tiny ones (a residual of
# 7.7e-4: 6e-7) elsewhere, all exactly representable products of float32 inputs (x = 0 or r), so the
# per-element terms carry one rounding each and the float64 truth is exact.


def _large_and_tiny(batch: int, tiny: float = 7.75e-4) -> torch.Tensor:
    return torch.where(_large_at_block_starts(batch), 10.0, tiny).double()


@pytest.mark.parametrize("backend", backend_params("sq_error", include_reference=True))
def test_sq_error_keeps_small_terms(backend):
    name, device = backend
    r = _large_and_tiny(2)
    x0, noise = torch.zeros_like(r), torch.zeros_like(r)
    alpha, sigma = torch.ones(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    got = vdm_fast.sq_error(r.float().to(device), x0.float().to(device), noise.float().to(device),
                            alpha.float().to(device), sigma.float().to(device), "x0", backend=name)
    _check(got, r.float().double() ** 2, 9e-7, 50)


@pytest.mark.parametrize("backend", backend_params("prior_kl", include_reference=True))
def test_prior_kl_keeps_small_terms(backend):
    name, device = backend
    x = _large_and_tiny(2)
    one = torch.ones(2)
    got = vdm_fast.prior_kl(x.float().to(device), one.to(device), one.to(device), backend=name)  # 1/2 sum x²
    _check(got, 0.5 * x.float().double() ** 2, 9e-7 / 2, 50 / 2)


@pytest.mark.parametrize("backend", backend_params("gaussian_kl", include_reference=True))
def test_gaussian_kl_keeps_small_terms(backend):
    name, device = backend
    m = _large_and_tiny(2)
    zero = torch.zeros_like(m).float().to(device)
    got = vdm_fast.gaussian_kl(m.float().to(device), zero, zero, zero, backend=name)  # equal variances: 1/2 sum m²
    _check(got, 0.5 * m.float().double() ** 2, 9e-7 / 2, 50 / 2)


@pytest.mark.parametrize("backend", backend_params("q_sample", include_reference=True))
def test_q_sample_backward_keeps_small_terms(backend):
    name, device = backend
    x = _large_and_tiny(2, tiny=2e-7).float().to(device)  # linear terms: 2e-7 is below half an ulp of 10
    alpha = torch.ones(2, device=device, requires_grad=True)
    sigma = torch.ones(2, device=device)
    vdm_fast.q_sample(x, alpha, sigma, torch.zeros_like(x), backend=name).sum().backward()  # d/d alpha = sum x
    _check(alpha.grad, x.double().cpu(), 3e-7, 8)
