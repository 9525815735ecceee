"""discretized_gaussian_nll: the DDPM / improved-diffusion decoder, -log of the Gaussian mass of
x0's 8-bit bin, per sample in nats (DESIGN.md §3, §4.5).

Native ops ``vdm_fast::discretized_gaussian_nll`` / ``discretized_gaussian_nll_backward`` (csrc/,
math in csrc/discretized_gaussian_math.h), Triton ops ``..._triton`` (kernels/) and the reference.
Gradients: mean and log_scale elementwise from one fused backward pass; x0 is data (none).
"""

from __future__ import annotations

import torch

from .. import reference
from ._spec import CHOICE, DATA, PER_SAMPLE, Arg, OpSpec, normal, uniform


def sample_inputs(shape, dtype, device, generator):
    """x0 on the DDPM grid k/127.5 - 1 (both edge bins included), the mean within 0.05 of it,
    log_scale uniform in [-7, -0.5): tails and bulk of both CDF forms."""
    x0 = torch.randint(0, 256, shape, generator=generator).double() / 127.5 - 1
    mean = x0 + 0.05 * normal(shape, torch.float64, "cpu", generator)
    log_scale = -7 + 6.5 * torch.rand(shape, generator=generator, dtype=torch.float64)
    return tuple(t.to(device=device, dtype=dtype) for t in (x0, mean, log_scale)) + ("erf",)


SPEC = OpSpec(
    "discretized_gaussian_nll",
    args=(Arg("x0", DATA, bounds=(-1.0, 1.0)), Arg("mean", DATA, grad=True), Arg("log_scale", DATA, grad=True),
          Arg("cdf", CHOICE, choices=reference.CDFS, default="erf")),
    outputs=(PER_SAMPLE,),
    reference=reference.discretized_gaussian_nll,
    sample_inputs=sample_inputs,
).register()


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
    return SPEC(x0, mean, log_scale, cdf, backend=backend)
