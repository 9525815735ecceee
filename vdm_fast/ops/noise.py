"""randn_like: counter-based Philox4x32-10 normal noise, the same on every backend (DESIGN.md §6).

Native op ``vdm_fast::randn_like`` (csrc/cpu/noise.cpp, csrc/cuda/noise.cu), Triton op
``vdm_fast::randn_like_triton`` (kernels/philox.py), reference ``vdm_fast.reference.randn_like``
(integer torch math). The stream is defined in csrc/philox.h and DESIGN.md §6.

Every op that draws noise in-kernel takes ``(seed: Tensor, offset: int)``: the seed is one int64
drawn from a torch.Generator by :func:`draw_seed` (so the generator advances and consecutive calls
give fresh noise), the offset selects the stream and is 0 in the public ops.
"""

from __future__ import annotations

import torch

from .. import _checks, backends, reference
from .._layout import empty_out_like
from ._registry import Implementations, native_defined, triton_kernels

NAME = "randn_like"
impls = Implementations(NAME, {"reference": reference.randn_like})

_SEED_LOW, _SEED_HIGH = -(2**63), 2**63 - 1  # all 64-bit patterns but one


def draw_seed(generator: torch.Generator | None = None, op: str = NAME) -> torch.Tensor:
    """A 64-bit Philox seed, as a 0-d int64 tensor, drawn from ``generator`` (default: torch's
    default CPU generator). The tensor is on the generator's device, so a CUDA generator never
    syncs the host; kernels read the seed where it lies."""
    if generator is None:
        return torch.randint(_SEED_LOW, _SEED_HIGH, (), dtype=torch.int64)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{op}: generator must be a torch.Generator or None, got {type(generator).__name__}")
    return torch.randint(_SEED_LOW, _SEED_HIGH, (), dtype=torch.int64, generator=generator, device=generator.device)


def _fake_bits(seed, offset, first_block, n_blocks):
    return seed.new_empty(4 * n_blocks, dtype=torch.int32)


if native_defined(NAME):
    torch.library.register_fake("vdm_fast::randn_like")(lambda x, seed, offset: empty_out_like(x))
    torch.library.register_fake("vdm_fast::philox_bits")(_fake_bits)
    impls.table["cpu"] = impls.table["cuda"] = torch.ops.vdm_fast.randn_like.default

_tk = triton_kernels("philox")
if _tk is not None:
    randn_like_triton = torch.library.triton_op("vdm_fast::randn_like_triton", _tk.randn_like, mutates_args=())
    randn_like_triton.register_fake(lambda x, seed, offset: empty_out_like(x))  # see q_sample.py
    impls.table["triton"] = randn_like_triton


def randn_like(x: torch.Tensor, generator: torch.Generator | None = None, *, backend: str | None = None) -> torch.Tensor:
    """Standard normal noise shaped like ``x``, from counter-based Philox4x32-10.

    Bit-identical streams on every backend and device (normals equal to float32 rounding): the
    same generator state gives the same noise on the CPU, CUDA, Triton and the reference.

    Args:
        x: any shape (0-d included), float32/float64/float16/bfloat16. Only its shape, dtype,
            device and layout are used.
        generator: the torch.Generator the 64-bit seed is drawn from (one draw per call);
            default: torch's default CPU generator.
        backend: ``"cpu"``, ``"cuda"``, ``"triton"`` or ``"reference"``; default: the fastest.

    Returns:
        Noise of ``x``'s shape and dtype (drawn in float32, then cast), in ``x``'s layout when
        ``x`` is batch-major dense (DESIGN.md §4.8), else contiguous. Never requires grad.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{NAME}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _checks.DATA_DTYPES:
        raise TypeError(f"{NAME}: x must be float32, float64, float16 or bfloat16, got {x.dtype}")
    seed = draw_seed(generator, NAME)
    return impls(backends.resolve(backend, x.device, NAME))(x.detach(), seed, 0)
