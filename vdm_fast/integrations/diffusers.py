"""Drop-in replacements for diffusers' DDPMScheduler and DDIMScheduler on vdm_fast's fused ops.

Same constructor, config, ``save_pretrained`` / ``from_pretrained`` and methods as diffusers';
``add_noise`` and ``get_velocity`` run as one fused pass (``vdm_fast.q_sample``) with
coefficients computed in float64 from the betas and handed to the kernel in float32, so fp16 /
bf16 samples keep their noise at the first timesteps (diffusers casts ``alphas_cumprod`` to the
sample dtype first, which rounds it to 1 there). The swap in a training script is one line::

    from vdm_fast.integrations.diffusers import DDPMScheduler   # was: from diffusers import DDPMScheduler

``step`` runs on the fused ``vdm_fast.reverse_step``: the whole update (x̂ from the model output,
clipping, posterior mean, noise) is one pass, with per-sample coefficients looked up in a float64
table built once per device and per ``set_timesteps`` (``_diffusers_coeffs``). Differences from
diffusers' ``step``, all deliberate:

- ``timestep`` may also be a (B,) tensor: each sample takes its own timestep, its own previous
  timestep and its own coefficients (diffusers takes one timestep for the whole batch).
- Coefficients are computed in float64 and applied in float32 (float64 for float64 data), never
  in the sample's dtype, so fp16/bf16 steps are more accurate than diffusers' (which rounds
  every coefficient and intermediate to the half dtype).
- Noise is drawn exactly as diffusers draws it (``randn_tensor(model_output.shape,
  generator=generator, device=..., dtype=model_output.dtype)``, only when diffusers would), so a
  seeded generator gives diffusers' samples. Opt-in ``scheduler.vdm_fast_noise = "philox"`` (or
  ``accelerate(pipe, noise="philox")``) draws it inside the fused step instead, from vdm_fast's
  Philox stream seeded by the generator (one ``torch.Generator``, not a list): faster, other samples.
- Under ``torch.compile`` (fullgraph) checks that would read data on the host are
  ``torch._assert_async``, and a DDPM step given tensor timesteps draws noise even at t = 0 (it
  cannot look; the noise coefficient is 0 there, so the result is the same). A compiled step that
  draws noise needs generator=None (or ``variance_noise``): dynamo cannot take a torch.Generator.
- Saved pipelines: each instance reports the stock class's ``__module__``, so a pipeline's
  ``model_index.json`` names ``["diffusers", "DDPMScheduler"]`` and stock diffusers loads it;
  ``accelerate(pipe)`` swaps ours back into any pipeline (DDIMPipeline also replaces a scheduler it
  is given with diffusers' own).
- ``pred_original_sample`` is written by the same pass as ``prev_sample``
  (``vdm_fast.reverse_step_with_x0``): x̂ exactly as the step used it (clamped by the same clip).
- Dynamic thresholding (``thresholding=True``) needs the per-sample quantile s of |x̂|, which no
  fixed coefficient can give: x̂ is computed once in torch (float32) for the quantile, then the
  threshold is folded into the coefficients (clamp(x̂, -s, s) / s = clamp(x̂ / s, -1, 1): a_z and
  a_m divided by s, clip 1), so the step itself is still the fused pass.
- ``learned`` / ``learned_range`` variances are per element: the standard deviation is computed
  in torch from the predicted variance and multiplies the noise before the fused pass.
- ``fixed_large_log`` (GLIDE's max_log, log-variance log(beta_t)) uses std = sqrt(beta_t);
  diffusers' DDPM step takes ``log(beta_t) ** 0.5`` there, which is NaN for every t > 0.
- ``model_output`` must be on the sample's device; of another dtype (a bfloat16 UNet next to a
  float32 sample) the step runs in the promoted dtype, as diffusers' arithmetic promotes
  (DESIGN.md §4.13).
- An unknown timestep raises ``ValueError`` (diffusers raises ``IndexError``); with a (B,)
  tensor on the GPU the check costs one host synchronisation, as diffusers' ``t > 0`` does.
"""

from __future__ import annotations

import numbers

import torch

try:
    import diffusers as _diffusers
except ImportError as exc:  # diffusers is an optional extra
    raise ImportError("vdm_fast.integrations.diffusers needs diffusers: pip install 'vdm_fast[diffusers]'") from exc

from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.schedulers.scheduling_ddpm import DDPMSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from .. import _checks
from ..ops.q_sample import q_sample
from ..ops.randn_like import randn_like
from ..ops.reverse_step import reverse_step_with_x0
from ..posterior import learned_range_log_variance
from ..schedules import DiscreteSchedule
from . import _diffusers_coeffs as coeffs
from ._diffusers_dropin import NOISE_SOURCES, DropIn, check_step_data, threshold_scale
from ._diffusers_solvers import (DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
                                 dpm_solver_unsupported)
from .._namespace import public_dir


class _FusedForwardProcess(DropIn):
    """add_noise / get_velocity on the fused q_sample op, shared by both schedulers."""

    def _vdm_schedule(self) -> DiscreteSchedule:
        # Built lazily from the betas diffusers computed (any beta_schedule, trained_betas and
        # rescale_betas_zero_snr included), rebuilt if the betas object is replaced.
        cached = getattr(self, "_vdm_fast_schedule", None)
        if cached is None or cached[0] is not self.betas:
            cached = (self.betas, DiscreteSchedule(self.betas.double()))
            self._vdm_fast_schedule = cached
        return cached[1]

    def _vdm_broadcast(self, op: str, samples, other, names: tuple[str, str], timesteps):
        """(samples, other, alpha, sigma) broadcast by diffusers' rule: the timesteps are flattened to
        (N,) and their coefficients viewed as (N, 1, ..., 1) against both tensors, so N = 1 is one
        timestep for all, N = B one per sample, and a batch of 1 (or a noise of batch 1) is broadcast
        to N. The fused op takes what diffusers' broadcast would produce: tensors of one shape
        (expanded views, not copies) and coefficients of its batch (0-d for one timestep)."""
        _checks.data(op, names[0], samples)
        _checks.data(op, names[1], other)
        t = torch.as_tensor(timesteps, device=samples.device).flatten()
        coeff_shape = (t.shape[0],) + (1,) * (samples.dim() - 1)
        try:
            shape = torch.broadcast_shapes(samples.shape, other.shape, coeff_shape)
        except RuntimeError:
            raise ValueError(f"{op}: {names[0]} {tuple(samples.shape)}, {names[1]} {tuple(other.shape)} and "
                             f"{t.shape[0]} timesteps do not broadcast (the timesteps, flattened, go along dim 0: "
                             f"one for all, or one per sample)") from None
        alpha, sigma = self._vdm_schedule().alpha_sigma(t)
        if t.shape[0] == 1:
            alpha, sigma = alpha[0], sigma[0]  # one timestep for the whole batch
        return samples.expand(shape), other.expand(shape), alpha, sigma

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """z_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, fused; timesteps broadcast as diffusers does."""
        x0, noise, alpha, sigma = self._vdm_broadcast(f"{type(self).__name__}.add_noise", original_samples, noise,
                                                      ("original_samples", "noise"), timesteps)
        return q_sample(x0, alpha, sigma, noise, backend=self.vdm_fast_backend)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """v = sqrt(abar_t) noise - sqrt(1 - abar_t) x0: q_sample with the roles of x0 and noise swapped."""
        sample, noise, alpha, sigma = self._vdm_broadcast(f"{type(self).__name__}.get_velocity", sample, noise,
                                                          ("sample", "noise"), timesteps)
        return q_sample(noise, alpha, -sigma, sample, backend=self.vdm_fast_backend)


def _values_key(t):
    """A cheap key that changes when the values of tensor ``t`` change in place: its version
    counter, which every in-place write bumps. An inference tensor (set_timesteps called under
    torch.inference_mode) has none: then the values themselves (a host read of a short vector)."""
    if not isinstance(t, torch.Tensor):
        return t
    return tuple(t.tolist()) if t.is_inference() else t._version


def _same_state(a: tuple, b: tuple) -> bool:
    # Objects (schedule, timesteps tensor) by identity, plain values by equality.
    return len(a) == len(b) and all(x is y or (not isinstance(x, (torch.Tensor, DiscreteSchedule)) and x == y)
                                    for x, y in zip(a, b))


class _FusedReverseStep:
    """The machinery both ``step`` methods share: coefficient tables, timestep lookup, checks."""

    def _vdm_step_output(self, sample, model_output, cols, clip, noise, philox, generator, return_dict, output_cls):
        """diffusers' step result from the coefficient table's columns, one fused pass: x_{t-1}
        (the step rows, with ``noise``, or with Philox noise drawn in the kernel from ``generator``
        when ``philox``) and the predicted x0, the x̂ the step forms (its rows a_z, a_m are x̂'s
        also where x̂ is folded into the others: ``_diffusers_coeffs._table``)."""
        # stochastic is always given: left to reverse_step, coefficients on a GPU would count as
        # stochastic and draw a seed from torch's default generator on every deterministic pass.
        prev_sample, pred_original_sample = reverse_step_with_x0(
            sample, model_output, cols[coeffs.STEP], clip=clip, noise=noise, generator=generator if philox else None,
            stochastic=True if philox else noise is not None, backend=self.vdm_fast_backend)
        if not return_dict:
            return (prev_sample, pred_original_sample)
        return output_cls(prev_sample=prev_sample, pred_original_sample=pred_original_sample)

    def _vdm_state(self) -> tuple | None:
        """Everything the coefficient table depends on besides the device and the step's arguments;
        None when that cannot be told (then the table is not cached)."""
        extra = self._vdm_extra_state()
        if extra is None:
            return None
        return (self._vdm_schedule(), self.timesteps, self.num_inference_steps,
                getattr(self, "custom_timesteps", False), self.config.prediction_type, self._vdm_fold(), *extra)

    def _vdm_fold(self) -> bool:
        # x̂ is folded into the z and m coefficients when nothing clips it.
        return not (self.config.thresholding or self.config.clip_sample)

    def _vdm_table(self, device: torch.device, step_args: tuple):
        """(table (ROWS, T) float64 on device, valid (T,) bool on the CPU, valid (T,) bool on device,
        valid as a list of bools, None under torch.compile).

        Torch only (no NumPy, no host reads of device data), so a step compiled with
        torch.compile(fullgraph=True) can build it in its graph. The list makes the eager check of
        an int timestep a list lookup rather than a tensor index and read."""
        cache = self.__dict__.setdefault("_vdm_fast_tables", {})
        key, state = (device, step_args), self._vdm_state()
        hit = cache.get(key)
        if hit is not None and state is not None and _same_state(hit[0], state):
            return hit[1]
        prev, valid = self._vdm_prev_timesteps()
        acp = self._vdm_schedule().alphas_cumprod.to(device)  # float64, from the betas
        prev_t = prev.to(device)
        final = torch.as_tensor(self._vdm_final_alpha_cumprod(acp), dtype=torch.float64, device=device)
        ab_prev = torch.where(prev_t >= 0, acp[prev_t.clamp(min=0)], final)
        t = torch.arange(acp.numel(), device=device)
        table = self._vdm_rows(acp, ab_prev, t, *step_args).contiguous()
        entry = (table, valid, valid.to(device), None if torch.compiler.is_compiling() else valid.tolist())
        if state is not None:
            if len(cache) >= 16:  # eta/use_clipped_model_output vary rarely; keep the cache small
                cache.clear()
            cache[key] = (state, entry)
        return entry

    def _vdm_columns(self, op: str, timestep, sample: torch.Tensor, step_args: tuple):
        """The table columns of ``timestep``: (ROWS,) for one timestep, (ROWS, B) per sample.

        Also returns the timestep(s) (an int or a (B,) tensor) for the caller's noise decision.
        Eagerly an unknown timestep raises ValueError; under torch.compile the check is
        torch._assert_async (a host read would break the graph) and a one-element tensor
        timestep stays a tensor (``.item()`` would break it too).
        """
        table, valid_cpu, valid_dev, valid_list = self._vdm_table(sample.device, step_args)
        num_t = valid_cpu.shape[0]
        compiling = torch.compiler.is_compiling()
        bad = f"not timesteps of this scheduler (0..{num_t - 1}{self._vdm_valid_hint()})"
        if isinstance(timestep, torch.Tensor):
            if timestep.is_floating_point() or timestep.is_complex() or timestep.dtype == torch.bool:
                raise TypeError(f"{op}: timestep must hold integer timesteps, got dtype {timestep.dtype}")
            one = timestep.numel() == 1 and timestep.dim() <= 1
            if one and not compiling:
                timestep = int(timestep.item())  # one timestep for all (what diffusers takes)
            elif one or (timestep.dim() == 1 and timestep.shape[0] == sample.shape[0]):
                t = timestep.long().reshape(-1)
                # Checked where t lies (a CPU tensor: no device sync), on the sample's device otherwise.
                valid = valid_cpu if t.device.type == "cpu" else valid_dev
                if t.device.type != "cpu" and t.device != sample.device:
                    t, valid = t.to(sample.device), valid_dev
                ok = ((t >= 0) & (t < num_t) & valid[t.clamp(0, num_t - 1)]).all()
                if compiling:
                    torch._assert_async(ok, f"{op}: timestep holds values that are {bad}")
                elif not bool(ok):
                    raise ValueError(f"{op}: timestep holds values that are {bad}: {t.tolist()}")
                cols = table.index_select(1, t.to(sample.device))
                return (cols[:, 0] if one else cols), t
            else:
                raise ValueError(f"{op}: timestep must be an int, a 0-d tensor or a tensor of shape "
                                 f"({sample.shape[0]},) (one per sample), got shape {tuple(timestep.shape)}")
        if isinstance(timestep, bool) or not isinstance(timestep, numbers.Integral):
            raise TypeError(f"{op}: timestep must be an int or an integer tensor, got {type(timestep).__name__}")
        timestep = int(timestep)
        if not 0 <= timestep < num_t:
            raise ValueError(f"{op}: timestep {timestep} is {bad}")
        if compiling:
            torch._assert_async(valid_cpu[timestep], f"{op}: timestep {timestep} is {bad}")
        elif not (valid_list[timestep] if valid_list is not None else bool(valid_cpu[timestep])):
            raise ValueError(f"{op}: timestep {timestep} is {bad}")  # (no list: the table was built compiling)
        return table[:, timestep], timestep

    def _vdm_valid_hint(self) -> str:
        return ""

    _vdm_check_data = staticmethod(check_step_data)

    @staticmethod
    def _vdm_per_sample(row: torch.Tensor, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # A table row, 0-d (one timestep) or (B,), as a tensor broadcasting over `like` in `dtype`.
        row = row.to(dtype)
        return row if row.dim() == 0 else row.view(-1, *([1] * (like.dim() - 1)))

    def _vdm_threshold(self, cols: torch.Tensor, sample: torch.Tensor, model_output: torch.Tensor) -> torch.Tensor:
        """Fold dynamic thresholding (Imagen) into the coefficients: a_z, a_m divided by s per sample
        (``_diffusers_dropin.threshold_scale``)."""
        batch = sample.shape[0]
        cols = cols if cols.dim() == 2 else cols[:, None].expand(coeffs.ROWS, batch)
        if sample.numel() == 0:
            return cols
        s = threshold_scale(cols[0], cols[1], sample, model_output, self.config.dynamic_thresholding_ratio,
                            self.config.sample_max_value)
        cols = cols.clone()
        cols[[0, 1, 6, 7]] /= s  # rows a_z, a_m of the step and of pred_original_sample
        return cols

    def _vdm_clip(self):
        """(threshold, clip): dynamic thresholding (then clip 1 after folding) or a plain clip.

        Thresholding wins over clip_sample, as in diffusers.
        """
        if self.config.thresholding:
            return True, 1.0
        if self.config.clip_sample:
            return False, float(self.config.clip_sample_range)
        return False, None

    @staticmethod
    def _vdm_any_positive(t) -> bool:
        if isinstance(t, int):
            return t > 0
        # Under torch.compile the values cannot be read (graph break): noise is drawn for the batch,
        # and the table's noise row, 0 where t = 0, keeps the step diffusers' step.
        return True if torch.compiler.is_compiling() else bool((t > 0).any())

class DDPMScheduler(_FusedForwardProcess, _FusedReverseStep, _diffusers.DDPMScheduler):
    """diffusers.DDPMScheduler with fused add_noise / get_velocity / step."""

    _vdm_stock = _diffusers.DDPMScheduler  # the diffusers class this one replaces

    def _vdm_extra_state(self) -> tuple | None:
        # The previous timestep of each t comes from the values of self.timesteps: a table built
        # before an in-place edit of them is stale (the tensor is the same object, so its identity in
        # _vdm_state cannot tell).
        if not (self.custom_timesteps or self.num_inference_steps):
            return (self.variance_type,)  # prev = t - 1: the values do not matter
        if torch.compiler.is_compiling():
            # Neither the version counter nor the values can be read in a graph: no cache, the table
            # is built in the compiled graph from the current values.
            return None
        return (self.variance_type, _values_key(self.timesteps))

    def _vdm_final_alpha_cumprod(self, acp: torch.Tensor) -> float:
        return 1.0  # diffusers' self.one: no previous timestep means alpha_bar = 1

    def _vdm_prev_timesteps(self):
        """prev[t] and valid[t] for t in 0..T-1, as diffusers' ``previous_timestep``."""
        num_t = self.config.num_train_timesteps
        if not (self.custom_timesteps or self.num_inference_steps):
            return torch.arange(num_t) - 1, torch.ones(num_t, dtype=torch.bool)
        ts = self.timesteps.detach().to("cpu", torch.int64).flatten()
        n = ts.numel()
        # first[t]: the first index i with ts[i] = t (diffusers' nonzero()[0]), n where there is none;
        # timesteps outside 0..T-1 go to a spare slot T, dropped. Vectorised (no host loop) so that
        # torch.compile can trace it.
        slot = torch.where((ts >= 0) & (ts < num_t), ts, num_t)
        first = torch.full((num_t + 1,), n).scatter_reduce(0, slot, torch.arange(n), "amin")[:num_t]
        valid = first < n
        following = torch.cat([ts[1:], ts.new_full((1,), -1)])  # the timestep after each; -1 after the last
        return torch.where(valid, following[first.clamp(max=max(n - 1, 0))], -1), valid

    def _vdm_valid_hint(self) -> str:
        return ", and one of scheduler.timesteps" if (self.custom_timesteps or self.num_inference_steps) else ""

    def _vdm_rows(self, acp, ab_prev, t):
        return coeffs.ddpm(acp, ab_prev, t, self.config.prediction_type, self.variance_type, self._vdm_fold())

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> DDPMSchedulerOutput | tuple:
        """diffusers' DDPM step in one fused pass (see the module docstring); ``timestep`` may be (B,)."""
        op = f"{type(self).__name__}.step"
        _checks.data(op, "sample", sample)
        _checks.data(op, "model_output", model_output)
        predicted_variance = None
        learned = self.variance_type in coeffs.LEARNED
        if learned:
            if model_output.dim() < 2 or model_output.shape[1] != sample.shape[1] * 2:
                raise ValueError(f"{op}: variance_type {self.variance_type!r} needs model_output with twice the "
                                 f"channels of sample (dim 1: {2 * sample.shape[1]}), got {tuple(model_output.shape)}")
            model_output, predicted_variance = torch.split(model_output, sample.shape[1], dim=1)
        self._vdm_check_data(op, model_output, sample)
        cols, t = self._vdm_columns(op, timestep, sample, ())
        threshold, clip = self._vdm_clip()
        if threshold:
            cols = self._vdm_threshold(cols, sample, model_output)
        noise, philox = None, self._vdm_philox(op, generator)
        if self._vdm_any_positive(t):  # diffusers draws only when t > 0
            if learned:  # the noise is scaled per element before the kernel, so it is drawn here
                noise = (randn_like(sample, generator, backend=self.vdm_fast_backend) if philox else
                         randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                      dtype=model_output.dtype))
                noise, philox = self._vdm_learned_noise(cols, predicted_variance, noise), False
            elif not philox:
                noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                     dtype=model_output.dtype)
        else:
            philox = False
        return self._vdm_step_output(sample, model_output, cols, clip, noise, philox, generator, return_dict,
                                     DDPMSchedulerOutput)

    def _vdm_learned_noise(self, cols, predicted_variance, noise):
        """std * noise, per element, for the learned variance types (the noise row of the table is 1)."""
        cdt = _checks.compute_dtype(noise.dtype)
        pv = predicted_variance.to(cdt)
        if self.variance_type == "learned":
            std = pv**0.5  # the model predicts the variance itself
        else:  # learned_range: log-variance interpolated between the posterior's and beta_t's
            min_log = self._vdm_per_sample(cols[coeffs.MIN_LOG], pv, cdt)
            max_log = self._vdm_per_sample(cols[coeffs.MAX_LOG], pv, cdt)
            std = torch.exp(0.5 * learned_range_log_variance(pv, min_log, max_log))
        return (std * noise.to(cdt)).to(noise.dtype)


class DDIMScheduler(_FusedForwardProcess, _FusedReverseStep, _diffusers.DDIMScheduler):
    """diffusers.DDIMScheduler with fused add_noise / get_velocity / step."""

    _vdm_stock = _diffusers.DDIMScheduler

    def _vdm_extra_state(self) -> tuple:
        return (self.config.set_alpha_to_one,)

    def _vdm_final_alpha_cumprod(self, acp: torch.Tensor):
        return 1.0 if self.config.set_alpha_to_one else acp[0]

    def _vdm_prev_timesteps(self):
        # diffusers' DDIM steps back by T // num_inference_steps whatever the timestep spacing.
        num_t = self.config.num_train_timesteps
        return torch.arange(num_t) - num_t // self.num_inference_steps, torch.ones(num_t, dtype=torch.bool)

    def _vdm_rows(self, acp, ab_prev, t, eta, use_clipped_model_output):
        return coeffs.ddim(acp, ab_prev, self.config.prediction_type, eta, use_clipped_model_output, self._vdm_fold())

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> DDIMSchedulerOutput | tuple:
        """diffusers' DDIM step in one fused pass (see the module docstring); ``timestep`` may be (B,)."""
        op = f"{type(self).__name__}.step"
        if self.num_inference_steps is None:
            raise ValueError(
                "Number of inference steps is 'None', you need to run 'set_timesteps' after creating the scheduler"
            )
        self._vdm_check_data(op, model_output, sample)
        if isinstance(eta, bool) or not isinstance(eta, numbers.Real):
            raise TypeError(f"{op}: eta must be a float, got {type(eta).__name__}")
        eta = float(eta)
        cols, _ = self._vdm_columns(op, timestep, sample, (eta, bool(use_clipped_model_output)))
        threshold, clip = self._vdm_clip()
        if threshold:
            cols = self._vdm_threshold(cols, sample, model_output)
        noise, philox = None, False
        if eta > 0:
            if variance_noise is not None and generator is not None:
                raise ValueError(
                    "Cannot pass both generator and variance_noise. Please make sure that either `generator` or"
                    " `variance_noise` stays `None`."
                )
            if variance_noise is not None:
                noise = _checks.same_as(op, "variance_noise", variance_noise, sample, "sample")
            elif not (philox := self._vdm_philox(op, generator)):
                noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                     dtype=model_output.dtype)
        return self._vdm_step_output(sample, model_output, cols, clip, noise, philox, generator, return_dict,
                                     DDIMSchedulerOutput)


_DROP_INS = (DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler,
             DPMSolverMultistepScheduler)


def _counterpart(scheduler):
    """(our class, None) for a stock diffusers scheduler we replace (exact type: a user's subclass may
    change what step does), (ours itself, None) for one of ours, (None, why) otherwise."""
    if isinstance(scheduler, _DROP_INS):
        return type(scheduler), None
    cls = {c._vdm_stock: c for c in _DROP_INS}.get(type(scheduler))
    if cls is DPMSolverMultistepScheduler:
        why = dpm_solver_unsupported(scheduler.config)
        if why is not None:
            return None, f"no fused step for {why}"
    return cls, None


def accelerate(pipe, *, noise: str = "diffusers", backend: str | None = None):
    """Swap the DDPM/DDIM schedulers of a diffusers pipeline for vdm_fast's, in place; returns ``pipe``.

    Needed because pipelines may replace a scheduler they are given (``DDIMPipeline.__init__``
    rebuilds it with diffusers' ``DDIMScheduler.from_config``) and ``from_pretrained`` loads the
    stock classes. Every component that is a stock ``DDPMScheduler`` / ``DDIMScheduler`` (``scheduler``,
    DeepFloyd IF's ``image_noising_scheduler``, ...) is rebuilt from its config as ours, also in the
    sub-pipelines a combined pipeline holds; one shared scheduler stays shared.

    Args:
        pipe: a ``diffusers.DiffusionPipeline``.
        noise: the ``step``'s noise (``vdm_fast_noise``): ``"diffusers"`` (diffusers' stream, bit for
            bit) or ``"philox"`` (drawn inside the fused step: faster, a different stream).
        backend: the vdm_fast backend of the fused calls (None: the default, see vdm_fast.backends).

    Raises:
        TypeError: ``pipe`` is not a DiffusionPipeline.
        ValueError: no scheduler of ``pipe`` has a vdm_fast counterpart (the error names its class),
            or ``noise`` is unknown.
    """
    if not isinstance(pipe, _diffusers.DiffusionPipeline):
        raise TypeError(f"accelerate: pipe must be a diffusers.DiffusionPipeline, got {type(pipe).__name__}")
    if noise not in NOISE_SOURCES:
        raise ValueError(f"accelerate: noise must be one of {', '.join(map(repr, NOISE_SOURCES))}, got {noise!r}")
    swapped, others = {}, []  # id(stock scheduler) -> ours; names of schedulers left alone
    pipes, seen = [pipe], set()
    while pipes:
        p = pipes.pop()
        if id(p) in seen:
            continue
        seen.add(id(p))
        # Combined pipelines (Kandinsky's) run sub-pipelines held as plain attributes.
        pipes.extend(v for v in vars(p).values() if isinstance(v, _diffusers.DiffusionPipeline))
        for name, component in p.components.items():
            if not isinstance(component, _diffusers.SchedulerMixin):
                continue
            cls, why = _counterpart(component)
            if cls is None:
                others.append(f"{type(p).__name__}.{name} ({type(component).__module__}.{type(component).__name__}"
                              f"{': ' + why if why else ''})")
                continue
            ours = swapped.get(id(component))
            if ours is None:
                ours = component if isinstance(component, cls) else cls.from_config(component.config)
                ours.vdm_fast_noise, ours.vdm_fast_backend = noise, backend
                swapped[id(component)] = ours
            if ours is not component:
                setattr(p, name, ours)  # the pipeline's __setattr__ records it in its config
    if not swapped:
        found = "; ".join(others) if others else "it has no scheduler component"
        names = ", ".join(c.__name__ for c in _DROP_INS)
        raise ValueError(f"accelerate: pipe has no scheduler with a vdm_fast counterpart ({names}): {found}")
    return pipe


__all__ = ["DDPMScheduler", "DDIMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
           "DPMSolverMultistepScheduler", "accelerate"]
__dir__ = public_dir(__all__)
