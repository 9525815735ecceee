"""prior_kl: L_prior = KL(q(z_1|x) || N(0, I)) per sample, in nats (DESIGN.md §3, §4.4).

Native ops ``vdm_fast::prior_kl`` / ``prior_kl_backward`` (csrc/), Triton ops
``vdm_fast::prior_kl_triton`` / ``prior_kl_backward_triton`` (kernels/prior_kl.py) and the
reference. The kernels use L = a^2/2 sum_i x_i^2 + D/2 (s^2 - 1 - log s^2): one pass, the sum of squares.
"""

from __future__ import annotations

import torch

from .. import _checks, backends, reference
from .._layout import empty_out_like
from ._registry import Implementations, native_defined, triton_kernels

NAME = "prior_kl"
impls = Implementations(NAME, {"reference": reference.prior_kl})


def _fake_forward(x0, alpha_1, sigma_1):
    return alpha_1.new_empty(x0.shape[0])


def _fake_backward(grad, x0, alpha_1, sigma_1, output_mask):
    want_gx, want_ga, want_gs = output_mask
    return (
        empty_out_like(x0) if want_gx else x0.new_empty(0),
        alpha_1.new_empty(alpha_1.shape) if want_ga else alpha_1.new_empty(0),
        sigma_1.new_empty(sigma_1.shape) if want_gs else sigma_1.new_empty(0),
    )


def _attach_autograd(forward_op, backward_op) -> None:
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def backward(ctx, grad):
        x0, alpha_1, sigma_1 = ctx.saved_tensors
        mask = list(ctx.needs_input_grad)
        grads = backward_op(grad.contiguous(), x0, alpha_1, sigma_1, mask)
        return tuple(g if need else None for g, need in zip(grads, mask))

    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)


if native_defined(NAME):
    torch.library.register_fake("vdm_fast::prior_kl")(_fake_forward)
    torch.library.register_fake("vdm_fast::prior_kl_backward")(_fake_backward)
    # Autograd of the native op is registered in C++ (csrc/prior_kl.cpp).
    impls.table["cpu"] = impls.table["cuda"] = torch.ops.vdm_fast.prior_kl.default

_tk = triton_kernels(NAME)
if _tk is not None:
    prior_kl_triton = torch.library.triton_op("vdm_fast::prior_kl_triton", _tk.prior_kl, mutates_args=())
    prior_kl_backward_triton = torch.library.triton_op(
        "vdm_fast::prior_kl_backward_triton", _tk.prior_kl_backward, mutates_args=()
    )
    # Explicit fakes: the Triton interpreter cannot run on fake tensors (see q_sample).
    prior_kl_triton.register_fake(_fake_forward)
    prior_kl_backward_triton.register_fake(_fake_backward)
    _attach_autograd(prior_kl_triton, prior_kl_backward_triton)
    impls.table["triton"] = prior_kl_triton


def prior_kl(x0: torch.Tensor, alpha_1, sigma_1, *, backend: str | None = None) -> torch.Tensor:
    """1/2 sum_i (alpha_1^2 x_i^2 + sigma_1^2 - 1 - log sigma_1^2) per sample, nats.

    Args:
        x0: clean data (B, ...), float32/float64/float16/bfloat16, any strides.
        alpha_1, sigma_1: per-sample scales at t = 1 (sigma_1 > 0): float, 0-d, (B,) or (B, 1, ..., 1).
        backend: see :mod:`vdm_fast.backends`.

    Returns:
        (B,) in float32 (float64 for float64 data); differentiable in x0, alpha_1, sigma_1.
    """
    _checks.data(NAME, "x0", x0)
    batch, cdt = x0.shape[0], _checks.compute_dtype(x0.dtype)
    alpha_1 = _checks.per_sample(NAME, "alpha_1", alpha_1, batch, x0.device, cdt)
    sigma_1 = _checks.per_sample(NAME, "sigma_1", sigma_1, batch, x0.device, cdt)
    _checks.positive(NAME, "sigma_1", sigma_1)
    return impls(backends.resolve(backend, x0.device, NAME))(x0, alpha_1, sigma_1)
