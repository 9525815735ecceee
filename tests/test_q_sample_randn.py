"""q_sample_randn (DESIGN.md §4.2): (z, noise) with the noise drawn in-kernel. Every backend
equals the reference; z is q_sample of the returned noise; the noise is randn_like's stream. The rest
(empty batches, coefficient forms, gradcheck, opcheck, bad input): tests/test_ops.py."""

from __future__ import annotations


import pytest
import torch

import vdm_fast
from vdm_fast import reference
import numerics
from helpers import LAYOUTS, LOW_PRECISION, ODD_SHAPES, backend_params, layouts, skip_compile_under_interpreter

BACKENDS = backend_params("q_sample_randn")
ALL = backend_params("q_sample_randn", include_reference=True)
NOISE_TOL = dict(rtol=2e-6, atol=2e-6)  # float32 Box–Muller vs the exact one (tests/test_randn_like.py)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def make_inputs(shape, dtype, device, requires_grad=False):
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    x0 = torch.randn(shape, device=device).to(dtype).requires_grad_(requires_grad)
    alpha = torch.rand(shape[0], device=device, dtype=cdt).requires_grad_(requires_grad)
    sigma = torch.rand(shape[0], device=device, dtype=cdt).requires_grad_(requires_grad)
    return x0, alpha, sigma


def run(name, x0, alpha, sigma, seed=0):
    return vdm_fast.q_sample_randn(x0, alpha, sigma, gen(seed), backend=name)


def check_z_is_q_sample(call, x0, alpha, sigma, noise, upstream, msg=""):
    """z of ``call(x0, alpha, sigma)`` (which draws ``noise`` again: the same generator state) and its
    gradients in x0, alpha, sigma are q_sample's of that noise, within the running error bound of
    the reference (tests/numerics.py)."""
    def ours(x, a, s, n):
        z, drawn = call(x, a, s)
        assert torch.equal(drawn, n), f"{msg}: the noise drawn again differs"
        return z

    return numerics.check_against_reference(ours, reference.q_sample, (x0, alpha, sigma, noise), upstream=upstream,
                                            wrt=(0, 1, 2), msg=msg)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", ODD_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_forward_backward_match_reference(backend, shape, dtype):
    name, device = backend
    x0, alpha, sigma = make_inputs(shape, dtype, device, requires_grad=True)
    upstream = 0.5 + torch.rand(shape, device=device, dtype=dtype)  # non-unit upstream gradient
    z, noise = run(name, x0, alpha, sigma, seed=3)
    z_ref, noise_ref = run("reference", x0, alpha, sigma, seed=3)
    assert z.shape == shape and z.dtype == dtype and noise.dtype == dtype and not noise.requires_grad
    torch.testing.assert_close(noise, noise_ref, **NOISE_TOL)
    # Given its own noise, z is q_sample's, and so are its gradients.
    check_z_is_q_sample(lambda *a: run(name, *a, seed=3), x0, alpha, sigma, noise, upstream, msg=name)


@pytest.mark.parametrize("backend", ALL)
def test_z_is_q_sample_of_returned_noise_exactly(backend):
    name, device = backend
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        x0, alpha, sigma = make_inputs((3, 5, 7), dtype, device)
        z, noise = run(name, x0, alpha, sigma)
        assert torch.equal(z, vdm_fast.q_sample(x0, alpha, sigma, noise, backend=name)), dtype


@pytest.mark.parametrize("backend", ALL)
def test_noise_is_randn_like_stream(backend):
    name, device = backend
    x0, alpha, sigma = make_inputs((4, 3, 6, 5), torch.float32, device)
    _, noise = run(name, x0, alpha, sigma, seed=9)
    want = vdm_fast.randn_like(x0, gen(9), backend="reference")
    torch.testing.assert_close(noise, want, **NOISE_TOL)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("shape", [(5, 3), (3, 7, 3), (4, 2053)], ids=str)
def test_noise_bits_do_not_depend_on_the_split(backend, shape):
    """Per-sample segments start at odd elements (D % 4 != 0), so Philox blocks are cut at
    sample boundaries; element i's noise must still be exactly randn_like's element i on the
    same backend (one code path for whole and partial blocks)."""
    name, device = backend
    x0, alpha, sigma = make_inputs(shape, torch.float32, device)
    _, noise = run(name, x0, alpha, sigma, seed=4)
    assert torch.equal(noise, vdm_fast.randn_like(x0, gen(4), backend=name))


@pytest.mark.parametrize("backend", ALL)
def test_generator_state(backend):
    name, device = backend
    x0, alpha, sigma = make_inputs((2, 3, 8), torch.float32, device)
    g = gen(1)
    z1, n1 = vdm_fast.q_sample_randn(x0, alpha, sigma, g, backend=name)
    z2, n2 = vdm_fast.q_sample_randn(x0, alpha, sigma, g, backend=name)
    assert not torch.equal(n1, n2)  # fresh noise on each call
    z3, n3 = vdm_fast.q_sample_randn(x0, alpha, sigma, gen(1), backend=name)
    assert torch.equal(n1, n3) and torch.equal(z1, z3)
    torch.manual_seed(5)
    _, d1 = vdm_fast.q_sample_randn(x0, alpha, sigma, backend=name)  # default generator
    torch.manual_seed(5)
    _, d2 = vdm_fast.q_sample_randn(x0, alpha, sigma, backend=name)
    assert torch.equal(d1, d2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_draw_whichever_call_path(backend):
    """The seed is drawn once per call, before the call path is chosen: a coefficient the native op
    refuses (non-contiguous, (B, 1)-shaped, a float, float64 next to float32 data) sends the call from
    the direct path to the general one, and gives the same noise and generator state as the
    plain call."""
    name, device = backend
    x0, alpha, sigma = make_inputs((3, 2, 5), torch.float32, device)
    g = gen(6)
    z, noise = vdm_fast.q_sample_randn(x0, alpha, sigma, g, backend=name)
    after = g.get_state()
    strided = torch.stack([alpha, alpha], 1)[:, 0]
    assert not strided.is_contiguous()
    for a in (strided, alpha[:, None], 0.5, alpha.double()):
        h = gen(6)
        z2, noise2 = vdm_fast.q_sample_randn(x0, a, sigma, h, backend=name)
        assert torch.equal(noise2, noise) and torch.equal(h.get_state(), after), type(a)
    torch.testing.assert_close(z2, z, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_low_precision_inputs_match_reference(backend, dtype):
    """float16/bfloat16 data is read as it is and computed in float32: z and its gradients are
    q_sample's of the returned noise within the float32 bound, plus one rounding of the result to
    the data's dtype."""
    name, device = backend
    shape = (6, 3, 17, 9)
    x0, alpha, sigma = make_inputs(shape, dtype, device, requires_grad=True)
    upstream = torch.randn(shape, device=device).to(dtype)
    z, noise = run(name, x0, alpha, sigma, seed=2)
    # The noise: drawn in float32, then cast (one rounding of the dtype).
    n32 = vdm_fast.randn_like(x0.float(), gen(2), backend="reference")
    torch.testing.assert_close(noise.float(), n32, rtol=torch.finfo(dtype).eps, atol=0)
    _, got = check_z_is_q_sample(lambda *a: run(name, *a, seed=2), x0, alpha, sigma, noise, upstream, msg=name)
    assert z.dtype == dtype and got[0].dtype == dtype and got[1].dtype == torch.float32


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_noncontiguous_inputs(backend, layout):
    name, device = backend
    x0 = layouts(device)[layout].requires_grad_()
    alpha = torch.rand(x0.shape[0], device=device).requires_grad_()
    sigma = torch.rand(x0.shape[0], device=device).requires_grad_()
    upstream = torch.randn(x0.shape, device=device).transpose(1, 2).contiguous().transpose(1, 2)
    z, noise = run(name, x0, alpha, sigma, seed=4)
    _, noise_ref = run("reference", x0, alpha, sigma, seed=4)
    torch.testing.assert_close(noise, noise_ref, **NOISE_TOL)
    assert noise.stride() == z.stride()
    check_z_is_q_sample(lambda *a: run(name, *a, seed=4), x0, alpha, sigma, noise, upstream, msg=layout)
    if layout == "channels_last":
        assert z.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph(backend):
    name, device = backend
    skip_compile_under_interpreter(name)
    torch._dynamo.reset()

    def loss(x0, alpha, sigma):
        z, noise = vdm_fast.q_sample_randn(x0, alpha, sigma, backend=name)
        return (z**2).sum(), noise

    inputs = make_inputs((4, 3, 8, 8), torch.float32, device, requires_grad=True)
    got_loss, noise = torch.compile(loss, fullgraph=True)(*inputs)
    got = torch.autograd.grad(got_loss, inputs)
    # The reference loss of q_sample with the noise the compiled call drew, within its running error
    # bound (tests/numerics.py).
    want = numerics.running_error(lambda x, a, s, n: (reference.q_sample(x, a, s, n) ** 2).sum(), (*inputs, noise),
                                  wrt=(0, 1, 2))
    numerics.assert_within_bound(got_loss, want.value, want.bound, msg="loss")
    for label, g, w, b in zip(("x0", "alpha", "sigma"), got, want.grads, want.grad_bounds):
        numerics.assert_within_bound(g, w, b, msg=f"grad {label}")
