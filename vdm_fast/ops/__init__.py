"""The fused ops (DESIGN.md §4): one module per op, each mirroring ``vdm_fast.reference``."""

from .discretized_gaussian_nll import discretized_gaussian_nll
from .prior_kl import prior_kl
from .noise import randn_like
from .q_sample import q_sample
from .q_sample_randn import q_sample_randn
from .recon_nll import recon_nll
from .reverse_step import reverse_step
from .sq_error import sq_error
from .._namespace import public_dir

__all__ = ["q_sample", "sq_error", "prior_kl", "recon_nll", "discretized_gaussian_nll", "reverse_step", "randn_like", "q_sample_randn"]
__dir__ = public_dir(__all__)
