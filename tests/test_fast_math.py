"""The float32 exp and log of csrc/cpu/fast_math.h (the vectorised CPU loops' transcendentals)
against float64 over every float32 input (--runslow; every 61st bit pattern by default), at the
CPU path this process runs (tests/test_cpu_paths.py runs this file again at every lower level).

The bounds are the header's claims: at most 2 ulps of the correctly rounded result where that is a
normal float, 2^-149 absolute where it is subnormal, and the special values exactly.
"""

from __future__ import annotations

import math

import pytest
import torch

import vdm_fast

pytestmark = pytest.mark.skipif(not vdm_fast._library.has_native_kernel("fast_math", "CPU"),
                                reason="the native library is not built")

FLT_MAX = torch.finfo(torch.float32).max
TINY = 2.0**-126  # the smallest normal float32
CHUNK = 1 << 26  # bit patterns per step (memory: a few float64 copies of a chunk)


def every_float(stride: int):
    """All float32 values whose bit pattern is a multiple of stride, in chunks."""
    for start in range(0, 1 << 32, CHUNK):
        bits = torch.arange(start, min(start + CHUNK, 1 << 32), stride, dtype=torch.int64)
        yield torch.where(bits >= 1 << 31, bits - (1 << 32), bits).to(torch.int32).view(torch.float32)


def ulps_off(got: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """|got - truth| in ulps of truth rounded to float32 (truth normal and finite in float32)."""
    t = truth.float().abs()
    ulp = (torch.nextafter(t, torch.full_like(t, math.inf)) - t).double()
    return (got.double() - truth).abs() / ulp


def check(fn: str, truth_fn, stride: int):
    worst = 0.0
    for x in every_float(stride):
        got = torch.ops.vdm_fast.fast_math(fn, x)
        truth = truth_fn(x.double())
        normal = truth.isfinite() & (truth.abs() >= TINY) & (truth.abs() <= FLT_MAX)
        if normal.any():
            worst = max(worst, ulps_off(got[normal], truth[normal]).max().item())
        sub = truth.isfinite() & (truth.abs() < TINY)  # subnormal or zero results: absolute
        if sub.any():
            assert (got[sub].double() - truth[sub]).abs().max().item() <= 2.0**-149, fn
        special = ~truth.isfinite() | (truth.abs() > FLT_MAX)  # inf, nan, overflow
        want = truth[special].float()
        assert torch.equal(got[special].isnan(), want.isnan()), fn
        keep = ~want.isnan()
        assert torch.equal(got[special][keep], want[keep]), fn
    assert worst <= 2.0, f"{fn}: {worst:.3f} ulps"
    return worst


@pytest.mark.parametrize("stride", [pytest.param(1, marks=pytest.mark.slow, id="all"), pytest.param(61, id="every61st")])
@pytest.mark.parametrize("fn", ["exp", "log"])
def test_cpu_fast_math_matches_reference_over_every_float(fn, stride):
    check(fn, getattr(torch, fn), stride)


EXP_NORMAL_LO = -86.0  # csrc/cpu/fast_math.h: kExpNormalLo


@pytest.mark.parametrize("stride", [pytest.param(1, marks=pytest.mark.slow, id="all"), pytest.param(61, id="every61st")])
def test_cpu_exp_normal_is_exp_above_its_floor_and_the_floor_below(stride):
    """exp_normal_f: exp_f's bound where x >= -86, exp(-86) (a normal float, never a subnormal or 0)
    below, and NaN, +inf as exp."""
    floor = torch.ops.vdm_fast.fast_math("exp_normal", torch.tensor([EXP_NORMAL_LO]))
    assert floor.item() == pytest.approx(math.exp(EXP_NORMAL_LO), rel=2**-22) and floor.item() >= TINY
    worst = 0.0
    for x in every_float(stride):
        got = torch.ops.vdm_fast.fast_math("exp_normal", x)
        low = x < EXP_NORMAL_LO  # -inf included
        assert torch.equal(got[low], floor.expand_as(got[low]))
        truth = torch.exp(x[~low].double())
        got = got[~low]
        normal = truth.isfinite() & (truth <= FLT_MAX)
        if normal.any():
            worst = max(worst, ulps_off(got[normal], truth[normal]).max().item())
        want = truth[~normal].float()  # NaN, +inf and overflow
        assert torch.equal(got[~normal].isnan(), want.isnan())
        assert torch.equal(got[~normal][~want.isnan()], want[~want.isnan()])
    assert worst <= 2.0, f"exp_normal: {worst:.3f} ulps"


@pytest.mark.parametrize("stride", [pytest.param(1, marks=pytest.mark.slow, id="all"), pytest.param(61, id="every61st")])
def test_cpu_log_normal_is_log_on_positive_normal_floats(stride):
    """log_normal_f: log_f's bound over every positive normal float, NaN for NaN (its domain: the
    tanh CDF's probability, floored at 1e-12)."""
    worst = 0.0
    for x in every_float(stride):
        x = x[(x >= TINY) & (x <= FLT_MAX) | x.isnan()]
        got = torch.ops.vdm_fast.fast_math("log_normal", x)
        nan = x.isnan()
        assert got[nan].isnan().all()
        if (~nan).any():
            worst = max(worst, ulps_off(got[~nan], torch.log(x[~nan].double())).max().item())
    assert worst <= 2.0, f"log_normal: {worst:.3f} ulps"


def test_cpu_fast_math_special_values_and_bad_input():
    f = torch.ops.vdm_fast.fast_math
    x = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan, -1.0, 88.8, -104.0, 1e-45])
    assert f("exp", x).tolist()[:4] == [1.0, 1.0, math.inf, 0.0]
    assert math.isnan(f("exp", x)[4]) and f("exp", x)[6] == math.inf and f("exp", x)[7] == 0.0
    lg = f("log", x)
    assert lg[0] == -math.inf and lg[1] == -math.inf and lg[2] == math.inf
    assert lg[3].isnan() and lg[4].isnan() and lg[5].isnan()
    assert lg[8].item() == pytest.approx(math.log(1.401298464324817e-45), rel=1e-7)
    with pytest.raises(RuntimeError, match="fn must be"):
        f("sin", x)
    with pytest.raises(RuntimeError, match="float32"):
        f("exp", x.double())
