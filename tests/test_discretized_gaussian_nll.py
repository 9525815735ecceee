"""discretized_gaussian_nll (DESIGN.md §3, §4.5): what is particular to it — the tanh form's
clamps. Equality with the reference for both CDFs ("erf" exact in log space, "tanh"
improved-diffusion's with clamps) on every backend, dtype and layout: tests/test_ops.py."""

from __future__ import annotations

import math

import pytest
import torch

import vdm_fast
from vdm_fast import reference
import numerics
from helpers import backend_params

BACKENDS = backend_params("discretized_gaussian_nll")


@pytest.mark.parametrize("backend", BACKENDS)
def test_tanh_clamps_pass_no_gradient(backend):
    """Where improved-diffusion's 1e-12 clamp bites, log P = log(1e-12) and the gradient is 0."""
    name, device = backend
    x0 = torch.tensor([[-1.0, 0.0, 1.0, 0.5]], device=device)
    mean = torch.tensor([[0.9, 0.9, -0.9, 0.5]], device=device, requires_grad=True)
    log_scale = torch.tensor([[-5.0, -5.0, -5.0, -5.0]], device=device, requires_grad=True)
    out = vdm_fast.discretized_gaussian_nll(x0, mean, log_scale, "tanh", backend=name)
    out.sum().backward()
    want = numerics.running_error(lambda *a: reference.discretized_gaussian_nll(*a, "tanh"), (x0, mean, log_scale),
                                  dtype=torch.float32)
    numerics.assert_within_bound(out, want.value, want.bound, msg="nll")
    assert torch.equal(mean.grad[0, :3], torch.zeros(3, device=device)) and mean.grad[0, 3] == 0  # at the mode
    assert torch.equal(log_scale.grad[0, :3], torch.zeros(3, device=device)) and log_scale.grad[0, 3] != 0


def _grid(device):
    """One element per sample: x0 in both edge bins, next to them and inside; mean from on x0 to
    far off it both ways; scales from a tenth of a bin to far wider than the data range. The deep
    tails of both CDF forms (log P down to -1e9), the upper tail of a middle bin (where both
    CDFs are near 1), bins far narrower than the scale (mass ~ width * density)."""
    x0 = torch.tensor([-1.0, -1.0 + 1 / 127.5, -0.5, 0.0, 1 / 255, 0.5, 1.0 - 1 / 127.5, 1.0], dtype=torch.float64)
    offsets = torch.tensor([0.0, 1e-4, 2 / 255, 0.02, 0.1, 0.5, 2.0, 30.0], dtype=torch.float64)
    offsets = torch.cat([offsets, -offsets[1:]])
    log_scale = torch.tensor([-9.0, -6.0, -4.0, -2.5, -1.0, 0.0, 2.0, 5.0], dtype=torch.float64)
    x, d, ls = torch.meshgrid(x0, offsets, log_scale, indexing="ij")
    x = x.reshape(-1, 1)
    return tuple(t.float().to(device) for t in (x, x - d.reshape(-1, 1), ls.reshape(-1, 1)))


@pytest.mark.parametrize("cdf", ["erf", "tanh"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_extremes_match_reference(backend, cdf):
    """Value and both gradients element by element over _grid, within the running error bound of
    the float32 reference formula (tests/numerics.py)."""
    name, device = backend
    x0, mean, log_scale = _grid(device)
    upstream = (0.5 + torch.rand(x0.shape[0], generator=torch.Generator().manual_seed(1))).to(device)
    numerics.check_against_reference(
        lambda *a: vdm_fast.discretized_gaussian_nll(*a, backend=name), reference.discretized_gaussian_nll,
        (x0, mean, log_scale, cdf), upstream=upstream, wrt=(1, 2), msg=f"{name} {cdf}")


@pytest.mark.parametrize("cdf", ["erf", "tanh"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_propagates_as_in_the_reference(backend, cdf, request):
    """A NaN mean or log_scale (x0 is checked: no NaN) makes its sample's value NaN in every bin kind
    (inside, left edge, right edge); the other samples stay finite (and equal the reference)."""
    name, device = backend
    if name == "triton" and cdf == "erf":  # seen under the Triton interpreter: inf and finite values
        request.node.add_marker(pytest.mark.xfail(strict=True, reason="the Triton erf kernel loses NaN"))
    x0 = torch.tensor([[0.0, 0.5], [-1.0, 0.2], [1.0, 0.3], [0.1, 0.1]], device=device)
    mean = torch.tensor([[0.01, 0.5], [-0.99, 0.2], [0.98, 0.3], [0.1, 0.1]], device=device)
    log_scale = torch.full_like(x0, -3.0)
    mean[0, 1], mean[1, 0], log_scale[2, 0] = math.nan, math.nan, math.nan
    out = vdm_fast.discretized_gaussian_nll(x0, mean, log_scale, cdf, backend=name)
    want = reference.discretized_gaussian_nll(x0, mean, log_scale, cdf)
    assert torch.equal(out.isnan(), torch.tensor([True, True, True, False], device=device))
    assert torch.equal(out.isnan(), want.isnan())
    assert torch.allclose(out[3], want[3], rtol=1e-5)
