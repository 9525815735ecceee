"""vdm_fast: fast, exact math for variational diffusion models.

Fused kernels (C++ for the CPU, CUDA, Triton) for the hot data paths of Gaussian diffusion
models, each equal to the pure-PyTorch reference in ``vdm_fast.reference``.
"""

from . import _library, backends, ops, reference, schedules  # noqa: F401
from . import bpd, elbo, guidance, karras, posterior, respace, samplers, tables  # noqa: F401  (user-facing, DESIGN.md §1)
from .ops import *  # noqa: F401,F403  (every op: vdm_fast.ops.__all__)
from ._namespace import public_dir

__version__ = "0.1.0"

__all__ = [*ops.__all__, "ops", "reference", "schedules", "backends", "elbo", "bpd", "samplers", "guidance",
           "karras", "posterior", "respace", "tables", "__version__"]
__dir__ = public_dir(__all__)
