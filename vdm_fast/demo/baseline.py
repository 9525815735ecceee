"""The yardstick the demo's bits/dim is compared with: a per-pixel categorical model.

Each of the 64 pixel positions gets its own distribution over the 256 8-bit values, estimated
from the training set with add-one (Laplace) smoothing. It ignores every correlation between
pixels, so a generative model that learns anything about digits should beat it.
"""

from __future__ import annotations

import math

import torch


class PerPixelCategorical:
    def __init__(self, train_pixels: torch.Tensor, smoothing: float = 1.0):
        flat = train_pixels.reshape(train_pixels.shape[0], -1)  # (N, D) values 0..255
        counts = torch.zeros(flat.shape[1], 256, dtype=torch.float64)
        counts.scatter_add_(1, flat.t().contiguous(), torch.ones(flat.t().shape, dtype=torch.float64))
        self.log_probs = torch.log((counts + smoothing) / (counts.sum(1, keepdim=True) + 256 * smoothing))

    def bits_per_dim(self, pixels: torch.Tensor) -> float:
        flat = pixels.reshape(pixels.shape[0], -1)
        nll = -self.log_probs.gather(1, flat.t().contiguous()).t()  # (N, D) nats
        return float(nll.mean() / math.log(2))
