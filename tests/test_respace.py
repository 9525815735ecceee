"""Timestep respacing (vdm_fast.respace): improved-diffusion's space_timesteps and SpacedDiffusion.

space_timesteps against values worked out by hand from their rules (even sections, the first
T mod n one step longer; stride (size - 1)/(count - 1) accumulated and rounded half to even; the
"ddimN" search for an exact integer stride); respace against their betas formula; sampling on a
respaced table against the same steps on the original table's subset (bit for bit: the levels are
the original's) and against a float64 transcription of their ddim_sample_loop (their p_sample_loop
with learned-range variances: tests/test_learned_range.py).
"""

import pytest
import torch

import vdm_fast
from vdm_fast import respace as rs
from vdm_fast import samplers
from vdm_fast.coefficients import discrete_times
from vdm_fast.schedules import DiscreteSchedule

F64 = torch.float64


def _list(t):
    return [int(v) for v in t]


# --- space_timesteps ----------------------------------------------------------------------------------


def test_single_section_rounds_half_to_even():
    # T = 10, one section of 3: stride (10 - 1)/2 = 4.5; positions 0, 4.5, 9.0 -> round: 0, 4 (half to even), 9.
    assert _list(rs.space_timesteps(10, "3")) == [0, 4, 9]
    assert _list(rs.space_timesteps(10, [3])) == [0, 4, 9]
    assert _list(rs.space_timesteps(10, 3)) == [0, 4, 9]
    # T = 1000, "250": stride 999/249 = 4.0120...; position 249 is 999 (the last timestep), 1 is 4, 2 is 8.
    got = rs.space_timesteps(1000, "250")
    assert got.dtype == torch.int64 and got.numel() == 250
    assert _list(got[:3]) == [0, 4, 8] and int(got[-1]) == 999
    assert torch.all(got[1:] > got[:-1])  # ascending, distinct


def test_sections_and_the_longer_first_sections():
    # T = 10, "2,3": sections [0, 5) and [5, 10). First: 2 of 5, stride 4 -> 0, 4. Second: 3 of 5, stride 2 -> 5, 7, 9.
    assert _list(rs.space_timesteps(10, "2,3")) == [0, 4, 5, 7, 9]
    # T = 11: 11 = 2 * 5 + 1, so the first section is 6 long: [0, 6) stride 5 -> 0, 5; [6, 11) stride 2 -> 6, 8, 10.
    assert _list(rs.space_timesteps(11, [2, 3])) == [0, 5, 6, 8, 10]
    # "10,10" of 100: sections of 50, stride 49/9 = 5.444...: 0, 5, 11, 16, 22, 27, 33, 38, 44, 49 (+50 for the second).
    first = [0, 5, 11, 16, 22, 27, 33, 38, 44, 49]
    assert _list(rs.space_timesteps(100, "10,10")) == first + [50 + v for v in first]
    # A count of 1 keeps the section's first step; a count of 0 keeps none of it.
    assert _list(rs.space_timesteps(10, [1, 0])) == [0]
    assert _list(rs.space_timesteps(10, "10")) == list(range(10))


def test_ddim_stride_search():
    # "ddim5" of 10: stride 2 (len(range(0, 10, 2)) = 5). "ddim3" of 10: stride 1..3 give 10, 5, 4 steps; 4 gives 3.
    assert _list(rs.space_timesteps(10, "ddim5")) == [0, 2, 4, 6, 8]
    assert _list(rs.space_timesteps(10, "ddim3")) == [0, 4, 8]
    assert _list(rs.space_timesteps(10, "ddim10")) == list(range(10))
    # ddim30 of 1000: strides up to 33 give more than 30 steps (ceil(1000/33) = 31), 34 gives exactly 30.
    assert _list(rs.space_timesteps(1000, "ddim30")) == list(range(0, 1000, 34))
    # No integer stride gives exactly N: ceil(1000/3) = 334, ceil(1000/4) = 250 (theirs raises too).
    with pytest.raises(ValueError, match="section_counts.*300"):
        rs.space_timesteps(1000, "ddim300")
    with pytest.raises(ValueError, match="section_counts"):
        rs.space_timesteps(1000, "ddim1")  # stride T is outside their search range(1, T)


def test_ddim_equals_diffusers_leading_grid_where_n_divides_t():
    for n in (1000, 500, 250, 100, 50, 20, 10):
        ours = rs.space_timesteps(1000, f"ddim{n}")
        leading = discrete_times(1000, n, spacing="leading")[:-1].flip(0)  # drop the clean level, ascending
        assert torch.equal(ours, leading), n
    # Where N does not divide T, theirs takes the smallest stride that gives exactly N steps, diffusers
    # floor(T / N): ddim30 -> stride 34 (last 986) against 33 (last 957); ddim300 raises (diffusers: stride 3).
    ours, leading = rs.space_timesteps(1000, "ddim30"), discrete_times(1000, 30, spacing="leading")[:-1].flip(0)
    assert ours.numel() == leading.numel() == 30
    assert int(ours[-1]) == 986 and int(leading[-1]) == 957
    assert not torch.equal(ours, leading)


def test_space_timesteps_bad_inputs():
    with pytest.raises(ValueError, match="section_counts"):
        rs.space_timesteps(10, "3,x")
    with pytest.raises(ValueError, match="section_counts: cannot divide section 1 of 5 steps into 6"):
        rs.space_timesteps(10, [1, 6])
    with pytest.raises(ValueError, match="section_counts"):
        rs.space_timesteps(10, [])
    with pytest.raises(TypeError, match="section_counts"):
        rs.space_timesteps(10, 2.5)
    with pytest.raises(ValueError, match="num_timesteps"):
        rs.space_timesteps(0, "1")


# --- respace ------------------------------------------------------------------------------------------


def test_respace_betas_levels_and_map():
    table = DiscreteSchedule.linear(100, 1e-3, 0.05)
    use = rs.space_timesteps(100, "ddim10")
    r = rs.respace(table, use)
    assert isinstance(r, rs.Respaced) and r.original_num_timesteps == 100
    assert torch.equal(r.timestep_map, use) and r.schedule.num_timesteps == 10
    abar = torch.cumprod(1 - table.betas, 0)
    prev = torch.cat([torch.ones(1, dtype=F64), abar[use][:-1]])
    assert torch.equal(r.schedule.betas, 1 - table.alphas_cumprod[use] / prev)  # their new_betas formula
    # The levels are the original's at the kept steps; the cumulative product of the new betas is the same
    # number up to its 10 roundings (a relative 10 u: 1e-14 leaves room for a factor 4.5).
    assert torch.equal(r.schedule.alphas_cumprod, table.alphas_cumprod[use])
    assert torch.equal(r.schedule.gammas, table.gammas[use])
    torch.testing.assert_close(torch.cumprod(1 - r.schedule.betas, 0), r.schedule.alphas_cumprod, rtol=1e-14, atol=0)
    # Any collection: a set, an unsorted list with duplicates.
    assert torch.equal(rs.respace(table, set(use.tolist())).timestep_map, use)
    assert torch.equal(rs.respace(table, [90, 0, 10, 0] + use.tolist()).timestep_map, use)


def test_wrap_model_maps_and_rescales_timesteps():
    table = DiscreteSchedule.linear(4000, convention="improved-diffusion")
    r = rs.respace(table, rs.space_timesteps(4000, "ddim40"))  # stride 100
    seen = []
    wrapped = r.wrap_model(lambda z, t, **kw: seen.append((t, kw)) or z)
    wrapped(torch.zeros(3), torch.tensor([0, 1, 39]), y=7)
    assert torch.equal(seen[-1][0], torch.tensor([0, 100, 3900])) and seen[-1][1] == {"y": 7}
    r.wrap_model(lambda z, t: seen.append((t, {})) or z, rescale_timesteps=True)(torch.zeros(2), torch.tensor([1, 39]))
    t = seen[-1][0]
    assert t.dtype == torch.float32 and torch.equal(t, torch.tensor([100.0, 3900.0]) * (1000.0 / 4000))
    assert torch.equal(r.original_timesteps(torch.tensor([-1, 2])), torch.tensor([-1, 200]))  # the clean level stays
    with pytest.raises(TypeError, match="t must hold integer"):
        r.original_timesteps(torch.tensor([0.5]))
    with pytest.raises(RuntimeError, match="t: timesteps must lie in"):
        r.original_timesteps(torch.tensor([40]))


def test_respace_bad_inputs():
    table = DiscreteSchedule.linear(10)
    with pytest.raises(TypeError, match="schedule"):
        rs.respace(object(), [0, 1])
    with pytest.raises(ValueError, match="use_timesteps must lie in 0..9"):
        rs.respace(table, [0, 10])
    with pytest.raises(ValueError, match="use_timesteps"):
        rs.respace(table, [])
    with pytest.raises(TypeError, match="use_timesteps"):
        rs.respace(table, [0.5, 1.0])
    with pytest.raises(TypeError, match="model"):
        rs.respace(table, [0, 5]).wrap_model(3)


# --- sampling on a respaced table -----------------------------------------------------------------------


class _Net:
    """A smooth deterministic eps model of (z, original timestep)."""

    def __init__(self, T):
        self.T = T

    def __call__(self, z, t):
        assert not t.is_floating_point()
        return torch.tanh(0.7 * z + (t.to(z.dtype) / self.T).reshape(-1, *(1,) * (z.dim() - 1)))


@pytest.mark.parametrize("sampler", ["ddim", "ddim_eta", "ancestral", "ancestral_beta"])
def test_sampling_on_respaced_table_is_the_original_subset(sampler):
    table = DiscreteSchedule.cosine(200)
    r = rs.respace(table, rs.space_timesteps(200, "7,5"))
    K = r.schedule.num_timesteps
    net = _Net(200)
    z = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(0))
    subset = torch.cat([r.timestep_map.flip(0), torch.tensor([-1])])
    run = {
        "ddim": lambda m, s, ts, g: samplers.sample_ddim(m, z, s, ts, clip=1.0),
        "ddim_eta": lambda m, s, ts, g: samplers.sample_ddim(m, z, s, ts, eta=0.5, generator=g),
        "ancestral": lambda m, s, ts, g: samplers.sample_ancestral(m, z, s, ts, generator=g),
        "ancestral_beta": lambda m, s, ts, g: samplers.sample_ancestral(m, z, s, ts, variance="beta", generator=g),
    }[sampler]
    spaced = run(r.wrap_model(net), r.schedule, discrete_times(K, K), torch.Generator().manual_seed(5))
    original = run(net, table, subset, torch.Generator().manual_seed(5))
    assert torch.equal(spaced, original)


def _their_ddim_loop(net, z, betas, timestep_map, eta, noises):
    """improved-diffusion's ddim_sample_loop on a SpacedDiffusion (eps model, clip_denoised=True), float64."""
    abar = torch.cumprod(1 - betas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=F64), abar[:-1]])
    for i, t in enumerate(reversed(range(betas.numel()))):
        eps = net(z, timestep_map[t].expand(z.shape[0]))
        x0 = ((1 / abar[t]).sqrt() * z - (1 / abar[t] - 1).sqrt() * eps).clamp(-1, 1)
        eps = ((1 / abar[t]).sqrt() * z - x0) / (1 / abar[t] - 1).sqrt()  # re-derived from the clipped x0
        sigma = eta * ((1 - abar_prev[t]) / (1 - abar[t])).sqrt() * (1 - abar[t] / abar_prev[t]).sqrt()
        mean = x0 * abar_prev[t].sqrt() + (1 - abar_prev[t] - sigma**2).sqrt() * eps
        z = mean + (sigma * noises[i] if t != 0 and eta else 0)
    return z


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_respaced_ddim_matches_improved_diffusion(eta):
    betas = DiscreteSchedule.linear(1000, convention="improved-diffusion").betas
    r = rs.respace(DiscreteSchedule(betas), rs.space_timesteps(1000, "ddim25"))
    net = _Net(1000)
    z = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    # Our noise stream (vdm_fast.randn_like, drawn per stochastic step) handed to the transcription.
    gen = torch.Generator().manual_seed(2)
    noises = [vdm_fast.randn_like(z, gen) for _ in range(25)] if eta else [None] * 25
    got = samplers.sample_ddim(r.wrap_model(net), z, r.schedule, discrete_times(25, 25), eta=eta, clip=1.0,
                               clipped_eps=True, generator=torch.Generator().manual_seed(2))
    want = _their_ddim_loop(net, z, r.schedule.betas, r.timestep_map, eta, noises)
    # Both in float64 from the same betas, formulas of different form (gamma vs alpha_bar): each step
    # differs by a few roundings, ~1e-15 relative, propagated through 25 contracting steps; 1e-11 is
    # far below any formula error (a wrong level or coefficient changes the result at O(1e-2)).
    torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-11)
