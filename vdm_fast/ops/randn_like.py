"""randn_like: counter-based Philox4x32-10 normal noise, the same on every backend (DESIGN.md §6).

Native op ``vdm_fast::randn_like`` (csrc/cpu/randn_like.cpp, csrc/cuda/randn_like.cu), Triton op
``vdm_fast::randn_like_triton`` (kernels/randn_like.py), reference ``vdm_fast.reference.randn_like``
(integer torch math). The stream is defined in csrc/philox.h and DESIGN.md §6.

Every op that draws noise in-kernel takes ``(seed: Tensor, offset: int)``: the seed is one int64
drawn from a torch.Generator by :func:`draw_seed` (so the generator advances and consecutive calls
give fresh noise), the offset selects the stream and is 0 in the public ops.
"""

from __future__ import annotations

import torch

from .. import _library, reference
from ._seed import draw_seed  # noqa: F401 - the seed rule's public name (DESIGN.md §6)
from ._spec import GENERATOR, LIKE, LIKE_DATA, Arg, OpSpec, normal

NAME = "randn_like"


def _fake_bits(seed, offset, first_block, n_blocks):
    return seed.new_empty(4 * n_blocks, dtype=torch.int32)


def sample_inputs(shape, dtype, device, generator):
    """Any tensor: only its shape, dtype, device and layout matter; the generator seeds the noise."""
    return normal(shape, dtype, device, generator), torch.Generator().manual_seed(int(torch.randint(2**31, (),
                                                                                                  generator=generator)))


SPEC = OpSpec(
    NAME,
    args=(Arg("x", LIKE), Arg("generator", GENERATOR)),
    outputs=(LIKE_DATA,),
    reference=reference.randn_like,
    sample_inputs=sample_inputs,
).register()

if _library.native_load_error is None and hasattr(torch.ops.vdm_fast, "philox_bits"):
    torch.library.register_fake("vdm_fast::philox_bits")(_fake_bits)


def randn_like(x: torch.Tensor, generator: torch.Generator | None = None, *, backend: str | None = None) -> torch.Tensor:
    """Standard normal noise shaped like ``x``, from counter-based Philox4x32-10.

    Bit-identical streams on every backend and device (normals equal to float32 rounding): the
    same generator state gives the same noise on the CPU, CUDA, Triton and the reference.

    Args:
        x: any shape (0-d included), float32/float64/float16/bfloat16. Only its shape, dtype,
            device and layout are used.
        generator: the torch.Generator the 64-bit seed is drawn from (one draw per call;
            default: torch's default CPU generator), or a 0-d int64 tensor that is the seed.
            Under torch.compile: None (the same seeds as eager) or a seed tensor (DESIGN.md §6).
        backend: ``"cpu"``, ``"cuda"``, ``"triton"`` or ``"reference"``; default: the fastest.

    Returns:
        Noise of ``x``'s shape and dtype (drawn in float32, then cast), in ``x``'s layout when
        ``x`` is batch-major dense (DESIGN.md §4.8), else contiguous. Never requires grad.

    Activation checkpointing: ``torch.utils.checkpoint`` restores only the default generators
    before its recompute, so inside a checkpointed function an explicit ``generator`` gives
    different noise on the recompute (a PyTorch limit, DESIGN.md §6). Draw the noise outside the
    checkpointed function and pass it in, or use the default generator (``generator=None``).
    """
    return SPEC(x, generator, backend=backend)
