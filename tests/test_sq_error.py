"""sq_error (DESIGN.md §4.3): every backend equals the reference, forward and backward, all targets."""

from __future__ import annotations

import pytest
import torch

import vdm_fast
from vdm_fast import reference
import numerics
from helpers import (
    LOW_PRECISION, backend_params, skip_compile_under_interpreter,
    assert_compiled_matches_eager,
)

BACKENDS = backend_params("sq_error")
TARGETS = reference.TARGETS
SHAPES = [(1, 3), (7, 13), (5, 3, 11, 7), (2, 3, 5, 7, 3), (3, 1, 1, 1), (4, 2053), (2, 40000)]  # last: 3 chunks
ARG_NAMES = ("pred", "x0", "noise", "alpha", "sigma")


def make_inputs(shape, dtype, device, requires_grad=False):
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    pred, x0, noise = (torch.randn(shape, device=device).to(dtype).requires_grad_(requires_grad) for _ in range(3))
    alpha = torch.rand(shape[0], device=device, dtype=cdt).requires_grad_(requires_grad)
    sigma = (0.2 + 0.8 * torch.rand(shape[0], device=device, dtype=cdt)).requires_grad_(requires_grad)  # score: 1/sigma
    return pred, x0, noise, alpha, sigma


def check_against_reference(name, target, inputs, upstream, wrt=(0, 1, 2, 3, 4)):
    """Value and the gradients (inputs at positions ``wrt``) of backend ``name`` within the running
    error bound of the reference (tests/numerics.py); a gradient the reference does not have (x0
    for "eps") must be zero."""
    return numerics.check_against_reference(lambda *a: vdm_fast.sq_error(*a, target=target, backend=name),
                                            lambda *a: reference.sq_error(*a, target=target), inputs,
                                            upstream=upstream, wrt=wrt, msg=f"{name} {target}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_forward_backward_match_reference(backend, target, shape, dtype):
    name, device = backend
    inputs = make_inputs(shape, dtype, device)
    upstream = 0.5 + torch.rand(shape[0], device=device, dtype=inputs[3].dtype)  # non-unit upstream gradient
    out, got = check_against_reference(name, target, inputs, upstream)
    assert out.dtype == inputs[3].dtype and out.shape == (shape[0],)
    for label, g, t in zip(ARG_NAMES, got, inputs):
        assert g.dtype == t.dtype and g.shape == t.shape, label


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("wanted", ARG_NAMES)
def test_single_input_requiring_grad(backend, target, wanted):
    # The backward computes only what is asked for (output_mask): each input alone.
    name, device = backend
    inputs = list(make_inputs((3, 4, 5), torch.float32, device))
    i = ARG_NAMES.index(wanted)
    inputs[i].requires_grad_()
    upstream = 0.5 + torch.rand(3, device=device)
    if reference.sq_error(*inputs, target=target).requires_grad:
        check_against_reference(name, target, inputs, upstream, wrt=(i,))
    else:  # the target does not depend on this input (x0 for "eps"): its grad is zero
        (g,) = torch.autograd.grad(vdm_fast.sq_error(*inputs, target=target, backend=name), inputs[i], upstream)
        assert g.shape == inputs[i].shape and torch.count_nonzero(g) == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_low_precision_inputs_match_reference(backend, target, dtype):
    """float16/bfloat16 data is read as it is and computed in float32: the float32 bound applies,
    plus one rounding of a gradient to the data's dtype (the per-sample result stays float32)."""
    name, device = backend
    shape = (6, 3, 17, 9)
    inputs = make_inputs(shape, dtype, device)
    upstream = 0.5 + torch.rand(shape[0], device=device)
    out, got = check_against_reference(name, target, inputs, upstream)
    assert out.dtype == torch.float32
    assert got[0].dtype == dtype and got[3].dtype == torch.float32


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("target", TARGETS)
def test_empty_batch(backend, target):
    name, device = backend
    inputs = make_inputs((0, 3, 4, 4), torch.float32, device, requires_grad=True)
    out = vdm_fast.sq_error(*inputs, target=target, backend=name)
    assert out.shape == (0,)
    out.sum().backward()
    assert inputs[0].grad.shape == (0, 3, 4, 4) and inputs[4].grad.shape == (0,)


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
@pytest.mark.parametrize("target", ["eps", "v"])
@pytest.mark.parametrize("layout", ["transposed", "batch_not_outermost", "sliced", "channels_last", "expanded"])
@pytest.mark.parametrize("which", ["pred", "x0"])
def test_noncontiguous_inputs(backend, target, layout, which):
    name, device = backend
    odd = _layouts(device)[layout]
    shape = odd.shape
    pred, x0, noise, alpha, sigma = make_inputs(shape, torch.float32, device)
    if which == "pred":
        pred = odd
    else:
        x0 = odd
    noise = torch.randn(shape[0], shape[2], shape[1], shape[3], device=device).transpose(1, 2)  # mixed layouts
    upstream = 0.5 + torch.rand(shape[0], device=device)
    out, got = check_against_reference(name, target, (pred, x0, noise, alpha, sigma), upstream)
    if layout == "channels_last" and which == "pred":
        assert got[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form", ["float", "0-d", "(B,)", "(B,1,1,1)", "float64"])
def test_coefficient_forms(backend, form):
    name, device = backend
    pred, x0, noise, _, _ = make_inputs((3, 2, 5, 5), torch.float32, device)
    a, s = 0.8, 0.6
    coeff = {
        "float": lambda v: v,
        "0-d": lambda v: torch.tensor(v, device=device),
        "(B,)": lambda v: torch.full((3,), v, device=device),
        "(B,1,1,1)": lambda v: torch.full((3, 1, 1, 1), v, device=device),
        "float64": lambda v: torch.full((3,), v, device=device, dtype=torch.float64),
    }[form]
    numerics.check_against_reference(lambda p, x, n: vdm_fast.sq_error(p, x, n, coeff(a), coeff(s), "v", backend=name),
                                     lambda p, x, n: ((p - (a * n - s * x)) ** 2).flatten(1).sum(1), (pred, x0, noise),
                                     msg=form)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("target", TARGETS)
def test_inputs_not_modified(backend, target):
    name, device = backend
    inputs = make_inputs((3, 4, 5), torch.float32, device, requires_grad=True)
    before = [t.detach().clone() for t in inputs]
    vdm_fast.sq_error(*inputs, target=target, backend=name).sum().backward()
    for b, t in zip(before, inputs):
        assert torch.equal(b, t.detach())


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_autograd_node_without_grad(backend):
    name, device = backend
    out = vdm_fast.sq_error(*make_inputs((3, 4), torch.float32, device), backend=name)
    assert out.grad_fn is None and not out.requires_grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("target", TARGETS)
def test_gradcheck_fp64(backend, target):
    name, device = backend
    inputs = make_inputs((3, 2, 5), torch.float64, device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: vdm_fast.sq_error(*a, target=target, backend=name), inputs)


@pytest.mark.parametrize("target", TARGETS)
def test_opcheck_native(target):
    if not vdm_fast._library.has_native_kernel("sq_error", "CPU"):
        pytest.skip("native CPU kernel not built")
    for shape in [(3, 4, 5), (1, 7), (0, 2)]:
        pred, x0, noise, alpha, sigma = make_inputs(shape, torch.float32, "cpu", requires_grad=True)
        torch.library.opcheck(torch.ops.vdm_fast.sq_error.default, (pred, x0, noise, alpha, sigma, target))
        g = torch.rand(shape[0])
        args = [t.detach() for t in (pred, x0, noise, alpha, sigma)]
        torch.library.opcheck(torch.ops.vdm_fast.sq_error_backward.default, (g, *args, target, [True] * 5))
        torch.library.opcheck(torch.ops.vdm_fast.sq_error_backward.default,
                              (g, *args, target, [True, False, True, False, True]))
    cl = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.vdm_fast.sq_error.default,
                          (cl, torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5), torch.rand(2), torch.rand(2) + 0.5, target))


def test_opcheck_triton():
    from vdm_fast import backends

    if backends.unavailable_reason("triton", "cpu", "sq_error") and not torch.cuda.is_available():
        pytest.skip(backends.unavailable_reason("triton", "cpu", "sq_error"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # Under the interpreter AOT-dispatch tracing would run the kernel on fake tensors (see q_sample).
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    if device == "cuda":
        utils = utils + ("test_aot_dispatch_dynamic",)
    inputs = make_inputs((3, 4, 5), torch.float32, device, requires_grad=True)
    for target in TARGETS:
        torch.library.opcheck(torch.ops.vdm_fast.sq_error_triton.default, (*inputs, target), test_utils=utils)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph(backend):
    name, device = backend
    skip_compile_under_interpreter(name)

    def loss(pred, x0, noise, alpha, sigma):
        return (vdm_fast.sq_error(pred, x0, noise, alpha, sigma, "v", backend=name) * alpha).mean()

    def reference_loss(pred, x0, noise, alpha, sigma):
        return (reference.sq_error(pred, x0, noise, alpha, sigma, "v") * alpha).mean()

    inputs = make_inputs((4, 3, 8, 8), torch.float32, device, requires_grad=True)
    assert_compiled_matches_eager(loss, inputs, inputs, reference_loss)


# --- bad input: a clear error naming the argument ---------------------------------------------


@pytest.mark.parametrize(
    "case, exc, match",
    [
        ("x0_shape", ValueError, "x0"),
        ("noise_shape", ValueError, "noise"),
        ("alpha_length", ValueError, "alpha"),
        ("sigma_shape", ValueError, "sigma"),
        ("int_pred", TypeError, "pred"),
        ("int_alpha", TypeError, "alpha"),
        ("bool_sigma", TypeError, "sigma"),
        ("noise_dtype", TypeError, "noise"),
        ("mixed_device_alpha", ValueError, "alpha"),
        ("mixed_device_x0", ValueError, "x0"),
        ("scalar_pred", ValueError, "pred"),
        ("list_pred", TypeError, "pred"),
        ("unknown_target", ValueError, "target"),
        ("target_case", ValueError, "target"),
    ],
)
def test_bad_inputs_name_the_argument(case, exc, match):
    pred, x0, noise, alpha, sigma = make_inputs((4, 3, 5), torch.float32, "cpu")
    args = dict(pred=pred, x0=x0, noise=noise, alpha=alpha, sigma=sigma, target="eps")
    meta = torch.device("meta")
    args.update(
        {
            "x0_shape": dict(x0=torch.randn(4, 3, 6)),
            "noise_shape": dict(noise=torch.randn(4, 5, 3)),
            "alpha_length": dict(alpha=torch.rand(3)),
            "sigma_shape": dict(sigma=torch.rand(4, 3)),
            "int_pred": dict(pred=torch.ones(4, 3, 5, dtype=torch.int64)),
            "int_alpha": dict(alpha=torch.ones(4, dtype=torch.int32)),
            "bool_sigma": dict(sigma=True),
            "noise_dtype": dict(noise=noise.double()),
            "mixed_device_alpha": dict(alpha=alpha.to(meta)),
            "mixed_device_x0": dict(x0=x0.to(meta)),
            "scalar_pred": dict(pred=torch.tensor(1.0), x0=torch.tensor(1.0), noise=torch.tensor(1.0)),
            "list_pred": dict(pred=[1.0, 2.0]),
            "unknown_target": dict(target="epsilon"),
            "target_case": dict(target="EPS"),
        }[case]
    )
    with pytest.raises(exc, match=match):
        vdm_fast.sq_error(**args)


def test_native_op_rejects_unknown_target():
    if not vdm_fast._library.has_native_kernel("sq_error", "CPU"):
        pytest.skip("native CPU kernel not built")
    pred, x0, noise, alpha, sigma = make_inputs((2, 3), torch.float32, "cpu")
    with pytest.raises(ValueError, match="target"):
        torch.ops.vdm_fast.sq_error(pred, x0, noise, alpha, sigma, "velocity")
    with pytest.raises(ValueError, match="target"):
        torch.ops.vdm_fast.sq_error_backward(torch.ones(2), pred, x0, noise, alpha, sigma, "", [True] * 5)


def test_native_op_checks_coefficients():
    if not vdm_fast._library.has_native_kernel("sq_error", "CPU"):
        pytest.skip("native CPU kernel not built")
    pred, x0, noise, alpha, sigma = make_inputs((2, 3), torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="sigma"):
        torch.ops.vdm_fast.sq_error(pred, x0, noise, alpha, sigma.double(), "eps")
    with pytest.raises(RuntimeError, match="grad"):
        torch.ops.vdm_fast.sq_error_backward(torch.ones(3), pred, x0, noise, alpha, sigma, "eps", [True] * 5)


def test_unknown_backend_names_backend():
    inputs = make_inputs((2, 3), torch.float32, "cpu")
    with pytest.raises(ValueError, match="backend"):
        vdm_fast.sq_error(*inputs, backend="tpu")
