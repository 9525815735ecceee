"""The sigma-grid drop-ins (EulerDiscreteScheduler, EulerAncestralDiscreteScheduler,
DPMSolverMultistepScheduler) equal diffusers' schedulers over whole denoising runs.

Two comparisons per configuration, on a fixed smooth "network" (any function of the sample and t):

- float32: ours against diffusers' float32 run. Both apply the same float32 sigma grid; ours forms
  the coefficients in float64 and rounds them once, diffusers computes them in float32 (a few ulps
  each) and rounds every intermediate: per step a few float32 roundings (2^-24 relative) of terms of
  the sample's size, over 12 steps and amplified at most a few times by the later steps: 1e-5 of the
  sample's scale bounds it with room (measured: up to 7e-7).
- float64: ours against diffusers' own step code on float64 data with its sigmas in float64 (then
  its arithmetic is float64 too), except that diffusers rounds the sample to float32 on every step
  ("upcast", sample.to(float32)): 12 roundings of 2^-24 relative, amplified a few times: 12 * 4 *
  2^-24 of the scale.
"""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import vdm_fast  # noqa: E402
from vdm_fast.integrations import diffusers as ours  # noqa: E402

STEPS = 12
CONFIGS = {
    "EulerDiscreteScheduler": [dict(), dict(prediction_type="v_prediction"), dict(prediction_type="sample"),
                               dict(use_karras_sigmas=True), dict(timestep_spacing="trailing")],
    "EulerAncestralDiscreteScheduler": [dict(), dict(prediction_type="v_prediction"),
                                        dict(timestep_spacing="leading", steps_offset=1)],
    "DPMSolverMultistepScheduler": [dict(), dict(prediction_type="v_prediction"), dict(prediction_type="sample"),
                                    dict(solver_type="heun"), dict(use_karras_sigmas=True), dict(solver_order=1),
                                    dict(final_sigmas_type="sigma_min"), dict(lower_order_final=False),
                                    dict(euler_at_final=True), dict(thresholding=True, prediction_type="sample"),
                                    dict(beta_schedule="squaredcos_cap_v2")],
}
CASES = [(kind, cfg) for kind, cfgs in CONFIGS.items() for cfg in cfgs]
IDS = [f"{kind[:-9]}-{'-'.join(f'{k}={v}' for k, v in cfg.items()) or 'default'}" for kind, cfg in CASES]


def _network(x, t):
    return torch.tanh(0.7 * x + 1e-3 * t.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))) * 0.9


def _run(sched, x, seed=3, step_kw=None, steps=STEPS, noise_dtype=None):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for t in sched.timesteps:
        m = _network(sched.scale_model_input(x, t), t.expand(x.shape[0]))
        res = sched.step(m, t, x, generator=gen, **(step_kw or {}))
        x = res.prev_sample
        out.append(x)
    return x, out


def _pair(kind, cfg, steps=STEPS):
    theirs, mine = getattr(diffusers, kind)(**cfg), getattr(ours, kind)(**cfg)
    theirs.set_timesteps(steps)
    mine.set_timesteps(steps)
    return theirs, mine


@pytest.mark.parametrize("kind,cfg", CASES, ids=IDS)
def test_run_equals_diffusers_float32(kind, cfg):
    theirs, mine = _pair(kind, cfg)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * theirs.init_noise_sigma
    (a, path_a), (b, path_b) = _run(theirs, x), _run(mine, x)
    for pa, pb in zip(path_a, path_b):
        torch.testing.assert_close(pb, pa, rtol=0, atol=1e-5 * max(1.0, pa.abs().max().item()))
    assert b.dtype == a.dtype == torch.float32


@pytest.mark.parametrize("kind,cfg", CASES, ids=IDS)
def test_run_equals_diffusers_code_in_float64(kind, cfg):
    theirs, mine = _pair(kind, cfg)
    theirs.sigmas = theirs.sigmas.double()
    mine.sigmas = mine.sigmas.double()  # the same levels on both sides (ours reads them in float64 anyway)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = x * float(theirs.init_noise_sigma)
    (a, _), (b, _) = _run(theirs, x), _run(mine, x)
    torch.testing.assert_close(b, a, rtol=0, atol=STEPS * 4 * 2.0**-24 * max(1.0, a.abs().max().item()))
    assert b.dtype == torch.float64


def test_euler_churn_equals_diffusers():
    theirs, mine = _pair("EulerDiscreteScheduler", {})
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * theirs.init_noise_sigma
    kw = dict(s_churn=4.0, s_tmin=0.5, s_tmax=50.0, s_noise=1.003)
    (a, _), (b, _) = _run(theirs, x, step_kw=kw), _run(mine, x, step_kw=kw)
    torch.testing.assert_close(b, a, rtol=0, atol=1e-5 * a.abs().max().item())
    assert not torch.allclose(a, _run(_pair("EulerDiscreteScheduler", {})[0], x)[0])  # the churn did act


def test_euler_ancestral_philox_noise_is_randn_like():
    _, mine = _pair("EulerAncestralDiscreteScheduler", {})
    mine.vdm_fast_noise = "philox"
    x = torch.randn(2, 3, 5, 4, generator=torch.Generator().manual_seed(4)) * mine.init_noise_sigma
    t = mine.timesteps[0]
    m = _network(mine.scale_model_input(x, t), t.expand(2))
    got = mine.step(m, t, x, generator=torch.Generator().manual_seed(9)).prev_sample
    # the same step with diffusers' noise replaced by randn_like of the same generator state
    _, plain = _pair("EulerAncestralDiscreteScheduler", {})
    plain.scale_model_input(x, t)
    import diffusers.schedulers.scheduling_euler_ancestral_discrete as mod

    noise = vdm_fast.randn_like(x, torch.Generator().manual_seed(9))
    theirs = diffusers.EulerAncestralDiscreteScheduler()
    theirs.set_timesteps(STEPS)
    theirs.scale_model_input(x, t)
    orig, mod.randn_tensor = mod.randn_tensor, lambda *a, **k: noise
    try:
        want = theirs.step(m, t, x).prev_sample
    finally:
        mod.randn_tensor = orig
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * want.abs().max().item())


def test_dpm_history_is_diffusers_x0_predictions():
    theirs, mine = _pair("DPMSolverMultistepScheduler", {})
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    for t in theirs.timesteps[:3]:
        m = _network(x, t.expand(2))
        theirs.step(m, t, x)
        x = mine.step(m, t, x).prev_sample
    for a, b in zip(theirs.model_outputs, mine.model_outputs):  # x̂ of epsilon at high noise: ~1/alpha large
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5 * a.abs().max().item())


@pytest.mark.parametrize("cfg, match", [(dict(algorithm_type="sde-dpmsolver++"), "algorithm_type"),
                                        (dict(solver_order=3), "solver_order=3")])
def test_dpm_configs_without_a_fused_step_raise(cfg, match):
    with pytest.raises(ValueError, match=match):
        ours.DPMSolverMultistepScheduler(**cfg)


def test_mixed_dtype_model_output_and_bad_inputs():
    theirs, mine = _pair("EulerAncestralDiscreteScheduler", {})
    x = torch.randn(2, 3, 4, 4) * theirs.init_noise_sigma
    t = mine.timesteps[0]
    m = _network(mine.scale_model_input(x, t), t.expand(2)).to(torch.bfloat16)
    out = mine.step(m, t, x, generator=torch.Generator().manual_seed(0))
    assert out.prev_sample.dtype == torch.bfloat16  # diffusers casts prev_sample to the model's dtype
    _, mine = _pair("EulerDiscreteScheduler", {})
    with pytest.raises(ValueError, match="integer indices"):
        mine.step(m.float(), 3, x)
    with pytest.raises(ValueError, match="model_output must have the shape of sample"):
        mine.step(m[:1].float(), t, x)
    _, mine = _pair("EulerAncestralDiscreteScheduler", {"prediction_type": "sample"})
    with pytest.raises(NotImplementedError, match="sample"):
        mine.step(m.float(), t, x)


def test_config_round_trip_and_accelerate(tmp_path):
    for kind in CONFIGS:
        mine = getattr(ours, kind)(num_train_timesteps=500)
        mine.save_pretrained(tmp_path / kind)
        stock = getattr(diffusers, kind).from_pretrained(tmp_path / kind)
        assert stock.config.num_train_timesteps == 500
        back = getattr(ours, kind).from_pretrained(tmp_path / kind)
        assert type(back) is getattr(ours, kind)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 8),
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=4)
    pipe = ours.accelerate(diffusers.DDPMPipeline(unet, diffusers.DPMSolverMultistepScheduler()))
    assert type(pipe.scheduler) is ours.DPMSolverMultistepScheduler
    assert pipe.config.scheduler == ("diffusers", "DPMSolverMultistepScheduler")


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_tables_follow_set_timesteps(kind):
    """The cached coefficient table is rebuilt when set_timesteps replaces the sigmas."""
    theirs, mine = _pair(kind, {}, steps=5)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(6)) * theirs.init_noise_sigma
    _run(theirs, x), _run(mine, x)  # both tables built for 5 steps
    theirs.set_timesteps(STEPS)
    mine.set_timesteps(STEPS)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(7)) * theirs.init_noise_sigma
    (a, _), (b, _) = _run(theirs, x), _run(mine, x)
    torch.testing.assert_close(b, a, rtol=0, atol=1e-5 * a.abs().max().item())
