"""What every op module shares: the table of implementations per backend, and the pieces that
turn a kernel pair (forward, fused backward) into a differentiable op on each backend.

An op module (vdm_fast/ops/<op>.py) registers fake kernels for its native ops, wraps its Triton
launchers as ``torch.library.triton_op``, attaches autograd to both, and fills
``Implementations`` with one callable per backend. The public function validates, normalises and
calls ``impls[backends.resolve(...)]``.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from typing import Callable

import torch

from .. import _library, backends

log = logging.getLogger(__name__)


def triton_kernels(module: str):
    """``vdm_fast.kernels.<module>``, or None when Triton cannot be imported here."""
    if backends.triton_status() == "the triton package is not installed":
        return None
    try:
        return importlib.import_module(f"vdm_fast.kernels.{module}")
    except ImportError as exc:  # triton present but broken: the backend reports unavailable
        log.debug("vdm_fast.kernels.%s failed to import: %s", module, exc)
        return None


def native_defined(op: str) -> bool:
    """Whether the native library defines ``vdm_fast::<op>`` (it may lack some device kernels)."""
    return _library.native_load_error is None and hasattr(torch.ops.vdm_fast, op)


@dataclass
class Implementations:
    """One callable per backend name, all with the op's normalised signature."""

    op: str
    table: dict[str, Callable] = field(default_factory=dict)

    def __call__(self, backend: str) -> Callable:
        try:
            return self.table[backend]
        except KeyError:
            raise RuntimeError(f"{self.op}: the {backend} backend has no implementation of this op") from None
