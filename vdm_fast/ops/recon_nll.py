"""recon_nll: L_recon = -log p(x | z_0) with VDM's categorical 256-bin decoder (DESIGN.md §3,
§4.5); the 256-way log-softmax is fused and never materialised by the kernels.

Native ops ``vdm_fast::recon_nll`` / ``recon_nll_backward`` (csrc/, math in
csrc/recon_nll_math.h), Triton ops ``vdm_fast::recon_nll_triton`` / ``recon_nll_backward_triton``
(kernels/recon_nll.py) and the reference (vdm_fast/reference.py). Gradients: z0 elementwise,
alpha_0 and sigma_0 as per-sample reductions, from one fused backward pass; x0 is data (none).
"""

from __future__ import annotations

import torch

from .. import _checks, backends, reference
from .._layout import empty_out_like
from ._registry import Implementations, native_defined, triton_kernels

NAME = "recon_nll"
impls = Implementations(NAME, {"reference": reference.recon_nll})


def _fake_forward(x0, z0, alpha, sigma, decoder="categorical"):
    return alpha.new_empty(alpha.shape)


def _fake_backward(grad, x0, z0, alpha, sigma, decoder, output_mask):
    want_gz, want_ga, want_gs = output_mask
    return (
        empty_out_like(x0) if want_gz else x0.new_empty(0),
        alpha.new_empty(alpha.shape) if want_ga else alpha.new_empty(0),
        sigma.new_empty(sigma.shape) if want_gs else sigma.new_empty(0),
    )


def _attach_autograd(forward_op, backward_op) -> None:
    def setup_context(ctx, inputs, output):
        x0, z0, alpha, sigma = inputs[:4]
        ctx.decoder = inputs[4] if len(inputs) > 4 else "categorical"
        ctx.save_for_backward(x0, z0, alpha, sigma)

    def backward(ctx, grad):
        x0, z0, alpha, sigma = ctx.saved_tensors
        # needs_input_grad has one entry per input the op was called with (the decoder may be absent).
        need_z0, need_alpha, need_sigma = ctx.needs_input_grad[1:4]
        gz, ga, gs = backward_op(grad.contiguous(), x0, z0, alpha, sigma, ctx.decoder,
                                 [need_z0, need_alpha, need_sigma])
        out = [None, gz if need_z0 else None, ga if need_alpha else None, gs if need_sigma else None]
        return tuple(out + [None] * (len(ctx.needs_input_grad) - 4))

    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)


if native_defined(NAME):
    torch.library.register_fake("vdm_fast::recon_nll")(_fake_forward)
    torch.library.register_fake("vdm_fast::recon_nll_backward")(_fake_backward)
    # Autograd of the native op is registered in C++ (csrc/recon_nll.cpp).
    impls.table["cpu"] = impls.table["cuda"] = torch.ops.vdm_fast.recon_nll.default

_tk = triton_kernels(NAME)
if _tk is not None:
    recon_nll_triton = torch.library.triton_op("vdm_fast::recon_nll_triton", _tk.recon_nll, mutates_args=())
    recon_nll_backward_triton = torch.library.triton_op(
        "vdm_fast::recon_nll_backward_triton", _tk.recon_nll_backward, mutates_args=()
    )
    # Explicit fakes: the Triton interpreter cannot run on fake tensors (see q_sample).
    recon_nll_triton.register_fake(_fake_forward)
    recon_nll_backward_triton.register_fake(_fake_backward)
    _attach_autograd(recon_nll_triton, recon_nll_backward_triton)
    impls.table["triton"] = recon_nll_triton


def recon_nll(x0: torch.Tensor, z0: torch.Tensor, alpha_0, sigma_0, decoder: str = "categorical", *,
              backend: str | None = None) -> torch.Tensor:
    """-log p(x0 | z0) per sample, nats, for one draw of z0 ~ q(z_0 | x0).

    Args:
        x0: data on VDM's grid of bin centres 2(k + 1/2)/256 - 1, k = 0..255 (values are
            assigned to the nearest bin, ``reference.bin_index``); values outside [-1, 1] or NaN
            raise (DESIGN.md §4.10).
        z0: the latent at t = 0, same shape/dtype/device as x0.
        alpha_0, sigma_0: per-sample scales at t = 0: a float, a 0-d, (B,) or (B, 1, ..., 1) tensor;
            sigma_0 > 0.
        decoder: ``"categorical"``.
        backend: ``"cpu"``, ``"cuda"``, ``"triton"`` or ``"reference"``; default: the fastest
            available for the device.

    Returns:
        (B,) in float32 (float64 for float64 data); differentiable in z0, alpha_0, sigma_0.
        The fused kernels sum only the bins within float precision of the softmax's mass
        (csrc/recon_nll_math.h), all 256 when sigma_0/alpha_0 is large; memory is O(B·D).
    """
    _checks.data(NAME, "x0", x0)
    _checks.same_as(NAME, "z0", z0, x0, "x0")
    if decoder not in reference.DECODERS:
        raise ValueError(f"{NAME}: decoder must be one of {reference.DECODERS}, got {decoder!r}")
    batch, cdt = x0.shape[0], _checks.compute_dtype(x0.dtype)
    alpha_0 = _checks.per_sample(NAME, "alpha_0", alpha_0, batch, x0.device, cdt)
    sigma_0 = _checks.per_sample(NAME, "sigma_0", sigma_0, batch, x0.device, cdt)
    _checks.positive(NAME, "sigma_0", sigma_0)
    _checks.within(NAME, "x0", x0, -1.0, 1.0)
    return impls(backends.resolve(backend, x0.device, NAME))(x0, z0, alpha_0, sigma_0, decoder)
