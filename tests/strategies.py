"""Hypothesis strategies and profiles shared by the property-based tests, and their equality rule
(tests/numerics.py: the running error bound of the reference on the same inputs).

Profiles: ``ci`` (the default: a fixed, derandomised budget) and ``dev`` (longer, random:
``HYPOTHESIS_PROFILE=dev pytest tests/test_hardening*.py``).
"""

from __future__ import annotations

import os

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import numerics

settings.register_profile("ci", max_examples=30, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
SIZES = [1, 2, 3, 5, 7, 11, 13]


@st.composite
def data_tensors(draw, count: int):
    """``count`` tensors of one random shape and dtype, each in a random memory layout."""
    batch = draw(st.sampled_from([0, 1, 2, 3, 5, 7]))
    if draw(st.booleans()):
        rest = draw(st.lists(st.sampled_from(SIZES), min_size=1, max_size=4))
    else:  # one large dimension
        rest = [draw(st.integers(1000, 5000))]
    dtype = draw(st.sampled_from(DTYPES))
    shape = [batch] + rest
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        layout = draw(st.sampled_from(["contiguous", "transposed", "sliced", "expanded", "channels_last", "batch_inner"]))
        out.append(_in_layout(shape, dtype, layout, gen))
    return out


def _in_layout(shape, dtype, layout, gen):
    def rand(s):
        return torch.randn(s, generator=gen).to(dtype)

    if layout == "transposed" and len(shape) >= 3:
        s = list(shape)
        s[1], s[2] = s[2], s[1]
        return rand(s).transpose(1, 2)
    if layout == "sliced":
        s = list(shape)
        s[-1] = 2 * s[-1]
        return rand(s)[..., ::2]
    if layout == "expanded" and len(shape) >= 2:
        s = list(shape)
        s[-1] = 1
        return rand(s).expand(shape)
    if layout == "channels_last" and len(shape) == 4:
        return rand(shape).contiguous(memory_format=torch.channels_last)
    if layout == "batch_inner" and len(shape) >= 2:
        s = [shape[1], shape[0]] + list(shape[2:])
        return rand(s).transpose(0, 1)
    return rand(shape)


@st.composite
def coefficient(draw, batch: int):
    form = draw(st.sampled_from(["float", "0-d", "(B,)", "(B,1,...)", "float64"]))
    value = draw(st.floats(-2, 2, allow_nan=False, width=32))
    if form == "float":
        return value
    if form == "0-d":
        return torch.tensor(value)
    if form == "float64":
        return torch.full((batch,), value, dtype=torch.float64)
    values = torch.tensor(draw(st.lists(st.floats(-2, 2, allow_nan=False, width=32), min_size=batch, max_size=batch)))
    return values if form == "(B,)" else values.reshape(batch, 1, 1)


def per_sample(coeff, batch: int) -> torch.Tensor:
    """A coefficient drawn by ``coefficient`` as the (B,) tensor the op computes with, for the
    reference: a Python float as float64 (the op rounds it to its compute precision, and numerics
    counts that rounding, as it does for a float64 coefficient of float32 data), a tensor as given."""
    if isinstance(coeff, float):
        return torch.full((batch,), coeff, dtype=torch.float64)
    return coeff.expand(batch) if coeff.dim() == 0 else coeff.reshape(batch)


def assert_matches_reference(ours: torch.Tensor, reference_fn, inputs, msg: str = "") -> None:
    """``ours``, an op's result on ``inputs``, equals ``reference_fn(*inputs)`` evaluated in float64
    within numerics.K times the running error bound of the reference formula at the op's compute
    precision (float32 for float32, float16 and bfloat16 data, float64 for float64 data; DESIGN.md
    §10), plus the rounding of the result to its own dtype."""
    numerics.check_against_reference(lambda *_: ours, reference_fn, inputs, msg=msg)
