"""Benchmark cases for the Philox noise ops: randn_like vs torch.randn, and q_sample_randn vs
drawing the noise eagerly then q_sample (eager, torch.compile, diffusers' add_noise)."""

from __future__ import annotations

import math
import torch

from .. import backends, reference
from ..ops.randn_like import randn_like
from ..ops.q_sample_randn import q_sample_randn
from .harness import Case

SHAPES = [(64, 3, 64, 64), (16, 4, 64, 64), (256, 3, 32, 32)]
QUICK_SHAPES = [(16, 3, 32, 32)]


def _ours(op: str, device: str) -> list[str]:
    # The Triton interpreter is a correctness tool, not a benchmark.
    return [b for b in backends.available(device, op) if b != "reference" and not (b == "triton" and device == "cpu")]


def _randn_case(shape, device: str, compiled_randn) -> Case:
    x = torch.empty(shape, device=device)
    providers, ours = {}, []
    for backend in _ours("randn_like", device):
        providers[f"vdm_fast[{backend}]"] = lambda b=backend: randn_like(x, backend=b)
        ours.append(f"vdm_fast[{backend}]")
    providers["eager"] = lambda: torch.randn(shape, device=device)
    providers["torch.compile"] = lambda: compiled_randn(x)
    return Case("randn_like", f"{tuple(shape)} fp32", x.numel() * x.element_size(), providers, device=device, elements=math.prod(shape),
                ours=tuple(ours))


def _eager_q_sample_randn(x0, alpha, sigma):
    noise = torch.randn_like(x0)
    return reference.q_sample(x0, alpha, sigma, noise), noise


def _diffusers_provider(x0, t):
    try:
        from diffusers import DDPMScheduler
    except ImportError:
        return None
    sched = DDPMScheduler(num_train_timesteps=1000)
    return lambda: sched.add_noise(x0, torch.randn(x0.shape, device=x0.device), t)


def _q_sample_randn_case(shape, device: str, compiled_ref) -> Case:
    x0 = torch.randn(shape, device=device)
    t = torch.randint(0, 1000, (shape[0],), device=device)
    alpha = torch.rand(shape[0], device=device)
    sigma = torch.rand(shape[0], device=device)
    providers, ours = {}, []
    for backend in _ours("q_sample_randn", device):
        providers[f"vdm_fast[{backend}]"] = lambda b=backend: q_sample_randn(x0, alpha, sigma, backend=b)
        ours.append(f"vdm_fast[{backend}]")
    providers["eager"] = lambda: _eager_q_sample_randn(x0, alpha, sigma)
    providers["torch.compile"] = lambda: compiled_ref(x0, alpha, sigma)
    diff = _diffusers_provider(x0, t)
    if diff is not None:
        providers["diffusers"] = diff
    nbytes = 3 * x0.numel() * x0.element_size()  # read x0, write z and the noise
    return Case("q_sample_randn", f"{tuple(shape)} fp32", nbytes, providers, device=device, elements=math.prod(shape), ours=tuple(ours))


# The ops whose benchmarks this module writes by hand (vdm-fast bench derives the others').
OPS = ("randn_like", "q_sample_randn")


def cases(device: str = "cpu", quick: bool = False) -> list[Case]:
    shapes = QUICK_SHAPES if quick else SHAPES
    compiled_randn = torch.compile(torch.randn_like, dynamic=False)
    compiled_ref = torch.compile(_eager_q_sample_randn, dynamic=False)
    return [_randn_case(s, device, compiled_randn) for s in shapes] + [
        _q_sample_randn_case(s, device, compiled_ref) for s in shapes
    ]
