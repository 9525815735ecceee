"""recon_nll: L_recon = -log p(x | z_0) with VDM's categorical 256-bin decoder (DESIGN.md §3,
§4.5); the 256-way log-softmax is fused and never materialised by the kernels."""

from __future__ import annotations

import torch

from .. import _checks, backends, reference
from ._registry import Implementations

NAME = "recon_nll"
impls = Implementations(NAME, {"reference": reference.recon_nll})


def recon_nll(x0: torch.Tensor, z0: torch.Tensor, alpha_0, sigma_0, decoder: str = "categorical", *,
              backend: str | None = None) -> torch.Tensor:
    """-log p(x0 | z0) per sample, nats, for one draw of z0 ~ q(z_0 | x0).

    Args:
        x0: data on VDM's grid of bin centres 2(k + 1/2)/256 - 1, k = 0..255 (values are
            assigned to the nearest bin).
        z0: the latent at t = 0, same shape/dtype/device as x0.
        alpha_0, sigma_0: per-sample scales at t = 0.
        decoder: ``"categorical"``.

    Returns:
        (B,) in float32 (float64 for float64 data); differentiable in z0, alpha_0, sigma_0.
    """
    _checks.data(NAME, "x0", x0)
    _checks.same_as(NAME, "z0", z0, x0, "x0")
    if decoder not in reference.DECODERS:
        raise ValueError(f"{NAME}: decoder must be one of {reference.DECODERS}, got {decoder!r}")
    batch, cdt = x0.shape[0], _checks.compute_dtype(x0.dtype)
    alpha_0 = _checks.per_sample(NAME, "alpha_0", alpha_0, batch, x0.device, cdt)
    sigma_0 = _checks.per_sample(NAME, "sigma_0", sigma_0, batch, x0.device, cdt)
    return impls(backends.resolve(backend, x0.device, NAME))(x0, z0, alpha_0, sigma_0, decoder)
