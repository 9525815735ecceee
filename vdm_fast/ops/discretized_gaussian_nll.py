"""discretized_gaussian_nll: the DDPM / improved-diffusion decoder, -log of the Gaussian mass of
x0's 8-bit bin, per sample in nats (DESIGN.md §3, §4.5)."""

from __future__ import annotations

import torch

from .. import _checks, backends, reference
from ._registry import Implementations

NAME = "discretized_gaussian_nll"
impls = Implementations(NAME, {"reference": reference.discretized_gaussian_nll})


def discretized_gaussian_nll(x0: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, cdf: str = "erf", *,
                             backend: str | None = None) -> torch.Tensor:
    """-log P(x0's bin) under N(mean, exp(log_scale)^2), summed per sample, nats.

    Args:
        x0: data on the DDPM grid k/127.5 - 1 in [-1, 1].
        mean, log_scale: the decoder's mean and log standard deviation, shape of x0.
        cdf: ``"erf"`` (exact, stable in log space) or ``"tanh"`` (improved-diffusion's
            approximation with its 1e-12 clamps, to reproduce their numbers).

    Returns:
        (B,) in float32 (float64 for float64 data); differentiable in mean and log_scale.
    """
    _checks.data(NAME, "x0", x0)
    _checks.same_as(NAME, "mean", mean, x0, "x0")
    _checks.same_as(NAME, "log_scale", log_scale, x0, "x0")
    if cdf not in reference.CDFS:
        raise ValueError(f"{NAME}: cdf must be one of {reference.CDFS}, got {cdf!r}")
    return impls(backends.resolve(backend, x0.device, NAME))(x0, mean, log_scale, cdf)
