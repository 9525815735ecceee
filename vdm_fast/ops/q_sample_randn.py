"""q_sample_randn: (z, noise) with the noise drawn inside the q_sample kernel (DESIGN.md §4.2, §6).

Native op ``vdm_fast::q_sample_randn`` (csrc/), Triton op ``vdm_fast::q_sample_randn_triton``
(kernels/q_sample_randn.py), reference ``vdm_fast.reference.q_sample_randn``. The noise is the
randn_like stream of the seed (one draw from the generator) at offset 0, so
``noise == randn_like(x0)`` for the same generator state, and ``z == q_sample(x0, alpha, sigma, noise)``.
Differentiable in x0, alpha and sigma; the backward is q_sample's with the returned noise.
"""

from __future__ import annotations

import torch

from .. import reference
from . import _autodiff
from . import q_sample as _q_sample  # noqa: F401  (q_sample's spec is registered first: its backward is used)
from ._spec import COEFF, DATA, GENERATOR, LIKE_DATA, SPECS, Arg, OpSpec, normal, uniform

NAME = "q_sample_randn"


def sample_inputs(shape, dtype, device, generator):
    """Standard normal data, scales in (0, 1), a generator seeded from ``generator``."""
    return (normal(shape, dtype, device, generator), uniform(shape[0], 0.01, 0.99, dtype, device, generator),
            uniform(shape[0], 0.01, 0.99, dtype, device, generator),
            torch.Generator().manual_seed(int(torch.randint(2**31, (), generator=generator))))


def _triton(forward):
    """The Triton implementation (OpSpec.triton_fn): the forward op with q_sample's Triton backward
    attached (there is no q_sample_randn_backward), the noise a constant as on the other backends,
    and forward-mode AD through the composite twin (DESIGN.md §4.12)."""
    q_sample = SPECS["q_sample"]
    q_sample.load_triton()  # registers q_sample_backward_triton
    fused_backward = torch.ops.vdm_fast.q_sample_backward_triton.default
    composite_backward = _autodiff.backward(q_sample)

    def setup_context(ctx, inputs, output):
        x0, alpha, sigma, _seed, _offset = inputs
        ctx.save_for_backward(x0, alpha, sigma, output[1])

    def backward(ctx, grad_z, grad_noise):
        x0, alpha, sigma, noise = ctx.saved_tensors
        need_x0, need_alpha, need_sigma = ctx.needs_input_grad[:3]
        run = composite_backward if torch.is_grad_enabled() else fused_backward  # create_graph: composite
        gx, ga, gs, _ = run(grad_z.contiguous(), x0, alpha, sigma, noise, [need_x0, need_alpha, need_sigma, False])
        return gx if need_x0 else None, ga if need_alpha else None, gs if need_sigma else None, None, None

    torch.library.register_autograd(forward, backward, setup_context=setup_context)

    def implementation(x0, alpha, sigma, seed, offset):
        z, noise = forward(x0, alpha, sigma, seed, offset)
        return z, noise.detach()

    return SPEC.with_tangents(implementation)


# Differentiable in x0, alpha, sigma through q_sample's backward with the returned noise (the
# noise is a constant): the native op's autograd is csrc/cpu/q_sample_randn.cpp, the Triton op's
# is attached by _triton; there is no q_sample_randn_backward.
SPEC = OpSpec(
    NAME,
    args=(Arg("x0", DATA, grad=True), Arg("alpha", COEFF, grad=True), Arg("sigma", COEFF, grad=True),
          Arg("generator", GENERATOR)),
    outputs=(LIKE_DATA, LIKE_DATA),
    reference=reference.q_sample_randn,
    sample_inputs=sample_inputs,
    fused_backward=False,
    triton_fn=_triton,
).register()


def q_sample_randn(x0: torch.Tensor, alpha, sigma, generator: torch.Generator | None = None, *,
                   backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample the forward process with fresh noise drawn in the same pass: ``(z, noise)``,
    ``z = alpha * x0 + sigma * noise``, noise ~ N(0, I) from Philox4x32-10 (DESIGN.md §6).

    Args:
        x0: clean data, shape (B, ...), float32/float64/float16/bfloat16, any strides.
        alpha, sigma: per-sample scales: a float, a 0-d, a (B,) or a (B, 1, ..., 1) tensor.
        generator: the torch.Generator the seed is drawn from (one draw per call; default:
            torch's default CPU generator), or a 0-d int64 tensor that is the seed. The noise
            equals ``randn_like(x0, generator)`` for the same generator state. Under
            torch.compile: None (the same seeds as eager) or a seed tensor (DESIGN.md §6).
        backend: ``"cpu"``, ``"cuda"``, ``"triton"`` or ``"reference"``; default: the fastest.

    Returns:
        (z, noise), both of ``x0``'s shape, dtype and layout; the noise is drawn in float32 and
        rounded to x0's dtype, and z is computed from the rounded noise, so
        ``z == q_sample(x0, alpha, sigma, noise)``. z is differentiable in x0, alpha and sigma;
        the noise is a constant.

    Activation checkpointing: ``torch.utils.checkpoint`` recomputes the forward in the backward
    but restores only the default generators, so with an explicit ``generator`` the recompute
    draws different noise and the gradients are wrong (a PyTorch limit, DESIGN.md §6). Inside a
    checkpointed function, either draw the noise outside it and pass it in
    (``noise = randn_like(x0, generator)`` outside, ``q_sample(x0, alpha, sigma, noise)`` inside),
    or use the default generator (``generator=None``), whose state checkpoint restores.
    """
    return SPEC(x0, alpha, sigma, generator, backend=backend)
