"""The demo's data: scikit-learn's 8x8 handwritten digits (bundled with scikit-learn, no download).

The digits hold 17 grey levels (0..16). They are mapped to 8-bit values k = round(v * 255/16)
and then to VDM's bin centres x = 2(k + 1/2)/256 - 1 (DESIGN.md §2), so the ELBO is a true
bound on -log P of the 8-bit image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NUM_CLASSES = 10
SIDE = 8


def to_8bit(levels: torch.Tensor) -> torch.Tensor:
    """Digits' 0..16 grey levels to 8-bit values 0..255."""
    return torch.round(levels.double() * 255.0 / 16.0).long()


def to_model_space(k: torch.Tensor) -> torch.Tensor:
    """8-bit values to VDM bin centres in (-1, 1)."""
    return (2 * (k.double() + 0.5) / 256 - 1).float()


def from_model_space(x: torch.Tensor) -> torch.Tensor:
    """Model-space images back to 8-bit values (nearest bin centre)."""
    return torch.clamp(torch.round((x.double() + 1) * 128 - 0.5), 0, 255).long()


@dataclass
class Split:
    images: torch.Tensor  # (N, 1, 8, 8) float32 in model space
    labels: torch.Tensor  # (N,) int64
    pixels: torch.Tensor  # (N, 1, 8, 8) int64 8-bit values


def load(holdout_fraction: float = 0.2, seed: int = 0) -> tuple[Split, Split]:
    """(train, held-out) splits, shuffled with a fixed seed so every run evaluates the same images."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    levels = torch.as_tensor(digits.images).reshape(-1, 1, SIDE, SIDE)
    labels = torch.as_tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    levels, labels = levels[order], labels[order]
    n_test = int(round(len(labels) * holdout_fraction))
    pixels = to_8bit(levels)

    def split(sl):
        return Split(to_model_space(pixels[sl]), labels[sl], pixels[sl])

    return split(slice(n_test, None)), split(slice(0, n_test))
