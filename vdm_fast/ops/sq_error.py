"""sq_error: per-sample sum of (pred - target)^2, target in {eps, x0, v, score} built in-kernel
from x0, noise, alpha, sigma (DESIGN.md §4.3). The regression core of every diffusion loss."""

from __future__ import annotations

import torch

from .. import _checks, backends, reference
from ._registry import Implementations

NAME = "sq_error"
impls = Implementations(NAME, {"reference": reference.sq_error})


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
