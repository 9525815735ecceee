"""``python -m vdm_fast.env`` / ``vdm-fast env``: versions, and which backends are built here."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys

import torch

from . import _library, backends
from .ops import SPECS

OPS = tuple(SPECS)  # every op, in registration order (vdm_fast/ops/__init__.py)


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def report() -> str:
    import vdm_fast

    lines = [
        f"vdm_fast        {vdm_fast.__version__} ({os.path.dirname(vdm_fast.__file__)})",
        f"python          {sys.version.split()[0]} ({platform.machine()}, {platform.system()})",
        f"torch           {torch.__version__} (CUDA build: {torch.version.cuda or 'no'}; "
        f"threads: {torch.get_num_threads()}; CPU capability: {torch.backends.cpu.get_cpu_capability()})",
        f"cuda device     {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}",
        f"triton          {_version('triton')}"
        + (" (interpreter: TRITON_INTERPRET=1)" if os.environ.get("TRITON_INTERPRET") == "1" else ""),
        f"diffusers       {_version('diffusers')}",
        f"native library  {'loaded' if _library.native_load_error is None else 'NOT LOADED: ' + _library.native_load_error}",
        f"cpu loops       {_library.cpu_isa() or '-'} (the widest the CPU has, capped by ATEN_CPU_CAPABILITY)",
        f"{backends.ENV_VAR:<15} {os.environ.get(backends.ENV_VAR) or '(unset: automatic choice)'}",
        "",
        f"{'op':<26} {'cpu kernel':<11} {'cuda kernel':<12} default on cpu / cuda   runnable here (cpu tensors)",
    ]
    for op in OPS:
        cpu = _library.has_native_kernel(op, "CPU")
        cuda = _library.has_native_kernel(op, "CUDA")
        try:
            default_cpu = backends._resolve(None, "cpu", op)
        except Exception as exc:  # noqa: BLE001 - a report must not fail
            default_cpu = f"error: {exc}"
        default_cuda = "cuda" if cuda else ("triton" if backends.triton_status() is None else "reference")
        runnable = ", ".join(backends.available("cpu", op))
        lines.append(f"{op:<26} {'built' if cpu else '-':<11} {'built' if cuda else '-':<12} "
                     f"{default_cpu:>8} / {default_cuda:<12} {runnable}")
    why = backends.triton_status()
    lines.append("")
    lines.append(f"triton backend: {'available' if why is None else 'unavailable: ' + why}")
    return "\n".join(lines)


def main() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        print(report())


if __name__ == "__main__":
    main()
