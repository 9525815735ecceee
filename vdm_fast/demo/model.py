"""The demo's denoiser: a small conditional MLP over the 64 pixels of a digit, with a posterior
head over the 256 8-bit values.

Inputs: z_t, the log-SNR (as Fourier features, so the network sees the noise level on a scale
that spans the whole schedule), and a class label with an extra "null" class for classifier-free
guidance. Output: the noise estimate eps_hat (the eps parameterization).

Why the head: the data are discrete (8-bit values; the digits use 17 of them). At low noise the
best denoiser snaps z_t / alpha_t to the right value, which an MLP regressing eps learns only
slowly, and every bit it misses there costs bits/dim in the diffusion term. So the network
predicts, per pixel, logits over the 256 bin centres c_k; they are added to the exact Gaussian
log-likelihood of z_t under each bin, -(z - alpha c_k)^2 / (2 sigma^2), and x̂ is the posterior
mean sum_k softmax_k c_k. The network output is then a learned prior over values (correlations
included); at low noise the likelihood dominates and x̂ snaps exactly. With ``head_rank`` r the
network gives r numbers per pixel, mapped to the 256 logits by a learned r x 256 basis shared by
all pixels (the demo uses r = 16: a full-rank head is most of the weights and memorises small
data sets, see VDM.__init__ in train.py). The eps estimate is
ε̂ = (z - alpha x̂) / sigma (DESIGN.md §2), so the model is an ordinary eps model to the ELBO and
samplers. An MLP is the right size for 8x8 images on two CPU cores.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import parameterization

LEVELS = 256


class FourierFeatures(nn.Module):
    def __init__(self, dim: int, max_log_snr: float = 20.0):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(64), dim // 2)) / max_log_snr)

    def forward(self, log_snr: torch.Tensor) -> torch.Tensor:
        angles = log_snr[:, None] * self.freqs[None, :]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class Denoiser(nn.Module):
    """``dim`` values per image (channels x side x side); labels 0..num_classes-1, and
    ``null_class`` = num_classes for the unconditional model (the only label when num_classes = 0)."""

    def __init__(self, dim: int = 64, num_classes: int = 10, hidden: int = 256, depth: int = 3, embed: int = 64,
                 dropout: float = 0.0, head_rank: int | None = None):
        super().__init__()
        self.dim = dim
        self.null_class = num_classes
        self.time = FourierFeatures(embed)
        self.label = nn.Embedding(num_classes + 1, embed)
        self.inp = nn.Linear(dim + 2 * embed, hidden)
        # Dropout inside each residual branch (as DDPM's and improved-diffusion's ResBlocks have it):
        # see VDM.__init__ for why the demo uses it.
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden))
            for _ in range(depth)
        )
        self.head_rank = head_rank
        width = LEVELS if head_rank is None else head_rank
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, dim * width))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)
        if head_rank is not None:
            self.level_basis = nn.Parameter(torch.randn(head_rank, LEVELS) / math.sqrt(head_rank))
        self.value_prior = nn.Parameter(torch.zeros(dim, LEVELS))  # per-pixel logits, learned fast
        self.register_buffer("centres", 2 * (torch.arange(LEVELS, dtype=torch.float32) + 0.5) / LEVELS - 1)

    def forward(self, z: torch.Tensor, log_snr: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        shape, batch = z.shape, z.shape[0]
        alpha2, sigma2 = (c[:, None] for c in parameterization.alpha_sigma_squared(-log_snr))
        zf = z.reshape(batch, self.dim)
        scaled = zf * torch.rsqrt(alpha2 * 0.25 + sigma2)  # roughly unit variance at every noise level
        h = self.inp(torch.cat([scaled, self.time(log_snr), self.label(labels)], dim=1))
        for block in self.blocks:
            h = h + block(h)
        if self.head_rank is None:
            prior_logits = self.out(h).reshape(batch, self.dim, LEVELS) + self.value_prior
        else:
            prior_logits = self.out(h).reshape(batch, self.dim, self.head_rank) @ self.level_basis + self.value_prior
        alpha = alpha2.sqrt()[..., None]
        log_lik = -(zf[..., None] - alpha * self.centres) ** 2 / (2 * sigma2[..., None])
        x_hat = torch.softmax(prior_logits + log_lik, dim=-1) @ self.centres
        return ((zf - alpha[..., 0] * x_hat) * torch.rsqrt(sigma2)).reshape(shape)
