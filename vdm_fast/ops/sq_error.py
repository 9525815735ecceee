"""sq_error: per-sample sum of (pred - target)^2, target in {eps, x0, v, score} built in-kernel
from x0, noise, alpha, sigma (DESIGN.md §4.3). The regression core of every diffusion loss.

Native ops ``vdm_fast::sq_error`` / ``sq_error_backward`` (csrc/, target passed as a string),
Triton ops ``vdm_fast::sq_error_triton`` / ``sq_error_backward_triton`` (kernels/sq_error.py) and
the reference. Gradients: pred, x0, noise elementwise and alpha, sigma as per-sample sums, all from
one fused backward pass that re-reads only the inputs the target uses.
"""

from __future__ import annotations

import torch

from .. import reference
from ..parameterization import DIFFUSERS_NAMES
from ._spec import CHOICE, COEFF, DATA, PER_SAMPLE, Arg, OpSpec, normal, uniform


def sample_inputs(shape, dtype, device, generator):
    """Standard normal pred, x0, noise; sigma away from 0 (the score target divides by it)."""
    return (normal(shape, dtype, device, generator), normal(shape, dtype, device, generator),
            normal(shape, dtype, device, generator), uniform(shape[0], 0.01, 0.99, dtype, device, generator),
            uniform(shape[0], 0.2, 1.0, dtype, device, generator), "v")


SPEC = OpSpec(
    "sq_error",
    args=(Arg("pred", DATA, grad=True), Arg("x0", DATA, grad=True), Arg("noise", DATA, grad=True),
          Arg("alpha", COEFF, grad=True), Arg("sigma", COEFF, grad=True),
          Arg("target", CHOICE, choices=reference.TARGETS, default="eps", aliases=DIFFUSERS_NAMES)),
    outputs=(PER_SAMPLE,),
    reference=reference.sq_error,
    sample_inputs=sample_inputs,
).register()


def sq_error(pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, alpha, sigma, target: str = "eps", *,
             backend: str | None = None) -> torch.Tensor:
    """Per-sample squared error of a model output against its parameterization's target.

    A **sum** over each sample's elements, the ELBO's ||m - target||^2: ``F.mse_loss(pred, target)``
    (diffusers' training loss) is ``sq_error(...).mean() / x0[0].numel()``.

    Args:
        pred: model output, shape (B, ...), float32/float64/float16/bfloat16.
        x0, noise: the clean data and the noise that made z_t; same shape and device as pred. The
            three may differ in dtype (a bfloat16 model output next to float32 data): the error is
            computed in float32 (float64 if any is float64; DESIGN.md §4.13) and each gradient
            comes back in its input's dtype.
        alpha, sigma: per-sample scales of z_t (float, 0-d, (B,) or (B, 1, ..., 1)).
        target: ``"eps"`` (noise), ``"x0"``, ``"v"`` (alpha*noise - sigma*x0) or ``"score"``
            (-noise/sigma); diffusers' ``"epsilon"``, ``"sample"`` and ``"v_prediction"`` name the
            first three.
        backend: see :mod:`vdm_fast.backends`.

    Returns:
        (B,) tensor in float32 (float64 for float64 data). Differentiable in pred, x0, noise,
        alpha and sigma.
    """
    return SPEC(pred, x0, noise, alpha, sigma, target, backend=backend)
