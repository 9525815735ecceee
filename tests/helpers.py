"""Shared test utilities: which backends run here, and the numerical-equality rules.

Equality rules (DESIGN.md §10): an op equals its reference within the running error bound of the
reference formula (tests/numerics.py); where a test compares whole computations that are not one
op (a sampler, a loss), the same bound or a rule stated at the call site. ``assert_within_2x_of_torch``
is flash-attention's rule for computations done in a low precision dtype: our error against a
float64 truth is at most twice the error PyTorch itself makes computing the same formula in that
dtype, plus one unit of the dtype's resolution.
"""

from __future__ import annotations

import os

import pytest
import torch

import numerics
from vdm_fast import backends

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
LOW_PRECISION = (torch.float16, torch.bfloat16)

TIGHT = {
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float64: dict(rtol=1e-12, atol=1e-12),
}


def backends_here(op: str, device: str = "cpu") -> list[str]:
    """Backends that can run ``op`` on ``device`` in this process, asked of the dispatcher."""
    return backends.available(device, op)


def backend_params(op: str, include_reference: bool = False):
    """pytest params for every backend of ``op``, skipped (with the reason) where unavailable."""
    params = []
    for name in backends.BACKENDS:
        if name == "reference" and not include_reference:
            continue
        device = "cuda" if name == "cuda" else "cpu"
        if name == "triton" and torch.cuda.is_available():
            device = "cuda"
        reason = backends.unavailable_reason(name, device, op)
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        params.append(pytest.param((name, device), id=name, marks=marks))
    return params


def assert_tight(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None, msg: str = ""):
    dtype = dtype or expected.dtype
    tol = TIGHT.get(dtype, TIGHT[torch.float32])
    torch.testing.assert_close(actual, expected, **tol, msg=lambda m: f"{msg}\n{m}")


def assert_within_2x_of_torch(ours: torch.Tensor, torch_native: torch.Tensor, truth: torch.Tensor, msg: str = ""):
    """Low-precision rule: max|ours - truth| <= 2 max|torch_native - truth| + resolution."""
    truth = truth.double()
    ours_err = (ours.double() - truth).abs().max().item() if truth.numel() else 0.0
    torch_err = (torch_native.double() - truth).abs().max().item() if truth.numel() else 0.0
    resolution = torch.finfo(ours.dtype).eps * truth.abs().max().item() if truth.numel() else 0.0
    assert ours_err <= 2 * torch_err + resolution, (
        f"{msg}: error {ours_err:.3e} exceeds 2x PyTorch's own {torch_err:.3e} (+{resolution:.1e})"
    )


def skip_compile_under_interpreter(backend_name: str) -> None:
    """torch.compile traces into triton_op kernels, which the Triton interpreter cannot run on
    fake tensors: compile tests of the Triton backend run on a GPU only."""
    if backend_name == "triton" and os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("torch.compile traces into triton_op kernels, which the Triton interpreter cannot run on fake "
                    "tensors; this runs on a GPU")


def assert_compiled_matches_eager(loss, args, wrt, reference_loss) -> None:
    """torch.compile(loss, fullgraph=True) gives, as eager does, the loss and the gradients with
    respect to the tensors ``wrt`` (some of ``args``) of ``reference_loss`` (the same loss on the
    reference twins), within the running error bound (tests/numerics.py): the one compile test
    every op has."""
    torch._dynamo.reset()
    positions = tuple(i for i, a in enumerate(args) if any(a is w for w in wrt))
    for label, fn in (("compiled", torch.compile(loss, fullgraph=True)), ("eager", loss)):
        numerics.check_against_reference(fn, reference_loss, args, wrt=positions, msg=label)


def assert_inputs_not_modified(run, inputs) -> None:
    """run(*inputs) and the backward of its (first) output leave every input as it was."""
    before = [t.detach().clone() for t in inputs]
    out = run(*inputs)
    (out[0] if isinstance(out, tuple) else out).sum().backward()
    for b, t in zip(before, inputs):
        assert torch.equal(b, t.detach())
