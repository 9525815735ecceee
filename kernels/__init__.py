"""Triton kernels of vdm_fast, installed as ``vdm_fast.kernels``.

One module per op. Each holds the ``@triton.jit`` kernels and host launchers that call them
through ``torch.library.wrap_triton``, so that the ops built on them in ``vdm_fast.ops``
(``torch.library.triton_op``) are traceable by ``torch.compile``. Launchers expect arguments
already checked and normalised by the public op. The modules with kernels need triton;
``_layout`` (the layout rule, which the upper layers use too) needs torch only. Nothing here imports
from the rest of vdm_fast: data flows down (DESIGN.md §1).
"""
