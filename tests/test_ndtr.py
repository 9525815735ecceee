"""The float32 log Phi (log_ndtr_f) and log1p(-q) (log1m_f) of csrc/cpu/ndtr.h, the erf form of
discretized_gaussian_nll's vectorised CPU loop, against float64 over every float32 input (--runslow;
every 61st bit pattern by default), at the CPU path this process runs (tests/test_cpu_paths.py runs
this file again at every lower level).

The bounds are the header's claims. log Phi(x) is well conditioned relative to itself on the whole
line (condition number |x Phi'(x) / (Phi(x) log Phi(x))| tends to 2 for x -> -inf, is 0.8 at 0 and
grows as x^2 for x -> +inf, where log Phi(x) = -Phi(-x)): the function is evaluated in a form with
no cancellation, so the claim is a relative error of 12 * 2^-24 (a few roundings of the final value)
everywhere its value is a normal float; where it is subnormal (x > 13.1, log Phi(x) = -Phi(-x)),
that relative error at the smallest normal plus the rounding to a subnormal (2^-150) absolute;
the special values exactly.
"""

from __future__ import annotations

import math

import pytest
import torch

import vdm_fast
from test_fast_math import every_float

pytestmark = pytest.mark.skipif(not vdm_fast._library.has_native_kernel("fast_math", "CPU"),
                                reason="the native library is not built")

FLT_MAX = torch.finfo(torch.float32).max
TINY = 2.0**-126
REL = 12 * 2.0**-24  # the header's bound, relative to the result
SUB = REL * TINY + 2.0**-150  # its absolute form for subnormal results


def check_relative(fn: str, truth_fn, stride: int, domain=None) -> float:
    """Worst relative error (in units of 2^-24) where the truth is a normal float; subnormal truths
    within SUB; non-finite truths (and those beyond float32's range) exactly, as the float32 value."""
    worst = 0.0
    for x in every_float(stride):
        if domain is not None:
            x = x[domain(x)]
        got = torch.ops.vdm_fast.fast_math(fn, x).double()
        truth = truth_fn(x.double())
        normal = truth.isfinite() & (truth.abs() >= TINY) & (truth.abs() <= FLT_MAX)
        if normal.any():
            rel = ((got[normal] - truth[normal]).abs() / truth[normal].abs()).max().item()
            worst = max(worst, rel / 2.0**-24)
        sub = truth.isfinite() & (truth.abs() < TINY)
        if sub.any():
            assert (got[sub] - truth[sub]).abs().max().item() <= SUB, fn
        special = ~truth.isfinite() | (truth.abs() > FLT_MAX)
        want = truth[special].float().double()
        assert torch.equal(got[special].isnan(), want.isnan()), fn
        keep = ~want.isnan()
        assert torch.equal(got[special][keep], want[keep]), (fn, x[special][keep][got[special][keep] != want[keep]])
    assert worst <= REL / 2.0**-24, f"{fn}: {worst:.2f} x 2^-24 relative"
    return worst


@pytest.mark.parametrize("stride", [pytest.param(1, marks=pytest.mark.slow, id="all"), pytest.param(61, id="every61st")])
def test_cpu_fast_math_log_ndtr_over_every_float(stride):
    check_relative("log_ndtr", torch.special.log_ndtr, stride)


@pytest.mark.parametrize("stride", [pytest.param(1, marks=pytest.mark.slow, id="all"), pytest.param(61, id="every61st")])
def test_cpu_fast_math_log1m_over_every_float_in_0_1(stride):
    check_relative("log1m", lambda q: torch.log1p(-q), stride, domain=lambda x: (x >= 0) & (x <= 1))


def test_cpu_fast_math_log_ndtr_tails_and_special_values():
    f = torch.ops.vdm_fast.fast_math
    x = torch.tensor([-math.inf, -3e19, -2e19, -1e10, -40.0, -0.0, 0.0, 5.0, 13.0, 14.0, 30.0, math.inf, math.nan])
    got = f("log_ndtr", x).double()
    truth = torch.special.log_ndtr(x.double())
    assert got[0] == -math.inf and got[1] == -math.inf  # -x^2/2 below -FLT_MAX
    assert got[11] == 0 and got[12].isnan()
    # the far left tail is -x^2/2 - log(-x sqrt(2 pi)) + ..., relative to itself; no overflow on the way
    assert ((got[2:11] - truth[2:11]).abs() <= REL * truth[2:11].abs() + SUB).all(), (got, truth)
    assert -2.0**-126 < got[9] < 0  # log Phi(14) = -Phi(-14) = -8e-45: subnormal, not flushed to 0 or -inf
    assert got[10] == 0  # log Phi(30) = -5e-199


def test_cpu_fast_math_log1m_edges():
    f = torch.ops.vdm_fast.fast_math
    got = f("log1m", torch.tensor([0.0, 2.0**-30, 0.5, 1.0, math.nan])).double()
    assert got[0] == 0 and got[1] == -(2.0**-30) and got[2] == torch.tensor(math.log(0.5)).item()  # exact w: log_f's value
    assert got[3] == -math.inf and got[4].isnan()
