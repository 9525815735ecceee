"""discretized_gaussian_nll: the DDPM / improved-diffusion decoder, -log of the Gaussian mass of
x0's 8-bit bin, per sample in nats (DESIGN.md §3, §4.5).

Native ops ``vdm_fast::discretized_gaussian_nll`` / ``discretized_gaussian_nll_backward`` (csrc/,
math in csrc/discretized_gaussian_math.h), Triton ops ``..._triton`` (kernels/) and the reference.
Gradients: mean and log_scale elementwise from one fused backward pass; x0 is data (none).
"""

from __future__ import annotations

import torch

from .. import _checks, backends, reference
from .._layout import empty_out_like
from ._registry import Implementations, native_defined, triton_kernels

NAME = "discretized_gaussian_nll"
impls = Implementations(NAME, {"reference": reference.discretized_gaussian_nll})


def _fake_forward(x0, mean, log_scale, cdf="erf"):
    return x0.new_empty((x0.shape[0],), dtype=_checks.compute_dtype(x0.dtype))


def _fake_backward(grad, x0, mean, log_scale, cdf, output_mask):
    want_gm, want_gl = output_mask
    return (
        empty_out_like(x0) if want_gm else x0.new_empty(0),
        empty_out_like(x0) if want_gl else x0.new_empty(0),  # grads share x0's layout
    )


def _attach_autograd(forward_op, backward_op) -> None:
    def setup_context(ctx, inputs, output):
        x0, mean, log_scale = inputs[:3]
        ctx.cdf = inputs[3] if len(inputs) > 3 else "erf"
        ctx.save_for_backward(x0, mean, log_scale)

    def backward(ctx, grad):
        x0, mean, log_scale = ctx.saved_tensors
        # needs_input_grad has one entry per input the op was called with (cdf may be absent).
        need_mean, need_ls = ctx.needs_input_grad[1:3]
        gm, gl = backward_op(grad.contiguous(), x0, mean, log_scale, ctx.cdf, [need_mean, need_ls])
        out = [None, gm if need_mean else None, gl if need_ls else None]
        return tuple(out + [None] * (len(ctx.needs_input_grad) - 3))

    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)


if native_defined(NAME):
    torch.library.register_fake(f"vdm_fast::{NAME}")(_fake_forward)
    torch.library.register_fake(f"vdm_fast::{NAME}_backward")(_fake_backward)
    # Autograd of the native op is registered in C++ (csrc/discretized_gaussian_nll.cpp).
    impls.table["cpu"] = impls.table["cuda"] = torch.ops.vdm_fast.discretized_gaussian_nll.default

_tk = triton_kernels(NAME)
if _tk is not None:
    discretized_gaussian_nll_triton = torch.library.triton_op(
        f"vdm_fast::{NAME}_triton", _tk.discretized_gaussian_nll, mutates_args=()
    )
    discretized_gaussian_nll_backward_triton = torch.library.triton_op(
        f"vdm_fast::{NAME}_backward_triton", _tk.discretized_gaussian_nll_backward, mutates_args=()
    )
    # Explicit fakes: the Triton interpreter cannot run on fake tensors (see q_sample).
    discretized_gaussian_nll_triton.register_fake(_fake_forward)
    discretized_gaussian_nll_backward_triton.register_fake(_fake_backward)
    _attach_autograd(discretized_gaussian_nll_triton, discretized_gaussian_nll_backward_triton)
    impls.table["triton"] = discretized_gaussian_nll_triton


def discretized_gaussian_nll(x0: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, cdf: str = "erf", *,
                             backend: str | None = None) -> torch.Tensor:
    """-log P(x0's bin) under N(mean, exp(log_scale)^2), summed per sample, nats.

    Args:
        x0: data on the DDPM grid k/127.5 - 1 in [-1, 1] (outside it, or NaN, raises).
        mean, log_scale: the decoder's mean and log standard deviation, shape of x0.
        cdf: ``"erf"`` (exact, stable in log space) or ``"tanh"`` (improved-diffusion's
            approximation with its 1e-12 clamps, to reproduce their numbers).
        backend: ``"cpu"``, ``"cuda"``, ``"triton"`` or ``"reference"``; default: the fastest
            available for the device.

    Returns:
        (B,) in float32 (float64 for float64 data); differentiable in mean and log_scale.
    """
    _checks.data(NAME, "x0", x0)
    _checks.same_as(NAME, "mean", mean, x0, "x0")
    _checks.same_as(NAME, "log_scale", log_scale, x0, "x0")
    if cdf not in reference.CDFS:
        raise ValueError(f"{NAME}: cdf must be one of {reference.CDFS}, got {cdf!r}")
    _checks.within(NAME, "x0", x0, -1.0, 1.0)
    return impls(backends.resolve(backend, x0.device, NAME))(x0, mean, log_scale, cdf)
