"""The demo's denoiser: a small conditional MLP over the 64 pixels of a digit.

Inputs: z_t, the log-SNR (as Fourier features, so the network sees the noise level on a scale
that spans the whole schedule), and a class label with an extra "null" class for classifier-free
guidance. Output: the noise estimate eps_hat (the eps parameterization). An MLP is the right
size for 8x8 images on two CPU cores: a step costs well under a millisecond.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .data import NUM_CLASSES


class FourierFeatures(nn.Module):
    def __init__(self, dim: int, max_log_snr: float = 20.0):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(64), dim // 2)) / max_log_snr)

    def forward(self, log_snr: torch.Tensor) -> torch.Tensor:
        angles = log_snr[:, None] * self.freqs[None, :]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class Denoiser(nn.Module):
    NULL_CLASS = NUM_CLASSES  # the label of the unconditional model

    def __init__(self, dim: int = 64, hidden: int = 512, depth: int = 4, embed: int = 64):
        super().__init__()
        self.time = FourierFeatures(embed)
        self.label = nn.Embedding(NUM_CLASSES + 1, embed)
        self.inp = nn.Linear(dim + 2 * embed, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(depth)
        )
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, z: torch.Tensor, log_snr: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        shape = z.shape
        h = self.inp(torch.cat([z.reshape(shape[0], -1), self.time(log_snr), self.label(labels)], dim=1))
        for block in self.blocks:
            h = h + block(h)
        return self.out(h).reshape(shape)
