"""torch.compile of what users compile (DESIGN.md §6, §7): the noise ops' seeds, a whole training
step and a whole sampling loop with fullgraph=True, and recompilations over batch sizes.

The per-op compile tests are in tests/test_ops.py (test_compile_fullgraph); the drop-in diffusers
schedulers' in tests/test_diffusers_step.py and tests/test_integrations_diffusers.py.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend

import vdm_fast
from vdm_fast.coefficients import ancestral_coeffs
from vdm_fast.ops.randn_like import draw_seed


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# --- seeds ------------------------------------------------------------------------------------------


def _noises(x):
    """Two draws of each noise op from the default generator."""
    z, n = vdm_fast.q_sample_randn(x, 0.6, 0.8)
    step = vdm_fast.reverse_step(x, x, torch.tensor([1.0, 0.0, 0.5, 0.0, 0.0, 0.3]), stochastic=True)
    return vdm_fast.randn_like(x), vdm_fast.randn_like(x), z, n, step


@pytest.mark.parametrize("backend", ["inductor", "aot_eager"])
def test_compiled_noise_is_eager_noise_for_the_same_manual_seed(backend):
    """generator=None: the seed comes from the default generator through an opaque op, so a
    compiled function draws what the eager one draws (Inductor would otherwise put its own RNG in
    place of torch.randint), and two draws in one graph stay two draws."""
    x = torch.randn(3, 2, 5)
    torch.manual_seed(7)
    eager = _noises(x)
    torch.manual_seed(7)
    compiled = torch.compile(_noises, fullgraph=True, backend=backend)(x)
    for k, (e, c) in enumerate(zip(eager, compiled)):
        assert torch.equal(e, c), f"output {k}"
    assert not torch.equal(compiled[0], compiled[1])
    # ...and the default generator advanced as far as it did eagerly: the next draws agree too.
    torch.manual_seed(7)
    _noises(x)
    after_eager = torch.randint(2**31, ())
    torch.manual_seed(7)
    torch.compile(_noises, fullgraph=True, backend=backend)(x)
    assert torch.equal(torch.randint(2**31, ()), after_eager)


def test_seed_tensor_traces_and_equals_the_generator_draw():
    """A 0-d int64 seed tensor stands for the generator and traces as an input: the noise is the
    one the generator would give when that seed is drawn from it."""
    x = torch.randn(4, 3)

    def noisy(x, seed):
        return vdm_fast.q_sample_randn(x, 0.6, 0.8, seed)[1], vdm_fast.randn_like(x, seed)

    compiled = torch.compile(noisy, fullgraph=True, backend="aot_eager")
    g = torch.Generator().manual_seed(3)
    seed = draw_seed(torch.Generator().manual_seed(3))
    want = vdm_fast.randn_like(x, g)
    n, r = compiled(x, seed)
    assert torch.equal(n, want) and torch.equal(r, want)


def test_generator_object_is_refused_under_fullgraph():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(Exception, match="generator"):
        torch.compile(lambda x: vdm_fast.randn_like(x, g), fullgraph=True, backend="aot_eager")(torch.zeros(2, 3))


def test_bad_seed_tensor_names_the_argument():
    with pytest.raises(TypeError, match="generator"):
        vdm_fast.randn_like(torch.zeros(2, 3), torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="generator"):
        vdm_fast.randn_like(torch.zeros(2, 3), torch.tensor(1.0))


# --- a whole training step and a whole sampling loop --------------------------------------------------


class TinyDenoiser(nn.Module):
    """Two convolutions with a time embedding: small enough to compile quickly on a CPU."""

    def __init__(self, channels: int = 3, hidden: int = 16):
        super().__init__()
        self.time = nn.Linear(1, hidden)
        self.conv_in = nn.Conv2d(channels, hidden, 3, padding=1)
        self.conv_out = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, z, t):
        h = self.conv_in(z) + self.time(t[:, None])[:, :, None, None]
        return self.conv_out(torch.nn.functional.silu(h))


def _loss(model, x0, t):
    """An eps-prediction training loss on the fused ops: noising with in-kernel noise, regression."""
    gamma = -13.3 + 18.3 * t  # a linear -log SNR
    alpha, sigma = torch.sigmoid(-gamma).sqrt(), torch.sigmoid(gamma).sqrt()
    z, noise = vdm_fast.q_sample_randn(x0, alpha, sigma)
    return vdm_fast.sq_error(model(z, t), x0, noise, alpha, sigma, "eps").mean()


def _train_step(loss_fn, model, x0, t):
    """A training step with ``loss_fn`` compiled or not: torch.compile traces the forward with
    fullgraph=True and AOTAutograd compiles its backward, which ``backward()`` then runs (Dynamo
    itself does not trace a ``.backward()`` call)."""
    loss = loss_fn(model, x0, t)
    loss.backward()
    return loss.detach()


def test_compiled_training_step_equals_eager():
    """The model, the fused ops and their backward compiled (fullgraph=True): the same loss and gradients as
    eager (the same noise: same manual_seed), to float32 rounding of a different kernel order
    (convolutions and reductions are reordered by the compiler: rtol 1e-4 on O(1) values)."""
    torch.manual_seed(0)
    model = TinyDenoiser()
    x0, t = torch.rand(4, 3, 8, 8) * 2 - 1, torch.rand(4)
    runs = {}
    for label, loss_fn in (("eager", _loss), ("compiled", torch.compile(_loss, fullgraph=True))):
        model.zero_grad()
        torch.manual_seed(1)
        loss = _train_step(loss_fn, model, x0, t)
        runs[label] = loss, [p.grad.clone() for p in model.parameters()]
    (loss, grads), (want, want_grads) = runs["compiled"], runs["eager"]
    torch.testing.assert_close(loss, want, rtol=1e-4, atol=1e-6)
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def _sampling_loop(model, z, coeffs, times, seeds=None):
    """DDPM-style ancestral loop: model + one fused reverse_step per level, noise drawn in-kernel
    from the default generator, or from ``seeds[i]`` (0-d int64 tensors) at step i."""
    for i in range(times.shape[0]):
        t = times[i].expand(z.shape[0])
        z = vdm_fast.reverse_step(z, model(z, t), coeffs[i], stochastic=True,
                                  generator=None if seeds is None else seeds[i])
    return z


def _loop_inputs(steps: int = 4):
    times = torch.linspace(1.0, 0.0, steps + 1)
    gamma = -13.3 + 18.3 * times
    coeffs = ancestral_coeffs(gamma[:-1].double(), gamma[1:].double(), "eps").float()  # (6, steps)
    return coeffs.T.contiguous(), times[:-1]  # row i: the six coefficients of step i


def test_compiled_sampling_loop_equals_eager():
    """A whole sampling loop (model and fused step, noise from the default generator) in one
    fullgraph compile: the eager samples, to float32 rounding of the reordered convolutions over
    a few steps (rtol 1e-4)."""
    torch.manual_seed(0)
    model = TinyDenoiser().eval()
    coeffs, times = _loop_inputs()
    z = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        torch.manual_seed(5)
        want = _sampling_loop(model, z, coeffs, times)
        torch.manual_seed(5)
        got = torch.compile(_sampling_loop, fullgraph=True)(model, z, coeffs, times)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_compiled_sampling_loop_with_an_explicit_generator():
    """The rule for a generator of one's own: draw its seeds outside the compiled loop and pass
    them in; the samples equal the eager loop given the generator itself (same tolerance)."""
    torch.manual_seed(0)
    model = TinyDenoiser().eval()
    coeffs, times = _loop_inputs()
    z = torch.randn(3, 3, 8, 8)

    def eager_loop(g):
        out = z
        for i in range(times.shape[0]):
            t = times[i].expand(z.shape[0])
            out = vdm_fast.reverse_step(out, model(out, t), coeffs[i], stochastic=True, generator=g)
        return out

    with torch.no_grad():
        want = eager_loop(torch.Generator().manual_seed(11))
        g = torch.Generator().manual_seed(11)
        seeds = [draw_seed(g) for _ in range(times.shape[0])]
        got = torch.compile(_sampling_loop, fullgraph=True)(model, z, coeffs, times, seeds)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_dynamic_batch_sizes_compile_once():
    """dynamic=True: one graph serves every batch size of a training step (2, 3, 5, 8, 11; Dynamo
    specialises sizes 0 and 1, so the sizes start at 2): one compile in all."""
    model = TinyDenoiser()
    counter = CompileCounterWithBackend("aot_eager")
    loss_fn = torch.compile(_loss, fullgraph=True, dynamic=True, backend=counter)
    for batch in (2, 3, 5, 8, 11):
        model.zero_grad()
        loss = _train_step(loss_fn, model, torch.rand(batch, 3, 8, 8) * 2 - 1, torch.rand(batch))
        assert torch.isfinite(loss)
    assert counter.frame_count == 1, f"{counter.frame_count} compiles over 5 batch sizes"
