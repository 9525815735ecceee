"""The fused ops (DESIGN.md §4): one module per op, each mirroring ``vdm_fast.reference``."""

from .q_sample import q_sample

__all__ = ["q_sample"]
