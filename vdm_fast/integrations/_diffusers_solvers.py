"""Drop-ins for diffusers' sigma-grid schedulers — EulerDiscreteScheduler,
EulerAncestralDiscreteScheduler and DPMSolverMultistepScheduler — whose ``step`` is one fused
``vdm_fast.reverse_step_with_x0`` pass. Imported (and documented) through
``vdm_fast.integrations.diffusers``.

Everything but ``step`` is diffusers' own (``set_timesteps``, the Karras / exponential / beta sigma
grids, ``scale_model_input``, ``add_noise``, the step-index bookkeeping), so the grid is exactly
diffusers'. ``step`` reads its levels from ``self.sigmas`` (sigmã = sqrt((1 - abar)/abar), held in
float32 by diffusers), turns them into gamma = 2 log sigmã in float64 and builds the step with the
samplers' own builders (``vdm_fast.coefficients``): Euler is ``ode_euler_coeffs``, Euler-ancestral
``euler_ancestral_coeffs``, DPM-Solver++ ``dpmpp_2m_coeffs``. The coefficient table of a whole
grid is built once per ``set_timesteps`` and device (float64, applied in float32).

The Euler schedulers' sample is x̃ = z/alpha (variance exploding: ``init_noise_sigma`` is
sigma_max), the builders' is z: :func:`_in_sigma_space` rescales a table from one to the other.
DPM-Solver's sample is z itself.

The multistep history of DPM-Solver++ (``self.model_outputs``, diffusers' list of x̂) is kept as
diffusers keeps it; the previous x̂ enters the fused pass through its noise slot, and the pass
returns this step's x̂ for the list. Supported: ``algorithm_type="dpmsolver++"`` with
``solver_order`` 1 or 2 (diffusers' default), both ``solver_type``s, thresholding, every sigma
grid and final sigma type, epsilon / sample / v_prediction. Other configurations raise at
construction (``accelerate`` leaves such schedulers alone and says why).
"""

from __future__ import annotations

import diffusers as _diffusers
import torch
from diffusers.schedulers.scheduling_euler_ancestral_discrete import EulerAncestralDiscreteSchedulerOutput
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteSchedulerOutput
from diffusers.schedulers.scheduling_utils import SchedulerOutput
from diffusers.utils import logging
from diffusers.utils.torch_utils import randn_tensor

from ..coefficients import dpmpp_2m_coeffs, euler_ancestral_coeffs, ode_euler_coeffs
from ..ops.randn_like import randn_like
from ..ops.reverse_step import reverse_step_with_x0
from ..parameterization import DIFFUSERS_NAMES, alpha_sigma, x0_coeffs
from ._diffusers_dropin import DropIn, check_step_data, threshold_scale

logger = logging.get_logger(__name__)

STEP = 6  # rows of a reverse_step table: a_z, a_m, c_z, c_m, c_x, c_n


def _gammas(sigmas: torch.Tensor) -> torch.Tensor:
    """gamma = 2 log sigmã of diffusers' sigmas, float64 (sigmã = 0 -> -inf, the clean level)."""
    return 2 * torch.log(sigmas.detach().to("cpu", torch.float64))


def _in_sigma_space(table: torch.Tensor, g_t: torch.Tensor, g_s: torch.Tensor) -> torch.Tensor:
    """A step table in z (the builders') as a table in x̃ = z/alpha (the Euler schedulers').

    z = alpha x̃ at both levels: x̂ = a_z z + a_m m = (a_z alpha_t) x̃ + a_m m and
    x̃_s = z_s/alpha_s, so the z row scales by alpha_t/alpha_s, the others (m, x̂, noise) by 1/alpha_s."""
    alpha_t, _ = alpha_sigma(g_t)
    alpha_s, _ = alpha_sigma(g_s)
    a_z, a_m, c_z, c_m, c_x, c_n = table.unbind(-2)
    return torch.stack([a_z * alpha_t, a_m, c_z * alpha_t / alpha_s, c_m / alpha_s, c_x / alpha_s, c_n / alpha_s],
                       dim=-2)


def _fold(table: torch.Tensor) -> torch.Tensor:
    """x̂ folded into the z and m rows (c_x x̂ = c_x a_z z + c_x a_m m), summed in float64 here rather
    than in float32 by the kernel; rows a_z, a_m still give x̂ (pred_original_sample)."""
    a_z, a_m, c_z, c_m, c_x, c_n = table.unbind(-2)
    return torch.stack([a_z, a_m, c_z + c_x * a_z, c_m + c_x * a_m, torch.zeros_like(c_x), c_n], dim=-2)


def _parameterization(prediction_type: str, supported) -> str:
    if prediction_type not in supported:
        raise ValueError(f"prediction_type given as {prediction_type} must be one of {', '.join(supported)}")
    return DIFFUSERS_NAMES[prediction_type]


class _SigmaStep(DropIn):
    """The machinery the three share: the per-grid coefficient cache, the step index, checks."""

    def _vdm_table(self, device: torch.device, key: tuple, build) -> torch.Tensor:
        """``build(gammas)`` -> (K, 6) float64 table of the grid, cached per device until
        ``self.sigmas`` is replaced or written in place (its version counter) or ``key`` changes."""
        cache = self.__dict__.setdefault("_vdm_fast_tables", {})
        sigmas = self.sigmas
        state = (id(sigmas), None if sigmas.is_inference() else sigmas._version)
        hit = cache.get((device, key))
        if hit is not None and hit[0] == state and not torch.compiler.is_compiling():
            return hit[1]
        if len(cache) >= 16:  # a few variants (DPM-Solver's first and second order) per device
            cache.clear()
        table = build(_gammas(sigmas)).to(device)
        cache[(device, key)] = (state, table)
        return table

    _vdm_check_data = staticmethod(check_step_data)

    def _vdm_begin(self, timestep) -> int:
        """diffusers' step-index bookkeeping (the index of ``timestep`` on the first call)."""
        if isinstance(timestep, (int, torch.IntTensor, torch.LongTensor)):
            raise ValueError(
                "Passing integer indices (e.g. from `enumerate(timesteps)`) as timesteps to"
                f" `{type(self).__name__}.step()` is not supported. Make sure to pass"
                " one of the `scheduler.timesteps` as a timestep."
            )
        if not self.is_scale_input_called:
            logger.warning(
                "The `scale_model_input` function should be called before `step` to ensure correct denoising. "
                "See `StableDiffusionPipeline` for a usage example."
            )
        if self.step_index is None:
            self._init_step_index(timestep)
        return self.step_index

    def _vdm_noise(self, op: str, model_output: torch.Tensor, generator):
        """(noise, philox): diffusers' randn_tensor draw, or None and True to draw Philox in the kernel."""
        if self._vdm_philox(op, generator):
            return None, True
        return randn_tensor(model_output.shape, dtype=model_output.dtype, device=model_output.device,
                            generator=generator), False


class EulerDiscreteScheduler(_SigmaStep, _diffusers.EulerDiscreteScheduler):
    """diffusers.EulerDiscreteScheduler with a fused ``step`` (churn included)."""

    _vdm_stock = _diffusers.EulerDiscreteScheduler
    _VDM_PREDICTIONS = ("epsilon", "v_prediction", "sample", "original_sample")

    @staticmethod
    def _vdm_rows(g: torch.Tensor, g_hat: torch.Tensor, param: str) -> torch.Tensor:
        """(K, 6): steps from the (churned) levels g_hat (K,) to g[1:], in x̃, x̂ folded in; g: the
        grid's K + 1 levels. diffusers forms x̂ of v-prediction at the un-churned sigma (its formula),
        of epsilon at sigma_hat."""
        g_t, g_s = g_hat[:, None], g[1:, None]  # (K, 1): the builders give (K, 6, 1)
        table = _in_sigma_space(ode_euler_coeffs(g_t, g_s, param), g_t, g_s)
        if param == "v":
            alpha, sigma = alpha_sigma(g[:-1, None])
            a_z, a_m = x0_coeffs(param, alpha, sigma)
            table = torch.cat([torch.stack([a_z * alpha, a_m], dim=-2), table[:, 2:]], dim=-2)
        return _fold(table).squeeze(-1)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, s_churn: float = 0.0,
             s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
             generator: torch.Generator | None = None, return_dict: bool = True):
        """diffusers' Euler step as one fused pass; with churn (gamma > 0) the churn noise is added to
        the sample first, in one more pass (diffusers adds it the same way, before x̂)."""
        op = f"{type(self).__name__}.step"
        self._vdm_check_data(op, model_output, sample)
        param = _parameterization(self.config.prediction_type, self._VDM_PREDICTIONS)
        i = self._vdm_begin(timestep)
        sigma = float(self.sigmas[i])
        gamma = min(s_churn / (len(self.sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sample = sample.to(torch.promote_types(sample.dtype, torch.float32))  # diffusers upcasts too
        if gamma > 0:
            sigma_hat = sigma * (gamma + 1)
            noise, philox = self._vdm_noise(op, model_output, generator)
            if philox:
                noise = randn_like(sample, generator, backend=self.vdm_fast_backend)
            sample = sample + noise * s_noise * (sigma_hat**2 - sigma**2) ** 0.5
            g = _gammas(self.sigmas)[i:i + 2]
            g_hat = 2 * torch.log(torch.tensor([sigma_hat], dtype=torch.float64))
            cols = self._vdm_rows(g, g_hat, param)[0].to(sample.device)
        else:
            cols = self._vdm_table(sample.device, ("euler", param), lambda g: self._vdm_rows(g, g[:-1], param))[i]
        prev_sample, pred_original_sample = reverse_step_with_x0(sample, model_output, cols, stochastic=False,
                                                                 backend=self.vdm_fast_backend)
        prev_sample = prev_sample.to(model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return (prev_sample, pred_original_sample)
        return EulerDiscreteSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)


class EulerAncestralDiscreteScheduler(_SigmaStep, _diffusers.EulerAncestralDiscreteScheduler):
    """diffusers.EulerAncestralDiscreteScheduler with a fused ``step``: x̂, the Euler step to sigma_down
    and the sigma_up noise in one pass (noise drawn in the kernel with ``vdm_fast_noise="philox"``)."""

    _vdm_stock = _diffusers.EulerAncestralDiscreteScheduler
    _VDM_PREDICTIONS = ("epsilon", "v_prediction")  # diffusers: "sample" is not implemented

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True):
        """diffusers' Euler-ancestral step as one fused pass (see the module docstring)."""
        op = f"{type(self).__name__}.step"
        self._vdm_check_data(op, model_output, sample)
        if self.config.prediction_type == "sample":
            raise NotImplementedError("prediction_type not implemented yet: sample")
        param = _parameterization(self.config.prediction_type, self._VDM_PREDICTIONS)
        i = self._vdm_begin(timestep)
        def build(g):
            g_t, g_s = g[:-1, None], g[1:, None]  # (K, 1): the builders give (K, 6, 1)
            return _fold(_in_sigma_space(euler_ancestral_coeffs(g_t, g_s, param), g_t, g_s)).squeeze(-1)

        table = self._vdm_table(sample.device, ("euler_ancestral", param), build)
        sample = sample.to(torch.promote_types(sample.dtype, torch.float32))
        noise, philox = self._vdm_noise(op, model_output, generator)  # drawn on every step, as diffusers
        prev_sample, pred_original_sample = reverse_step_with_x0(
            sample, model_output, table[i], noise=noise, generator=generator if philox else None, stochastic=True,
            backend=self.vdm_fast_backend)
        prev_sample = prev_sample.to(model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return (prev_sample, pred_original_sample)
        return EulerAncestralDiscreteSchedulerOutput(prev_sample=prev_sample,
                                                     pred_original_sample=pred_original_sample)


def dpm_solver_unsupported(config) -> str | None:
    """Why a DPMSolverMultistepScheduler config has no fused step (None: it has one)."""
    if config.algorithm_type != "dpmsolver++":
        return f"algorithm_type={config.algorithm_type!r} (supported: 'dpmsolver++')"
    if config.solver_order not in (1, 2):
        return f"solver_order={config.solver_order} (supported: 1, 2)"
    if getattr(config, "use_flow_sigmas", False):
        return "use_flow_sigmas=True (not variance preserving)"
    if config.prediction_type not in ("epsilon", "sample", "v_prediction"):
        return f"prediction_type={config.prediction_type!r}"
    return None


class DPMSolverMultistepScheduler(_SigmaStep, _diffusers.DPMSolverMultistepScheduler):
    """diffusers.DPMSolverMultistepScheduler (DPM-Solver++, orders 1 and 2) with a fused ``step``."""

    _vdm_stock = _diffusers.DPMSolverMultistepScheduler

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        why = dpm_solver_unsupported(self.config)
        if why is not None:
            raise ValueError(f"vdm_fast's DPMSolverMultistepScheduler has no fused step for {why}; use diffusers' own")

    def _vdm_rows(self, g: torch.Tensor, second: bool) -> torch.Tensor:
        """(K, 6): every step of the grid, first order or (where there is a previous level) second."""
        g = g[:, None]  # (K + 1, 1): the builder gives (K, 6, 1)
        prev = torch.full_like(g[:-1], float("nan"))
        if second:
            prev[1:] = g[:-2]
        param = DIFFUSERS_NAMES[self.config.prediction_type]
        table = dpmpp_2m_coeffs(g[:-1], g[1:], prev, param, self.config.solver_type)
        return (table if self.config.thresholding else _fold(table)).squeeze(-1)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: torch.Generator | None = None, variance_noise: torch.Tensor | None = None,
             return_dict: bool = True):
        """diffusers' DPM-Solver++ step as one fused pass (see the module docstring)."""
        op = f"{type(self).__name__}.step"
        if self.num_inference_steps is None:
            raise ValueError(
                "Number of inference steps is 'None', you need to run 'set_timesteps' after creating the scheduler"
            )
        if self.step_index is None:
            self._init_step_index(timestep)
        i, n = self.step_index, len(self.timesteps)
        lower_order_final = i == n - 1 and (self.config.euler_at_final or (self.config.lower_order_final and n < 15)
                                            or self.config.final_sigmas_type == "zero")
        if self.config.prediction_type == "epsilon" and self.config.variance_type in ("learned", "learned_range"):
            model_output = model_output[:, : sample.shape[1]]  # diffusers keeps the first 3 channels
        self._vdm_check_data(op, model_output, sample)
        second = not (self.config.solver_order == 1 or self.lower_order_nums < 1 or lower_order_final)
        cols = self._vdm_table(sample.device, ("dpm", second, self.config.prediction_type, self.config.solver_type,
                                               self.config.thresholding),
                               lambda g: self._vdm_rows(g, second))[i]
        clip = None
        if self.config.thresholding and sample.numel():
            s = threshold_scale(cols[0], cols[1], sample, model_output, self.config.dynamic_thresholding_ratio,
                                self.config.sample_max_value)
            cols = cols[:, None].expand(STEP, sample.shape[0]).clone()
            cols[:2] /= s  # x̂'s rows: clamp(x̂, -s, s) / s = clamp(x̂ / s, -1, 1)
            clip = 1.0
        history = self.model_outputs[-1] if second else None
        sample = sample.to(torch.promote_types(sample.dtype, torch.float32))
        prev_sample, x_hat = reverse_step_with_x0(sample, model_output, cols, clip=clip, noise=history,
                                                  stochastic=second, backend=self.vdm_fast_backend)
        for k in range(self.config.solver_order - 1):
            self.model_outputs[k] = self.model_outputs[k + 1]
        self.model_outputs[-1] = x_hat.to(model_output.dtype)  # diffusers keeps x̂ in the model's dtype
        if self.lower_order_nums < self.config.solver_order:
            self.lower_order_nums += 1
        prev_sample = prev_sample.to(model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)


__all__ = ["EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
           "dpm_solver_unsupported"]
