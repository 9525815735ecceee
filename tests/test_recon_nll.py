"""recon_nll (DESIGN.md §3, §4.5): every backend equals the reference, forward and backward.

The fused kernels sum only a window of bins around the softmax's mode (csrc/recon_nll_math.h);
the reference sums all 256, so every comparison here also checks the truncation bound (below e^-40
relative, negligible against the running error bound of tests/numerics.py that every comparison
here uses).
"""

from __future__ import annotations

import os

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

BACKENDS = backend_params("recon_nll")
SHAPES = [(1, 3), (7, 13), (5, 3, 11, 7), (2, 3, 5, 7, 3), (3, 1, 1, 1), (4, 2053)]
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def grid_data(shape, device, jitter=0.3):
    """x0 near VDM's bin centres (within +-jitter of a bin width: nearest-bin assignment matters)."""
    k = torch.randint(0, 256, shape, device=device).double()
    return (2 * (k + 0.5 + jitter * (2 * torch.rand(shape, device=device, dtype=torch.float64) - 1)) / 256 - 1)


def make_inputs(shape, dtype, device, requires_grad=False, sigma_range=(1e-3, 0.5)):
    """x0 on the grid, z0 = alpha x0 + sigma eps, sigma log-uniform over sigma_range per sample
    (small sigma: a few bins summed; large: all 256)."""
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    B = shape[0]
    lo, hi = torch.log(torch.tensor(sigma_range, dtype=torch.float64))
    sigma = torch.exp(lo + (hi - lo) * torch.rand(B, dtype=torch.float64)).to(device)
    alpha = torch.sqrt(1 - sigma**2)
    x = grid_data(shape, device)
    view = (B,) + (1,) * (len(shape) - 1)
    z = alpha.reshape(view) * x + sigma.reshape(view) * torch.randn(shape, device=device, dtype=torch.float64)
    x0 = x.to(dtype)
    z0 = z.to(dtype).requires_grad_(requires_grad)
    return x0, z0, alpha.to(cdt).requires_grad_(requires_grad), sigma.to(cdt).requires_grad_(requires_grad)


def check_against_reference(name, inputs, upstream, msg=""):
    """Value and the gradients in z0, alpha_0, sigma_0 of backend ``name`` within the running error
    bound of the reference (tests/numerics.py): gradients scale like 1/sigma_0^2 and sum terms
    that cancel, and the bound says so, element by element."""
    return numerics.check_against_reference(lambda *a: vdm_fast.recon_nll(*a, backend=name), reference.recon_nll,
                                            inputs, upstream=upstream, wrt=(1, 2, 3), msg=f"{name} {msg}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_forward_backward_match_reference(backend, shape, dtype):
    name, device = backend
    # The Triton interpreter runs the bin loop in Python: keep its windows short (the all-bins path
    # is covered by the gradcheck and extreme-sigma tests).
    sigma_range = (1e-3, 0.01) if name == "triton" and INTERPRETED else (1e-3, 0.5)
    inputs = make_inputs(shape, dtype, device, sigma_range=sigma_range)
    upstream = 0.5 + torch.rand(shape[0], device=device, dtype=inputs[2].dtype)  # non-unit, per sample
    out, _ = check_against_reference(name, inputs, upstream)
    assert out.dtype == inputs[2].dtype and out.shape == (shape[0],)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_low_precision_inputs_match_reference(backend, dtype):
    """float16/bfloat16 data is read as it is and computed in float32: the float32 bound applies,
    plus one rounding of the result to the data's dtype (the z0 gradient; the per-sample nll and the
    alpha_0, sigma_0 gradients stay float32)."""
    name, device = backend
    shape = (4, 3, 9, 7)
    inputs = make_inputs(shape, dtype, device, sigma_range=(0.01, 0.3))
    upstream = 0.5 + torch.rand(shape[0], device=device)
    out, got = check_against_reference(name, inputs, upstream)
    assert out.dtype == torch.float32 and got[0].dtype == dtype and got[1].dtype == torch.float32


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize(
    "regime", ["sigma_tiny", "sigma_1e-4", "sigma_1", "z0_far_outside", "z0_far_tiny_sigma", "alpha_small"]
)
def test_extremes_finite_and_equal_to_float64_reference(backend, dtype, regime):
    """Tiny and ~1 sigma, z0 far outside [-1, 1], alpha_0 -> 0: finite, and equal to the float64
    reference within the running error bound of the reference formula. Where that formula cancels
    (alpha_0 = 1e-6: z0 - alpha_0 c_k keeps few bits of alpha_0 c_k in float32) the bound of the z0
    and sigma_0 gradients exceeds the gradients themselves."""
    name, device = backend
    shape = (3, 2, 7, 5)
    x0, z0, alpha, sigma = make_inputs(shape, dtype, device)
    cdt = alpha.dtype
    if regime == "sigma_tiny":
        sigma = torch.full_like(sigma, 1e-6)
        z0 = (alpha[:, None, None, None] * x0.to(cdt) + 1e-6 * torch.randn(shape, device=device)).to(dtype)
    elif regime == "sigma_1e-4":
        sigma = torch.full_like(sigma, 1e-4)
        z0 = (alpha[:, None, None, None] * x0.to(cdt) + 1e-4 * torch.randn(shape, device=device)).to(dtype)
    elif regime == "sigma_1":
        sigma = torch.tensor([0.9, 1.0, 1.1], device=device, dtype=cdt)
    elif regime == "z0_far_outside":
        z0 = (torch.randn(shape, device=device) * 20).to(dtype)
    elif regime == "z0_far_tiny_sigma":
        sigma = torch.full_like(sigma, 1e-3)
        z0 = (torch.randn(shape, device=device).sign() * (3 + 5 * torch.rand(shape, device=device))).to(dtype)
    elif regime == "alpha_small":
        alpha = torch.tensor([1e-3, 1e-6, 0.0], device=device, dtype=cdt)
        sigma = torch.ones_like(sigma)
    upstream = torch.tensor([1.0, 0.5, 2.0], device=device, dtype=cdt)
    out, got = check_against_reference(name, (x0, z0, alpha, sigma), upstream, msg=regime)
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in got)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bin_assignment_matches_reference_bin_index(backend):
    """Ties (bin edges), the ends of [-1, 1] and exact centres are binned as reference.bin_index;
    with a tiny sigma a wrong bin would change the nll by ~1e4 nats. (Values outside [-1, 1] are
    rejected: tests/test_hardening_ops.py.)"""
    name, device = backend
    k = torch.arange(257, dtype=torch.float64)
    edges = 2 * k / 256 - 1  # exactly between two centres: ties to even
    centres = 2 * (torch.arange(256, dtype=torch.float64) + 0.5) / 256 - 1
    x = torch.cat([edges, centres, torch.tensor([-1.0, 1.0, 0.0])]).to(device)
    x0 = x.float().reshape(1, -1)
    z0 = (x0 + 1e-3 * torch.randn_like(x0))
    alpha, sigma = torch.ones(1, device=device), torch.full((1,), 2e-3, device=device)
    numerics.check_against_reference(lambda *a: vdm_fast.recon_nll(*a, backend=name), reference.recon_nll,
                                     (x0, z0, alpha, sigma), msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    name, device = backend
    x0, z0, alpha, sigma = make_inputs((0, 3, 4, 4), torch.float32, device, requires_grad=True)
    out = vdm_fast.recon_nll(x0, z0, alpha, sigma, backend=name)
    assert out.shape == (0,)
    out.sum().backward()
    assert alpha.grad.shape == (0,) and z0.grad.shape == (0, 3, 4, 4)


def _layouts(device):
    base = grid_data((4, 6, 10, 8), device).float()
    return {
        "transposed": base.transpose(2, 3),
        "batch_not_outermost": grid_data((6, 4, 10, 8), device).float().transpose(0, 1),
        "sliced": base[:, :, 1:9:2, ::3],
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "expanded": grid_data((4, 6, 1, 8), device).float().expand(4, 6, 10, 8),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["transposed", "batch_not_outermost", "sliced", "channels_last", "expanded"])
def test_noncontiguous_inputs(backend, layout):
    name, device = backend
    x0 = _layouts(device)[layout]
    alpha = (0.9 + 0.1 * torch.rand(x0.shape[0], device=device)).requires_grad_()
    sigma = (0.02 + 0.1 * torch.rand(x0.shape[0], device=device)).requires_grad_()
    z0 = (x0 + 0.05 * torch.randn(x0.shape, device=device)).requires_grad_()  # contiguous: mixed layouts
    upstream = 0.5 + torch.rand(x0.shape[0], device=device)
    _, got = check_against_reference(name, (x0, z0, alpha, sigma), upstream)
    if layout == "channels_last":
        assert got[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form", ["float", "0-d", "(B,)", "(B,1,1,1)", "float64"])
def test_coefficient_forms(backend, form):
    name, device = backend
    x0, z0, _, _ = make_inputs((3, 2, 5, 5), torch.float32, device)
    a, s = 0.95, 0.05
    coeff = {
        "float": lambda v: v,
        "0-d": lambda v: torch.tensor(v, device=device),
        "(B,)": lambda v: torch.full((3,), v, device=device),
        "(B,1,1,1)": lambda v: torch.full((3, 1, 1, 1), v, device=device),
        "float64": lambda v: torch.full((3,), v, device=device, dtype=torch.float64),
    }[form]
    numerics.check_against_reference(
        lambda x, z: vdm_fast.recon_nll(x, z, coeff(a), coeff(s), backend=name),
        lambda x, z: reference.recon_nll(x, z, torch.full((3,), a, dtype=x.dtype, device=x.device),
                                         torch.full((3,), s, dtype=x.dtype, device=x.device)),
        (x0, z0), msg=form)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inputs_not_modified(backend):
    name, device = backend
    inputs = make_inputs((3, 4, 5), torch.float32, device, requires_grad=True)
    assert_inputs_not_modified(lambda *a: vdm_fast.recon_nll(*a, backend=name), inputs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sigma_range", [(0.01, 0.05), (0.3, 0.8)], ids=["window", "all_bins"])
def test_gradcheck_fp64(backend, sigma_range):
    name, device = backend
    x0, z0, alpha, sigma = make_inputs((3, 2, 5), torch.float64, device, requires_grad=True, sigma_range=sigma_range)
    assert torch.autograd.gradcheck(lambda *a: vdm_fast.recon_nll(x0, *a, backend=name), (z0, alpha, sigma))


def test_x0_gets_no_gradient():
    x0, z0, alpha, sigma = make_inputs((2, 3), torch.float32, "cpu", requires_grad=True)
    x0.requires_grad_()
    vdm_fast.recon_nll(x0, z0, alpha, sigma).sum().backward()
    assert x0.grad is None and z0.grad is not None


def test_opcheck_native():
    if not vdm_fast._library.has_native_kernel("recon_nll", "CPU"):
        pytest.skip("native CPU kernel not built")
    for shape in [(3, 4, 5), (1, 7), (0, 2)]:
        x0, z0, alpha, sigma = make_inputs(shape, torch.float32, "cpu", requires_grad=True)
        torch.library.opcheck(torch.ops.vdm_fast.recon_nll.default, (x0, z0, alpha, sigma, "categorical"))
        g = torch.rand(shape[0])
        torch.library.opcheck(torch.ops.vdm_fast.recon_nll_backward.default,
                              (g, x0, z0.detach(), alpha.detach(), sigma.detach(), "categorical", [True, True, True]))
    x_cl = grid_data((2, 3, 4, 5), "cpu").float().contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.vdm_fast.recon_nll_backward.default,
                          (torch.rand(2), x_cl, x_cl + 0.01, torch.rand(2), torch.rand(2) + 0.1, "categorical",
                           [True, False, True]))


def test_opcheck_triton():
    from vdm_fast import backends

    if backends.unavailable_reason("triton", "cpu", "recon_nll") and not torch.cuda.is_available():
        pytest.skip(backends.unavailable_reason("triton", "cpu", "recon_nll"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    if device == "cuda":
        utils = utils + ("test_aot_dispatch_dynamic",)
    x0, z0, alpha, sigma = make_inputs((3, 4, 5), torch.float32, device, requires_grad=True)
    torch.library.opcheck(torch.ops.vdm_fast.recon_nll_triton.default, (x0, z0, alpha, sigma, "categorical"),
                          test_utils=utils)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph(backend):
    name, device = backend
    skip_compile_under_interpreter(name)

    def loss(x0, z0, alpha, sigma):
        return (vdm_fast.recon_nll(x0, z0, alpha, sigma, backend=name) ** 2).sum()

    def reference_loss(x0, z0, alpha, sigma):
        return (reference.recon_nll(x0, z0, alpha, sigma) ** 2).sum()

    x0, *diff = make_inputs((4, 3, 8, 8), torch.float32, device, requires_grad=True)
    assert_compiled_matches_eager(loss, (x0, *diff), diff, reference_loss)


# --- bad input: a clear error naming the argument ---------------------------------------------


@pytest.mark.parametrize(
    "case, exc, match",
    [
        ("z0_shape", ValueError, "z0"),
        ("alpha_length", ValueError, "alpha_0"),
        ("sigma_shape", ValueError, "sigma_0"),
        ("int_x0", TypeError, "x0"),
        ("int_alpha", TypeError, "alpha_0"),
        ("bool_sigma", TypeError, "sigma_0"),
        ("z0_dtype", TypeError, "z0"),
        ("mixed_device_alpha", ValueError, "alpha_0"),
        ("mixed_device_z0", ValueError, "z0"),
        ("scalar_x0", ValueError, "x0"),
        ("list_x0", TypeError, "x0"),
        ("unknown_decoder", ValueError, "decoder"),
    ],
)
def test_bad_inputs_name_the_argument(case, exc, match):
    x0, z0, alpha, sigma = make_inputs((4, 3, 5), torch.float32, "cpu")
    args = dict(x0=x0, z0=z0, alpha_0=alpha, sigma_0=sigma)
    meta = torch.device("meta")
    args.update(
        {
            "z0_shape": dict(z0=torch.randn(4, 3, 6)),
            "alpha_length": dict(alpha_0=torch.rand(3)),
            "sigma_shape": dict(sigma_0=torch.rand(4, 3)),
            "int_x0": dict(x0=torch.ones(4, 3, 5, dtype=torch.int64)),
            "int_alpha": dict(alpha_0=torch.ones(4, dtype=torch.int32)),
            "bool_sigma": dict(sigma_0=True),
            "z0_dtype": dict(z0=z0.double()),
            "mixed_device_alpha": dict(alpha_0=alpha.to(meta)),
            "mixed_device_z0": dict(z0=z0.to(meta)),
            "scalar_x0": dict(x0=torch.tensor(1.0), z0=torch.tensor(1.0)),
            "list_x0": dict(x0=[1.0, 2.0]),
            "unknown_decoder": dict(decoder="discretized_gaussian"),
        }[case]
    )
    with pytest.raises(exc, match=match):
        vdm_fast.recon_nll(**args)


def test_native_op_rejects_unknown_decoder():
    if not vdm_fast._library.has_native_kernel("recon_nll", "CPU"):
        pytest.skip("native CPU kernel not built")
    x0, z0, alpha, sigma = make_inputs((2, 3), torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="decoder"):
        torch.ops.vdm_fast.recon_nll(x0, z0, alpha, sigma, "gaussian")
