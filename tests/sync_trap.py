"""A TorchFunctionMode that records tensor -> host reads, the calls that force a device
synchronisation on a GPU (so a CPU test can prove a sampling loop makes none)."""

from __future__ import annotations

from torch.overrides import TorchFunctionMode

SYNCS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "nonzero", "argwhere", "masked_select",
         "unique", "numpy"}


class SyncTrap(TorchFunctionMode):
    """Records every tensor -> host read (what forces a device synchronisation on a GPU)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in SYNCS:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))
