"""q_sample: z_t = alpha_t * x0 + sigma_t * noise (DESIGN.md §4.1), on every backend.

Native ops ``vdm_fast::q_sample`` / ``q_sample_backward`` (csrc/), Triton ops
``vdm_fast::q_sample_triton`` / ``q_sample_backward_triton`` (kernels/q_sample.py) and the
reference (vdm_fast/reference.py). Gradients: x0 and noise elementwise, alpha and sigma as
per-sample reductions (learned schedules need them), all from one fused backward pass.
"""

from __future__ import annotations

import torch

from .. import reference
from ._spec import COEFF, DATA, LIKE_DATA, Arg, OpSpec, normal, uniform


def sample_inputs(shape, dtype, device, generator):
    """Standard normal data and noise, scales in (0, 1)."""
    return (normal(shape, dtype, device, generator), uniform(shape[0], 0.01, 0.99, dtype, device, generator),
            uniform(shape[0], 0.01, 0.99, dtype, device, generator), normal(shape, dtype, device, generator))


SPEC = OpSpec(
    "q_sample",
    args=(Arg("x0", DATA, grad=True), Arg("alpha", COEFF, grad=True), Arg("sigma", COEFF, grad=True),
          Arg("noise", DATA, grad=True)),
    outputs=(LIKE_DATA,),
    reference=reference.q_sample,
    sample_inputs=sample_inputs,
).register()


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
    return SPEC(x0, alpha, sigma, noise, backend=backend)
