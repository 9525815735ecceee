"""What every vdm_fast drop-in for a diffusers scheduler shares: it passes for the stock class in a
saved pipeline, and carries the two plain attributes (not config) that steer its fused calls:
``vdm_fast_backend`` and ``vdm_fast_noise``. Also the dynamic-thresholding scale, which the DDPM,
DDIM and DPM-Solver drop-ins fold into their coefficients."""

from __future__ import annotations

import torch

from .. import _checks

NOISE_SOURCES = ("diffusers", "philox")


class DropIn:
    """Mixin of the drop-ins; subclasses set ``_vdm_stock``, the diffusers class they replace."""

    # The vdm_fast backend of every fused call (None: the default choice, see vdm_fast.backends).
    # A plain attribute, not config: it is not saved by save_pretrained.
    vdm_fast_backend: str | None = None

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls)
        # A pipeline records each component as (library, class) from the component's __module__
        # and class name (diffusers' _fetch_class_library_tuple), and stock diffusers can load only
        # its own libraries. This instance reports the stock scheduler's module, so model_index.json
        # says ("diffusers", "DDPMScheduler"): the saved config is a valid stock config, stock
        # diffusers loads it, and accelerate() swaps ours back in. The class keeps its real
        # __module__ (pickle, repr and imports are unaffected).
        self.__dict__["__module__"] = cls._vdm_stock.__module__
        return self

    @property
    def vdm_fast_noise(self) -> str:
        """Where ``step`` draws its noise: ``"diffusers"`` (default; diffusers' ``randn_tensor``
        with the step's generator, so seeded runs give diffusers' samples bit for bit) or
        ``"philox"`` (vdm_fast's counter-based Philox inside the fused step: no separate noise
        tensor, a different stream). A plain attribute, not config: not saved by save_pretrained."""
        return self.__dict__.get("_vdm_fast_noise", "diffusers")

    @vdm_fast_noise.setter
    def vdm_fast_noise(self, value: str) -> None:
        if value not in NOISE_SOURCES:
            raise ValueError(f"vdm_fast_noise must be one of {', '.join(map(repr, NOISE_SOURCES))}, got {value!r}")
        self.__dict__["_vdm_fast_noise"] = value

    def _vdm_philox(self, op: str, generator) -> bool:
        """Whether the step's noise is Philox, drawn in the kernel from ``generator``."""
        if self.vdm_fast_noise != "philox":
            return False
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"{op}: generator must be one torch.Generator (or None) with vdm_fast_noise='philox', "
                            f"got {type(generator).__name__}")
        return True


def check_step_data(op: str, model_output, sample) -> None:
    """``sample`` and ``model_output`` data tensors of one shape on one device (their dtypes may
    differ: the step computes in the promoted dtype); errors name the argument."""
    _checks.data(op, "sample", sample)
    _checks.data(op, "model_output", model_output)
    if model_output.shape != sample.shape:
        raise ValueError(f"{op}: model_output must have the shape of sample {tuple(sample.shape)}, "
                         f"got {tuple(model_output.shape)}")
    if model_output.device != sample.device:
        raise ValueError(f"{op}: model_output is on {model_output.device} but sample is on {sample.device}")


def threshold_scale(a_z: torch.Tensor, a_m: torch.Tensor, sample: torch.Tensor, model_output: torch.Tensor,
                    ratio: float, max_value: float) -> torch.Tensor:
    """Imagen's dynamic-thresholding scale s = clamp(quantile(|x̂|, ratio), 1, max_value) per sample,
    (B,) float64, of x̂ = a_z z + a_m m (a_z, a_m: 0-d or (B,) float64). x̂ is formed once in the compute
    dtype (float32 for half data, where diffusers upcasts for the quantile too); the caller divides
    x̂'s coefficients by s and clips at 1 (clamp(x̂, -s, s) / s = clamp(x̂ / s, -1, 1))."""
    batch, cdt = sample.shape[0], _checks.compute_dtype(sample.dtype)
    view = (-1,) + (1,) * (sample.dim() - 1)
    a_z = a_z.to(cdt).reshape(view) if a_z.dim() else a_z.to(cdt)
    a_m = a_m.to(cdt).reshape(view) if a_m.dim() else a_m.to(cdt)
    x0 = (a_z * sample.to(cdt) + a_m * model_output.to(cdt)).reshape(batch, -1)
    s = torch.quantile(x0.abs(), ratio, dim=1)
    return torch.clamp(s, min=1, max=max_value).to(torch.float64)
