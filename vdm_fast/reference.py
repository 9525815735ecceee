"""Pure-PyTorch reference of every vdm_fast op: the oracle the fused kernels are tested against.

Each function here has the signature of the op of the same name in ``vdm_fast.ops``, with the
per-sample coefficients already normalised to (B,) tensors (``vdm_fast._checks.per_sample``).
The math follows DESIGN.md: it runs in the compute dtype (float32 for float16/bfloat16/float32
data, float64 for float64 data) and the result is cast back to the data's dtype, exactly what the
kernels promise. Written for clarity, not speed; autograd gives the gradients.
"""

from __future__ import annotations

import torch

from ._checks import compute_dtype


def _per_sample_view(c: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (B,) coefficient as (B, 1, ..., 1), broadcastable against ``like``."""
    return c.reshape((c.shape[0],) + (1,) * (like.dim() - 1))


def q_sample(x0: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The forward process q(z_t | x): z_t = alpha_t * x0 + sigma_t * noise (Luo eq. 61)."""
    cdt = compute_dtype(x0.dtype)
    a = _per_sample_view(alpha.to(cdt), x0)
    s = _per_sample_view(sigma.to(cdt), x0)
    return (a * x0.to(cdt) + s * noise.to(cdt)).to(x0.dtype)
