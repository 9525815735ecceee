"""reverse_step: one fused update for every sampler and both kinds of guidance (DESIGN.md §4.6, §5).

Inference only. The coefficient builders in ``vdm_fast.samplers`` compute the six per-sample
scalars once per step on the data's device; this op applies them in one pass over the data.
"""

from __future__ import annotations

import numbers

import torch

from .. import _checks, backends, reference
from ._registry import Implementations

NAME = "reverse_step"
impls = Implementations(NAME, {"reference": reference.reverse_step})


def step_coeffs(op: str, coeffs, batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Normalise ``coeffs`` to a contiguous (6, B) tensor of ``dtype`` on ``device``.

    Accepted: a (6, B) or (6,) tensor, or a sequence of six per-sample values (floats, 0-d, (B,)
    or (B, 1, ..., 1) tensors), in the order (a_z, a_m, c_z, c_m, c_x, c_n).
    """
    if isinstance(coeffs, torch.Tensor):
        if not coeffs.is_floating_point():
            raise TypeError(f"{op}: coeffs must be a floating-point tensor, got {coeffs.dtype}")
        if coeffs.device != device:
            raise ValueError(f"{op}: coeffs is on {coeffs.device} but the data is on {device}")
        if coeffs.dim() == 1 and coeffs.shape[0] == 6:
            coeffs = coeffs[:, None].expand(6, batch)
        elif not (coeffs.dim() == 2 and coeffs.shape[0] == 6 and coeffs.shape[1] == batch):
            raise ValueError(f"{op}: coeffs must have shape (6, {batch}) or (6,), got {tuple(coeffs.shape)}")
        return coeffs.to(dtype).contiguous()
    if isinstance(coeffs, (list, tuple)) and len(coeffs) == 6:
        rows = [_checks.per_sample(op, f"coeffs.{n}", c, batch, device, dtype) for n, c in zip(reference.STEP_COEFFS, coeffs)]
        return torch.stack(rows)
    raise TypeError(f"{op}: coeffs must be a (6, B) tensor or a sequence of 6 per-sample values "
                    f"{reference.STEP_COEFFS}, got {type(coeffs).__name__}")


def reverse_step(z: torch.Tensor, model_out: torch.Tensor, coeffs, *, uncond=None, guidance_scale=None,
                 classifier_grad=None, grad_scale=None, clip=None, noise=None, generator=None,
                 backend: str | None = None) -> torch.Tensor:
    """One reverse (sampling) step, fused: guidance, x̂ (optionally clipped) and the affine update.

    Args:
        z: current latent z_t, shape (B, ...), float32/float64/float16/bfloat16, any strides.
        model_out: the network's output for z (any parameterization; the coefficients encode it).
        coeffs: the six per-sample scalars (a_z, a_m, c_z, c_m, c_x, c_n): a (6, B) or (6,) tensor
            or a sequence of six floats / (B,) tensors. Built by ``vdm_fast.samplers``.
        uncond, guidance_scale: classifier-free guidance, m = uncond + w (model_out - uncond),
            w per sample (float or (B,)); both or neither.
        classifier_grad, grad_scale: classifier guidance, m += grad_scale * classifier_grad.
        clip: clamp x̂ to [-clip, clip] (None: no clipping).
        noise: the noise n of the update; None draws it (no draw when every c_n is 0).
        generator: the torch.Generator for drawn noise.
        backend: see :mod:`vdm_fast.backends`.

    Returns:
        z_next, shape and dtype of z (strides of z when z is batch-major dense).
    """
    _checks.data(NAME, "z", z)
    _checks.same_as(NAME, "model_out", model_out, z, "z")
    batch, cdt = z.shape[0], _checks.compute_dtype(z.dtype)
    coeffs = step_coeffs(NAME, coeffs, batch, z.device, cdt)
    if (uncond is None) != (guidance_scale is None):
        raise ValueError(f"{NAME}: uncond and guidance_scale go together (classifier-free guidance); "
                         f"got {'uncond' if uncond is not None else 'guidance_scale'} alone")
    if uncond is not None:
        _checks.same_as(NAME, "uncond", uncond, z, "z")
        guidance_scale = _checks.per_sample(NAME, "guidance_scale", guidance_scale, batch, z.device, cdt)
    if (classifier_grad is None) != (grad_scale is None):
        raise ValueError(f"{NAME}: classifier_grad and grad_scale go together (classifier guidance); "
                         f"got {'classifier_grad' if classifier_grad is not None else 'grad_scale'} alone")
    if classifier_grad is not None:
        _checks.same_as(NAME, "classifier_grad", classifier_grad, z, "z")
        grad_scale = _checks.per_sample(NAME, "grad_scale", grad_scale, batch, z.device, cdt)
    if clip is not None:
        if not isinstance(clip, numbers.Real) or isinstance(clip, bool) or not clip > 0:
            raise ValueError(f"{NAME}: clip must be a positive float or None, got {clip!r}")
        clip = float(clip)
    if noise is not None:
        _checks.same_as(NAME, "noise", noise, z, "z")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{NAME}: generator must be a torch.Generator, got {type(generator).__name__}")
    impl = impls(backends.resolve(backend, z.device, NAME))
    return impl(z, model_out, coeffs, uncond, guidance_scale, classifier_grad, grad_scale, clip, noise, generator)
