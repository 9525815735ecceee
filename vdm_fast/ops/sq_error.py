"""sq_error: per-sample sum of (pred - target)^2, target in {eps, x0, v, score} built in-kernel
from x0, noise, alpha, sigma (DESIGN.md §4.3). The regression core of every diffusion loss.

Native ops ``vdm_fast::sq_error`` / ``sq_error_backward`` (csrc/, target passed as a string),
Triton ops ``vdm_fast::sq_error_triton`` / ``sq_error_backward_triton`` (kernels/sq_error.py) and
the reference. Gradients: pred, x0, noise elementwise and alpha, sigma as per-sample sums, all from
one fused backward pass that re-reads only the inputs the target uses.
"""

from __future__ import annotations

import torch

from .. import _checks, backends, reference
from .._layout import empty_out_like
from ._registry import Implementations, native_defined, triton_kernels

NAME = "sq_error"
impls = Implementations(NAME, {"reference": reference.sq_error})


def _fake_forward(pred, x0, noise, alpha, sigma, target):
    return alpha.new_empty(pred.shape[0])


def _fake_backward(grad, pred, x0, noise, alpha, sigma, target, output_mask):
    want_gp, want_gx, want_gn, want_ga, want_gs = output_mask
    return (
        empty_out_like(pred) if want_gp else pred.new_empty(0),  # grads share pred's layout
        empty_out_like(pred) if want_gx else pred.new_empty(0),
        empty_out_like(pred) if want_gn else pred.new_empty(0),
        alpha.new_empty(alpha.shape) if want_ga else alpha.new_empty(0),
        sigma.new_empty(sigma.shape) if want_gs else sigma.new_empty(0),
    )


def _attach_autograd(forward_op, backward_op) -> None:
    def setup_context(ctx, inputs, output):
        pred, x0, noise, alpha, sigma, target = inputs
        ctx.save_for_backward(pred, x0, noise, alpha, sigma)
        ctx.target = target

    def backward(ctx, grad):
        pred, x0, noise, alpha, sigma = ctx.saved_tensors
        mask = list(ctx.needs_input_grad[:5])
        grads = backward_op(grad.contiguous(), pred, x0, noise, alpha, sigma, ctx.target, mask)
        return tuple(g if need else None for g, need in zip(grads, mask)) + (None,)

    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)


if native_defined(NAME):
    torch.library.register_fake("vdm_fast::sq_error")(_fake_forward)
    torch.library.register_fake("vdm_fast::sq_error_backward")(_fake_backward)
    # Autograd of the native op is registered in C++ (csrc/sq_error.cpp): it costs far less per call.
    impls.table["cpu"] = impls.table["cuda"] = torch.ops.vdm_fast.sq_error.default

_tk = triton_kernels(NAME)
if _tk is not None:
    sq_error_triton = torch.library.triton_op("vdm_fast::sq_error_triton", _tk.sq_error, mutates_args=())
    sq_error_backward_triton = torch.library.triton_op(
        "vdm_fast::sq_error_backward_triton", _tk.sq_error_backward, mutates_args=()
    )
    # Explicit fakes: the Triton interpreter cannot run on fake tensors (see q_sample).
    sq_error_triton.register_fake(_fake_forward)
    sq_error_backward_triton.register_fake(_fake_backward)
    _attach_autograd(sq_error_triton, sq_error_backward_triton)
    impls.table["triton"] = sq_error_triton


def sq_error(pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, alpha, sigma, target: str = "eps", *,
             backend: str | None = None) -> torch.Tensor:
    """Per-sample squared error of a model output against its parameterization's target.

    Args:
        pred: model output, shape (B, ...), float32/float64/float16/bfloat16.
        x0, noise: the clean data and the noise that made z_t; same shape, dtype, device as pred.
        alpha, sigma: per-sample scales of z_t (float, 0-d, (B,) or (B, 1, ..., 1)).
        target: ``"eps"`` (noise), ``"x0"``, ``"v"`` (alpha*noise - sigma*x0) or ``"score"``
            (-noise/sigma).
        backend: see :mod:`vdm_fast.backends`.

    Returns:
        (B,) tensor in float32 (float64 for float64 data). Differentiable in pred, x0, noise,
        alpha and sigma.
    """
    _checks.data(NAME, "pred", pred)
    _checks.same_as(NAME, "x0", x0, pred, "pred")
    _checks.same_as(NAME, "noise", noise, pred, "pred")
    if target not in reference.TARGETS:
        raise ValueError(f"{NAME}: target must be one of {reference.TARGETS}, got {target!r}")
    batch, cdt = pred.shape[0], _checks.compute_dtype(pred.dtype)
    alpha = _checks.per_sample(NAME, "alpha", alpha, batch, pred.device, cdt)
    sigma = _checks.per_sample(NAME, "sigma", sigma, batch, pred.device, cdt)
    return impls(backends.resolve(backend, pred.device, NAME))(pred, x0, noise, alpha, sigma, target)
