"""Drop-in replacements for diffusers' DDPMScheduler and DDIMScheduler on vdm_fast's fused ops.

Same constructor, config, ``save_pretrained`` / ``from_pretrained`` and methods as diffusers';
``add_noise`` and ``get_velocity`` run as one fused pass (``vdm_fast.q_sample``) with
coefficients computed in float64 from the betas and handed to the kernel in float32, so fp16 /
bf16 samples keep their noise at the first timesteps (diffusers casts ``alphas_cumprod`` to the
sample dtype first, which rounds it to 1 there). The swap in a training script is one line::

    from vdm_fast.integrations.diffusers import DDPMScheduler   # was: from diffusers import DDPMScheduler
"""

from __future__ import annotations

import torch

try:
    import diffusers as _diffusers
except ImportError as exc:  # diffusers is an optional extra
    raise ImportError("vdm_fast.integrations.diffusers needs diffusers: pip install 'vdm_fast[diffusers]'") from exc

from ..ops.q_sample import q_sample
from ..schedules import DiscreteSchedule


class _FusedForwardProcess:
    """add_noise / get_velocity on the fused q_sample op, shared by both schedulers."""

    def _vdm_schedule(self) -> DiscreteSchedule:
        # Built lazily from the betas diffusers computed (any beta_schedule, trained_betas and
        # rescale_betas_zero_snr included), rebuilt if the betas object is replaced.
        cached = getattr(self, "_vdm_fast_schedule", None)
        if cached is None or cached[0] is not self.betas:
            cached = (self.betas, DiscreteSchedule(self.betas.double()))
            self._vdm_fast_schedule = cached
        return cached[1]

    def _vdm_coefficients(self, timesteps, like: torch.Tensor):
        timesteps = torch.as_tensor(timesteps, device=like.device)
        if timesteps.dim() > 1:
            timesteps = timesteps.flatten()
        return self._vdm_schedule().alpha_sigma(timesteps)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """z_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, fused; timesteps per sample or one for all."""
        alpha, sigma = self._vdm_coefficients(timesteps, original_samples)
        return q_sample(original_samples, alpha, sigma, noise)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """v = sqrt(abar_t) noise - sqrt(1 - abar_t) x0: q_sample with the roles of x0 and noise swapped."""
        alpha, sigma = self._vdm_coefficients(timesteps, sample)
        return q_sample(noise, alpha, -sigma, sample)


class DDPMScheduler(_FusedForwardProcess, _diffusers.DDPMScheduler):
    """diffusers.DDPMScheduler with fused add_noise / get_velocity."""


class DDIMScheduler(_FusedForwardProcess, _diffusers.DDIMScheduler):
    """diffusers.DDIMScheduler with fused add_noise / get_velocity."""


__all__ = ["DDPMScheduler", "DDIMScheduler"]
