"""Argument checks and normalisation for the public ops (DESIGN.md §4, common rules).

Every error names the argument. Per-sample coefficients may be given as a Python float, a 0-d
tensor, a (B,) tensor or a (B, 1, ..., 1) tensor; they come out as contiguous (B,) tensors in
the compute dtype (float64 for float64 data, float32 otherwise), on the data's device, still
connected to the caller's autograd graph.
"""

from __future__ import annotations

import numbers

import torch

DATA_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def compute_dtype(data_dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if data_dtype == torch.float64 else torch.float32


def data(op: str, name: str, x) -> torch.Tensor:
    if type(x) is torch.Tensor and x.dtype in DATA_DTYPES and x.dim() > 0:  # fast path
        return x
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in DATA_DTYPES:
        raise TypeError(f"{op}: {name} must be float32, float64, float16 or bfloat16, got {x.dtype}")
    if x.dim() == 0:
        raise ValueError(f"{op}: {name} must have a batch dimension (dim 0), got a 0-d tensor")
    return x


def same_as(op: str, name: str, t, ref: torch.Tensor, ref_name: str) -> torch.Tensor:
    """``t`` is a data tensor of ``ref``'s shape and device; its dtype may differ (``promote``)."""
    if type(t) is torch.Tensor and t.dtype in DATA_DTYPES and t.shape == ref.shape and t.device == ref.device:
        return t  # fast path
    data(op, name, t)
    if t.shape != ref.shape:
        raise ValueError(f"{op}: {name} must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(t.shape)}")
    if t.device != ref.device:
        raise ValueError(f"{op}: {name} is on {t.device} but {ref_name} is on {ref.device}")
    return t


def data_dtype(tensors) -> torch.dtype:
    """The dtype an op computes its data outputs in (DESIGN.md §4.13): torch's type promotion of the
    data arguments' dtypes (``torch.result_type``: bfloat16 with float16 gives float32, a float32
    argument makes the result float32, a float64 one float64), raised to float32 under autocast for
    the data's device (autocast's float32 policy for losses and other precision-sensitive ops)."""
    it = iter(tensors)
    first = next(it)
    dtype = first.dtype
    for t in it:
        if t.dtype is not dtype:
            dtype = torch.promote_types(dtype, t.dtype)
    if dtype in (torch.float16, torch.bfloat16) and torch.is_autocast_enabled(first.device.type):
        dtype = torch.float32
    return dtype


def promoted_data(op: str, named) -> tuple[list, torch.dtype]:
    """The data arguments ``named`` ((name, tensor or None) pairs, the first one a tensor) checked
    (the first as data, the others of its shape and device; errors name the argument) and
    converted to their common dtype (``data_dtype``, ``promote``): (tensors, that dtype), None
    kept in place."""
    (first_name, first), *others = named
    data(op, first_name, first)
    for name, t in others:
        if t is not None:
            same_as(op, name, t, first, first_name)
    tensors = [t for _, t in named]
    dtype = data_dtype(t for t in tensors if t is not None)
    return promote(tensors, dtype), dtype


def promote(tensors, dtype: torch.dtype) -> list:
    """``tensors`` in ``dtype`` (None stays None). A differentiable cast: the gradient reaches a
    lower-precision argument in its own dtype. Reading a float16/bfloat16 value into float32 is
    exact, so the op's result is the one it gives on the promoted values."""
    return [t if t is None or t.dtype is dtype else t.to(dtype) for t in tensors]


def per_sample(op: str, name: str, value, batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Normalise a per-sample coefficient to a contiguous (B,) tensor of ``dtype``."""
    # Fast path, the common case in a loop: already a contiguous (B,) tensor of the right kind.
    if (
        type(value) is torch.Tensor
        and value.dtype is dtype
        and value.dim() == 1
        and value.shape[0] == batch
        and value.device == device
        and value.is_contiguous()
    ):
        return value
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            raise TypeError(f"{op}: {name} must be a floating-point tensor, got {value.dtype}")
        if value.device != device:
            raise ValueError(f"{op}: {name} is on {value.device} but the data is on {device}")
        if value.dim() == 0:
            value = value.expand(batch)
        elif value.shape[0] == batch and all(s == 1 for s in value.shape[1:]):
            value = value.reshape(batch)
        else:
            raise ValueError(
                f"{op}: {name} must be a float, a 0-d tensor, or a tensor of shape ({batch},) or "
                f"({batch}, 1, ..., 1) for batch size {batch}; got shape {tuple(value.shape)}"
            )
        if value.dtype != dtype:
            value = value.to(dtype)
        return value if value.is_contiguous() else value.contiguous()
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return torch.full((batch,), float(value), dtype=dtype, device=device)
    raise TypeError(f"{op}: {name} must be a float or a floating-point tensor, got {type(value).__name__}")


# --- value policies (DESIGN.md §4.10) -----------------------------------------------------------------
# Value checks use torch._assert_async: immediate on the CPU, no host synchronisation on a GPU
# (the error surfaces at the next sync), traceable by torch.compile. Only domain errors are checked
# (a log or a division that would be undefined); NaN/Inf in coefficients are not scanned for.


def _plain(x: torch.Tensor) -> torch.Tensor:
    """``x`` without torch.func's wrappers. _assert_async has no vmap batching rule (it returns
    nothing), so under vmap the condition is checked on the tensor underneath, which holds every
    batch entry at once: the same all-elements check, still raising on a bad value. torch.compile
    traces vmap itself and needs no unwrapping (nor could it trace these calls)."""
    if torch.compiler.is_compiling():
        return x
    functorch = torch._C._functorch
    while functorch.is_batchedtensor(x) or functorch.is_gradtrackingtensor(x):
        x = functorch.get_unwrapped(x)
    return x


def positive(op: str, name: str, value: torch.Tensor) -> None:
    """``value`` > 0 everywhere (a scale whose log or inverse is taken)."""
    value = _plain(value)
    if value.numel():
        torch._assert_async((value > 0).all(), f"{op}: {name} must be > 0 (its log is taken)")


def within(op: str, name: str, x: torch.Tensor, low: float, high: float, what: str = "data for the decoder") -> None:
    """``low`` <= x <= ``high`` everywhere, NaN rejected (decoder data, times)."""
    x = _plain(x)
    if x.numel():
        ok = ((x >= low) & (x <= high)).all()
        torch._assert_async(ok, f"{op}: {name} must lie in [{low}, {high}] ({what}), with no NaN")
