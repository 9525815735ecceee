"""discretized_gaussian_nll (DESIGN.md §3, §4.5): every backend equals the reference, forward
and backward, for both CDFs ("erf" exact in log space, "tanh" improved-diffusion's with clamps)."""

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

BACKENDS = backend_params("discretized_gaussian_nll")
SHAPES = [(1, 3), (7, 13), (5, 3, 11, 7), (2, 3, 5, 7, 3), (3, 1, 1, 1), (4, 2053)]
CDFS = ["erf", "tanh"]


def ddpm_grid(shape, device):
    """x0 on the DDPM grid k/127.5 - 1 (both edge bins included)."""
    return torch.randint(0, 256, shape, device=device).double() / 127.5 - 1


def make_inputs(shape, dtype, device, requires_grad=False, log_scale_range=(-7.0, -0.5), spread=0.05):
    x0 = ddpm_grid(shape, device)
    mean = x0 + spread * torch.randn(shape, device=device, dtype=torch.float64)
    lo, hi = log_scale_range
    log_scale = lo + (hi - lo) * torch.rand(shape, device=device, dtype=torch.float64)
    return (x0.to(dtype), mean.to(dtype).requires_grad_(requires_grad),
            log_scale.to(dtype).requires_grad_(requires_grad))


def check_against_reference(name, cdf, inputs, upstream):
    """Forward and backward of backend ``name`` against the reference, within the running error
    bound of the reference formula (tests/numerics.py): the tanh form's tails are conditioned like
    1/P (the two CDFs cancel), and the bound says so, element by element."""
    return numerics.check_against_reference(
        lambda x, m, s: vdm_fast.discretized_gaussian_nll(x, m, s, cdf, backend=name),
        lambda x, m, s: reference.discretized_gaussian_nll(x, m, s, cdf),
        inputs, upstream=upstream, wrt=(1, 2), msg=f"{name} {cdf}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cdf", CDFS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_forward_backward_match_reference(backend, cdf, shape, dtype):
    name, device = backend
    x0, mean, log_scale = make_inputs(shape, dtype, device, requires_grad=True)
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    upstream = 0.5 + torch.rand(shape[0], device=device, dtype=cdt)
    out, _ = check_against_reference(name, cdf, (x0, mean, log_scale), upstream)
    assert out.dtype == cdt and out.shape == (shape[0],)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cdf", CDFS)
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_low_precision_inputs_match_reference(backend, cdf, dtype):
    """float16/bfloat16 data is read as it is and computed in float32: the float32 bound applies."""
    name, device = backend
    shape = (4, 3, 9, 7)
    x0, mean, log_scale = make_inputs(shape, dtype, device, requires_grad=True, log_scale_range=(-4.0, -1.0))
    upstream = 0.5 + torch.rand(shape[0], device=device)
    out, got = check_against_reference(name, cdf, (x0, mean, log_scale), upstream)
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in got)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tanh_clamps_pass_no_gradient(backend):
    """Where improved-diffusion's 1e-12 clamp bites, log P = log(1e-12) and the gradient is 0."""
    name, device = backend
    x0 = torch.tensor([[-1.0, 0.0, 1.0, 0.5]], device=device)
    mean = torch.tensor([[0.9, 0.9, -0.9, 0.5]], device=device, requires_grad=True)
    log_scale = torch.tensor([[-5.0, -5.0, -5.0, -5.0]], device=device, requires_grad=True)
    out = vdm_fast.discretized_gaussian_nll(x0, mean, log_scale, "tanh", backend=name)
    out.sum().backward()
    want = numerics.running_error(lambda *a: reference.discretized_gaussian_nll(*a, "tanh"), (x0, mean, log_scale),
                                  dtype=torch.float32)
    numerics.assert_within_bound(out, want.value, want.bound, msg="nll")
    assert torch.equal(mean.grad[0, :3], torch.zeros(3, device=device)) and mean.grad[0, 3] == 0  # at the mode
    assert torch.equal(log_scale.grad[0, :3], torch.zeros(3, device=device)) and log_scale.grad[0, 3] != 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    name, device = backend
    x0, mean, log_scale = make_inputs((0, 3, 4, 4), torch.float32, device, requires_grad=True)
    out = vdm_fast.discretized_gaussian_nll(x0, mean, log_scale, backend=name)
    assert out.shape == (0,)
    out.sum().backward()
    assert mean.grad.shape == (0, 3, 4, 4) and log_scale.grad.shape == (0, 3, 4, 4)


def _layouts(device):
    base = ddpm_grid((4, 6, 10, 8), device).float()
    return {
        "transposed": base.transpose(2, 3),
        "batch_not_outermost": ddpm_grid((6, 4, 10, 8), device).float().transpose(0, 1),
        "sliced": base[:, :, 1:9:2, ::3],
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "expanded": ddpm_grid((4, 6, 1, 8), device).float().expand(4, 6, 10, 8),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["transposed", "batch_not_outermost", "sliced", "channels_last", "expanded"])
def test_noncontiguous_inputs(backend, layout):
    name, device = backend
    x0 = _layouts(device)[layout]
    mean = (x0 + 0.05 * torch.randn(x0.shape, device=device)).requires_grad_()  # contiguous: mixed layouts
    log_scale = (-3 + torch.rand(x0.shape, device=device)).transpose(0, 1).contiguous().transpose(0, 1)
    log_scale.requires_grad_()
    upstream = 0.5 + torch.rand(x0.shape[0], device=device)
    _, got = check_against_reference(name, "erf", (x0, mean, log_scale), upstream)
    if layout == "channels_last":
        assert got[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cdf", CDFS)
def test_inputs_not_modified(backend, cdf):
    name, device = backend
    inputs = make_inputs((3, 4, 5), torch.float32, device, requires_grad=True)
    assert_inputs_not_modified(lambda *a: vdm_fast.discretized_gaussian_nll(*a, cdf, backend=name), inputs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cdf", CDFS)
def test_gradcheck_fp64(backend, cdf):
    name, device = backend
    x0, mean, log_scale = make_inputs((3, 2, 5), torch.float64, device, requires_grad=True,
                                      log_scale_range=(-4.0, -1.0))
    assert torch.autograd.gradcheck(lambda m, s: vdm_fast.discretized_gaussian_nll(x0, m, s, cdf, backend=name),
                                    (mean, log_scale))


def test_x0_gets_no_gradient():
    x0, mean, log_scale = make_inputs((2, 3), torch.float32, "cpu", requires_grad=True)
    x0.requires_grad_()
    vdm_fast.discretized_gaussian_nll(x0, mean, log_scale).sum().backward()
    assert x0.grad is None and mean.grad is not None


def test_opcheck_native():
    if not vdm_fast._library.has_native_kernel("discretized_gaussian_nll", "CPU"):
        pytest.skip("native CPU kernel not built")
    for shape in [(3, 4, 5), (1, 7), (0, 2)]:
        for cdf in CDFS:
            x0, mean, log_scale = make_inputs(shape, torch.float32, "cpu", requires_grad=True)
            torch.library.opcheck(torch.ops.vdm_fast.discretized_gaussian_nll.default, (x0, mean, log_scale, cdf))
            torch.library.opcheck(torch.ops.vdm_fast.discretized_gaussian_nll_backward.default,
                                  (torch.rand(shape[0]), x0, mean.detach(), log_scale.detach(), cdf, [True, True]))
    x_cl = ddpm_grid((2, 3, 4, 5), "cpu").float().contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.vdm_fast.discretized_gaussian_nll_backward.default,
                          (torch.rand(2), x_cl, x_cl + 0.01, torch.full_like(x_cl, -3.0), "erf", [False, True]))


def test_opcheck_triton():
    from vdm_fast import backends

    op = "discretized_gaussian_nll"
    if backends.unavailable_reason("triton", "cpu", op) and not torch.cuda.is_available():
        pytest.skip(backends.unavailable_reason("triton", "cpu", op))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    if device == "cuda":
        utils = utils + ("test_aot_dispatch_dynamic",)
    x0, mean, log_scale = make_inputs((3, 4, 5), torch.float32, device, requires_grad=True)
    torch.library.opcheck(torch.ops.vdm_fast.discretized_gaussian_nll_triton.default, (x0, mean, log_scale, "erf"),
                          test_utils=utils)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph(backend):
    name, device = backend
    skip_compile_under_interpreter(name)

    def loss(x0, mean, log_scale):
        return (vdm_fast.discretized_gaussian_nll(x0, mean, log_scale, "tanh", backend=name) ** 2).sum()

    def reference_loss(x0, mean, log_scale):
        return (reference.discretized_gaussian_nll(x0, mean, log_scale, "tanh") ** 2).sum()

    x0, *diff = make_inputs((4, 3, 8, 8), torch.float32, device, requires_grad=True)
    assert_compiled_matches_eager(loss, (x0, *diff), diff, reference_loss)


# --- bad input: a clear error naming the argument ---------------------------------------------


@pytest.mark.parametrize(
    "case, exc, match",
    [
        ("mean_shape", ValueError, "mean"),
        ("log_scale_shape", ValueError, "log_scale"),
        ("int_x0", TypeError, "x0"),
        ("mean_dtype", TypeError, "mean"),
        ("log_scale_dtype", TypeError, "log_scale"),
        ("mixed_device_mean", ValueError, "mean"),
        ("scalar_x0", ValueError, "x0"),
        ("list_x0", TypeError, "x0"),
        ("unknown_cdf", ValueError, "cdf"),
    ],
)
def test_bad_inputs_name_the_argument(case, exc, match):
    x0, mean, log_scale = make_inputs((4, 3, 5), torch.float32, "cpu")
    args = dict(x0=x0, mean=mean, log_scale=log_scale)
    args.update(
        {
            "mean_shape": dict(mean=torch.randn(4, 3, 6)),
            "log_scale_shape": dict(log_scale=torch.randn(4, 3)),
            "int_x0": dict(x0=torch.ones(4, 3, 5, dtype=torch.int64)),
            "mean_dtype": dict(mean=mean.double()),
            "log_scale_dtype": dict(log_scale=log_scale.half()),
            "mixed_device_mean": dict(mean=mean.to("meta")),
            "scalar_x0": dict(x0=torch.tensor(1.0), mean=torch.tensor(1.0), log_scale=torch.tensor(1.0)),
            "list_x0": dict(x0=[1.0, 2.0]),
            "unknown_cdf": dict(cdf="logistic"),
        }[case]
    )
    with pytest.raises(exc, match=match):
        vdm_fast.discretized_gaussian_nll(**args)


def test_native_op_rejects_unknown_cdf():
    if not vdm_fast._library.has_native_kernel("discretized_gaussian_nll", "CPU"):
        pytest.skip("native CPU kernel not built")
    x0, mean, log_scale = make_inputs((2, 3), torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="cdf"):
        torch.ops.vdm_fast.discretized_gaussian_nll(x0, mean, log_scale, "logistic")
