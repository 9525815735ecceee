"""discretized_gaussian_nll (DESIGN.md §3, §4.5): what is particular to it — the tanh form's
clamps. Equality with the reference for both CDFs ("erf" exact in log space, "tanh"
improved-diffusion's with clamps) on every backend, dtype and layout: tests/test_ops.py."""

from __future__ import annotations

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
