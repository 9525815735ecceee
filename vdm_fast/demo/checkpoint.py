"""Atomic checkpoints: written to a temporary file in the same folder, fsync'd, then renamed over
the old one, so an interruption at any moment leaves the previous good checkpoint in place.
Loaded with ``weights_only=True`` (tensors and plain containers only, no pickled code)."""

from __future__ import annotations

import os
import tempfile

import torch


def save(state: dict, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".ckpt-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class CheckpointError(RuntimeError):
    pass


def load(path: str) -> dict | None:
    """The checkpoint at ``path``; None when there is none; CheckpointError naming the file when
    it exists but cannot be read (truncated, corrupted, or not a vdm_fast checkpoint)."""
    if not os.path.exists(path):
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read means the file is unusable
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); "
                              "delete it or pass --fresh to start over") from exc
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"checkpoint {path} is not a vdm_fast demo checkpoint")
    return state
