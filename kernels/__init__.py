"""Triton kernels of vdm_fast, installed as ``vdm_fast.kernels``.

One module per op. Each holds the ``@triton.jit`` kernels and host launchers that call them
through ``torch.library.wrap_triton``, so that the ops built on them in ``vdm_fast.ops``
(``torch.library.triton_op``) are traceable by ``torch.compile``. Launchers expect arguments
already checked and normalised by the public op. Importing this package needs triton.
"""
