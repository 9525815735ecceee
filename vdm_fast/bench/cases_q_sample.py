"""Benchmark cases for q_sample: ours (each built backend) vs eager, torch.compile, diffusers."""

from __future__ import annotations

import math
import torch

from .. import backends, reference
from ..ops.q_sample import q_sample
from .harness import Case

SHAPES = [(64, 3, 64, 64), (16, 4, 64, 64), (256, 3, 32, 32)]
DRAM_SHAPE = (64, 4, 512, 512)  # 67M elements: 268 MB per float32 tensor
QUICK_SHAPES = [(16, 3, 32, 32)]


def _diffusers_provider(x0, noise, t):
    try:
        from diffusers import DDPMScheduler
    except ImportError:
        return None
    sched = DDPMScheduler(num_train_timesteps=1000)
    return lambda: sched.add_noise(x0, noise, t)


def _case(shape, device: str, compiled_ref) -> Case:
    # Built in its own scope so every provider closes over this case's tensors.
    x0 = torch.randn(shape, device=device)
    noise = torch.randn(shape, device=device)
    t = torch.randint(0, 1000, (shape[0],), device=device)
    alpha = torch.rand(shape[0], device=device)
    sigma = torch.rand(shape[0], device=device)
    providers, ours = {}, []
    for backend in backends.available(device, "q_sample"):
        if backend == "reference" or (backend == "triton" and device == "cpu"):
            continue  # the Triton interpreter is a correctness tool, not a benchmark
        providers[f"vdm_fast[{backend}]"] = lambda b=backend: q_sample(x0, alpha, sigma, noise, backend=b)
        ours.append(f"vdm_fast[{backend}]")
    providers["eager"] = lambda: reference.q_sample(x0, alpha, sigma, noise)
    providers["torch.compile"] = lambda: compiled_ref(x0, alpha, sigma, noise)
    diff = _diffusers_provider(x0, noise, t)
    if diff is not None:
        providers["diffusers"] = diff
    nbytes = 3 * x0.numel() * x0.element_size()  # read x0 and noise, write z
    return Case("q_sample", f"{tuple(shape)} fp32", nbytes, providers, device=device, elements=math.prod(shape), ours=tuple(ours))


# The ops whose benchmarks this module writes by hand (vdm-fast bench derives the others').
OPS = ("q_sample",)


def cases(device: str = "cpu", quick: bool = False, dram: bool = True) -> list[Case]:
    shapes = QUICK_SHAPES if quick else SHAPES + ([DRAM_SHAPE] if dram else [])
    compiled_ref = torch.compile(reference.q_sample, dynamic=False)
    return [_case(shape, device, compiled_ref) for shape in shapes]
