"""prior_kl: L_prior = KL(q(z_1|x) || N(0, I)) per sample, in nats (DESIGN.md §3, §4.4)."""

from __future__ import annotations

import torch

from .. import _checks, backends, reference
from ._registry import Implementations

NAME = "prior_kl"
impls = Implementations(NAME, {"reference": reference.prior_kl})


def prior_kl(x0: torch.Tensor, alpha_1, sigma_1, *, backend: str | None = None) -> torch.Tensor:
    """1/2 sum_i (alpha_1^2 x_i^2 + sigma_1^2 - 1 - log sigma_1^2) per sample, nats.

    Args:
        x0: clean data (B, ...). alpha_1, sigma_1: per-sample scales at t = 1 (sigma_1 > 0).

    Returns:
        (B,) in float32 (float64 for float64 data); differentiable in x0, alpha_1, sigma_1.
    """
    _checks.data(NAME, "x0", x0)
    batch, cdt = x0.shape[0], _checks.compute_dtype(x0.dtype)
    alpha_1 = _checks.per_sample(NAME, "alpha_1", alpha_1, batch, x0.device, cdt)
    sigma_1 = _checks.per_sample(NAME, "sigma_1", sigma_1, batch, x0.device, cdt)
    return impls(backends.resolve(backend, x0.device, NAME))(x0, alpha_1, sigma_1)
