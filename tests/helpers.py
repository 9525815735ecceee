"""Shared test utilities: which backends run here, dtypes and memory layouts.

Equality rules (DESIGN.md §10): an op equals its reference within the running error bound of the
reference formula (tests/numerics.py); where a test compares whole computations that are not one
op (a sampler, a loss), the same bound or a rule stated at the call site.
"""

from __future__ import annotations

import os
import threading

import pytest
import torch

from vdm_fast import backends

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
LOW_PRECISION = (torch.float16, torch.bfloat16)
# Odd sizes: a single element per sample, sizes that are no multiple of a vector width, 5-d data.
ODD_SHAPES = [(1, 3), (7, 13), (5, 3, 11, 7), (2, 3, 5, 7, 3), (3, 1, 1, 1), (4, 2053)]

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


def skip_compile_under_interpreter(backend_name: str) -> None:
    """torch.compile traces into triton_op kernels, which the Triton interpreter cannot run on
    fake tensors: compile tests of the Triton backend run on a GPU only."""
    if backend_name == "triton" and os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("torch.compile traces into triton_op kernels, which the Triton interpreter cannot run on fake "
                    "tensors; this runs on a GPU")


LAYOUTS = ("transposed", "batch_not_outermost", "sliced", "channels_last", "expanded")


def layouts(device) -> dict[str, torch.Tensor]:
    """A (4, 6, 10, 8) tensor in each of LAYOUTS (fresh random values)."""
    base = torch.randn(4, 6, 10, 8, device=device)
    return {
        "transposed": base.transpose(2, 3),  # dense, batch-major, other strides
        "batch_not_outermost": torch.randn(6, 4, 10, 8, device=device).transpose(0, 1),
        "sliced": base[:, :, 1:9:2, ::3],
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "expanded": torch.randn(4, 6, 1, 8, device=device).expand(4, 6, 10, 8),
    }


def run_in_threads(worker, n: int) -> None:
    """worker(0) ... worker(n - 1) at once, one thread each; a thread stops at its first error
    (a failed assertion too), and every thread's error is reported."""
    failures = []

    def run(i):
        try:
            worker(i)
        except Exception as exc:  # noqa: BLE001 - reported below, with the thread
            failures.append(f"thread {i}: {exc!r}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
