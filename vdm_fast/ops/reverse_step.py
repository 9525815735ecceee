"""reverse_step: one fused update for every sampler and both kinds of guidance (DESIGN.md §4.6, §5).

Inference only. The coefficient builders in ``vdm_fast.samplers`` compute the six per-sample
scalars once per step on the data's device; this op applies them in one pass over the data.

Backends: the native op ``vdm_fast::reverse_step`` (C++ CPU kernel csrc/cpu/reverse_step.cpp,
CUDA kernel csrc/cuda/reverse_step.cu), the Triton op ``vdm_fast::reverse_step_triton``
(kernels/reverse_step.py) and the reference. None has a backward: sampling needs no gradients, and
an input that requires grad (with grad mode on) is an error rather than a silently detached result.
"""

from __future__ import annotations

import numbers

import torch

from .. import _checks, reference
from . import _autodiff
from ._spec import DATA, LIKE_DATA, OTHER, Arg, OpSpec, normal, uniform
from .randn_like import draw_seed

NAME = "reverse_step"


def _reference_with_x0(z, model_out, coeffs, uncond, guidance_scale, classifier_grad, grad_scale, clip, noise,
                       seed=None, offset=0):
    # The op's contract: noise given, or drawn from seed (the randn_like stream, rounded to z's
    # dtype), or neither: no noise term. For "neither" the reference gets zeros (the same update)
    # rather than noise=None, with which it would look at c_n on the host to decide whether to draw.
    if noise is None:
        noise = reference.randn_like(z, seed, offset) if seed is not None else torch.zeros_like(z)
    return reference.reverse_step_with_x0(z, model_out, coeffs, uncond, guidance_scale, classifier_grad, grad_scale,
                                          clip, noise)


def _reference(*args):
    return _reference_with_x0(*args)[0]


def sample_inputs(shape, dtype, device, generator):
    """A deterministic step (c_n = 0: no noise drawn) with random coefficients: (z, model_out,
    coeffs). Guidance, clipping and noise are tests/test_reverse_step.py's."""
    coeffs = torch.stack([uniform(shape[0], -1.0, 1.0, dtype, device, generator) for _ in range(6)])
    coeffs[5] = 0
    return normal(shape, dtype, device, generator), normal(shape, dtype, device, generator), coeffs




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


def _draws_noise(coeffs_arg, coeffs: torch.Tensor, stochastic) -> bool:
    """Whether the update needs noise when none is given, decided without a device sync.

    ``stochastic`` (the caller's Python-level knowledge, e.g. DDIM with eta = 0 is deterministic)
    decides when given. Otherwise c_n is inspected where that is free: a Python number in a
    sequence of coefficients, or coefficients on the CPU (eagerly; under torch.compile the check
    would break the graph). Coefficients on an accelerator are assumed stochastic: reading them
    would synchronise the device every step, while a needless seed costs one tiny draw (the kernel
    skips samples with c_n = 0 on its own).
    """
    if stochastic is not None:
        return stochastic
    if isinstance(coeffs_arg, (list, tuple)) and isinstance(coeffs_arg[5], numbers.Real):
        return coeffs_arg[5] != 0
    if coeffs.device.type == "cpu" and not torch.compiler.is_compiling():
        return bool(coeffs[5].any())
    return True


def _reject_grad(named) -> None:
    if torch.is_grad_enabled():
        for name, t in named:
            if t is not None and t.requires_grad:
                raise ValueError(f"{NAME}: {name} requires grad, but reverse_step is inference-only (no backward); "
                                 "detach it, or call under torch.no_grad() or torch.inference_mode()")


def reverse_step(z: torch.Tensor, model_out: torch.Tensor, coeffs, *, uncond=None, guidance_scale=None,
                 classifier_grad=None, grad_scale=None, clip=None, noise=None, generator=None,
                 stochastic: bool | None = None, backend: str | None = None) -> torch.Tensor:
    """One reverse (sampling) step, fused: guidance, x̂ (optionally clipped) and the affine update.

    The data inputs (z, model_out, uncond, classifier_grad, noise) may differ in dtype: the step is
    computed and returned in their promoted dtype (float32 at least under autocast; DESIGN.md §4.13).

    Per element: m = model_out, or uncond + w (model_out - uncond) with classifier-free guidance;
    m += grad_scale * classifier_grad with classifier guidance; x̂ = a_z z + a_m m, clamped to
    [-clip, clip] when clip is given; z_next = c_z z + c_m m + c_x x̂ + c_n n.

    Args:
        z: current latent z_t, shape (B, ...), float32/float64/float16/bfloat16, any strides.
        model_out: the network's output for z (any parameterization; the coefficients encode it).
        coeffs: the six per-sample scalars (a_z, a_m, c_z, c_m, c_x, c_n): a (6, B) or (6,) tensor
            or a sequence of six floats / (B,) tensors. Built by ``vdm_fast.samplers``.
        uncond, guidance_scale: classifier-free guidance, m = uncond + w (model_out - uncond),
            w per sample (float or (B,)); both or neither.
        classifier_grad, grad_scale: classifier guidance, m += grad_scale * classifier_grad.
        clip: clamp x̂ to [-clip, clip] (None: no clipping).
        noise: the noise n of the update, same shape/dtype/device as z. None: drawn inside the
            kernel when the step is stochastic (see ``stochastic``), from counter-based Philox
            (DESIGN.md §6): the same stream on every backend (normals equal to float32 rounding), equal to
            ``vdm_fast.randn_like(z, generator)`` for the same generator state, and nothing is
            drawn for samples whose c_n is 0.
        generator: the torch.Generator the 64-bit seed of drawn noise comes from (one draw per
            stochastic call; default: torch's default CPU generator), or a 0-d int64 tensor that is
            the seed. Under torch.compile: None or a seed tensor (DESIGN.md §6).
        stochastic: whether some c_n is non-zero, i.e. whether noise must be drawn when ``noise``
            is None. None (default): looked up where that costs no device sync — c_n given as a
            Python number, or coefficients on the CPU — and otherwise (coefficients on a GPU, or
            under torch.compile) assumed True: a seed is drawn from the generator, and the kernel
            still draws nothing for samples whose c_n is 0. Samplers pass it from what they know
            (DDIM with eta = 0: False). False: no seed is drawn (the generator does not advance)
            and the c_n term is left out, whatever c_n holds (it is not read: no device sync);
            it is an error to pass noise with it.
        backend: see :mod:`vdm_fast.backends`.

    Returns:
        z_next, shape of z, in the promoted dtype (z's when the inputs share it; strides of z when z
        is batch-major dense). Not differentiable: an input that requires grad while grad mode is on raises ValueError.
    """
    if _plain_step(z, model_out, coeffs, uncond, guidance_scale, classifier_grad, grad_scale, clip, noise, generator,
                   stochastic):  # a sampler's step: nothing to convert, straight to the op (~2 us saved)
        return SPEC.call_prepared((z, model_out, coeffs, None, None, None, None, clip, noise,
                                   _seed(noise, stochastic, coeffs, coeffs, generator), 0), z, backend)
    return SPEC(z, model_out, coeffs, uncond=uncond, guidance_scale=guidance_scale,
                classifier_grad=classifier_grad, grad_scale=grad_scale, clip=clip, noise=noise,
                generator=generator, stochastic=stochastic, backend=backend)


def _guidance_pair(z, cdt, tensor_name, tensor, scale_name, scale, kind):
    """A guidance input and its per-sample scale: both or neither, checked and normalised."""
    if (tensor is None) != (scale is None):
        raise ValueError(f"{NAME}: {tensor_name} and {scale_name} go together ({kind}); "
                         f"got {tensor_name if tensor is not None else scale_name} alone")
    if tensor is None:
        return None, None
    return tensor, _checks.per_sample(NAME, scale_name, scale, z.shape[0], z.device, cdt)


def _plain_step(z, model_out, coeffs, uncond, guidance_scale, classifier_grad, grad_scale, clip, noise, generator,
                stochastic) -> bool:
    """Whether a call is the common sampler step that needs no normalisation: z and model_out (and
    noise) of one float32/float64 dtype, shape and device, coefficients already the (6, B) contiguous
    tensor of that dtype there (the samplers' table rows), no guidance, a float clip or none, and
    nothing that requires grad or carries a tangent (the general path raises for those)."""
    if not (uncond is None and guidance_scale is None and classifier_grad is None and grad_scale is None):
        return False
    if type(z) is not torch.Tensor or type(model_out) is not torch.Tensor or type(coeffs) is not torch.Tensor:
        return False
    dtype, shape, device = z.dtype, z.shape, z.device
    if dtype is not torch.float32 and dtype is not torch.float64:
        return False
    if not shape or model_out.dtype is not dtype or model_out.shape != shape or model_out.device != device:
        return False
    if noise is not None and (type(noise) is not torch.Tensor or noise.dtype is not dtype or noise.shape != shape
                              or noise.device != device):
        return False
    if (coeffs.dtype is not dtype or coeffs.dim() != 2 or coeffs.shape[0] != 6 or coeffs.shape[1] != shape[0]
            or coeffs.device != device or not coeffs.is_contiguous()):
        return False
    if clip is not None and (type(clip) is not float or not clip > 0):
        return False
    if not (stochastic is None or stochastic is True or stochastic is False):
        return False
    if stochastic is False and noise is not None:
        return False
    if not (generator is None or type(generator) is torch.Generator):
        return False
    if torch.is_grad_enabled() and (z.requires_grad or model_out.requires_grad or coeffs.requires_grad
                                    or (noise is not None and noise.requires_grad)):
        return False
    return _autodiff.fwAD._current_level < 0 and not torch.compiler.is_compiling()


def _seed(noise, stochastic, coeffs_arg, coeffs, generator):
    """The Philox seed the kernel draws the step's noise from, or None (noise given, or no noise)."""
    if noise is None and stochastic is not False and _draws_noise(coeffs_arg, coeffs, stochastic):
        return draw_seed(generator, NAME)
    return None


def _prepare(z, model_out, coeffs, *, uncond=None, guidance_scale=None, classifier_grad=None, grad_scale=None,
             clip=None, noise=None, generator=None, stochastic=None) -> tuple:
    """reverse_step's public arguments checked (errors name the argument) and normalised into the
    native op's: coefficients (6, B) in the compute dtype, guidance pairs, clip, noise or a drawn seed."""
    if _plain_step(z, model_out, coeffs, uncond, guidance_scale, classifier_grad, grad_scale, clip, noise, generator,
                   stochastic):  # a sampler's step: checked in place, nothing to convert (DESIGN.md §4.11)
        return (z, model_out, coeffs, None, None, None, None, clip, noise,
                _seed(noise, stochastic, coeffs, coeffs, generator), 0)
    # Mixed dtypes (a bfloat16 model's output next to a float32 latent) are computed and returned
    # in the promoted dtype (DESIGN.md §4.13).
    (z, model_out, uncond, classifier_grad, noise), dtype = _checks.promoted_data(
        NAME, (("z", z), ("model_out", model_out), ("uncond", uncond), ("classifier_grad", classifier_grad),
               ("noise", noise)))
    batch, cdt = z.shape[0], _checks.compute_dtype(dtype)
    coeffs_arg = coeffs
    coeffs = step_coeffs(NAME, coeffs, batch, z.device, cdt)
    uncond, guidance_scale = _guidance_pair(z, cdt, "uncond", uncond, "guidance_scale", guidance_scale,
                                            "classifier-free guidance")
    classifier_grad, grad_scale = _guidance_pair(z, cdt, "classifier_grad", classifier_grad, "grad_scale", grad_scale,
                                                 "classifier guidance")
    if clip is not None:
        if not isinstance(clip, numbers.Real) or isinstance(clip, bool) or not clip > 0:
            raise ValueError(f"{NAME}: clip must be a positive float or None, got {clip!r}")
        clip = float(clip)
    # Tensor first, and apart: Dynamo cannot trace isinstance(tensor, torch.Generator).
    if not (generator is None or isinstance(generator, torch.Tensor) or isinstance(generator, torch.Generator)):
        raise TypeError(f"{NAME}: generator must be a torch.Generator, a 0-d int64 seed tensor or None, got "
                        f"{type(generator).__name__}")
    if stochastic is not None and not isinstance(stochastic, bool):
        raise TypeError(f"{NAME}: stochastic must be True, False or None, got {type(stochastic).__name__}")
    _reject_grad((("z", z), ("model_out", model_out), ("coeffs", coeffs), ("uncond", uncond),
                  ("guidance_scale", guidance_scale), ("classifier_grad", classifier_grad),
                  ("grad_scale", grad_scale), ("noise", noise)))
    _autodiff.reject_tangent(NAME, ("z", "model_out", "coeffs", "uncond", "guidance_scale", "classifier_grad",
                                    "grad_scale", "noise"),
                             (z, model_out, coeffs, uncond, guidance_scale, classifier_grad, grad_scale, noise))
    if stochastic is False and noise is not None:
        raise ValueError(f"{NAME}: stochastic=False but noise was given; pass one or the other")
    seed = _seed(noise, stochastic, coeffs_arg, coeffs, generator)  # the kernel draws the noise from it
    return z, model_out, coeffs, uncond, guidance_scale, classifier_grad, grad_scale, clip, noise, seed, 0


# The native op's arguments; reverse_step checks and normalises them (optional
# inputs, guidance pairs, drawn noise). The Autograd kernel (csrc/cpu/reverse_step.cpp) rejects
# inputs that require grad: no backward.
_ARGS = (Arg("z", DATA), Arg("model_out", DATA), Arg("coeffs", OTHER), Arg("uncond", OTHER),
         Arg("guidance_scale", OTHER), Arg("classifier_grad", OTHER), Arg("grad_scale", OTHER), Arg("clip", OTHER),
         Arg("noise", OTHER), Arg("seed", OTHER), Arg("offset", OTHER))
SPEC = OpSpec(NAME, args=_ARGS, outputs=(LIKE_DATA,), reference=_reference, sample_inputs=sample_inputs,
              prepare_fn=_prepare).register()
# The same step returning x̂ too, from the same pass (diffusers' pred_original_sample).
SPEC_WITH_X0 = OpSpec(NAME + "_with_x0", args=_ARGS, outputs=(LIKE_DATA, LIKE_DATA), reference=_reference_with_x0,
                      sample_inputs=sample_inputs, prepare_fn=_prepare).register()


def reverse_step_with_x0(z: torch.Tensor, model_out: torch.Tensor, coeffs, *, uncond=None, guidance_scale=None,
                         classifier_grad=None, grad_scale=None, clip=None, noise=None, generator=None,
                         stochastic: bool | None = None,
                         backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`reverse_step` that also returns the x̂ it forms, written in the same pass.

    Arguments as :func:`reverse_step`. Returns ``(z_next, x_hat)``: x̂ = a_z z + a_m m of the
    (guided) model output m, clamped to [-clip, clip] when clip is given, in z_next's shape, dtype
    and layout. With the x̂ coefficients of the model's parameterization in rows a_z, a_m
    (``vdm_fast.parameterization.x0_coeffs``), x̂ is the predicted clean sample, which diffusers'
    schedulers return as ``pred_original_sample`` next to ``prev_sample``: one read of z and m
    instead of two.
    """
    if _plain_step(z, model_out, coeffs, uncond, guidance_scale, classifier_grad, grad_scale, clip, noise, generator,
                   stochastic):  # as in reverse_step
        return SPEC_WITH_X0.call_prepared((z, model_out, coeffs, None, None, None, None, clip, noise,
                                           _seed(noise, stochastic, coeffs, coeffs, generator), 0), z, backend)
    return SPEC_WITH_X0(z, model_out, coeffs, uncond=uncond, guidance_scale=guidance_scale,
                        classifier_grad=classifier_grad, grad_scale=grad_scale, clip=clip, noise=noise,
                        generator=generator, stochastic=stochastic, backend=backend)
