"""q_sample_randn: (z, noise) with the noise drawn inside the q_sample kernel (DESIGN.md §4.2, §6).

Native op ``vdm_fast::q_sample_randn`` (csrc/), Triton op ``vdm_fast::q_sample_randn_triton``
(kernels/q_sample_randn.py), reference ``vdm_fast.reference.q_sample_randn``. The noise is the
randn_like stream of the seed (one draw from the generator) at offset 0, so
``noise == randn_like(x0)`` for the same generator state, and ``z == q_sample(x0, alpha, sigma, noise)``.
Differentiable in x0, alpha and sigma; the backward is q_sample's with the returned noise.
"""

from __future__ import annotations

import torch

from .. import _checks, backends, reference
from .._layout import empty_out_like
from ._registry import Implementations, native_defined, triton_kernels
from .noise import draw_seed

NAME = "q_sample_randn"
impls = Implementations(NAME, {"reference": reference.q_sample_randn})


def _fake(x0, alpha, sigma, seed, offset):
    return empty_out_like(x0), empty_out_like(x0)


if native_defined(NAME):
    torch.library.register_fake("vdm_fast::q_sample_randn")(_fake)
    # Autograd of the native op is registered in C++ (csrc/q_sample_randn.cpp).
    impls.table["cpu"] = impls.table["cuda"] = torch.ops.vdm_fast.q_sample_randn.default

_tk = triton_kernels(NAME)
if _tk is not None:
    from .q_sample import q_sample_backward_triton  # defined whenever Triton imports

    q_sample_randn_triton = torch.library.triton_op("vdm_fast::q_sample_randn_triton", _tk.q_sample_randn,
                                                    mutates_args=())
    q_sample_randn_triton.register_fake(_fake)  # see q_sample.py: the interpreter cannot run on fakes

    def _setup_context(ctx, inputs, output):
        x0, alpha, sigma, _seed, _offset = inputs
        ctx.save_for_backward(x0, alpha, sigma, output[1])

    def _backward(ctx, grad_z, grad_noise):
        x0, alpha, sigma, noise = ctx.saved_tensors
        need_x0, need_alpha, need_sigma = ctx.needs_input_grad[:3]
        gx, _, ga, gs = q_sample_backward_triton(grad_z, x0, noise, alpha, sigma,
                                                 [need_x0, False, need_alpha, need_sigma])
        return gx if need_x0 else None, ga if need_alpha else None, gs if need_sigma else None, None, None

    torch.library.register_autograd(q_sample_randn_triton, _backward, setup_context=_setup_context)

    def _triton(x0, alpha, sigma, seed, offset):
        z, noise = q_sample_randn_triton(x0, alpha, sigma, seed, offset)
        return z, noise.detach()  # a constant, as on the other backends

    impls.table["triton"] = _triton


def q_sample_randn(x0: torch.Tensor, alpha, sigma, generator: torch.Generator | None = None, *,
                   backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample the forward process with fresh noise drawn in the same pass: ``(z, noise)``,
    ``z = alpha * x0 + sigma * noise``, noise ~ N(0, I) from Philox4x32-10 (DESIGN.md §6).

    Args:
        x0: clean data, shape (B, ...), float32/float64/float16/bfloat16, any strides.
        alpha, sigma: per-sample scales: a float, a 0-d, a (B,) or a (B, 1, ..., 1) tensor.
        generator: the torch.Generator the seed is drawn from (one draw per call); default:
            torch's default CPU generator. The noise equals ``randn_like(x0, generator)`` for the
            same generator state.
        backend: ``"cpu"``, ``"cuda"``, ``"triton"`` or ``"reference"``; default: the fastest.

    Returns:
        (z, noise), both of ``x0``'s shape, dtype and layout; the noise is drawn in float32 and
        rounded to x0's dtype, and z is computed from the rounded noise, so
        ``z == q_sample(x0, alpha, sigma, noise)``. z is differentiable in x0, alpha and sigma;
        the noise is a constant.
    """
    _checks.data(NAME, "x0", x0)
    batch, cdt = x0.shape[0], _checks.compute_dtype(x0.dtype)
    alpha = _checks.per_sample(NAME, "alpha", alpha, batch, x0.device, cdt)
    sigma = _checks.per_sample(NAME, "sigma", sigma, batch, x0.device, cdt)
    seed = draw_seed(generator, NAME)
    return impls(backends.resolve(backend, x0.device, NAME))(x0, alpha, sigma, seed, 0)
