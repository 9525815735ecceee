"""Hardening (issue 7): property-based equality with the reference, many calls, many threads,
and tensors past 2^31 elements (opt-in).

Hypothesis profiles: ``ci`` (the default: a fixed, derandomised budget) and ``dev`` (longer,
random: ``HYPOTHESIS_PROFILE=dev pytest tests/test_hardening.py``).
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import assert_matches_reference, coefficient, data_tensors, per_sample
from helpers import run_in_threads

import numerics
import vdm_fast
from vdm_fast import backends, reference

CPU_BACKENDS = [b for b in backends.BACKENDS if b != "reference" and backends.unavailable_reason(b, "cpu", "q_sample") is None]


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
    assert ours.shape == x0.shape and ours.dtype == x0.dtype
    assert_matches_reference(ours, reference.q_sample, (x0, per_sample(alpha, batch), per_sample(sigma, batch), noise),
                             msg=backend)
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
    g = torch.Generator().manual_seed(0)
    inputs = [(torch.randn(6, 3, 17, 5, generator=g), torch.rand(6, generator=g), torch.rand(6, generator=g),
               torch.randn(6, 3, 17, 5, generator=g)) for _ in range(6)]
    # The float64 truth and its running error bound (tests/numerics.py), computed here: the
    # dispatch mode that computes them is not for the worker threads.
    expected = [numerics.running_error(reference.q_sample, args) for args in inputs]
    def worker(i):
        for _ in range(200):
            got = vdm_fast.q_sample(*inputs[i])
            numerics.assert_within_bound(got, expected[i].value, expected[i].bound, msg=f"thread {i}")

    run_in_threads(worker, len(inputs))


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


# --- more than 2^31 elements: the Philox counter and the reductions (run with --runslow) ----------
# Each uses (2, 2^30 + 512) bfloat16 tensors (2^31 + 1024 elements, 4.3 GB each) and checks
# elements whose flat index is past 2^31 against values computed independently.

BIG = (2, 2**30 + 512)


def _assert_tail_is_stream(flat: torch.Tensor, seed: int, scale: float = 1.0) -> None:
    """The last 64 elements and the 64 from index 2^31 are scale * the stream: the float32 normal
    within its Box–Muller allowance (tests/test_randn_like.py, DESIGN.md §6), times scale (a float32
    product: one more rounding, 2^-24), rounded to bfloat16 at most twice (z: the noise, then z;
    2^-8 each, so 2^-7 relative)."""
    from test_randn_like import F32_U, assert_normals_close, box_muller_allowance

    for first in (2**31, flat.numel() - 64):
        want = reference.philox_normals(seed, 0, 64, first=first)
        scaled = scale * want.double()
        allowed = (scale * box_muller_allowance(seed, 0, want, first=first) + (F32_U + 2**-7) * scaled.abs()
                   + torch.finfo(torch.bfloat16).tiny)
        assert_normals_close(flat[first:first + 64], scaled, allowed, msg=f"from {first}")


@pytest.mark.slow
@pytest.mark.skipif(not vdm_fast._library.has_native_kernel("randn_like", "CPU"), reason="not built")
def test_randn_like_past_2_31_elements_on_cpu():
    seed = 0x1234_5678_9ABC
    out = torch.ops.vdm_fast.randn_like(torch.empty(BIG, dtype=torch.bfloat16), torch.tensor(seed), 0)
    _assert_tail_is_stream(out.reshape(-1), seed)


@pytest.mark.slow
@pytest.mark.skipif(not vdm_fast._library.has_native_kernel("q_sample_randn", "CPU"), reason="not built")
def test_q_sample_randn_past_2_31_elements_on_cpu():
    seed = 77
    x0 = torch.zeros(BIG, dtype=torch.bfloat16)
    z, noise = torch.ops.vdm_fast.q_sample_randn(x0, torch.tensor([1.0, 1.0]), torch.tensor([3.0, 3.0]),
                                                  torch.tensor(seed), 0)
    del x0
    _assert_tail_is_stream(noise.reshape(-1), seed)
    _assert_tail_is_stream(z.reshape(-1), seed, scale=3.0)


@pytest.mark.slow
@pytest.mark.skipif(not vdm_fast._library.has_native_kernel("reverse_step", "CPU"), reason="not built")
def test_reverse_step_draws_past_2_31_elements_on_cpu():
    """z_next = c_n * noise with the noise drawn in-kernel: element i's noise is stream element i."""
    seed = 2024
    z = torch.zeros(BIG, dtype=torch.bfloat16)
    coeffs = torch.zeros(6, 2)
    coeffs[5] = 2.0  # c_n
    out = torch.ops.vdm_fast.reverse_step(z, z, coeffs, seed=torch.tensor(seed), offset=0)
    del z
    _assert_tail_is_stream(out.reshape(-1), seed, scale=2.0)


@pytest.mark.slow
@pytest.mark.skipif(not vdm_fast._library.has_native_kernel("prior_kl", "CPU"), reason="not built")
def test_prior_kl_sums_past_2_31_elements_on_cpu():
    """Sample 1's only non-zeros lie past flat index 2^31: its sum of squares must see them."""
    x0 = torch.zeros(BIG, dtype=torch.bfloat16)
    x0[1, -3:] = 2.0
    a, s = torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0])
    kl = torch.ops.vdm_fast.prior_kl(x0, a, s)
    assert kl.tolist() == [0.0, 0.5 * 12.0]  # 0.5 a^2 sum(x0^2) + 0.5 D (s^2 - 1 - log s^2)
