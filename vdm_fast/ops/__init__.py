"""The fused ops (DESIGN.md §4): one module per op, each declaring its op once (an ``OpSpec``,
vdm_fast/ops/_spec.py, §4.11) next to its public function, each mirroring ``vdm_fast.reference``.

Every module of this package is imported (in name order), so a new op is a new module and nothing
here changes. ``SPECS`` (name -> spec, in the order the ops registered) is the list of ops every
other part takes: ``__all__`` here and in ``vdm_fast``, ``vdm_fast.env.OPS``, the conformance tests,
the CI smoke test and the benchmarks.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from ._spec import SPECS
from .._namespace import public_dir

_modules = [_importlib.import_module(f"{__name__}.{info.name}")
            for info in sorted(_pkgutil.iter_modules(__path__), key=lambda info: info.name)
            if not info.name.startswith("_")]
# Each op's public function is the attribute of its module named after the op.
globals().update({name: getattr(module, name) for module in _modules for name in SPECS if hasattr(module, name)})

__all__ = list(SPECS)
__dir__ = public_dir(__all__)
