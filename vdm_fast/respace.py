"""Timestep respacing of a discrete table, improved-diffusion's ``respace.py`` (DESIGN.md §5).

:func:`space_timesteps` picks the timesteps to keep from a T-step table; :func:`respace` builds the
shorter table on them (improved-diffusion's ``SpacedDiffusion``): for kept timesteps
t_0 < t_1 < ... < t_{K-1}, the respaced table's step i has beta_i = 1 - abar[t_i]/abar[t_{i-1}]
(abar[t_{-1}] = 1), so its alpha_bar at step i is the original's at t_i. A model trained on the
original table is called with the original timesteps: :meth:`Respaced.wrap_model` maps respaced
index i to ``timestep_map[i]`` = t_i (and, with ``rescale_timesteps``, to t_i * 1000 / T as a float,
improved-diffusion's ``rescale_timesteps``).

Any sampler of :mod:`vdm_fast.samplers` then runs on ``respaced.schedule`` with the grid
``discrete_times(K, K)``; the steps are the original table's on the subset
``timestep_map.flip(0)`` followed by -1 (the levels are the original's exactly, see :func:`respace`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .schedules import DiscreteSchedule
from ._namespace import public_dir


def _as_count(value, what: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"section_counts: {what} must be an integer, got {value!r}") from None
    if n < 0:
        raise ValueError(f"section_counts: {what} must be >= 0, got {n}")
    return n


def space_timesteps(num_timesteps: int, section_counts) -> torch.Tensor:
    """The timesteps of a ``num_timesteps``-step table to keep, improved-diffusion's ``space_timesteps``.

    ``section_counts``:
      - ``"ddimN"``: the DDIM paper's fixed stride: the smallest integer stride k (1 <= k < T) with
        len(range(0, T, k)) == N, giving 0, k, 2k, ...; a ValueError when no stride gives exactly N
        (e.g. N = 300 of T = 1000) and for N = 1 (k would be T, outside their search).
      - a list of ints, or a string of comma-separated ints (``"10,10"``, ``"250"``): the table is
        cut into len(section_counts) equal sections (the first T mod n one step longer) and section
        j keeps section_counts[j] timesteps, evenly strided: start + round(i (size - 1)/(count - 1))
        for i = 0..count-1 (Python's round, halves to even, as theirs), a count of 1 keeps the
        section's first timestep. A count larger than its section raises ValueError.

    Returns:
        the kept timesteps, ascending, as a 1-D int64 tensor (theirs returns the same set).
    """
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be a positive int, got {num_timesteps!r}")
    T = num_timesteps
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = _as_count(section_counts[len("ddim"):], f"the step count of {section_counts!r}")
            for stride in range(1, T):
                if len(range(0, T, stride)) == desired:
                    return torch.arange(0, T, stride, dtype=torch.int64)
            raise ValueError(f"section_counts: cannot create exactly {desired} steps out of {T} with an integer "
                             f"stride ({section_counts!r})")
        counts = [_as_count(c, f"{c!r} in {section_counts!r}") for c in section_counts.split(",")]
    elif isinstance(section_counts, int) and not isinstance(section_counts, bool):
        counts = [_as_count(section_counts, "a count")]
    else:
        try:
            counts = [_as_count(c, f"{c!r}") for c in section_counts]
        except TypeError:
            raise TypeError(f"section_counts must be a string ('ddimN', '10,10', '250') or a list of ints, got "
                            f"{type(section_counts).__name__}") from None
    if not counts:
        raise ValueError("section_counts must not be empty")
    size_per, extra = divmod(T, len(counts))
    start, kept = 0, set()
    for j, count in enumerate(counts):
        size = size_per + (1 if j < extra else 0)
        if size < count:
            raise ValueError(f"section_counts: cannot divide section {j} of {size} steps into {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            kept.add(start + round(position))
            position += stride  # accumulated as theirs is (cur_idx += frac_stride), not i * stride
        start += size
    return torch.tensor(sorted(kept), dtype=torch.int64)


@dataclass(frozen=True)
class Respaced:
    """A respaced table (:func:`respace`): ``schedule`` (K steps) and ``timestep_map`` ((K,) int64,
    respaced index -> original timestep), with the original table's length ``original_num_timesteps``."""

    schedule: DiscreteSchedule
    timestep_map: torch.Tensor
    original_num_timesteps: int

    def original_timesteps(self, t: torch.Tensor, rescale_timesteps: bool = False) -> torch.Tensor:
        """Respaced timesteps t (integers 0..K-1, any shape) -> the original table's timesteps; a
        negative t (the clean level of a sampler grid) stays as it is. ``rescale_timesteps``:
        t_orig * 1000 / T as float32 (improved-diffusion's ``rescale_timesteps``)."""
        t = torch.as_tensor(t)
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"t must hold integer timesteps of the respaced table, got dtype {t.dtype}")
        t = t.long()
        clean = t < 0
        index = self.schedule._index(torch.where(clean, torch.zeros_like(t), t))  # range check, no host sync
        mapped = torch.where(clean, t, self.timestep_map.to(t.device)[index])
        if rescale_timesteps:
            return mapped.float() * (1000.0 / self.original_num_timesteps)
        return mapped

    def wrap_model(self, model: Callable, rescale_timesteps: bool = False) -> Callable:
        """``model(z, t_orig, **kw)`` -> a model of the respaced table, ``wrapped(z, t, **kw)`` with
        t the respaced timesteps (improved-diffusion's ``_WrappedModel``)."""
        if not callable(model):
            raise TypeError(f"model must be callable, got {type(model).__name__}")

        def wrapped(z, t, **kwargs):
            return model(z, self.original_timesteps(t, rescale_timesteps), **kwargs)

        return wrapped


def respace(schedule: DiscreteSchedule, use_timesteps) -> Respaced:
    """The table of ``schedule`` on the timesteps ``use_timesteps`` (any collection of ints in 0..T-1,
    e.g. :func:`space_timesteps`; duplicates are dropped, order does not matter), improved-diffusion's
    ``SpacedDiffusion``.

    The respaced betas are theirs, beta_i = 1 - abar[t_i]/abar[t_{i-1}] (abar[t_{-1}] = 1), computed
    in float64. The respaced table's levels (``alphas_cumprod`` and ``gammas``) are the original's at
    the kept timesteps exactly, not the cumulative product of the new betas again (which rounds), so
    sampling on the respaced table is sampling on the original table's subset, to the bit.
    """
    if not isinstance(schedule, DiscreteSchedule):
        raise TypeError(f"schedule must be a DiscreteSchedule, got {type(schedule).__name__}")
    T = schedule.num_timesteps
    use = torch.as_tensor(use_timesteps if not isinstance(use_timesteps, (set, frozenset)) else sorted(use_timesteps))
    if use.numel() == 0:
        raise ValueError("use_timesteps must not be empty")
    if use.is_floating_point() or use.is_complex() or use.dtype == torch.bool or use.dim() != 1:
        raise TypeError(f"use_timesteps must be a 1-D collection of integer timesteps, got {use.dtype} "
                        f"of shape {tuple(use.shape)}")
    use = torch.unique(use.long().cpu())  # sorted, no duplicates
    if use[0] < 0 or use[-1] >= T:
        raise ValueError(f"use_timesteps must lie in 0..{T - 1}, got {use[0].item()}..{use[-1].item()}")
    abar = schedule.alphas_cumprod[use]
    last = torch.cat([abar.new_ones(1), abar[:-1]])
    spaced = DiscreteSchedule(1 - abar / last)
    spaced.alphas_cumprod = abar.clone()
    spaced.gammas = schedule.gammas[use].clone()
    return Respaced(spaced, use, T)


__all__ = ["space_timesteps", "respace", "Respaced"]
__dir__ = public_dir(__all__)
