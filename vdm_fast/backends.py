"""Which implementation runs an op (DESIGN.md §7).

Backends: ``"cpu"`` (C++), ``"cuda"`` (CUDA C++), ``"triton"``, ``"reference"`` (pure PyTorch,
always there). The default is the fastest backend built for the tensors' device: ``cpu`` for
CPU tensors, ``cuda`` then ``triton`` for CUDA tensors. ``backend=`` on any op, or the
environment variable ``VDM_FAST_BACKEND``, overrides it: a backend requested explicitly that
cannot run raises, an automatic choice that finds nothing built falls back to the reference with
one warning.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings

import torch

from . import _library
from ._namespace import public_dir

BACKENDS = ("cpu", "cuda", "triton", "reference")
ENV_VAR = "VDM_FAST_BACKEND"


@functools.lru_cache(maxsize=None)
def triton_status() -> str | None:
    """None when Triton kernels can run here, else the reason they cannot."""
    if importlib.util.find_spec("triton") is None:
        return "the triton package is not installed"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return None
    if not torch.cuda.is_available():
        return "no GPU (set TRITON_INTERPRET=1 to run Triton kernels on the CPU through its interpreter)"
    return None


def unavailable_reason(backend: str, device_type: str, op: str) -> str | None:
    """None when ``backend`` can run ``op`` on tensors of ``device_type``, else why not."""
    if backend == "reference":
        return None
    if backend in ("cpu", "cuda"):
        if device_type != backend:
            return f"the {backend} backend runs {backend} tensors, these are on {device_type}"
        if backend == "cuda" and not torch.cuda.is_available():
            return "no CUDA device is available"
        if not _library.has_native_kernel(op, backend.upper()):
            why = _library.native_load_error or f"vdm_fast._C was built without {backend} kernels"
            return f"the native {backend} kernel of {op} is not available ({why})"
        return None
    if backend == "triton":
        if device_type not in ("cuda", "cpu"):
            return f"the triton backend runs cuda tensors, these are on {device_type}"
        reason = triton_status()
        if reason is not None:
            return reason
        if device_type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            return "Triton runs CPU tensors only through its interpreter (TRITON_INTERPRET=1)"
        return None
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


_warned: set[tuple[str, str]] = set()


def assume_constant_result(fn):
    """``torch.compiler.assume_constant_result`` without importing torch._dynamo at import time:
    that import pulls in Triton (~155 MB resident) on machines that will never use it. The
    decorator only marks the function for Dynamo (torch/_dynamo/decorators.py); a test checks the
    mark is still the one torch sets (tests/test_hardening_autodiff.py)."""
    fn._dynamo_marked_constant = True
    return fn


@assume_constant_result
def _resolve_cached(requested: str | None, device_type: str, op: str) -> str:
    return _resolve(requested, device_type, op)


@functools.lru_cache(maxsize=None)
def _resolve(requested: str | None, device_type: str, op: str) -> str:
    if requested is None:
        requested = os.environ.get(ENV_VAR) or None
        source = f"the environment variable {ENV_VAR}"
    else:
        source = "backend"
    if requested is not None:
        if requested not in BACKENDS:
            raise ValueError(f"{op}: {source} must be one of {BACKENDS}, got {requested!r}")
        reason = unavailable_reason(requested, device_type, op)
        if reason is not None:
            raise RuntimeError(f"{op}: {source}={requested!r} was requested but {reason}")
        return requested
    candidates = {"cpu": ("cpu",), "cuda": ("cuda", "triton")}.get(device_type, ())
    for candidate in candidates:
        if unavailable_reason(candidate, device_type, op) is None:
            return candidate
    if (op, device_type) not in _warned:
        _warned.add((op, device_type))
        warnings.warn(
            f"vdm_fast: no fused kernel of {op} is available for {device_type} tensors "
            f"({_library.native_load_error or 'not built'}); using the pure-PyTorch reference",
            RuntimeWarning,
            stacklevel=3,
        )
    return "reference"


def resolve(backend: str | None, device: torch.device, op: str) -> str:
    """The backend that runs ``op`` on ``device`` given the caller's ``backend`` argument."""
    # A plain dict lookup: this runs on every op call. Under torch.compile a hit is a guarded
    # constant; a miss goes through assume_constant_result so the choice is still a constant.
    # Keyed on the device itself: reading device.type costs more than the whole lookup.
    key = (backend, device, op)
    found = _memo.get(key)
    if found is None:
        if torch.compiler.is_compiling():
            return _resolve_cached(backend, device.type, op)
        found = _memo[key] = _resolve(backend, device.type, op)
    return found


_memo: dict[tuple, str] = {}


_on_clear: list = []  # other caches of resolved choices (the ops' implementation memos)


def on_clear(fn) -> None:
    """Call ``fn()`` whenever :func:`clear_cache` runs (a cache derived from resolved choices)."""
    _on_clear.append(fn)


def clear_cache() -> None:
    """Forget every resolved choice (after changing VDM_FAST_BACKEND in-process, or in tests)."""
    _memo.clear()
    _resolve.cache_clear()
    for fn in _on_clear:
        fn()


def available(device_type: str, op: str = "q_sample") -> list[str]:
    """The backends that can run ``op`` on tensors of ``device_type`` in this process."""
    return [b for b in BACKENDS if unavailable_reason(b, device_type, op) is None]


__all__ = ["BACKENDS", "ENV_VAR", "triton_status", "unavailable_reason", "resolve", "clear_cache",
    "available"]
__dir__ = public_dir(__all__)
