"""prior_kl (DESIGN.md §3, §4.4): what is particular to it. Equality with the reference on every
backend, dtype, layout and coefficient form, gradients, opcheck and compile: tests/test_ops.py."""

from __future__ import annotations

import pytest
import torch

import numerics
import vdm_fast
from helpers import backend_params
from vdm_fast import reference

BACKENDS = backend_params("prior_kl")


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigma_near_one(backend):
    # The VDM regime (sigma_1 ~ 1): the terms s^2 - 1 - log s^2 and s - 1/s cancel; the running
    # error bound against the float64 truth is the terms' magnitude times float32 resolution.
    name, device = backend
    x0 = torch.randn(5, 3, 7, 7, device=device)
    alpha = 0.05 + 0.3 * torch.rand(5, device=device)
    sigma = 1 - 1e-3 * torch.rand(5, device=device)
    upstream = 0.5 + torch.rand(5, device=device)
    numerics.check_against_reference(lambda *a: vdm_fast.prior_kl(*a, backend=name), reference.prior_kl,
                                     (x0, alpha, sigma), upstream=upstream, wrt=(0, 1, 2), msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_known_value(backend):
    # KL(N(a x, s^2) || N(0, 1)) per element, summed: a = 0 and s = 1 give exactly 0.
    name, device = backend
    x0 = torch.randn(3, 5, device=device)
    assert torch.equal(vdm_fast.prior_kl(x0, 0.0, 1.0, backend=name), torch.zeros(3, device=device))
