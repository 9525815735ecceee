"""vdm_fast: fast, exact math for variational diffusion models.

Fused kernels (C++ for the CPU, CUDA, Triton) for the hot data paths of Gaussian diffusion
models, each equal to the pure-PyTorch reference in ``vdm_fast.reference``.
"""

from . import _library, backends, ops, reference, schedules  # noqa: F401
from . import bpd, elbo, guidance, samplers  # noqa: F401  (user-facing layer, DESIGN.md §1)
from .ops import discretized_gaussian_nll, prior_kl, q_sample, recon_nll, reverse_step, sq_error
from .ops import q_sample_randn, randn_like
from ._namespace import public_dir

__version__ = "0.1.0"

__all__ = ["q_sample", "sq_error", "prior_kl", "recon_nll", "discretized_gaussian_nll", "reverse_step", "randn_like",
           "q_sample_randn", "ops", "reference", "schedules", "backends", "elbo", "bpd", "samplers", "guidance",
           "__version__"]
__dir__ = public_dir(__all__)
