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
from ._spec import GENERATOR, LIKE, LIKE_DATA, Arg, OpSpec, normal

NAME = "randn_like"

_SEED_LOW, _SEED_HIGH = -(2**63), 2**63 - 1  # all 64-bit patterns but one


def _default_seed() -> torch.Tensor:
    """One draw from torch's default CPU generator."""
    return torch.randint(_SEED_LOW, _SEED_HIGH, (), dtype=torch.int64)


@torch.library.custom_op("vdm_fast::draw_default_seed", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,))
def _draw_default_seed() -> torch.Tensor:
    """:func:`_default_seed` as an op, for torch.compile: it keeps the op opaque, so a compiled
    call draws the same seed as the eager call (Inductor would replace a traced torch.randint by
    its own RNG), and the nondeterministic_seeded tag keeps two draws apart."""
    return _default_seed()


@_draw_default_seed.register_fake
def _(*args):
    return torch.empty((), dtype=torch.int64)


def draw_seed(generator: torch.Generator | torch.Tensor | None = None, op: str = NAME) -> torch.Tensor:
    """A 64-bit Philox seed, as a 0-d int64 tensor, drawn from ``generator`` (default: torch's
    default CPU generator), or ``generator`` itself when it is a 0-d int64 tensor (the seed, given
    directly). The tensor is on the generator's device, so a CUDA generator never syncs the host;
    kernels read the seed where it lies.

    Under torch.compile (DESIGN.md §6): generator=None draws from the default generator through an
    opaque op, so compiled and eager calls draw the same seeds from the same torch.manual_seed; a
    seed tensor traces as any input; a torch.Generator object cannot be traced (Dynamo cannot put
    one in a graph, a PyTorch limit) and is refused with an error naming the argument."""
    if generator is None:
        # Eager calls skip the custom op's Python dispatch (~2 us a call): the same draw.
        return _draw_default_seed() if torch.compiler.is_compiling() else _default_seed()
    if isinstance(generator, torch.Tensor):
        if generator.dtype != torch.int64 or generator.dim() != 0:
            raise TypeError(f"{op}: generator given as a tensor must be a 0-d int64 seed, got a "
                            f"{generator.dim()}-d {generator.dtype} tensor")
        return generator
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{op}: generator must be a torch.Generator, a 0-d int64 seed tensor or None, got "
                        f"{type(generator).__name__}")
    if torch.compiler.is_compiling():
        raise RuntimeError(f"{op}: generator: torch.compile cannot trace a torch.Generator (a PyTorch limit); in a "
                           "compiled function pass generator=None (torch's default generator, the same seeds as "
                           "eager) or a 0-d int64 seed tensor, e.g. one drawn from the generator outside")
    return torch.randint(_SEED_LOW, _SEED_HIGH, (), dtype=torch.int64, generator=generator, device=generator.device)


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
