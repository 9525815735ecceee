"""prior_kl: L_prior = KL(q(z_1|x) || N(0, I)) per sample, in nats (DESIGN.md §3, §4.4).

Native ops ``vdm_fast::prior_kl`` / ``prior_kl_backward`` (csrc/), Triton ops
``vdm_fast::prior_kl_triton`` / ``prior_kl_backward_triton`` (kernels/prior_kl.py) and the
reference. The kernels use L = a^2/2 sum_i x_i^2 + D/2 (s^2 - 1 - log s^2): one pass, the sum of squares.
"""

from __future__ import annotations

import torch

from .. import reference
from ._spec import COEFF, DATA, PER_SAMPLE, Arg, OpSpec, normal, uniform


def sample_inputs(shape, dtype, device, generator):
    """Standard normal data; alpha_1 small and sigma_1 away from 1, as at the end of a schedule (near
    sigma_1 = 1 the value cancels: tests/test_prior_kl.py::test_sigma_near_one covers it)."""
    return (normal(shape, dtype, device, generator), uniform(shape[0], 0.05, 0.35, dtype, device, generator),
            uniform(shape[0], 0.2, 0.7, dtype, device, generator))


SPEC = OpSpec(
    "prior_kl",
    args=(Arg("x0", DATA, grad=True), Arg("alpha_1", COEFF, grad=True),
          Arg("sigma_1", COEFF, grad=True, positive=True)),
    outputs=(PER_SAMPLE,),
    reference=reference.prior_kl,
    sample_inputs=sample_inputs,
).register()


def prior_kl(x0: torch.Tensor, alpha_1, sigma_1, *, backend: str | None = None) -> torch.Tensor:
    """1/2 sum_i (alpha_1^2 x_i^2 + sigma_1^2 - 1 - log sigma_1^2) per sample, nats.

    Args:
        x0: clean data (B, ...), float32/float64/float16/bfloat16, any strides.
        alpha_1, sigma_1: per-sample scales at t = 1 (sigma_1 > 0): float, 0-d, (B,) or (B, 1, ..., 1).
        backend: see :mod:`vdm_fast.backends`.

    Returns:
        (B,) in float32 (float64 for float64 data); differentiable in x0, alpha_1, sigma_1.
    """
    return SPEC(x0, alpha_1, sigma_1, backend=backend)
