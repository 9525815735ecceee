"""q_sample (DESIGN.md §4.1): every backend equals the reference, forward and backward."""

from __future__ import annotations


import pytest
import torch

import vdm_fast
from vdm_fast import reference
import numerics
from helpers import (
    assert_inputs_not_modified,
    LOW_PRECISION, backend_params, skip_compile_under_interpreter,
    assert_compiled_matches_eager,
)

BACKENDS = backend_params("q_sample")
SHAPES = [(1, 3), (7, 13), (5, 3, 11, 7), (2, 3, 5, 7, 3), (3, 1, 1, 1), (4, 2053)]


def make_inputs(shape, dtype, device, requires_grad=False, coeff_dtype=None):
    cdt = coeff_dtype or (torch.float64 if dtype == torch.float64 else torch.float32)
    x0 = torch.randn(shape, device=device).to(dtype).requires_grad_(requires_grad)
    noise = torch.randn(shape, device=device).to(dtype).requires_grad_(requires_grad)
    alpha = torch.rand(shape[0], device=device, dtype=cdt).requires_grad_(requires_grad)
    sigma = torch.rand(shape[0], device=device, dtype=cdt).requires_grad_(requires_grad)
    return x0, alpha, sigma, noise


def check_against_reference(name, inputs, upstream):
    """Value and the four gradients of backend ``name`` within the running error bound of the
    reference (tests/numerics.py)."""
    return numerics.check_against_reference(lambda *a: vdm_fast.q_sample(*a, backend=name), reference.q_sample, inputs,
                                            upstream=upstream, wrt=(0, 1, 2, 3), msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_forward_backward_match_reference(backend, shape, dtype):
    name, device = backend
    inputs = make_inputs(shape, dtype, device)
    upstream = 0.5 + torch.rand(shape, device=device, dtype=dtype)  # non-unit upstream gradient
    out, _ = check_against_reference(name, inputs, upstream)
    assert out.dtype == dtype and out.shape == shape


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_low_precision_inputs_match_reference(backend, dtype):
    """float16/bfloat16 data is read as it is and computed in float32: the float32 bound applies,
    plus one rounding of the result to the data's dtype (stricter than twice PyTorch's own error
    computing in that dtype)."""
    name, device = backend
    shape = (6, 3, 17, 9)
    inputs = make_inputs(shape, dtype, device)
    upstream = torch.randn(shape, device=device).to(dtype)
    out, got = check_against_reference(name, inputs, upstream)
    assert out.dtype == dtype and got[0].dtype == dtype and got[1].dtype == torch.float32


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    name, device = backend
    x0, alpha, sigma, noise = make_inputs((0, 3, 4, 4), torch.float32, device, requires_grad=True)
    z = vdm_fast.q_sample(x0, alpha, sigma, noise, backend=name)
    assert z.shape == (0, 3, 4, 4)
    z.sum().backward()
    assert alpha.grad.shape == (0,) and x0.grad.shape == (0, 3, 4, 4)


def _layouts(device):
    base = torch.randn(4, 6, 10, 8, device=device)
    return {
        "transposed": base.transpose(2, 3),  # dense, batch-major, other strides
        "batch_not_outermost": torch.randn(6, 4, 10, 8, device=device).transpose(0, 1),
        "sliced": base[:, :, 1:9:2, ::3],
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "expanded": torch.randn(4, 6, 1, 8, device=device).expand(4, 6, 10, 8),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["transposed", "batch_not_outermost", "sliced", "channels_last", "expanded"])
def test_noncontiguous_inputs(backend, layout):
    name, device = backend
    x0 = _layouts(device)[layout]
    noise = torch.randn(x0.shape, device=device)  # contiguous: mixed layouts too
    alpha = torch.rand(x0.shape[0], device=device)
    sigma = torch.rand(x0.shape[0], device=device)
    upstream = torch.randn(x0.shape, device=device).transpose(1, 2).contiguous().transpose(1, 2)
    out, _ = check_against_reference(name, (x0, alpha, sigma, noise), upstream)
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form", ["float", "0-d", "(B,)", "(B,1,1,1)", "float64"])
def test_coefficient_forms(backend, form):
    name, device = backend
    x0, _, _, noise = make_inputs((3, 2, 5, 5), torch.float32, device)
    a, s = 0.8, 0.6
    coeff = {
        "float": lambda v: v,
        "0-d": lambda v: torch.tensor(v, device=device),
        "(B,)": lambda v: torch.full((3,), v, device=device),
        "(B,1,1,1)": lambda v: torch.full((3, 1, 1, 1), v, device=device),
        "float64": lambda v: torch.full((3,), v, device=device, dtype=torch.float64),
    }[form]
    numerics.check_against_reference(lambda x, n: vdm_fast.q_sample(x, coeff(a), coeff(s), n, backend=name),
                                     lambda x, n: a * x + s * n, (x0, noise), msg=form)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inputs_not_modified(backend):
    name, device = backend
    inputs = make_inputs((3, 4, 5), torch.float32, device, requires_grad=True)
    assert_inputs_not_modified(lambda *a: vdm_fast.q_sample(*a, backend=name), inputs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_fp64(backend):
    name, device = backend
    inputs = make_inputs((3, 2, 5), torch.float64, device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: vdm_fast.q_sample(*a, backend=name), inputs)


def test_opcheck_native():
    if not vdm_fast._library.has_native_kernel("q_sample", "CPU"):
        pytest.skip("native CPU kernel not built")
    for shape in [(3, 4, 5), (1, 7), (0, 2)]:
        x0, alpha, sigma, noise = make_inputs(shape, torch.float32, "cpu", requires_grad=True)
        torch.library.opcheck(torch.ops.vdm_fast.q_sample.default, (x0, alpha, sigma, noise))
        g = torch.randn(shape)
        torch.library.opcheck(torch.ops.vdm_fast.q_sample_backward.default,
                              (g, x0.detach(), noise.detach(), alpha.detach(), sigma.detach(), [True, True, True, True]))
    x_cl = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.vdm_fast.q_sample.default, (x_cl, torch.rand(2), torch.rand(2), torch.randn(2, 3, 4, 5)))


def test_opcheck_triton():
    from vdm_fast import backends

    if backends.unavailable_reason("triton", "cpu", "q_sample") and not torch.cuda.is_available():
        pytest.skip(backends.unavailable_reason("triton", "cpu", "q_sample"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # Under the interpreter, AOT-dispatch tracing would run the kernel on fake tensors, which the
    # interpreter cannot; schema, fake-tensor and autograd registration are checked regardless.
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    if device == "cuda":
        utils = utils + ("test_aot_dispatch_dynamic",)
    x0, alpha, sigma, noise = make_inputs((3, 4, 5), torch.float32, device, requires_grad=True)
    torch.library.opcheck(torch.ops.vdm_fast.q_sample_triton.default, (x0, alpha, sigma, noise), test_utils=utils)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph(backend):
    name, device = backend
    skip_compile_under_interpreter(name)

    def loss(x0, alpha, sigma, noise):
        return (vdm_fast.q_sample(x0, alpha, sigma, noise, backend=name) ** 2).sum()

    def reference_loss(x0, alpha, sigma, noise):
        return (reference.q_sample(x0, alpha, sigma, noise) ** 2).sum()

    inputs = make_inputs((4, 3, 8, 8), torch.float32, device, requires_grad=True)
    assert_compiled_matches_eager(loss, inputs, inputs, reference_loss)


# --- bad input: a clear error naming the argument ---------------------------------------------


@pytest.mark.parametrize(
    "case, exc, match",
    [
        ("noise_shape", ValueError, "noise"),
        ("alpha_length", ValueError, "alpha"),
        ("sigma_shape", ValueError, "sigma"),
        ("int_x0", TypeError, "x0"),
        ("int_alpha", TypeError, "alpha"),
        ("bool_sigma", TypeError, "sigma"),
        ("noise_dtype", TypeError, "noise"),
        ("mixed_device_alpha", ValueError, "alpha"),
        ("mixed_device_noise", ValueError, "noise"),
        ("scalar_x0", ValueError, "x0"),
        ("list_x0", TypeError, "x0"),
    ],
)
def test_bad_inputs_name_the_argument(case, exc, match):
    x0, alpha, sigma, noise = make_inputs((4, 3, 5), torch.float32, "cpu")
    args = dict(x0=x0, alpha=alpha, sigma=sigma, noise=noise)
    meta = torch.device("meta")
    args.update(
        {
            "noise_shape": dict(noise=torch.randn(4, 3, 6)),
            "alpha_length": dict(alpha=torch.rand(3)),
            "sigma_shape": dict(sigma=torch.rand(4, 3)),
            "int_x0": dict(x0=torch.ones(4, 3, 5, dtype=torch.int64)),
            "int_alpha": dict(alpha=torch.ones(4, dtype=torch.int32)),
            "bool_sigma": dict(sigma=True),
            "noise_dtype": dict(noise=noise.double()),
            "mixed_device_alpha": dict(alpha=alpha.to(meta)),
            "mixed_device_noise": dict(noise=noise.to(meta)),
            "scalar_x0": dict(x0=torch.tensor(1.0), noise=torch.tensor(1.0)),
            "list_x0": dict(x0=[1.0, 2.0]),
        }[case]
    )
    with pytest.raises(exc, match=match):
        vdm_fast.q_sample(**args)


def test_unknown_backend_names_backend():
    x0, alpha, sigma, noise = make_inputs((2, 3), torch.float32, "cpu")
    with pytest.raises(ValueError, match="backend"):
        vdm_fast.q_sample(x0, alpha, sigma, noise, backend="tpu")


def test_unavailable_backend_raises():
    x0, alpha, sigma, noise = make_inputs((2, 3), torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="backend='cuda'"):
        vdm_fast.q_sample(x0, alpha, sigma, noise, backend="cuda")
