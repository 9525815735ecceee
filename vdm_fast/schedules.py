"""Noise schedules: gamma(t) = -log SNR(t) and everything derived from it (DESIGN.md §2).

Three families:

- Discrete tables (the diffusers / improved-diffusion convention): ``DiscreteSchedule`` holds
  alphas_cumprod in float64 for integer timesteps 0..T-1. ``linear_betas`` and
  ``cosine_betas`` build the DDPM linear and the improved-diffusion cosine tables.
- Continuous time t in [0, 1]: ``LinearGamma`` is the fixed linear gamma of VDM
  (gamma_min = -13.3, gamma_max = 5.0).
- Learned (nn.Modules, trained through the ops): ``LearnedLinearGamma`` (VDM's learned linear
  schedule) and ``MonotoneGamma`` (VDM's monotone network, rescaled to its endpoints). Continuous
  schedules also give ``gamma_prime(t)``, the weight of the continuous-time ELBO.

Every schedule answers ``alpha(t)``, ``sigma(t)``, ``gamma(t)``, ``log_snr(t)``, ``snr(t)`` and
``alpha_sigma(t)`` for a batch of timesteps, on the timesteps' device, in float32 by default
(float64 on request; never in a half dtype: DESIGN.md §2, Precision). Variance preserving:
alpha^2 = sigmoid(-gamma), sigma^2 = sigmoid(gamma), computed from gamma with ``sigmoid`` so
that neither underflows to zero at the ends of the schedule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn as nn

from . import _checks, parameterization
from ._namespace import public_dir

_COEFF_DTYPES = (torch.float32, torch.float64)


def _check_dtype(dtype: torch.dtype) -> torch.dtype:
    if dtype not in _COEFF_DTYPES:
        raise TypeError(f"dtype must be torch.float32 or torch.float64 (coefficients are never half), got {dtype}")
    return dtype


class Schedule:
    """Base: subclasses define ``gamma(t, dtype)``; the rest follows from it."""

    def gamma(self, t: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        raise NotImplementedError

    def log_snr(self, t, dtype=torch.float32) -> torch.Tensor:
        return -self.gamma(t, dtype)

    def snr(self, t, dtype=torch.float32) -> torch.Tensor:
        return parameterization.snr(self.gamma(t, dtype))

    def alpha(self, t, dtype=torch.float32) -> torch.Tensor:
        return self.alpha_sigma(t, dtype)[0]

    def sigma(self, t, dtype=torch.float32) -> torch.Tensor:
        return self.alpha_sigma(t, dtype)[1]

    def alpha_sigma(self, t, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        return parameterization.alpha_sigma(self.gamma(t, dtype))


LINEAR_CONVENTIONS = ("diffusers", "improved-diffusion")


def linear_betas(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, *,
                 convention: str = "diffusers") -> torch.Tensor:
    """DDPM's linear beta schedule (Ho et al. 2020), float64: ``num_timesteps`` betas evenly spaced
    from beta_start to beta_end.

    ``convention``:
        ``"diffusers"`` (default): beta_start and beta_end as given, whatever T (diffusers'
            ``beta_schedule="linear"``, DDPM's table for T = 1000).
        ``"improved-diffusion"``: both scaled by 1000 / T first (improved-diffusion's
            ``get_named_beta_schedule("linear", T)``, "extended to work for any number of
            diffusion steps"): the same table at T = 1000, a different one elsewhere (T = 4000:
            2.5e-5 .. 5e-3).
    """
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if convention not in LINEAR_CONVENTIONS:
        raise ValueError(f"convention must be one of {LINEAR_CONVENTIONS}, got {convention!r}")
    if convention == "improved-diffusion":
        scale = 1000 / num_timesteps
        beta_start, beta_end = scale * beta_start, scale * beta_end
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def cosine_betas(num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """The cosine schedule of improved-diffusion (Nichol & Dhariwal 2021; diffusers
    ``beta_schedule="squaredcos_cap_v2"``): alpha_bar(t) = cos((t + s)/(1 + s) * pi/2)^2, float64."""
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    i = torch.arange(num_timesteps, dtype=torch.float64)

    def alpha_bar(u):
        return torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    betas = 1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps)
    return betas.clamp(max=max_beta)


class DiscreteSchedule(Schedule):
    """A table of T timesteps, indexed by integers 0..T-1 (the diffusers convention).

    ``alphas_cumprod[i]`` is Luo's alpha_bar (DESIGN.md names: alpha = sqrt(alpha_bar), sigma =
    sqrt(1 - alpha_bar)). The table is kept in float64 and copied to a device on first use.
    """

    def __init__(self, betas: torch.Tensor):
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten().cpu()
        if betas.numel() == 0:
            raise ValueError("betas must not be empty")
        in_range = ((betas > 0) & (betas <= 1)).all()
        if torch.compiler.is_compiling():
            # Reading the flag on the host would break a torch.compile(fullgraph=True) graph that
            # builds the schedule (a diffusers drop-in's first add_noise): checked in the graph.
            torch._assert_async(in_range, "betas must lie in (0, 1]")
        elif not bool(in_range):
            raise ValueError("betas must lie in (0, 1]")
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        # From log(abar), so that the first timesteps (abar within 1e-4 of 1) keep full relative
        # precision in 1 - abar.
        self.gammas = parameterization.gamma_from_log_alpha_bar(torch.cumsum(torch.log1p(-betas), dim=0))
        self._by_device: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    @classmethod
    def linear(cls, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, *,
               convention: str = "diffusers") -> "DiscreteSchedule":
        """The linear table (:func:`linear_betas`; ``convention`` "diffusers" or "improved-diffusion")."""
        return cls(linear_betas(num_timesteps, beta_start, beta_end, convention=convention))

    @classmethod
    def cosine(cls, num_timesteps: int = 1000, s: float = 0.008) -> "DiscreteSchedule":
        return cls(cosine_betas(num_timesteps, s))

    @property
    def num_timesteps(self) -> int:
        return self.betas.numel()

    def _table(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (device, dtype)
        table = self._by_device.get(key)
        if table is None:
            table = self.gammas.to(device=device, dtype=dtype)
            self._by_device[key] = table
        return table

    def _index(self, t) -> torch.Tensor:
        t = torch.as_tensor(t)
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"t must hold integer timesteps 0..{self.num_timesteps - 1}, got dtype {t.dtype} "
                            "(fractional timesteps, e.g. a Karras grid: vdm_fast.karras.FractionalSchedule(schedule))")
        t = t.long()
        if t.numel():
            # Out-of-range timesteps would index out of bounds (or, if negative, wrap around
            # silently). torch._assert_async checks without a host sync on a GPU (the error then
            # surfaces at the next synchronisation) and at once on the CPU.
            in_range = ((t >= 0) & (t < self.num_timesteps)).all()
            torch._assert_async(in_range, f"t: timesteps must lie in 0..{self.num_timesteps - 1}")
        return t

    def gamma(self, t, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """gamma at integer timesteps ``t`` (any shape), on t's device."""
        t = self._index(t)
        return self._table(t.device, _check_dtype(dtype))[t]


def _continuous_time(op: str, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Float time t in [0, 1] as ``dtype``. Outside [0, 1] (or NaN) the schedule would be
    extrapolated past its endpoints or give NaN levels, which then pass silently through every
    op (non-finite samples or losses): checked like discrete timesteps, without a host sync."""
    if not t.is_floating_point():
        raise TypeError(f"{op}: t must be floating-point time in [0, 1], got dtype {t.dtype}")
    _checks.within(op, "t", t, 0.0, 1.0, "continuous time")
    return t.to(_check_dtype(dtype))


class LinearGamma(Schedule):
    """VDM's fixed linear schedule: gamma(t) = gamma_min + (gamma_max - gamma_min) t, t in [0, 1]."""

    def __init__(self, gamma_min: float = -13.3, gamma_max: float = 5.0):
        if not gamma_min < gamma_max:
            raise ValueError(f"gamma_min must be < gamma_max, got {gamma_min} and {gamma_max}")
        self.gamma_min = float(gamma_min)
        self.gamma_max = float(gamma_max)

    def _time(self, t, dtype) -> torch.Tensor:
        return _continuous_time(type(self).__name__, torch.as_tensor(t), dtype)

    def gamma(self, t, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.gamma_min + (self.gamma_max - self.gamma_min) * self._time(t, dtype)

    def gamma_prime(self, t, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """d gamma / dt, the weight of the continuous-time diffusion loss (DESIGN.md §3)."""
        return torch.full_like(self._time(t, dtype), self.gamma_max - self.gamma_min)


# --- learned continuous-time schedules (VDM; Kingma et al. 2021, appendix) ----------------------
#
# Both are nn.Modules whose parameters receive gradients through the ops (q_sample, sq_error,
# prior_kl and recon_nll are differentiable in alpha and sigma). Both share the endpoint treatment:
# gamma(0) = gamma_min and gamma(1) = gamma_max are two scalars (learned, or fixed buffers), and
# the schedule's shape between them is a monotone function rescaled to run from 0 to 1, so
#
#     gamma(t) = gamma_min + (gamma_max - gamma_min) * shape(t),  shape(0) = 0, shape(1) = 1.
#
# gamma_max = gamma_min + |w| (VDM's ``b + |w| t``), so the schedule stays increasing whatever
# the optimiser does.

class _LearnedGamma(Schedule, nn.Module):
    """Endpoints of a learned schedule; subclasses give ``_shape(t)`` and ``_shape_prime(t)``."""

    def __init__(self, gamma_min: float, gamma_max: float, learn_endpoints: bool):
        nn.Module.__init__(self)
        if not gamma_min < gamma_max:
            raise ValueError(f"gamma_min must be < gamma_max, got {gamma_min} and {gamma_max}")
        b = torch.tensor(float(gamma_min))
        w = torch.tensor(float(gamma_max) - float(gamma_min))
        self.learn_endpoints = bool(learn_endpoints)
        if self.learn_endpoints:
            self.b, self.w = nn.Parameter(b), nn.Parameter(w)
        else:
            self.register_buffer("b", b)
            self.register_buffer("w", w)

    @property
    def gamma_min(self) -> torch.Tensor:
        """gamma(0), a 0-d tensor (differentiable when learned)."""
        return self.b

    @property
    def gamma_max(self) -> torch.Tensor:
        """gamma(1) = gamma_min + |w|, a 0-d tensor."""
        return self.b + self.w.abs()

    def _time(self, t, dtype) -> torch.Tensor:
        return _continuous_time(type(self).__name__, torch.as_tensor(t, device=self.b.device), dtype)

    def gamma(self, t, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        t = self._time(t, dtype)
        return self.b.to(dtype) + self.w.abs().to(dtype) * self._shape(t)

    def gamma_prime(self, t, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """d gamma / dt in closed form (differentiable in the parameters)."""
        t = self._time(t, dtype)
        return self.w.abs().to(dtype) * self._shape_prime(t)

    def forward(self, t) -> torch.Tensor:
        return self.gamma(t)


class LearnedLinearGamma(_LearnedGamma):
    """VDM's learned scalar linear schedule: gamma(t) = gamma_min + (gamma_max - gamma_min) t,
    with gamma_min and gamma_max trainable (``learn_endpoints=True``) or fixed buffers."""

    def __init__(self, gamma_min: float = -13.3, gamma_max: float = 5.0, learn_endpoints: bool = True):
        super().__init__(gamma_min, gamma_max, learn_endpoints)

    def _shape(self, t):
        return t

    def _shape_prime(self, t):
        return torch.ones_like(t)


class MonotoneGamma(_LearnedGamma):
    """VDM's monotone network schedule (Kingma et al. 2021, ``NoiseSchedule_NNet``), rescaled.

    The network is VDM's: dense layers with non-negative weights (|W|),

        h(t) = |w1| t + (1/n) sum_j |w3_j| (2 sigmoid(|w2_j| (2t - 1) + b2_j) - 1),

    a linear part (l1) plus n sigmoid features (l2) mixed with non-negative weights (l3), so h is
    increasing in t. Rescaling (our treatment of the endpoints): the schedule is

        gamma(t) = gamma_min + (gamma_max - gamma_min) (h(t) - h(0)) / (h(1) - h(0)),

    so gamma(0) = gamma_min and gamma(1) = gamma_max exactly, whatever the network's weights; the
    network only shapes the curve between them (l1's bias cancels, so there is none). The
    endpoints are learned scalars (``learn_endpoints=True``: they receive gradients from the
    reconstruction and prior terms as well as the diffusion term) or fixed buffers (then the
    network cannot change the recon or prior terms, and the expected continuous-time diffusion
    loss is invariant to the shape: only its variance depends on the network, VDM §5.1).

    VDM's own network is not rescaled: it is gamma(t) = b1 + h(t) with l1's bias b1, and its
    gamma_min, gamma_max only initialise l1 (kernel gamma_max - gamma_min, bias gamma_min).
    Every such network is this class with gamma_min = b1 + h(0), gamma_max = b1 + h(1) and the
    same weights (:meth:`from_vdm`, :meth:`to_vdm` convert the parameters both ways), provided
    h(1) > h(0), i.e. the network is not constant.

    Initialisation. VDM (``model_vdm.py``): l1 kernel gamma_max - gamma_min and bias gamma_min;
    l2 kernel drawn from N(0, 0.01²) (flax's ``initializers.normal()``, stddev 1e-2) and bias 0;
    l3 kernel drawn from N(0, 0.01²) too, no bias. Here l2 follows VDM (N(0, 0.01²), bias 0); l1's
    weight starts at 1 (the rescaling removes its scale and its bias); l3 starts at the constant
    ``l3_init`` (default 1e-3: a deterministic, nearly linear start, within about 1e-3 of the
    range; it must not be 0, where torch's |x| has zero gradient, so l3 could never move), or,
    with ``l3_init=None``, is drawn from N(0, 0.01²) as in VDM.
    """

    def __init__(self, gamma_min: float = -13.3, gamma_max: float = 5.0, learn_endpoints: bool = True,
                 n_features: int = 1024, l3_init: float | None = 1e-3):
        super().__init__(gamma_min, gamma_max, learn_endpoints)
        if n_features < 1:
            raise ValueError(f"n_features must be >= 1, got {n_features}")
        self.n_features = int(n_features)
        self.l1_weight = nn.Parameter(torch.tensor(1.0))
        self.l2_weight = nn.Parameter(VDM_INIT_STD * torch.randn(n_features))
        self.l2_bias = nn.Parameter(torch.zeros(n_features))
        if l3_init is None:
            self.l3_weight = nn.Parameter(VDM_INIT_STD * torch.randn(n_features))
        else:
            self.l3_weight = nn.Parameter(torch.full((n_features,), float(l3_init)))

    def _features(self, t):
        """(sigmoid features (..., n), their non-negative input weights, mixing weights) in t's dtype."""
        dt = t.dtype
        w2, b2, w3 = self.l2_weight.abs().to(dt), self.l2_bias.to(dt), self.l3_weight.abs().to(dt)
        s = torch.sigmoid((2 * t[..., None] - 1) * w2 + b2)
        return s, w2, w3

    def _h(self, t):
        s, _, w3 = self._features(t)
        return self.l1_weight.abs().to(t.dtype) * t + ((2 * s - 1) * w3).sum(-1) / self.n_features

    def _shape(self, t):
        ends = self._h(torch.tensor([0.0, 1.0], dtype=t.dtype, device=t.device))
        return (self._h(t) - ends[0]) / (ends[1] - ends[0])

    def _shape_prime(self, t):
        ends = self._h(torch.tensor([0.0, 1.0], dtype=t.dtype, device=t.device))
        s, w2, w3 = self._features(t)
        # d/dt (2 sigmoid(u) - 1) = 2 s (1 - s) du/dt, du/dt = 2 |w2|.
        h_prime = self.l1_weight.abs().to(t.dtype) + (4 * s * (1 - s) * w2 * w3).sum(-1) / self.n_features
        return h_prime / (ends[1] - ends[0])

    # --- VDM's parameters ----------------------------------------------------------------------------

    @classmethod
    def from_vdm(cls, params, *, learn_endpoints: bool = True, dtype: torch.dtype | None = None) -> "MonotoneGamma":
        """The schedule of VDM's ``NoiseSchedule_NNet`` with parameters ``params``: the same gamma(t)
        for every t in [0, 1] (to rounding).

        ``params``: the network's parameters as flax gives them (``variables["params"]`` of the
        schedule module: in a whole VDM model, ``params["gamma"]``), a mapping with ``"l1"``
        ({"kernel": (1, 1), "bias": (1,)}), ``"l2"`` ({"kernel": (1, n), "bias": (n,)}) and ``"l3"``
        ({"kernel": (n, 1)}, no bias); arrays as numpy, jax or torch. A network built with
        ``nonlinear=False`` has only ``"l1"``: it converts with one feature of weight 0 (the same,
        linear, gamma).

        Conversion (class docstring): the weights are kept as they are (signs included: VDM and
        this class both use |W|); gamma_min = b1 + h(0) and gamma_max = b1 + h(1) are evaluated in
        float64; l1's bias is absorbed in them. ``dtype``: the parameters' dtype (default: torch's
        default dtype). Raises ValueError naming the entry of ``params`` that is missing or
        misshapen, and if the network is constant (h(1) = h(0): no increasing schedule has it).
        """
        dtype = torch.get_default_dtype() if dtype is None else _check_dtype(dtype)
        if not isinstance(params, Mapping):
            raise TypeError(f"params must be a mapping of VDM's NoiseSchedule_NNet parameters, got {type(params).__name__}")
        if "l1" not in params:
            hint = " (pass the schedule's own parameters, e.g. params['params']['gamma'])" \
                if "params" in params or "gamma" in params else ""
            raise ValueError(f"params must hold VDM's layer 'l1' (and 'l2', 'l3'), got keys {sorted(params)}{hint}")
        k1 = _vdm_array(params, "l1", "kernel", (1, 1))
        b1 = _vdm_array(params, "l1", "bias", (1,))
        nonlinear = "l2" in params or "l3" in params
        if nonlinear:
            k2 = _vdm_array(params, "l2", "kernel", None)
            if k2.dim() != 2 or k2.shape[0] != 1 or k2.shape[1] < 1:
                raise ValueError(f"params['l2']['kernel'] must have shape (1, n_features), got {tuple(k2.shape)}")
            n = k2.shape[1]
            b2 = _vdm_array(params, "l2", "bias", (n,))
            k3 = _vdm_array(params, "l3", "kernel", (n, 1))
            if "bias" in params["l3"]:
                raise ValueError("params['l3'] must have no 'bias' (VDM's l3 is use_bias=False)")
        else:
            n = 1
            k2, b2, k3 = torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64), \
                torch.zeros(1, 1, dtype=torch.float64)
        w1, w2, w3 = k1.reshape(()), k2.reshape(n), k3.reshape(n)
        # VDM's h at t = 0 and 1 in float64: the endpoints gamma = b1 + h.
        ends = torch.tensor([0.0, 1.0], dtype=torch.float64)
        s = torch.sigmoid((2 * ends[:, None] - 1) * w2.abs() + b2)
        h0, h1 = (w1.abs() * ends + ((2 * s - 1) * w3.abs()).sum(-1) / n).tolist()
        if not h1 > h0:
            raise ValueError("params: VDM's network is constant in t (|l1 kernel| = 0 and no l2/l3 feature varies): "
                             "MonotoneGamma's schedule must increase")
        b = b1.item()
        with torch.random.fork_rng(devices=[]):  # the initial draw of l2 is overwritten: leave the global RNG alone
            out = cls(b + h0, b + h1, learn_endpoints=learn_endpoints, n_features=n)
        out = out.to(dtype)
        with torch.no_grad():
            out.b.copy_(torch.tensor(b + h0, dtype=torch.float64))
            out.w.copy_(torch.tensor(h1 - h0, dtype=torch.float64))
            out.l1_weight.copy_(w1)
            out.l2_weight.copy_(w2)
            out.l2_bias.copy_(b2)
            out.l3_weight.copy_(w3)
        return out

    def to_vdm(self) -> dict:
        """The parameters of VDM's ``NoiseSchedule_NNet`` (``n_features = self.n_features``,
        ``nonlinear=True``) whose gamma(t) is this schedule's, as a nested dict of float64 numpy
        arrays in flax's layout: {"l1": {"kernel": (1, 1), "bias": (1,)}, "l2": {"kernel": (1, n),
        "bias": (n,)}, "l3": {"kernel": (n, 1)}}.

        VDM's network has no rescaling, so the linear and mixing weights are scaled by
        k = (gamma_max - gamma_min) / (h(1) - h(0)) > 0 and l1's bias is gamma_min - k h(0); l2 is
        copied. :meth:`from_vdm` of the result gives this schedule back.
        """
        f64 = torch.float64
        with torch.no_grad():
            w1, w2 = self.l1_weight.detach().to(f64), self.l2_weight.detach().to(f64)
            b2, w3 = self.l2_bias.detach().to(f64), self.l3_weight.detach().to(f64)
            h0, h1 = self._h(torch.tensor([0.0, 1.0], dtype=f64, device=w1.device)).tolist()
            k = self.w.detach().to(f64).abs().item() / (h1 - h0)
            bias = self.b.detach().to(f64).item() - k * h0
        n = self.n_features

        def arr(x, shape):
            return x.cpu().numpy().reshape(shape).copy()

        return {"l1": {"kernel": arr(k * w1, (1, 1)), "bias": np.array([bias], dtype=np.float64)},
                "l2": {"kernel": arr(w2, (1, n)), "bias": arr(b2, (n,))},
                "l3": {"kernel": arr(k * w3, (n, 1))}}


VDM_INIT_STD = 0.01  # flax.linen.initializers.normal()'s default stddev: VDM's l2 and l3 kernels


def _vdm_array(params, layer: str, name: str, shape) -> torch.Tensor:
    """params[layer][name] as a float64 CPU tensor of ``shape`` (None: any), else a ValueError naming it."""
    where = f"params[{layer!r}][{name!r}]"
    group = params.get(layer) if isinstance(params, Mapping) else None
    if not isinstance(group, Mapping) or name not in group:
        raise ValueError(f"{where} is missing (VDM's NoiseSchedule_NNet layout: l1 kernel (1, 1) and bias (1,), "
                         "l2 kernel (1, n) and bias (n,), l3 kernel (n, 1))")
    value = group[name]
    if isinstance(value, torch.Tensor):
        x = value.detach().to("cpu", torch.float64)
    else:
        x = torch.from_numpy(np.array(value, dtype=np.float64))
    if shape is not None and tuple(x.shape) != shape:
        raise ValueError(f"{where} must have shape {shape}, got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{where} must be finite")
    return x


__all__ = ["Schedule", "LINEAR_CONVENTIONS", "linear_betas", "cosine_betas", "DiscreteSchedule", "LinearGamma",
    "LearnedLinearGamma", "MonotoneGamma", "VDM_INIT_STD"]
__dir__ = public_dir(__all__)
