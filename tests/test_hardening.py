"""Hardening (issue 7): property-based equality with the reference, many calls, many threads,
and tensors past 2^31 elements (opt-in).

Hypothesis profiles: ``ci`` (the default: a fixed, derandomised budget) and ``dev`` (longer,
random: ``HYPOTHESIS_PROFILE=dev pytest tests/test_hardening.py``).
"""

from __future__ import annotations

import os
import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vdm_fast
from vdm_fast import backends, reference

settings.register_profile("ci", max_examples=30, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

CPU_BACKENDS = [b for b in backends.BACKENDS if b != "reference" and backends.unavailable_reason(b, "cpu", "q_sample") is None]
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


def _close(ours: torch.Tensor, ref: torch.Tensor):
    if ours.dtype in (torch.float16, torch.bfloat16):
        eps = torch.finfo(ours.dtype).eps
        scale = ref.double().abs().max().item() if ref.numel() else 0.0
        torch.testing.assert_close(ours.double(), ref.double(), rtol=eps, atol=eps * scale)
    else:
        torch.testing.assert_close(ours, ref, rtol=1e-5 if ours.dtype == torch.float32 else 1e-12, atol=1e-6)


@pytest.mark.skipif(not CPU_BACKENDS, reason="no fused CPU backend built")
@given(data=st.data())
def test_q_sample_property(data):
    x0, noise = data.draw(data_tensors(2))
    batch = x0.shape[0]
    alpha = data.draw(coefficient(batch))
    sigma = data.draw(coefficient(batch))
    backend = data.draw(st.sampled_from(CPU_BACKENDS))
    if backend == "triton" and x0.numel() > 20_000:
        backend = CPU_BACKENDS[0]  # the interpreter is slow: keep its cases small
    before = (x0.clone(), noise.clone())
    ours = vdm_fast.q_sample(x0, alpha, sigma, noise, backend=backend)
    ref = vdm_fast.q_sample(x0, alpha, sigma, noise, backend="reference")
    assert ours.shape == x0.shape and ours.dtype == x0.dtype
    _close(ours, ref)
    assert torch.equal(before[0], x0) and torch.equal(before[1], noise), "inputs were modified"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_no_memory_growth_over_many_calls():
    x0 = torch.randn(4, 3, 8, 8, requires_grad=True)
    noise = torch.randn(4, 3, 8, 8)
    alpha, sigma = torch.rand(4, requires_grad=True), torch.rand(4)

    def burst(n):
        for _ in range(n):
            z = vdm_fast.q_sample(x0, alpha, sigma, noise)
            z.sum().backward()

    burst(10_000)  # warm-up: allocator caches and lazily built tables settle
    start = _rss_bytes()
    burst(100_000)
    growth = _rss_bytes() - start
    assert growth < 8 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB over 10^5 forward+backward calls"


def test_calls_from_many_threads():
    torch.manual_seed(0)
    inputs = [(torch.randn(6, 3, 17, 5), torch.rand(6), torch.rand(6), torch.randn(6, 3, 17, 5)) for _ in range(6)]
    expected = [reference.q_sample(*args) for args in inputs]
    failures = []

    def worker(i):
        try:
            for _ in range(200):
                got = vdm_fast.q_sample(*inputs[i])
                if not torch.allclose(got, expected[i], rtol=1e-5, atol=1e-6):
                    failures.append(i)
                    return
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures


@pytest.mark.slow
def test_more_than_2_31_elements_on_cpu():
    """~13 GB of bfloat16: indices past 2^31 must not wrap (run with --runslow)."""
    n = 2**31 + 1024
    x0 = torch.zeros(2, n // 2, dtype=torch.bfloat16)
    x0[1, -1] = 1.0
    noise = torch.zeros_like(x0)
    noise[1, -2] = 1.0
    z = vdm_fast.q_sample(x0, torch.tensor([0.5, 2.0]), torch.tensor([0.25, 4.0]), noise)
    assert z[1, -1].item() == 2.0 and z[1, -2].item() == 4.0 and z[0].abs().sum().item() == 0.0
