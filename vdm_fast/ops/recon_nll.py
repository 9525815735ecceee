"""recon_nll: L_recon = -log p(x | z_0) with VDM's categorical 256-bin decoder (DESIGN.md §3,
§4.5); the 256-way log-softmax is fused and never materialised by the kernels.

Native ops ``vdm_fast::recon_nll`` / ``recon_nll_backward`` (csrc/, math in
csrc/recon_nll_math.h), Triton ops ``vdm_fast::recon_nll_triton`` / ``recon_nll_backward_triton``
(kernels/recon_nll.py) and the reference (vdm_fast/reference.py). Gradients: z0 elementwise,
alpha_0 and sigma_0 as per-sample reductions, from one fused backward pass; x0 is data (none).
"""

from __future__ import annotations

import torch

from .. import parameterization, reference
from ._spec import CHOICE, COEFF, DATA, PER_SAMPLE, Arg, OpSpec, normal, uniform


def sample_inputs(shape, dtype, device, generator):
    """x0 within 0.3 of a bin width of VDM's bin centres (the nearest bin matters), z0 = alpha_0 x0 +
    sigma_0 eps with sigma_0 from 1e-3 (a few bins summed) to 0.5 (all 256), gamma_0 uniform per sample."""
    k = torch.randint(0, 256, shape, generator=generator).double()
    jitter = 0.3 * (2 * torch.rand(shape, generator=generator, dtype=torch.float64) - 1)
    x0 = (2 * (k + 0.5 + jitter) / 256 - 1).to(device=device, dtype=dtype)
    # gamma_0 = log sigma^2 - log alpha^2 from about -13.8 (sigma_0 = 1e-3) to -1.2 (sigma_0 = 0.5)
    gamma = uniform(shape[0], -13.8, -1.2, torch.float64, "cpu", generator)
    alpha, sigma = parameterization.alpha_sigma(gamma)
    view = (shape[0],) + (1,) * (len(shape) - 1)
    z0 = alpha.reshape(view) * x0.double().cpu() + sigma.reshape(view) * normal(shape, torch.float64, "cpu", generator)
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    return x0, z0.to(device=device, dtype=dtype), alpha.to(device, cdt), sigma.to(device, cdt), "categorical"


SPEC = OpSpec(
    "recon_nll",
    args=(Arg("x0", DATA, bounds=(-1.0, 1.0)), Arg("z0", DATA, grad=True), Arg("alpha_0", COEFF, grad=True),
          Arg("sigma_0", COEFF, grad=True, positive=True),
          Arg("decoder", CHOICE, choices=reference.DECODERS, default="categorical")),
    outputs=(PER_SAMPLE,),
    reference=reference.recon_nll,
    sample_inputs=sample_inputs,
).register()


def recon_nll(x0: torch.Tensor, z0: torch.Tensor, alpha_0, sigma_0, decoder: str = "categorical", *,
              backend: str | None = None) -> torch.Tensor:
    """-log p(x0 | z0) per sample, nats, for one draw of z0 ~ q(z_0 | x0).

    Args:
        x0: data on VDM's grid of bin centres 2(k + 1/2)/256 - 1, k = 0..255 (values are
            assigned to the nearest bin, ``reference.bin_index``); values outside [-1, 1] or NaN
            raise (DESIGN.md §4.10).
        z0: the latent at t = 0, same shape/dtype/device as x0.
        alpha_0, sigma_0: per-sample scales at t = 0: a float, a 0-d, (B,) or (B, 1, ..., 1) tensor;
            sigma_0 > 0.
        decoder: ``"categorical"``.
        backend: ``"cpu"``, ``"cuda"``, ``"triton"`` or ``"reference"``; default: the fastest
            available for the device.

    Returns:
        (B,) in float32 (float64 for float64 data); differentiable in z0, alpha_0, sigma_0.
        The fused kernels sum only the bins within float precision of the softmax's mass
        (csrc/recon_nll_math.h), all 256 when sigma_0/alpha_0 is large; memory is O(B·D).

    VDM's decoder works on the rescaled latent z0 / alpha_0 = x + exp(gamma_0 / 2) eps (its
    ``z_0_rescaled``) with logits -1/2 (z0/alpha_0 - c_k)² exp(-gamma_0). Its -log p is
    ``recon_nll(x0, z0 / alpha_0, 1.0, exp(gamma_0 / 2))``, which equals
    ``recon_nll(x0, z0, alpha_0, sigma_0)`` (sigma_0 / alpha_0 = exp(gamma_0 / 2): the logits are
    the same numbers), so a VDM port may pass either latent (DESIGN.md §4.5).
    """
    return SPEC(x0, z0, alpha_0, sigma_0, decoder, backend=backend)
