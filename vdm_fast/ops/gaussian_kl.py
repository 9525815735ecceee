"""gaussian_kl: KL(N(mean_q, exp(log_var_q)) || N(mean_p, exp(log_var_p))) of diagonal Gaussians,
summed per sample, in nats: improved-diffusion's ``normal_kl``, the KL terms L_{t-1} of the
variational bound (DDPM eq. 5) with learned variances, Improved DDPM's L_vlb (DESIGN.md §3, §4.10).

Native ops ``vdm_fast::gaussian_kl`` / ``gaussian_kl_backward`` (csrc/, math in csrc/gaussian_kl.h),
Triton ops ``vdm_fast::gaussian_kl_triton`` / ``gaussian_kl_backward_triton`` (kernels/gaussian_kl.py)
and the reference. One pass over the four inputs forward, one backward for all four gradients.
"""

from __future__ import annotations

import torch

from .. import reference
from ._spec import DATA, PER_SAMPLE, Arg, OpSpec, normal


def sample_inputs(shape, dtype, device, generator):
    """Standard normal means; log-variances uniform in [-8, 0), the range a diffusion model's learned
    variance takes (between log beta_1 ~ -9.2 and 0)."""
    def log_var():
        return (-8.0 * torch.rand(shape, generator=generator, dtype=torch.float64)).to(device=device, dtype=dtype)

    mean_q = normal(shape, dtype, device, generator)
    log_var_q = log_var()
    mean_p = normal(shape, dtype, device, generator)
    return mean_q, log_var_q, mean_p, log_var()


SPEC = OpSpec(
    "gaussian_kl",
    args=(Arg("mean_q", DATA, grad=True), Arg("log_var_q", DATA, grad=True), Arg("mean_p", DATA, grad=True),
          Arg("log_var_p", DATA, grad=True)),
    outputs=(PER_SAMPLE,),
    reference=reference.gaussian_kl,
    sample_inputs=sample_inputs,
).register()


def gaussian_kl(mean_q: torch.Tensor, log_var_q: torch.Tensor, mean_p: torch.Tensor, log_var_p: torch.Tensor, *,
                backend: str | None = None) -> torch.Tensor:
    """KL(N(mean_q, exp(log_var_q)) || N(mean_p, exp(log_var_p))) summed per sample, nats.

    Per element 1/2 (-1 + log_var_p - log_var_q + exp(log_var_q - log_var_p)
    + (mean_q - mean_p)^2 exp(-log_var_p)), improved-diffusion's ``normal_kl``: with q the posterior
    q(x_{t-1} | x_t, x_0) and p the model's p(x_{t-1} | x_t), the L_{t-1} term of the bound (DDPM
    eq. 5, Improved DDPM's L_vlb with learned variances). The variance ratio is one exp of the
    log-variance difference, so large equal log-variances do not overflow. Bad values (NaN, Inf)
    are not scanned for and stay within their sample (DESIGN.md §4.10).

    Args:
        mean_q, log_var_q: mean and log-variance of q, (B, ...), float32/float64/float16/bfloat16,
            any strides (DESIGN.md §4.8).
        mean_p, log_var_p: mean and log-variance of p, the shape, dtype and device of mean_q.
        backend: ``"cpu"``, ``"cuda"``, ``"triton"`` or ``"reference"``; default: the fastest
            available for the device (:mod:`vdm_fast.backends`).

    Returns:
        (B,) in float32 (float64 for float64 data); differentiable in all four arguments.
    """
    return SPEC(mean_q, log_var_q, mean_p, log_var_p, backend=backend)
