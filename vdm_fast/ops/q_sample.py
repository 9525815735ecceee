"""q_sample: z_t = alpha_t * x0 + sigma_t * noise (DESIGN.md §4.1), on every backend.

Native ops ``vdm_fast::q_sample`` / ``q_sample_backward`` (csrc/), Triton ops
``vdm_fast::q_sample_triton`` / ``q_sample_backward_triton`` (kernels/q_sample.py) and the
reference (vdm_fast/reference.py). Gradients: x0 and noise elementwise, alpha and sigma as
per-sample reductions (learned schedules need them), all from one fused backward pass.
"""

from __future__ import annotations

import torch

from .. import _checks, backends, reference
from .._layout import empty_out_like
from ._registry import Implementations, native_defined, triton_kernels

NAME = "q_sample"
impls = Implementations(NAME, {"reference": reference.q_sample})


def _fake_backward(grad, x0, noise, alpha, sigma, output_mask):
    want_gx, want_gn, want_ga, want_gs = output_mask
    return (
        empty_out_like(x0) if want_gx else x0.new_empty(0),
        empty_out_like(x0) if want_gn else x0.new_empty(0),  # grads share x0's layout
        alpha.new_empty(alpha.shape) if want_ga else alpha.new_empty(0),
        sigma.new_empty(sigma.shape) if want_gs else sigma.new_empty(0),
    )


def _attach_autograd(forward_op, backward_op) -> None:
    def setup_context(ctx, inputs, output):
        x0, alpha, sigma, noise = inputs
        ctx.save_for_backward(x0, alpha, sigma, noise)

    def backward(ctx, grad):
        x0, alpha, sigma, noise = ctx.saved_tensors
        need_x0, need_alpha, need_sigma, need_noise = ctx.needs_input_grad
        gx, gn, ga, gs = backward_op(grad, x0, noise, alpha, sigma, [need_x0, need_noise, need_alpha, need_sigma])
        return (
            gx if need_x0 else None,
            ga if need_alpha else None,
            gs if need_sigma else None,
            gn if need_noise else None,
        )

    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)


if native_defined(NAME):
    torch.library.register_fake("vdm_fast::q_sample")(lambda x0, alpha, sigma, noise: empty_out_like(x0))
    torch.library.register_fake("vdm_fast::q_sample_backward")(_fake_backward)
    # Autograd of the native op is registered in C++ (csrc/q_sample.cpp): it costs far less per call.
    impls.table["cpu"] = impls.table["cuda"] = torch.ops.vdm_fast.q_sample.default

_tk = triton_kernels(NAME)
if _tk is not None:
    q_sample_triton = torch.library.triton_op("vdm_fast::q_sample_triton", _tk.q_sample, mutates_args=())
    q_sample_backward_triton = torch.library.triton_op(
        "vdm_fast::q_sample_backward_triton", _tk.q_sample_backward, mutates_args=()
    )
    # Explicit fakes: triton_op derives one by running the launcher on fake tensors, which the
    # Triton interpreter (TRITON_INTERPRET=1, our CPU CI) cannot do.
    q_sample_triton.register_fake(lambda x0, alpha, sigma, noise: empty_out_like(x0))
    q_sample_backward_triton.register_fake(_fake_backward)
    _attach_autograd(q_sample_triton, q_sample_backward_triton)
    impls.table["triton"] = q_sample_triton


def q_sample(x0: torch.Tensor, alpha, sigma, noise: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """Sample the forward process q(z_t | x): ``z = alpha * x0 + sigma * noise``.

    Args:
        x0: clean data, shape (B, ...), float32/float64/float16/bfloat16, any strides.
        alpha, sigma: per-sample signal and noise scales: a float, a 0-d tensor, a (B,) or a
            (B, 1, ..., 1) tensor. Computed in float32 (float64 for float64 data).
        noise: standard normal noise, same shape, dtype and device as ``x0``.
        backend: ``"cpu"``, ``"cuda"``, ``"triton"`` or ``"reference"``; default: the fastest
            available for the device (see :mod:`vdm_fast.backends`).

    Returns:
        z_t, shape and dtype of ``x0``. Differentiable in x0, alpha, sigma and noise.
    """
    _checks.data(NAME, "x0", x0)
    _checks.same_as(NAME, "noise", noise, x0, "x0")
    batch, cdt = x0.shape[0], _checks.compute_dtype(x0.dtype)
    alpha = _checks.per_sample(NAME, "alpha", alpha, batch, x0.device, cdt)
    sigma = _checks.per_sample(NAME, "sigma", sigma, batch, x0.device, cdt)
    return impls(backends.resolve(backend, x0.device, NAME))(x0, alpha, sigma, noise)
