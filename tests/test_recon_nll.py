"""recon_nll (DESIGN.md §3, §4.5): what is particular to it — extreme regimes, bin assignment, both
summation regimes under gradcheck. The rest (every backend, dtype, layout, coefficient form, bad
input, opcheck, compile): tests/test_ops.py.

The fused kernels sum only a window of bins around the softmax's mode (csrc/recon_nll_math.h);
the reference sums all 256, so every comparison here also checks the truncation bound (below e^-40
relative, negligible against the running error bound of tests/numerics.py that every comparison
here uses).
"""

from __future__ import annotations

import pytest
import torch

import vdm_fast
from vdm_fast import reference
import numerics
from helpers import backend_params

BACKENDS = backend_params("recon_nll")


def grid_data(shape, device, jitter=0.3):
    """x0 near VDM's bin centres (within +-jitter of a bin width: nearest-bin assignment matters)."""
    k = torch.randint(0, 256, shape, device=device).double()
    return (2 * (k + 0.5 + jitter * (2 * torch.rand(shape, device=device, dtype=torch.float64) - 1)) / 256 - 1)


def make_inputs(shape, dtype, device, requires_grad=False, sigma_range=(1e-3, 0.5)):
    """x0 on the grid, z0 = alpha x0 + sigma eps, sigma log-uniform over sigma_range per sample
    (small sigma: a few bins summed; large: all 256)."""
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    B = shape[0]
    lo, hi = torch.log(torch.tensor(sigma_range, dtype=torch.float64))
    sigma = torch.exp(lo + (hi - lo) * torch.rand(B, dtype=torch.float64)).to(device)
    alpha = torch.sqrt(1 - sigma**2)
    x = grid_data(shape, device)
    view = (B,) + (1,) * (len(shape) - 1)
    z = alpha.reshape(view) * x + sigma.reshape(view) * torch.randn(shape, device=device, dtype=torch.float64)
    x0 = x.to(dtype)
    z0 = z.to(dtype).requires_grad_(requires_grad)
    return x0, z0, alpha.to(cdt).requires_grad_(requires_grad), sigma.to(cdt).requires_grad_(requires_grad)


def check_against_reference(name, inputs, upstream, msg=""):
    """Value and the gradients in z0, alpha_0, sigma_0 of backend ``name`` within the running error
    bound of the reference (tests/numerics.py): gradients scale like 1/sigma_0^2 and sum terms
    that cancel, and the bound says so, element by element."""
    return numerics.check_against_reference(lambda *a: vdm_fast.recon_nll(*a, backend=name), reference.recon_nll,
                                            inputs, upstream=upstream, wrt=(1, 2, 3), msg=f"{name} {msg}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize(
    "regime", ["sigma_tiny", "sigma_1e-4", "sigma_1", "z0_far_outside", "z0_far_tiny_sigma", "alpha_small"]
)
def test_extremes_finite_and_equal_to_float64_reference(backend, dtype, regime):
    """Tiny and ~1 sigma, z0 far outside [-1, 1], alpha_0 -> 0: finite, and equal to the float64
    reference within the running error bound of the reference formula. Where that formula cancels
    (alpha_0 = 1e-6: z0 - alpha_0 c_k keeps few bits of alpha_0 c_k in float32) the bound of the z0
    and sigma_0 gradients exceeds the gradients themselves."""
    name, device = backend
    shape = (3, 2, 7, 5)
    x0, z0, alpha, sigma = make_inputs(shape, dtype, device)
    cdt = alpha.dtype
    if regime == "sigma_tiny":
        sigma = torch.full_like(sigma, 1e-6)
        z0 = (alpha[:, None, None, None] * x0.to(cdt) + 1e-6 * torch.randn(shape, device=device)).to(dtype)
    elif regime == "sigma_1e-4":
        sigma = torch.full_like(sigma, 1e-4)
        z0 = (alpha[:, None, None, None] * x0.to(cdt) + 1e-4 * torch.randn(shape, device=device)).to(dtype)
    elif regime == "sigma_1":
        sigma = torch.tensor([0.9, 1.0, 1.1], device=device, dtype=cdt)
    elif regime == "z0_far_outside":
        z0 = (torch.randn(shape, device=device) * 20).to(dtype)
    elif regime == "z0_far_tiny_sigma":
        sigma = torch.full_like(sigma, 1e-3)
        z0 = (torch.randn(shape, device=device).sign() * (3 + 5 * torch.rand(shape, device=device))).to(dtype)
    elif regime == "alpha_small":
        alpha = torch.tensor([1e-3, 1e-6, 0.0], device=device, dtype=cdt)
        sigma = torch.ones_like(sigma)
    upstream = torch.tensor([1.0, 0.5, 2.0], device=device, dtype=cdt)
    out, got = check_against_reference(name, (x0, z0, alpha, sigma), upstream, msg=regime)
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in got)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bin_assignment_matches_reference_bin_index(backend):
    """Ties (bin edges), the ends of [-1, 1] and exact centres are binned as reference.bin_index;
    with a tiny sigma a wrong bin would change the nll by ~1e4 nats. (Values outside [-1, 1] are
    rejected: tests/test_hardening_ops.py.)"""
    name, device = backend
    k = torch.arange(257, dtype=torch.float64)
    edges = 2 * k / 256 - 1  # exactly between two centres: ties to even
    centres = 2 * (torch.arange(256, dtype=torch.float64) + 0.5) / 256 - 1
    x = torch.cat([edges, centres, torch.tensor([-1.0, 1.0, 0.0])]).to(device)
    x0 = x.float().reshape(1, -1)
    z0 = (x0 + 1e-3 * torch.randn_like(x0))
    alpha, sigma = torch.ones(1, device=device), torch.full((1,), 2e-3, device=device)
    numerics.check_against_reference(lambda *a: vdm_fast.recon_nll(*a, backend=name), reference.recon_nll,
                                     (x0, z0, alpha, sigma), msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sigma_range", [(0.01, 0.05), (0.3, 0.8)], ids=["window", "all_bins"])
def test_gradcheck_fp64(backend, sigma_range):
    name, device = backend
    x0, z0, alpha, sigma = make_inputs((3, 2, 5), torch.float64, device, requires_grad=True, sigma_range=sigma_range)
    assert torch.autograd.gradcheck(lambda *a: vdm_fast.recon_nll(x0, *a, backend=name), (z0, alpha, sigma))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_window_lengths_across_tiles_matches_reference(backend, dtype):
    """Samples longer than the CPU kernel's 128-element tiles and not a multiple of them
    (csrc/cpu/recon_nll_vec.h), with window lengths 3, 5, 23, 115 and all 256 bins side by side,
    data in the bins at both ends of [-1, 1] (windows shifted to stay on the grid), in every data
    dtype that computes in float32; value and gradients."""
    name, device = backend
    sigma = torch.tensor([1e-4, 1.3e-3, 1e-2, 5e-2, 0.3], dtype=torch.float64)
    alpha = torch.sqrt(1 - sigma**2)
    B, D = sigma.shape[0], 2 * 128 + 37
    x = grid_data((B, D), "cpu")
    ends = torch.tensor([0, 1, 254, 255], dtype=torch.float64)
    x[:, :4] = 2 * (ends + 0.5) / 256 - 1
    z = alpha[:, None] * x + sigma[:, None] * torch.randn(B, D, dtype=torch.float64)
    x0, z0 = x.to(dtype).to(device), z.to(dtype).to(device)
    upstream = torch.tensor([1.0, 0.5, 2.0, -1.0, 3.0], device=device)
    check_against_reference(name, (x0, z0, alpha.float().to(device), sigma.float().to(device)), upstream, msg=str(dtype))


def _edge_inputs(dtype, device):
    """z0 next to every edge between two bins, on both sides (1, 2 and 4 ulps of the dtype, and
    1e-7), with x0 in the bin on z0's side: the nearest bin is the true one, but z0/alpha in bins
    rounds onto the edge."""
    edges = torch.arange(1, 256, dtype=torch.float64) / 128 - 1
    rows = []
    for side in (-1.0, 1.0):
        for steps in (1, 2, 4, None):
            e = edges.to(dtype)
            if steps is None:
                z = (edges + side * 1e-7).to(dtype)
            else:
                z = e
                for _ in range(steps):
                    z = torch.nextafter(z, torch.full_like(z, side * 2.0))
            x0 = (edges + side * 0.5 / 128).to(dtype)  # the centre of the bin on z's side
            rows.append((x0, z))
    x0 = torch.stack([r[0] for r in rows]).to(device)
    z0 = torch.stack([r[1] for r in rows]).to(device)
    return x0, z0


@pytest.mark.parametrize("backend", backend_params("recon_nll", include_reference=True))
@pytest.mark.parametrize("gamma_0", [-20.0, -30.0, -40.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_finite_next_to_every_bin_edge_and_matches_reference(backend, gamma_0, dtype):
    """Issue 15: at gamma_0 = -30 in float32 the bin estimate snapped to the neighbour and the true
    bin's term overflowed exp (+inf, NaN gradient) where the value is finite. Every backend is now
    finite there, value and gradients, and equals the reference within the running error bound
    (tests/numerics.py: one ulp of z0 moves the value by up to thousands of nats here)."""
    name, device = backend
    x0, z0 = _edge_inputs(dtype, device)
    g = torch.tensor(gamma_0, dtype=torch.float64)
    alpha, sigma = torch.sigmoid(-g).sqrt().to(dtype), torch.sigmoid(g).sqrt().to(dtype)
    z = z0.clone().requires_grad_()
    a = alpha.expand(z0.shape[0]).clone().to(device).requires_grad_()
    s = sigma.expand(z0.shape[0]).clone().to(device).requires_grad_()
    out = vdm_fast.recon_nll(x0, z, a, s, backend=name)
    gz, ga, gs = torch.autograd.grad(out.sum(), (z, a, s))
    for what, t in (("value", out), ("dz", gz), ("dalpha", ga), ("dsigma", gs)):
        assert torch.isfinite(t).all(), f"{name} {dtype} gamma_0={gamma_0}: {what} not finite"
    if name != "reference":
        numerics.check_against_reference(lambda *v: vdm_fast.recon_nll(*v, backend=name), reference.recon_nll,
                                         [x0, z0, a.detach(), s.detach()], upstream=torch.ones_like(out.detach()),
                                         wrt=(1, 2, 3), msg=f"{name} gamma_0={gamma_0}")
