"""Loading the native extension and asking the dispatcher what it provides.

Importing vdm_fast never fails because the extension is missing or broken: the error is kept
and reported by ``vdm-fast env``, and the backend chooser (vdm_fast/backends.py) falls back.
"""

from __future__ import annotations

import functools

import torch

NAMESPACE = "vdm_fast"

try:  # the ops register themselves with the dispatcher when the library loads
    from . import _C  # noqa: F401

    native_load_error: str | None = None
except ImportError as exc:  # not built (VDM_FAST_NO_NATIVE) or built against another torch
    native_load_error = f"{type(exc).__name__}: {exc}"


@functools.lru_cache(maxsize=None)
def has_native_kernel(op: str, dispatch_key: str) -> bool:
    """Whether ``vdm_fast::<op>`` has a kernel for ``dispatch_key`` ("CPU" or "CUDA")."""
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::{op}", dispatch_key)
    except RuntimeError:  # the op is not defined: the extension is not built or not loaded
        return False


def native_op(op: str):
    """The OpOverload ``torch.ops.vdm_fast.<op>.default``."""
    return getattr(getattr(torch.ops, NAMESPACE), op).default


def cpu_isa() -> str | None:
    """The instruction set the C++ CPU loops run with ("default", "avx2" or "avx512": the widest the
    CPU has, capped by ATEN_CPU_CAPABILITY; DESIGN.md §7.1), or None without the native library."""
    if native_load_error is not None:
        return None
    return native_op("cpu_isa")()
