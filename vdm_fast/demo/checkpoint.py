"""Checkpoints you can trust.

- Atomic: written to a temporary ``.ckpt-*`` file in the same folder, fsync'd, then renamed over the
  old one, so an interruption at any moment leaves the previous good checkpoint in place; the
  temporary files of a save that was killed (SIGKILL runs no cleanup) are removed by
  ``remove_stale_temporaries`` at the start of the next run.
- Checked: a SHA-256 of every value in the state (tensor bytes with their dtype and shape, numbers,
  strings) is stored with it and verified on load, so a flipped byte inside the weights is refused
  instead of resumed from; so are a missing key and a negative step.
- Loaded with ``weights_only=True`` (tensors and plain containers only, no pickled code).
"""

from __future__ import annotations

import glob
import hashlib
import os
import pickle
import tempfile

import torch

TEMP_PREFIX = ".ckpt-"


class CheckpointError(RuntimeError):
    pass


def _feed(h, value) -> None:
    """Hash ``value`` with its structure: containers in a fixed order, each leaf tagged by type."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        h.update(f"D{len(value)}".encode())
        for key in sorted(value, key=repr):  # optimizer state has int keys, modules str keys
            h.update(repr(key).encode())
            _feed(h, value[key])
    elif isinstance(value, (list, tuple)):
        h.update(f"L{len(value)}".encode())
        for item in value:
            _feed(h, item)
    else:  # numbers, strings, None, bools: their repr is exact for these types
        h.update(f"V{type(value).__name__}:{value!r}".encode())


def checksum(state: dict) -> str:
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != "checksum"})
    return h.hexdigest()


def save(state: dict, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    state = {**state, "checksum": checksum(state)}
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=folder)
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


def remove_stale_temporaries(folder: str) -> int:
    """Delete the ``.ckpt-*`` files a killed save left in ``folder``; how many. Call it before this
    run saves anything (one process writes a folder's checkpoints)."""
    removed = 0
    for tmp in glob.glob(os.path.join(glob.escape(folder), TEMP_PREFIX + "*")):
        try:
            os.unlink(tmp)
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def load(path: str, keys: tuple[str, ...] = ("step",)) -> dict | None:
    """The checkpoint at ``path``; None when there is none; CheckpointError naming the file when
    it exists but cannot be trusted: unreadable (truncated, corrupted), holding pickled code, not a
    vdm_fast checkpoint (a key of ``keys`` missing, no checksum), a checksum that does not match
    its contents, or a step that is not a non-negative integer."""
    if not os.path.exists(path):
        return None
    fresh = "; delete it or pass --fresh to start over"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message suggests weights_only=False, i.e. running the file's code: not advice
        # to pass on about a file that should hold only tensors.
        raise CheckpointError(f"checkpoint {path} holds Python objects other than tensors and plain containers, "
                              f"which vdm_fast does not load (unpickling them can run code){fresh}") from None
    except Exception as exc:  # noqa: BLE001 - any other failure to read means the file is unusable
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200]}){fresh}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} is not a vdm_fast demo checkpoint{fresh}")
    missing = [k for k in (*keys, "checksum") if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not a vdm_fast demo checkpoint: missing {missing}{fresh}")
    if checksum(state) != state["checksum"]:
        raise CheckpointError(f"checkpoint {path} is damaged: its contents do not match the checksum stored "
                              f"with them{fresh}")
    step = state.get("step")
    if "step" in keys and (type(step) is not int or step < 0):
        raise CheckpointError(f"checkpoint {path} has step {step!r}; a step must be a non-negative integer{fresh}")
    return state
