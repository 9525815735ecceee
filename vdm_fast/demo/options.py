"""The demo's command-line options, kept apart from the training code so that ``vdm-fast --help``
does not import it.

Every value is checked by its argparse type, so a bad one stops the command with ``error: argument
--flag: ...`` and exit code 2 before any data is loaded, any step trained or any file written
(issue 19: ``--steps 0`` used to mean the default, ``--batch-size 0`` trained on empty batches and
overwrote a good checkpoint, ``--lr nan`` and ``--seed 2**70`` raised tracebacks mid-run).
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile

# Seeds are combined as seed * 1_000_003 + step (train.draw_batch) into torch.Generator.manual_seed,
# which takes at most 64 bits: 2^32 keeps that far from overflowing for any step count.
MAX_SEED = 2**32 - 1


def _integer(text: str, low: int, high: int | None, what: str) -> int:
    """int(text) in [low, high], else the flag's error saying ``what`` it must be."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _integer(text, 1, None, "a positive integer")


def at_least_two(text: str) -> int:
    return _integer(text, 2, None, "an integer >= 2 (a standard error needs two draws per image)")


def seed(text: str) -> int:
    return _integer(text, 0, MAX_SEED, f"an integer in [0, {MAX_SEED}]")


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text}")
    return value


def positive_float(text: str) -> float:
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def non_negative_float(text: str) -> float:
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def probability(text: str) -> float:
    value = _finite(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def device(text: str) -> str:
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be cpu, cuda or cuda:N, got {text!r}") from None
    if dev.type == "cpu":
        return text
    if dev.type != "cuda":
        raise argparse.ArgumentTypeError(f"must be cpu, cuda or cuda:N, got {text!r}")
    if not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: this PyTorch sees no CUDA device")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r}: there are {torch.cuda.device_count()} CUDA device(s)")
    return text


def image_folder(text: str) -> str:
    """An existing folder this process can list and read (its images are checked when loaded)."""
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a folder" if os.path.exists(text) else f"{text!r} does not exist")
    if not os.access(text, os.R_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text!r} cannot be read")
    return text


def output_folder(text: str) -> str:
    """A folder the run can write to, created if missing: checked by writing a probe file, so a
    read-only place fails here and not at the first checkpoint."""
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a folder")
    try:
        os.makedirs(text, exist_ok=True)
        with tempfile.TemporaryFile(dir=text):
            pass
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot write to {text!r}: {exc.strerror or exc}") from None
    return text


def add_demo_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--quick", action="store_true", help="a short run (1200 steps, about 35 s on 2 CPU cores)")
    p.add_argument("--data", type=image_folder, default=None,
                   help="train on this folder of PNG/JPEG images instead of the digits (class labels from "
                        "subfolder names when present, unconditional otherwise)")
    p.add_argument("--size", type=positive_int, default=None,
                   help="with --data: images are centre-cropped to a square and resized to SIZE x SIZE (default 8)")
    p.add_argument("--steps", type=positive_int, default=None, help="training steps (default 6000; 1200 with --quick)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="global batch size")
    p.add_argument("--lr", type=positive_float, default=2e-3)
    p.add_argument("--weight-decay", type=non_negative_float, default=1.0,
                   help="AdamW's decoupled weight decay on the network's weight matrices")
    p.add_argument("--dropout", type=probability, default=0.2, help="dropout in the network's residual branches")
    p.add_argument("--eval-every", type=positive_int, default=None, help="steps between held-out evaluations")
    p.add_argument("--ckpt-every", type=positive_int, default=250, help="steps between checkpoints")
    p.add_argument("--eval-repeats", type=at_least_two, default=None,
                   help="(t, eps) draws per held-out image, at least 2 (default 16; 4 with --quick)")
    p.add_argument("--samples-per-class", type=positive_int, default=10)
    p.add_argument("--sample-steps", type=positive_int, default=None,
                   help="ancestral sampling steps (default 250; 100 with --quick)")
    p.add_argument("--guidance-scale", type=non_negative_float, default=3.0,
                   help="classifier-free guidance scale w (1 = conditional)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--device", type=device, default=None, help="cpu or cuda (default: cuda when available)")
    # No type: the default folder is created only when the command runs (check_after_parsing).
    p.add_argument("--out", default="vdm_fast_out/demo", help="folder for checkpoint, PNGs and summary.json")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint and start over")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def check_after_parsing(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What one flag's type cannot check, with the same error (naming the flag, exit code 2) before
    any work: --out (probed here, not as a type: argparse would create the default folder on every
    --help) and --size without --data (the digits are 8x8; ignoring it would be silent)."""
    if args.size is not None and args.data is None:
        parser.error("argument --size: applies to --data images (the digits are 8x8)")
    if args.size is None:
        args.size = 8
    try:
        output_folder(args.out)
    except argparse.ArgumentTypeError as exc:
        parser.error(f"argument --out: {exc}")
