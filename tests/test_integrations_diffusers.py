"""The diffusers drop-ins equal diffusers in fp32 and beat it in fp16/bf16 (issue 6, item 1)."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from vdm_fast.integrations import diffusers as ours  # noqa: E402

SCHEDULES = [
    dict(beta_schedule="linear"),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    dict(beta_schedule="squaredcos_cap_v2"),
    dict(beta_schedule="linear", rescale_betas_zero_snr=True),
]


def _pair(kind, **config):
    theirs = getattr(diffusers, kind)(num_train_timesteps=1000, **config)
    mine = getattr(ours, kind)(num_train_timesteps=1000, **config)
    return theirs, mine


@pytest.mark.parametrize("kind", ["DDPMScheduler", "DDIMScheduler"])
@pytest.mark.parametrize("config", SCHEDULES, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_add_noise_and_velocity_match_fp32(kind, config):
    theirs, mine = _pair(kind, **config)
    x0, noise = torch.randn(6, 3, 8, 8), torch.randn(6, 3, 8, 8)
    t = torch.tensor([0, 1, 17, 500, 998, 999])
    torch.testing.assert_close(mine.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mine.get_velocity(x0, noise, t), theirs.get_velocity(x0, noise, t), rtol=1e-5, atol=1e-5)


def test_single_timestep_broadcasts_like_diffusers():
    theirs, mine = _pair("DDPMScheduler")
    x0, noise = torch.randn(4, 2, 5), torch.randn(4, 2, 5)
    t = torch.tensor(321)
    torch.testing.assert_close(mine.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_more_accurate_than_diffusers(dtype):
    theirs, mine = _pair("DDPMScheduler")
    x0, noise = torch.randn(8, 4, 8, 8), torch.randn(8, 4, 8, 8)
    t = torch.tensor([0, 1, 2, 3, 100, 500, 900, 999])
    abar = mine._vdm_schedule().alphas_cumprod[t].view(-1, 1, 1, 1)
    truth = abar.sqrt() * x0.to(dtype).double() + (1 - abar).sqrt() * noise.to(dtype).double()
    err_ours = (mine.add_noise(x0.to(dtype), noise.to(dtype), t).double() - truth).abs().max()
    err_theirs = (theirs.add_noise(x0.to(dtype), noise.to(dtype), t).double() - truth).abs().max()
    assert err_ours < err_theirs, (err_ours, err_theirs)
    assert err_ours <= torch.finfo(dtype).eps * truth.abs().max()


def test_config_round_trip(tmp_path):
    mine = ours.DDIMScheduler(num_train_timesteps=500, beta_schedule="squaredcos_cap_v2", clip_sample=False)
    mine.save_pretrained(tmp_path)
    loaded = ours.DDIMScheduler.from_pretrained(tmp_path)
    assert type(loaded) is ours.DDIMScheduler and loaded.config.num_train_timesteps == 500
    plain = diffusers.DDIMScheduler.from_pretrained(tmp_path)  # still loadable by diffusers itself
    assert plain.config.beta_schedule == "squaredcos_cap_v2"
    assert isinstance(ours.DDIMScheduler.from_config(plain.config), diffusers.DDIMScheduler)
