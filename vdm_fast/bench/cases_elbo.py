"""Benchmark cases for the ELBO: one continuous-time training step (forward + backward) of a tiny
model under a learned schedule, through the fused ops (default backend) vs the same step with
``backend="reference"`` (the pure-PyTorch ops). The model is the same in both, so the difference
is the ELBO's own work: q_sample twice, sq_error, recon_nll (256-way softmax), prior_kl."""

from __future__ import annotations

import math
import warnings

import torch

from .. import elbo as elbo_mod
from .. import parameterization
from ..schedules import LearnedLinearGamma
from .harness import Case

SHAPES = [(64, 3, 32, 32), (256, 1, 28, 28)]
QUICK_SHAPES = [(16, 3, 16, 16)]


def _case(shape, device: str) -> Case:
    # Built in its own scope so every provider closes over this case's tensors and modules.
    gen = torch.Generator().manual_seed(0)
    x0 = (2 * (torch.randint(0, 256, shape, generator=gen) + 0.5) / 256 - 1).to(device)
    t = elbo_mod.sample_time(shape[0], generator=gen).to(device)
    noise = torch.randn(shape, generator=gen).to(device)
    recon_noise = torch.randn(shape, generator=gen).to(device)
    net = torch.nn.Conv2d(shape[1], shape[1], 3, padding=1).to(device)
    sched = LearnedLinearGamma().to(device)
    params = list(net.parameters()) + list(sched.parameters())

    def model(z, tt):
        return net(z) * parameterization.alpha_sigma_squared(sched.gamma(tt))[1].reshape(-1, 1, 1, 1)

    def step(backend):
        for p in params:
            p.grad = None
        loss = elbo_mod.elbo(model, x0, sched, t=t, noise=noise, recon_noise=recon_noise, backend=backend).bpd.mean()
        loss.backward()
        return loss

    providers = {"vdm_fast": lambda: step(None), "eager": lambda: step("reference")}
    # Approximate minimal traffic of the ELBO ops, forward (12 tensor passes) + backward (~12).
    nbytes = 24 * x0.numel() * x0.element_size()
    return Case("elbo", f"train step {tuple(shape)} fp32", nbytes, providers, device=device, elements=math.prod(shape), ours=("vdm_fast",),
                baselines=("eager",))


# The ops whose benchmarks this module writes by hand (vdm-fast bench derives the others').
OPS = ()


def cases(device: str = "cpu", quick: bool = False) -> list[Case]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # ops without a fused kernel yet fall back, once
        return [_case(shape, device) for shape in (QUICK_SHAPES if quick else SHAPES)]
