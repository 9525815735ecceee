"""Guidance for the samplers of ``vdm_fast.samplers`` (DESIGN.md §4.6, §5).

Both kinds are folded into the one fused ``reverse_step`` call of a sampler step:

- Classifier-free guidance (Ho & Salimans 2022): m = m_uncond + w (m_cond - m_uncond), w per
  sample; w = 1 is the conditional model, w = 0 the unconditional one (Luo's gamma; some papers
  write 1 + w). :func:`classifier_free` wraps a label-conditional network ``fn(z, t, y)`` and calls
  it ONCE per step on the batch concatenated with itself, the second half under the null label;
  :func:`classifier_free_pair` wraps a model that already returns ``(cond, uncond)``. The sampler
  hands both outputs and w to ``reverse_step``.
- Classifier guidance (Dhariwal & Nichol 2021): the guided score is ŝ + k ∇_z log p(y | z_t, t),
  k per sample. :func:`classifier` wraps a user classifier; its gradient is taken with autograd and
  passed to ``reverse_step`` as ``classifier_grad`` with ``grad_scale`` from
  :func:`classifier_grad_scale`, which converts k into the model's parameterization (a score shift
  is a different shift of eps, x0 or v; DESIGN.md §2; ``parameterization.score_shift_scale``):

  ========== ====================================== =====================================
  model      guided output                          grad_scale
  ========== ====================================== =====================================
  score      ŝ + k g                                k
  eps        ε̂ - sigma k g   (ε̂ = -sigma ŝ)          -sigma k
  x0         x̂ + (sigma²/alpha) k g  (Tweedie)       k sigma² / alpha
  v          v̂ - (sigma/alpha) k g                   -k sigma / alpha
  ========== ====================================== =====================================

  with g = ∇_z log p(y | z_t, t) and (alpha, sigma) those of the level t. k = 1 samples the exact
  conditional q(z | y) when the model and classifier are exact (Bayes: ∇ log q(z|y) = ∇ log q(z) +
  ∇ log p(y|z)).
"""

from __future__ import annotations

from typing import Callable

import torch

from ._namespace import public_dir
from .parameterization import score_shift_scale


def check_output(what: str, m, z: torch.Tensor) -> torch.Tensor:
    """``m``, checked to be a model output for latent ``z``: a floating-point tensor of z's shape on
    z's device (the samplers cast it to z's dtype, which only rounds; an integer output would be
    silently converted, anything but a tensor fail later with an unhelpful AttributeError)."""
    if not isinstance(m, torch.Tensor):
        raise TypeError(f"{what} must return a torch.Tensor of the shape of z {tuple(z.shape)}, "
                        f"got {type(m).__name__}")
    if not m.is_floating_point():
        raise TypeError(f"{what} must return a floating-point tensor, got {m.dtype}")
    if m.shape != z.shape:
        raise ValueError(f"{what} must return a tensor of the shape of z {tuple(z.shape)}, got {tuple(m.shape)}")
    if m.device != z.device:
        raise ValueError(f"{what} returned a tensor on {m.device} but z is on {z.device}")
    return m


class ClassifierFree:
    """A classifier-free guided model: ``outputs(z, t) -> (cond, uncond)``. Pass it to a sampler
    with ``guidance_scale=w``."""

    def __init__(self, outputs: Callable):
        self._outputs = outputs

    def outputs(self, z: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self._outputs(z, t)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise TypeError(f"a classifier-free model must return a pair (cond, uncond) of tensors, "
                            f"got {type(out).__name__}")
        cond = check_output("the classifier-free model (cond)", out[0], z)
        uncond = check_output("the classifier-free model (uncond)", out[1], z)
        return cond, uncond

    def __call__(self, z: torch.Tensor, t: torch.Tensor, guidance_scale) -> torch.Tensor:
        """The guided output uncond + w (cond - uncond) as a tensor (for use outside the samplers)."""
        cond, uncond = self.outputs(z, t)
        w = torch.as_tensor(guidance_scale, dtype=z.dtype, device=z.device)
        if w.dim() == 1:
            w = w.reshape((-1,) + (1,) * (z.dim() - 1))
        return uncond + w * (cond - uncond)


def classifier_free(fn: Callable, labels: torch.Tensor, null_class) -> ClassifierFree:
    """Classifier-free guidance from one label-conditional network.

    ``fn(z, t, y)`` is called once per step with the batch doubled: z and t concatenated with
    themselves, y = [labels, null_class, ..., null_class]; the first half of its output is the
    conditional model, the second the unconditional one. ``labels``: (B,) integer tensor;
    ``null_class``: the label the network was trained with for "no label" (an int, or a (B,) tensor).
    """
    labels = torch.as_tensor(labels)
    if labels.dim() != 1:
        raise ValueError(f"labels must be a (B,) tensor, got shape {tuple(labels.shape)}")
    null = torch.as_tensor(null_class, dtype=labels.dtype).expand_as(labels)
    both_cpu = torch.cat([labels, null.to(labels.device)])
    cache: dict[torch.device, torch.Tensor] = {}

    def outputs(z, t):
        if z.shape[0] != labels.shape[0]:
            raise ValueError(f"classifier_free: {labels.shape[0]} labels for a batch of {z.shape[0]}")
        y = cache.get(z.device)
        if y is None:
            y = cache.setdefault(z.device, both_cpu.to(z.device))
        zz = torch.cat([z, z])
        out = check_output("classifier_free: fn(z, t, y)", fn(zz, torch.cat([t, t]), y), zz)
        cond, uncond = out.chunk(2)
        return cond, uncond

    return ClassifierFree(outputs)


def classifier_free_pair(fn: Callable) -> ClassifierFree:
    """Classifier-free guidance from a model that returns both outputs: ``fn(z, t) -> (cond, uncond)``
    (two networks, or a network with two heads)."""
    return ClassifierFree(fn)


class Classifier:
    """A noisy-data classifier for classifier guidance: ``grad(z, t)`` = ∇_z log p(y | z_t, t).

    ``fn(z, t)`` returns either logits of shape (B, C) (``output="logits"``: log p(y|z) is their
    log-softmax at ``labels``) or the per-sample log-probabilities log p(y_b | z_b) of shape (B,)
    (``output="log_prob"``; then ``labels`` are not used by this wrapper and may be None).
    """

    def __init__(self, fn: Callable, labels=None, output: str = "logits"):
        if output not in ("logits", "log_prob"):
            raise ValueError(f"output must be 'logits' or 'log_prob', got {output!r}")
        if output == "logits" and labels is None:
            raise ValueError("labels are required with output='logits'")
        self.fn, self.output = fn, output
        self.labels = None if labels is None else torch.as_tensor(labels)

    def log_prob(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.fn(z, t)
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            raise TypeError(f"the classifier fn(z, t) must return a floating-point tensor ({self.output}), got "
                            f"{out.dtype if isinstance(out, torch.Tensor) else type(out).__name__}")
        if self.output == "log_prob":
            if out.shape != (z.shape[0],):
                raise ValueError(f"classifier log_prob must have shape ({z.shape[0]},), got {tuple(out.shape)}")
            return out
        if out.dim() != 2 or out.shape[0] != z.shape[0]:
            raise ValueError(f"classifier logits must have shape ({z.shape[0]}, C), got {tuple(out.shape)}")
        labels = self.labels.to(out.device)
        return torch.log_softmax(out.float(), dim=1).gather(1, labels[:, None]).squeeze(1)

    def grad(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """∇_z log p(y | z, t) per sample (the sum over the batch has per-sample gradients), in z's dtype."""
        with torch.enable_grad():
            zz = z.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.log_prob(zz, t).sum(), zz)
        return g.to(z.dtype)


def classifier(fn: Callable, labels=None, output: str = "logits") -> Classifier:
    """Classifier guidance: wrap ``fn(z, t)`` (see :class:`Classifier`). Pass it to a sampler as
    ``classifier=`` with ``classifier_scale=k`` (float or (B,))."""
    return Classifier(fn, labels, output)


def classifier_grad_scale(parameterization: str, alpha: torch.Tensor, sigma: torch.Tensor, scale) -> torch.Tensor:
    """The per-sample ``grad_scale`` for reverse_step that adds ``scale`` * ∇ log p(y|z) to the
    score, for a model of the given parameterization (see the module docstring's table):
    ``scale`` times the output shift of a unit score shift, ``parameterization.score_shift_scale``."""
    return scale * score_shift_scale(parameterization, alpha, sigma)


def guided_output(m, uncond=None, guidance_scale=None, classifier_grad=None, grad_scale=None) -> torch.Tensor:
    """The guided model output of reverse_step as a tensor, in torch (for norms, tests)."""
    def bc(v):
        return v.reshape((-1,) + (1,) * (m.dim() - 1))

    out = m
    if uncond is not None:
        out = uncond + bc(guidance_scale).to(m.dtype) * (m - uncond)
    if classifier_grad is not None:
        out = out + bc(grad_scale).to(m.dtype) * classifier_grad
    return out


__all__ = ["ClassifierFree", "classifier_free", "classifier_free_pair", "Classifier", "classifier",
           "classifier_grad_scale", "guided_output"]
__dir__ = public_dir(__all__)
