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


# --- nothing silently wrong (issue 15): samplers, times, the diffusers drop-in, checkpointing ----------

from torch.utils.checkpoint import checkpoint  # noqa: E402

from vdm_fast import elbo as elbo_mod, guidance, samplers, schedules  # noqa: E402

_SAMPLERS = {
    "ancestral": lambda model, z, sch, times: samplers.sample_ancestral(model, z, sch, times),
    "ddim": lambda model, z, sch, times: samplers.sample_ddim(model, z, sch, times),
    "ode": lambda model, z, sch, times: samplers.sample_ode(model, z, sch, times),
    "pc": lambda model, z, sch, times: samplers.sample_pc(model, z, sch, times),
    "annealed_langevin": lambda model, z, sch, times: samplers.sample_annealed_langevin(
        model, z, sch, times, n_steps_each=1, parameterization="eps"),
}

_BAD_OUTPUTS = {  # what the model returns, the error, a fragment of its message
    "int64": (lambda z: torch.zeros(z.shape, dtype=torch.int64), TypeError, "floating-point"),
    "tuple": (lambda z: (z, z), TypeError, "got tuple"),
    "None": (lambda z: None, TypeError, "got NoneType"),
    "ndarray": (lambda z: z.numpy(), TypeError, "got ndarray"),
    "shape": (lambda z: z[:, :1], ValueError, "shape of z"),
}


@pytest.mark.parametrize("bad", list(_BAD_OUTPUTS))
@pytest.mark.parametrize("sampler", list(_SAMPLERS))
def test_sampler_checks_the_model_output(sampler, bad):
    make, error, fragment = _BAD_OUTPUTS[bad]
    z = torch.randn(3, 2, 4)
    with pytest.raises(error, match=r"model\(z, t\) must return") as info:
        _SAMPLERS[sampler](lambda z, t: make(z), z, schedules.LinearGamma(), samplers.uniform_times(3))
    assert fragment in str(info.value)


@pytest.mark.parametrize("bad", list(_BAD_OUTPUTS))
def test_guided_models_check_their_outputs(bad):
    make, error, fragment = _BAD_OUTPUTS[bad]
    z, sch, times = torch.randn(3, 2, 4), schedules.LinearGamma(), samplers.uniform_times(2)
    pair = guidance.classifier_free_pair(lambda z, t: (z.clone(), make(z)))
    with pytest.raises(error, match="classifier-free model") as info:
        samplers.sample_ddim(pair, z, sch, times, guidance_scale=2.0)
    assert fragment in str(info.value)
    one = guidance.classifier_free(lambda z, t, y: make(z), torch.zeros(3, dtype=torch.long), 1)
    with pytest.raises(error, match=r"classifier_free: fn\(z, t, y\) must return"):
        samplers.sample_ddim(one, z, sch, times, guidance_scale=2.0)
    with pytest.raises(TypeError, match="pair"):  # not a pair at all
        samplers.sample_ddim(guidance.classifier_free_pair(lambda z, t: None), z, sch, times, guidance_scale=2.0)


def test_negative_timestep_only_at_the_end_of_an_integer_grid():
    sch, z = schedules.DiscreteSchedule.linear(10), torch.randn(3, 2)
    model = lambda z, t: torch.zeros_like(z)  # noqa: E731
    samplers.sample_ddim(model, z, sch, torch.tensor([9, 5, -1]))  # the clean level last: fine
    with pytest.raises(RuntimeError, match="only the last level"):
        samplers.sample_ddim(model, z, sch, torch.tensor([9, -1, 5, -1]))
    per_sample = torch.tensor([[9, 9, 9], [5, -1, 5], [-1, -1, -1]])  # (K+1, B) grid
    with pytest.raises(RuntimeError, match="only the last level"):
        samplers.sample_ancestral(model, z, sch, per_sample)


_CONTINUOUS = [schedules.LinearGamma(), schedules.LearnedLinearGamma(), schedules.MonotoneGamma(n_features=8)]


@pytest.mark.parametrize("value", [1.5, -0.25, float("nan")])
@pytest.mark.parametrize("schedule", _CONTINUOUS, ids=lambda s: type(s).__name__)
def test_continuous_time_outside_0_1_is_refused(schedule, value):
    t = torch.tensor([0.0, 0.5, value, 1.0])
    for fn in (schedule.gamma, schedule.gamma_prime, schedule.alpha_sigma):
        with pytest.raises(RuntimeError, match=r"t must lie in \[0.0, 1.0\]"):
            fn(t)
    assert torch.isfinite(schedule.gamma(torch.tensor([0.0, 0.5, 1.0]))).all()
    times = torch.tensor([1.0, value, 0.0])
    with pytest.raises(RuntimeError, match="t must lie in|NaN"):
        samplers.sample_ddim(lambda z, t: torch.zeros_like(z), torch.randn(2, 3), schedule, times)


class _UserSchedule:
    """A schedule that is not vdm_fast's: only gamma(t) and gamma_prime(t)."""

    def gamma(self, t, dtype=torch.float32):
        return (-10.0 + 15.0 * t).to(dtype)

    def gamma_prime(self, t, dtype=torch.float32):
        return torch.full_like(t, 15.0, dtype=dtype)

    def alpha_sigma(self, t, dtype=torch.float32):
        g = self.gamma(t, dtype)
        return torch.sigmoid(-g).sqrt(), torch.sigmoid(g).sqrt()


def test_times_of_a_user_schedule_are_checked():
    z = torch.randn(2, 3)
    with pytest.raises(RuntimeError, match="NaN"):  # its range is its own affair, NaN is not
        samplers.sample_ddim(lambda z, t: torch.zeros_like(z), z, _UserSchedule(), torch.tensor([1.0, float("nan"), 0.0]))
    x0 = (2 * (torch.randint(0, 256, (2, 3)) + 0.5) / 256 - 1).float()
    model = lambda z, t: torch.zeros_like(z)  # noqa: E731
    for value in (1.5, -0.1, float("nan")):
        t = torch.tensor([0.5, value])
        with pytest.raises(RuntimeError, match=r"elbo: t must lie in \[0.0, 1.0\]"):
            elbo_mod.elbo(model, x0, _UserSchedule(), t=t)
        with pytest.raises(RuntimeError, match=r"VDMLoss: t must lie in \[0.0, 1.0\]"):
            elbo_mod.VDMLoss(_UserSchedule(), weighting="simple")(model, x0, t=t)
    assert torch.isfinite(elbo_mod.elbo(model, x0, _UserSchedule(), t=torch.tensor([0.0, 1.0])).total).all()


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_scheduler_notices_timesteps_edited_in_place(context):
    ours = pytest.importorskip("vdm_fast.integrations.diffusers")
    x, m = torch.randn(3, 2, 4), torch.randn(3, 2, 4)

    def step(scheduler, t):
        return scheduler.step(m, t, x, generator=torch.Generator().manual_seed(0)).prev_sample

    with context():
        edited = ours.DDPMScheduler()
        edited.set_timesteps(10)
        t = int(edited.timesteps[3])
        before = step(edited, t)  # builds and caches the coefficient table
        edited.timesteps[4] -= 30  # the previous timestep of t is now another one
        fresh = ours.DDPMScheduler()
        fresh.set_timesteps(10)
        fresh.timesteps[4] -= 30  # edited before its first step: its table is built from these
        after = step(edited, t)
        assert torch.equal(after, step(fresh, t))
        assert not torch.equal(after, before)


def _sigma_grad(draw_inside, use_checkpoint: bool, use_reentrant: bool = False):
    """d/d(alpha, sigma) of a loss on q_sample_randn's z, optionally under activation checkpointing."""
    x0 = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(1))
    alpha = torch.full((4,), 0.8, requires_grad=True)
    sigma = torch.full((4,), 0.5, requires_grad=True)
    torch.manual_seed(123)
    fn = draw_inside()
    out = (checkpoint(fn, x0, alpha, sigma, use_reentrant=use_reentrant) if use_checkpoint
           else fn(x0, alpha, sigma))
    out.backward()
    return alpha.grad, sigma.grad


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpointed_q_sample_randn_with_the_default_generator(use_reentrant):
    """torch.utils.checkpoint restores the default generator before recomputing, so the redrawn
    noise is the same and the gradients equal the plain ones (DESIGN.md §6)."""
    def draw_inside():
        def fn(x0, alpha, sigma):
            z, _ = vdm_fast.q_sample_randn(x0, alpha, sigma)  # the default generator
            return (z * z).sum()
        return fn

    plain = _sigma_grad(draw_inside, False)
    ckpt = _sigma_grad(draw_inside, True, use_reentrant)
    for p, c in zip(plain, ckpt):
        torch.testing.assert_close(c, p, rtol=0, atol=0)


def test_checkpointed_forward_with_noise_drawn_outside():
    """The documented fix for an explicit generator: draw the noise outside the checkpointed
    function (randn_like) and pass it in (q_sample)."""
    def draw_inside():
        noise = vdm_fast.randn_like(torch.empty(4, 3, 5), torch.Generator().manual_seed(5))

        def fn(x0, alpha, sigma):
            z = vdm_fast.q_sample(x0, alpha, sigma, noise)
            return (z * z).sum()
        return fn

    plain = _sigma_grad(draw_inside, False)
    ckpt = _sigma_grad(draw_inside, True)
    for p, c in zip(plain, ckpt):
        torch.testing.assert_close(c, p, rtol=0, atol=0)
