"""reverse_step_with_x0 in Triton: reverse_step's kernel with its second output, x̂, enabled
(kernels/reverse_step.py). A module of its own because each op's Triton launchers are looked up
in the module named after the op (vdm_fast/ops/_spec.py)."""

from .reverse_step import reverse_step_with_x0

__all__ = ["reverse_step_with_x0"]
