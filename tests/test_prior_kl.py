"""prior_kl (DESIGN.md §3, §4.4): every backend equals the reference, forward and backward."""

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

BACKENDS = backend_params("prior_kl")
SHAPES = [(1, 3), (7, 13), (5, 3, 11, 7), (2, 3, 5, 7, 3), (3, 1, 1, 1), (4, 2053), (2, 40000)]
ARG_NAMES = ("x0", "alpha_1", "sigma_1")


def make_inputs(shape, dtype, device, requires_grad=False):
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    x0 = torch.randn(shape, device=device).to(dtype).requires_grad_(requires_grad)
    alpha = (0.05 + 0.3 * torch.rand(shape[0], device=device, dtype=cdt)).requires_grad_(requires_grad)
    # sigma_1 away from 1: near 1, s^2 - 1 - log s^2 and s - 1/s cancel and a float32 reference is
    # no oracle (test_sigma_near_one compares with a float64 truth there).
    sigma = (0.2 + 0.5 * torch.rand(shape[0], device=device, dtype=cdt)).requires_grad_(requires_grad)
    return x0, alpha, sigma


def check_against_reference(name, inputs, upstream, wrt=(0, 1, 2)):
    """Value and the gradients (inputs at positions ``wrt``) of backend ``name`` within the running
    error bound of the reference (tests/numerics.py)."""
    return numerics.check_against_reference(lambda *a: vdm_fast.prior_kl(*a, backend=name), reference.prior_kl, inputs,
                                            upstream=upstream, wrt=wrt, msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_forward_backward_match_reference(backend, shape, dtype):
    name, device = backend
    inputs = make_inputs(shape, dtype, device)
    upstream = 0.5 + torch.rand(shape[0], device=device, dtype=inputs[1].dtype)  # non-unit upstream gradient
    out, got = check_against_reference(name, inputs, upstream)
    assert out.dtype == inputs[1].dtype and out.shape == (shape[0],)
    for label, g, t in zip(ARG_NAMES, got, inputs):
        assert g.dtype == t.dtype and g.shape == t.shape, label


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("wanted", ARG_NAMES)
def test_single_input_requiring_grad(backend, wanted):
    name, device = backend
    inputs = list(make_inputs((3, 4, 5), torch.float32, device))
    i = ARG_NAMES.index(wanted)
    inputs[i].requires_grad_()
    upstream = 0.5 + torch.rand(3, device=device)
    check_against_reference(name, inputs, upstream, wrt=(i,))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_low_precision_inputs_match_reference(backend, dtype):
    """float16/bfloat16 data is read as it is and computed in float32: the float32 bound applies,
    plus one rounding of the x0 gradient to the data's dtype (the per-sample result stays float32)."""
    name, device = backend
    shape = (6, 3, 17, 9)
    inputs = make_inputs(shape, dtype, device)
    upstream = 0.5 + torch.rand(shape[0], device=device)
    out, got = check_against_reference(name, inputs, upstream)
    assert out.dtype == torch.float32
    assert got[0].dtype == dtype and got[1].dtype == torch.float32


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    name, device = backend
    inputs = make_inputs((0, 3, 4, 4), torch.float32, device, requires_grad=True)
    out = vdm_fast.prior_kl(*inputs, backend=name)
    assert out.shape == (0,)
    out.sum().backward()
    assert inputs[0].grad.shape == (0, 3, 4, 4) and inputs[2].grad.shape == (0,)


def _layouts(device):
    base = torch.randn(4, 6, 10, 8, device=device)
    return {
        "transposed": base.transpose(2, 3),
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
    _, alpha, sigma = make_inputs(x0.shape, torch.float32, device)
    upstream = 0.5 + torch.rand(x0.shape[0], device=device)
    out, got = check_against_reference(name, (x0, alpha, sigma), upstream)
    if layout == "channels_last":
        assert got[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form", ["float", "0-d", "(B,)", "(B,1,1,1)", "float64"])
def test_coefficient_forms(backend, form):
    name, device = backend
    x0, _, _ = make_inputs((3, 2, 5, 5), torch.float32, device)
    a, s = 0.3, 0.9
    coeff = {
        "float": lambda v: v,
        "0-d": lambda v: torch.tensor(v, device=device),
        "(B,)": lambda v: torch.full((3,), v, device=device),
        "(B,1,1,1)": lambda v: torch.full((3, 1, 1, 1), v, device=device),
        "float64": lambda v: torch.full((3,), v, device=device, dtype=torch.float64),
    }[form]

    def want(x):
        s2 = x.new_full((), s * s)  # a literal, rounded to the compute precision
        return 0.5 * (a * a * x ** 2 + s2 - 1 - torch.log(s2)).flatten(1).sum(1)

    numerics.check_against_reference(lambda x: vdm_fast.prior_kl(x, coeff(a), coeff(s), backend=name), want, (x0,),
                                     msg=form)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigma_near_one(backend):
    # The VDM regime (sigma_1 ~ 1): the terms s^2 - 1 - log s^2 and s - 1/s cancel; the running
    # error bound against the float64 truth is the terms' magnitude times float32 resolution.
    name, device = backend
    x0, alpha, _ = make_inputs((5, 3, 7, 7), torch.float32, device)
    sigma = 1 - 1e-3 * torch.rand(5, device=device)
    upstream = 0.5 + torch.rand(5, device=device)
    check_against_reference(name, (x0, alpha, sigma), upstream)


@pytest.mark.parametrize("backend", BACKENDS)
def test_known_value(backend):
    # KL(N(a x, s^2) || N(0, 1)) per element, summed: a = 0 and s = 1 give exactly 0.
    name, device = backend
    x0 = torch.randn(3, 5, device=device)
    assert torch.equal(vdm_fast.prior_kl(x0, 0.0, 1.0, backend=name), torch.zeros(3, device=device))


@pytest.mark.parametrize("backend", BACKENDS)
def test_inputs_not_modified(backend):
    name, device = backend
    inputs = make_inputs((3, 4, 5), torch.float32, device, requires_grad=True)
    assert_inputs_not_modified(lambda *a: vdm_fast.prior_kl(*a, backend=name), inputs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_autograd_node_without_grad(backend):
    name, device = backend
    out = vdm_fast.prior_kl(*make_inputs((3, 4), torch.float32, device), backend=name)
    assert out.grad_fn is None and not out.requires_grad


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_fp64(backend):
    name, device = backend
    inputs = make_inputs((3, 2, 5), torch.float64, device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: vdm_fast.prior_kl(*a, backend=name), inputs)


def test_opcheck_native():
    if not vdm_fast._library.has_native_kernel("prior_kl", "CPU"):
        pytest.skip("native CPU kernel not built")
    for shape in [(3, 4, 5), (1, 7), (0, 2)]:
        x0, alpha, sigma = make_inputs(shape, torch.float32, "cpu", requires_grad=True)
        torch.library.opcheck(torch.ops.vdm_fast.prior_kl.default, (x0, alpha, sigma))
        args = (torch.rand(shape[0]), x0.detach(), alpha.detach(), sigma.detach())
        torch.library.opcheck(torch.ops.vdm_fast.prior_kl_backward.default, (*args, [True, True, True]))
        torch.library.opcheck(torch.ops.vdm_fast.prior_kl_backward.default, (*args, [False, True, False]))
    cl = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.vdm_fast.prior_kl.default, (cl, torch.rand(2), torch.rand(2) + 0.5))


def test_opcheck_triton():
    from vdm_fast import backends

    if backends.unavailable_reason("triton", "cpu", "prior_kl") and not torch.cuda.is_available():
        pytest.skip(backends.unavailable_reason("triton", "cpu", "prior_kl"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    if device == "cuda":
        utils = utils + ("test_aot_dispatch_dynamic",)
    inputs = make_inputs((3, 4, 5), torch.float32, device, requires_grad=True)
    torch.library.opcheck(torch.ops.vdm_fast.prior_kl_triton.default, inputs, test_utils=utils)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph(backend):
    name, device = backend
    skip_compile_under_interpreter(name)

    def loss(x0, alpha, sigma):
        return (vdm_fast.prior_kl(x0, alpha, sigma, backend=name) * sigma).mean()

    def reference_loss(x0, alpha, sigma):
        return (reference.prior_kl(x0, alpha, sigma) * sigma).mean()

    inputs = make_inputs((4, 3, 8, 8), torch.float32, device, requires_grad=True)
    assert_compiled_matches_eager(loss, inputs, inputs, reference_loss)


@pytest.mark.parametrize(
    "case, exc, match",
    [
        ("alpha_length", ValueError, "alpha_1"),
        ("sigma_shape", ValueError, "sigma_1"),
        ("int_x0", TypeError, "x0"),
        ("int_alpha", TypeError, "alpha_1"),
        ("bool_sigma", TypeError, "sigma_1"),
        ("mixed_device_alpha", ValueError, "alpha_1"),
        ("scalar_x0", ValueError, "x0"),
        ("list_x0", TypeError, "x0"),
    ],
)
def test_bad_inputs_name_the_argument(case, exc, match):
    x0, alpha, sigma = make_inputs((4, 3, 5), torch.float32, "cpu")
    args = dict(x0=x0, alpha_1=alpha, sigma_1=sigma)
    args.update(
        {
            "alpha_length": dict(alpha_1=torch.rand(3)),
            "sigma_shape": dict(sigma_1=torch.rand(4, 3)),
            "int_x0": dict(x0=torch.ones(4, 3, 5, dtype=torch.int64)),
            "int_alpha": dict(alpha_1=torch.ones(4, dtype=torch.int32)),
            "bool_sigma": dict(sigma_1=True),
            "mixed_device_alpha": dict(alpha_1=alpha.to("meta")),
            "scalar_x0": dict(x0=torch.tensor(1.0)),
            "list_x0": dict(x0=[1.0, 2.0]),
        }[case]
    )
    with pytest.raises(exc, match=match):
        vdm_fast.prior_kl(**args)


def test_native_op_checks_coefficients():
    if not vdm_fast._library.has_native_kernel("prior_kl", "CPU"):
        pytest.skip("native CPU kernel not built")
    x0, alpha, sigma = make_inputs((2, 3), torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="sigma_1"):
        torch.ops.vdm_fast.prior_kl(x0, alpha, sigma[:1])
    with pytest.raises(RuntimeError, match="grad"):
        torch.ops.vdm_fast.prior_kl_backward(torch.ones(2, dtype=torch.float64), x0, alpha, sigma, [True] * 3)
