"""Benchmark cases for prior_kl (forward): ours (each built backend) vs eager and torch.compile."""

from __future__ import annotations

import torch

from .. import backends, reference
from ..ops.prior_kl import prior_kl
from .harness import Case

SHAPES = [(64, 3, 64, 64), (16, 4, 64, 64), (256, 3, 32, 32)]
QUICK_SHAPES = [(16, 3, 32, 32)]


def _case(shape, device: str, compiled_ref) -> Case:
    # Built in its own scope so every provider closes over this case's tensors.
    x0 = torch.randn(shape, device=device)
    alpha = 0.01 + 0.1 * torch.rand(shape[0], device=device)
    sigma = (1 - alpha**2).sqrt()
    providers, ours = {}, []
    for backend in backends.available(device, "prior_kl"):
        if backend == "reference" or (backend == "triton" and device == "cpu"):
            continue  # the Triton interpreter is a correctness tool, not a benchmark
        providers[f"vdm_fast[{backend}]"] = lambda b=backend: prior_kl(x0, alpha, sigma, backend=b)
        ours.append(f"vdm_fast[{backend}]")
    providers["eager"] = lambda: reference.prior_kl(x0, alpha, sigma)
    providers["torch.compile"] = lambda: compiled_ref(x0, alpha, sigma)
    nbytes = x0.numel() * x0.element_size()  # read x0 once
    return Case("prior_kl", f"{tuple(shape)} fp32", nbytes, providers, device=device, ours=tuple(ours))


def cases(device: str = "cpu", quick: bool = False) -> list[Case]:
    shapes = QUICK_SHAPES if quick else SHAPES
    compiled_ref = torch.compile(reference.prior_kl, dynamic=False)
    return [_case(shape, device, compiled_ref) for shape in shapes]
