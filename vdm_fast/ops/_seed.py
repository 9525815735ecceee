"""The seed of in-kernel noise (DESIGN.md §6): one 64-bit draw from a torch.Generator per call.

Its own module because both the op spec (vdm_fast/ops/_spec.py: every op with a generator argument
draws through it) and randn_like (which imports the spec) need it; ``vdm_fast.ops.randn_like``
re-exports :func:`draw_seed`.
"""

from __future__ import annotations

import torch

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


def draw_seed(generator: torch.Generator | torch.Tensor | None = None, op: str = "randn_like") -> torch.Tensor:
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
