"""The demo's command-line options, kept apart from the training code so that ``vdm-fast --help``
does not import it."""

from __future__ import annotations

import argparse


def add_demo_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--quick", action="store_true", help="a short run (under 3 minutes on 2 CPU cores)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 6000; 1200 with --quick)")
    p.add_argument("--batch-size", type=int, default=128, help="global batch size")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval-every", type=int, default=None, help="steps between held-out evaluations")
    p.add_argument("--ckpt-every", type=int, default=250, help="steps between checkpoints")
    p.add_argument("--eval-repeats", type=int, default=None, help="(t, eps) draws per held-out image")
    p.add_argument("--samples-per-class", type=int, default=10)
    p.add_argument("--sample-steps", type=int, default=None, help="ancestral sampling steps (default 250; 100 with --quick)")
    p.add_argument("--guidance-scale", type=float, default=3.0, help="classifier-free guidance scale w (1 = conditional)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", default="vdm_fast_out/demo", help="folder for checkpoint, PNGs and summary.json")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint and start over")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p
