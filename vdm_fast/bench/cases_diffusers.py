"""Benchmark cases for the diffusers drop-ins: our schedulers' step / add_noise vs diffusers' own.

Each case builds one diffusers scheduler and one of ours with the same config and times the same
call on the same tensors: ``DDPMScheduler.step`` (clip_sample on, t > 0: noise drawn),
``DDIMScheduler.step`` (eta = 0, clip_sample on) and ``add_noise`` (per-sample timesteps). Both
sides draw their noise the same way (``randn_tensor``), so the difference is the arithmetic.
Our providers are one per built backend of the fused op (``vdm_fast_backend``).

The sigma-grid schedulers (``EulerDiscreteScheduler``, ``EulerAncestralDiscreteScheduler``,
``DPMSolverMultistepScheduler``) keep a step index (and DPM-Solver a history of x̂): every timed
call first puts both schedulers back at the same mid-chain step (index 10 of 25, DPM-Solver's
second-order update with its previous x̂ in place), a few attribute writes. Euler-ancestral is also
timed with ``vdm_fast_noise="philox"`` (``+philox``: the noise drawn inside the fused pass).
"""

from __future__ import annotations

import math
import torch

from .. import backends
from .harness import Case

SHAPES = [(64, 3, 64, 64), (16, 4, 64, 64), (256, 3, 32, 32)]
QUICK_SHAPES = [(16, 3, 32, 32)]


def _schedulers(kind: str):
    try:
        import diffusers

        from ..integrations import diffusers as ours
    except ImportError:
        return None
    theirs, mine = getattr(diffusers, kind)(num_train_timesteps=1000), getattr(ours, kind)(num_train_timesteps=1000)
    theirs.set_timesteps(50)
    mine.set_timesteps(50)
    return theirs, mine


def _ours(device: str, op: str) -> list[str]:
    # the Triton interpreter is a correctness tool, not a benchmark
    return [b for b in backends.available(device, op) if not (b == "triton" and device == "cpu")]


def _step_case(kind: str, shape, device: str, step_kw: dict) -> Case | None:
    pair = _schedulers(kind)
    if pair is None:
        return None
    theirs, mine = pair
    sample = torch.randn(shape, device=device)
    model_output = torch.randn(shape, device=device)
    t = int(theirs.timesteps[10])  # mid-chain, t > 0
    providers, ours = {}, []
    for backend in _ours(device, "reverse_step"):
        sched = type(mine).from_config(mine.config)
        sched.set_timesteps(50)
        sched.vdm_fast_backend = backend
        name = f"vdm_fast[{backend}]"
        providers[name] = lambda s=sched: s.step(model_output, t, sample, **step_kw)
        ours.append(name)
    providers["diffusers"] = lambda: theirs.step(model_output, t, sample, **step_kw)
    noisy = kind == "DDPMScheduler" or step_kw.get("eta", 0) > 0
    # read sample and model_output (and the noise), write prev_sample and pred_original_sample
    nbytes = (4 + noisy) * sample.numel() * sample.element_size()
    return Case(f"{kind}.step", f"{tuple(shape)} fp32", nbytes, providers, device=device, elements=math.prod(shape), ours=tuple(ours),
                baselines=("diffusers",))


def _add_noise_case(shape, device: str) -> Case | None:
    pair = _schedulers("DDPMScheduler")
    if pair is None:
        return None
    theirs, mine = pair
    x0 = torch.randn(shape, device=device)
    noise = torch.randn(shape, device=device)
    t = torch.randint(0, 1000, (shape[0],), device=device)
    providers, ours = {}, []
    for backend in _ours(device, "q_sample"):
        sched = type(mine).from_config(mine.config)
        sched.vdm_fast_backend = backend
        name = f"vdm_fast[{backend}]"
        providers[name] = lambda s=sched: s.add_noise(x0, noise, t)
        ours.append(name)
    providers["diffusers"] = lambda: theirs.add_noise(x0, noise, t)
    nbytes = 3 * x0.numel() * x0.element_size()  # read x0 and noise, write z
    return Case("DDPMScheduler.add_noise", f"{tuple(shape)} fp32", nbytes, providers, device=device, elements=math.prod(shape),
                ours=tuple(ours), baselines=("diffusers",))


def _at_step(sched, index: int, history: torch.Tensor | None):
    """Put a sigma-grid scheduler at step ``index`` (DPM-Solver: second order, x̂_prev = history)."""
    sched._step_index = index
    if history is not None:
        sched.lower_order_nums = sched.config.solver_order
        sched.model_outputs[-1] = history


def _sigma_step_case(kind: str, shape, device: str) -> Case | None:
    try:
        import diffusers

        from ..integrations import diffusers as ours_mod
    except ImportError:
        return None
    sample = torch.randn(shape, device=device)
    model_output = torch.randn(shape, device=device)
    history = torch.randn(shape, device=device) if kind == "DPMSolverMultistepScheduler" else None
    index = 10

    def make(cls, **attrs):
        sched = cls(num_train_timesteps=1000)
        sched.set_timesteps(25)
        sched.is_scale_input_called = True  # the Euler schedulers warn otherwise
        for k, v in attrs.items():
            setattr(sched, k, v)
        t = sched.timesteps[index]

        def call():
            _at_step(sched, index, history)
            return sched.step(model_output, t, sample)
        return call

    providers, ours = {}, []
    variants = [("", {})] + ([("+philox", {"vdm_fast_noise": "philox"})]
                             if kind == "EulerAncestralDiscreteScheduler" else [])
    for backend in _ours(device, "reverse_step"):
        for suffix, attrs in variants:
            name = f"vdm_fast[{backend}]{suffix}"
            providers[name] = make(getattr(ours_mod, kind), vdm_fast_backend=backend, **attrs)
            ours.append(name)
    providers["diffusers"] = make(getattr(diffusers, kind))
    # read sample, model_output (DPM-Solver: and x̂_prev; Euler-ancestral: and the noise), write
    # prev_sample and x̂ (diffusers' Euler schedulers return x̂; DPM-Solver keeps it as history)
    reads = 2 + (history is not None or kind == "EulerAncestralDiscreteScheduler")
    nbytes = (reads + 2) * sample.numel() * sample.element_size()
    return Case(f"{kind}.step", f"{tuple(shape)} fp32", nbytes, providers, device=device, elements=math.prod(shape), ours=tuple(ours),
                baselines=("diffusers",))


# The ops whose benchmarks this module writes by hand (vdm-fast bench derives the others').
OPS = ()


def cases(device: str = "cpu", quick: bool = False) -> list[Case]:
    shapes = QUICK_SHAPES if quick else SHAPES
    out = []
    for shape in shapes:
        out += [
            _step_case("DDPMScheduler", shape, device, {}),
            _step_case("DDIMScheduler", shape, device, dict(eta=0.0)),
            _add_noise_case(shape, device),
            _sigma_step_case("EulerDiscreteScheduler", shape, device),
            _sigma_step_case("EulerAncestralDiscreteScheduler", shape, device),
            _sigma_step_case("DPMSolverMultistepScheduler", shape, device),
        ]
    return [c for c in out if c is not None]
