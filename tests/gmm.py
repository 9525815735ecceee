"""A 2-D Gaussian mixture whose noised marginals are known in closed form, for sampler tests.

Under z_t = alpha x + sigma eps, component k (mean mu_k, isotropic std s_k) becomes
N(alpha mu_k, (alpha² s_k² + sigma²) I), so the exact score, the exact eps / x0 / v models and the
exact noisy-data classifier log p(k | z_t) are all available: a sampler run on them must
reproduce the mixture up to its own discretisation error.
"""

from __future__ import annotations

import math

import torch

from vdm_fast import samplers


class GMM:
    def __init__(self, means, stds, weights):
        self.means = torch.as_tensor(means, dtype=torch.float64)  # (K, D)
        self.stds = torch.as_tensor(stds, dtype=torch.float64)  # (K,)
        self.weights = torch.as_tensor(weights, dtype=torch.float64)  # (K,)
        self.dim = self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator, component: int | None = None):
        if component is None:
            k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        else:
            k = torch.full((n,), component, dtype=torch.long)
        x = self.means[k] + self.stds[k, None] * torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return x, k

    def _terms(self, z, alpha, sigma):
        """Per component: log pi_k N(z; alpha mu_k, v_k I) (B, K) and v_k (B, K)."""
        z = z.double()
        a, s = alpha.double()[:, None], sigma.double()[:, None]
        var = a * a * self.stds[None, :] ** 2 + s * s  # (B, K)
        diff = z[:, None, :] - a[:, :, None] * self.means[None]  # (B, K, D)
        logn = -0.5 * (diff ** 2).sum(-1) / var - 0.5 * self.dim * torch.log(2 * math.pi * var)
        return torch.log(self.weights)[None] + logn, var, diff

    def log_resp(self, z, alpha, sigma):
        """log p(k | z_t): the exact noisy-data classifier, (B, K) log-probabilities."""
        logj, _, _ = self._terms(z, alpha, sigma)
        return torch.log_softmax(logj, dim=1)

    def score(self, z, alpha, sigma, component=None):
        """∇_z log q_t(z) of the mixture, or of one component per sample (``component``: (B,) or int)."""
        logj, var, diff = self._terms(z, alpha, sigma)
        per = -diff / var[:, :, None]  # (B, K, D)
        if component is None:
            r = torch.softmax(logj, dim=1)
            return (r[:, :, None] * per).sum(1)
        comp = torch.as_tensor(component).expand(z.shape[0])
        return per[torch.arange(z.shape[0]), comp]

    def model(self, schedule, parameterization: str = "eps", component=None, null_class=None):
        """model(z, t) of the given parameterization (or model(z, t, y) when ``null_class`` is given:
        y = null_class is the mixture, otherwise component y)."""

        def out(z, t, y=None):
            g = samplers.gammas(schedule, t, torch.float64)
            alpha, sigma = torch.sigmoid(-g).sqrt(), torch.sigmoid(g).sqrt()
            if y is None:
                sc = self.score(z, alpha, sigma, component)
            else:
                mix = self.score(z, alpha, sigma)
                comp = self.score(z, alpha, sigma, y.clamp(max=self.means.shape[0] - 1))
                sc = torch.where((y == null_class)[:, None], mix, comp)
            a, s = alpha[:, None], sigma[:, None]
            zd = z.double()
            eps = -s * sc
            x0 = (zd + s * s * sc) / a
            m = {"eps": eps, "x0": x0, "v": a * eps - s * x0, "score": sc}[parameterization]
            return m.to(z.dtype)

        if null_class is not None:
            return lambda z, t, y: out(z, t, y)
        return lambda z, t: out(z, t)


def default_gmm() -> GMM:
    return GMM(means=[[-1.2, -0.4], [1.0, 0.8]], stds=[0.25, 0.35], weights=[0.4, 0.6])


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Székely's energy distance 2E|X-Y| - E|X-X'| - E|Y-Y'| (V-statistic), 0 iff equal laws."""
    x, y = x.double(), y.double()
    return (2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean()).item()
