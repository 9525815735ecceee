"""Benchmark cases derived from an op's declaration (vdm_fast/ops/_spec.py): ours on each built
backend vs the reference eagerly and under torch.compile, on the op's own sample inputs. Every op
without a module ``cases_<op>`` of its own (which adds baselines such as diffusers, or a backward)
is benchmarked this way by ``vdm-fast bench``."""

from __future__ import annotations

import math
import torch

from .. import backends
from ..ops._spec import DATA, LIKE, LIKE_DATA, OpSpec
from .harness import Case

SHAPES = [(64, 3, 64, 64), (16, 4, 64, 64), (256, 3, 32, 32)]
QUICK_SHAPES = [(16, 3, 32, 32)]


def bytes_moved(spec: OpSpec, args) -> int:
    """Each data argument read once, each output shaped like the data written once."""
    data = [a for arg, a in zip(spec.args, args) if arg.role in (DATA, LIKE)]
    first = data[0]
    nbytes = sum(a.numel() * a.element_size() for a in data if arg_reads(spec, a, first))
    return nbytes + sum(first.numel() * first.element_size() for rule in spec.outputs if rule == LIKE_DATA)


def arg_reads(spec: OpSpec, a, first) -> bool:
    return not (spec.args[0].role == LIKE and a is first)  # randn_like reads nothing of x


def _case(spec: OpSpec, shape, device: str, compiled_ref) -> Case:
    # Built in its own scope so every provider closes over this case's tensors.
    public = getattr(__import__("vdm_fast"), spec.name)
    args = spec.sample_inputs(shape, torch.float32, device, torch.Generator().manual_seed(0))
    native = spec.prepare(*spec.sample_inputs(shape, torch.float32, device, torch.Generator().manual_seed(0)))
    providers, ours = {}, []
    for backend in backends.available(device, spec.name):
        if backend == "reference" or (backend == "triton" and device == "cpu"):
            continue  # the Triton interpreter is a correctness tool, not a benchmark
        providers[f"vdm_fast[{backend}]"] = lambda b=backend: public(*args, backend=b)
        ours.append(f"vdm_fast[{backend}]")
    providers["eager"] = lambda: spec.reference(*native)
    providers["torch.compile"] = lambda: compiled_ref(*native)
    return Case(spec.name, f"{tuple(shape)} fp32", bytes_moved(spec, args), providers, device=device, elements=math.prod(shape),
                ours=tuple(ours))


def cases_for(spec: OpSpec, device: str = "cpu", quick: bool = False) -> list[Case]:
    compiled_ref = torch.compile(spec.reference, dynamic=False)
    return [_case(spec, shape, device, compiled_ref) for shape in (QUICK_SHAPES if quick else SHAPES)]
