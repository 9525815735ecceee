"""The diffusers drop-ins equal diffusers in fp32 and beat it in fp16/bf16 (issue 6, item 1).

Equality rule (tests/numerics.py), as for ``step`` in tests/test_diffusers_step.py: ours is within
K times the running error bound of our formula (q_sample on alpha, sigma computed in float32 from
the table's float64 gamma) of diffusers' own code run on float64 data with its alphas_cumprod in
float64, plus that truth's float64 bound; diffusers' float32 result is within K times the bound of
its own code at float32 of the same code on float64 data with its float32 table.
"""

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
import numerics  # noqa: E402
from vdm_fast import reference  # noqa: E402
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


def _ours(method, g, x, n):
    """add_noise / get_velocity as ours computes them: alpha, sigma from gamma as
    Schedule.alpha_sigma does (float32), then q_sample (get_velocity swaps x and noise, negates sigma)."""
    alpha, sigma = torch.sigmoid(-g).sqrt(), torch.sigmoid(g).sqrt()
    if method == "add_noise":
        return reference.q_sample(x, alpha, sigma, n)
    return reference.q_sample(n, alpha, -sigma, x)


def _theirs(sched, method, acp, x, n, t):
    """diffusers' ``method`` with its alphas_cumprod replaced by ``acp``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sched, "alphas_cumprod", acp)
        return getattr(sched, method)(x, n, t)


def _assert_matches_diffusers(theirs, mine, method, x0, noise, t):
    got, want = getattr(mine, method)(x0, noise, t), getattr(theirs, method)(x0, noise, t)
    g = mine._vdm_schedule().gammas[t].reshape(-1)  # float64, rounded once to float32 by ours
    bound = numerics.running_error(lambda g, x, n: _ours(method, g, x, n), (g, x0, noise), dtype=torch.float32).bound
    acp64 = torch.cumprod(1 - theirs.betas.double(), 0)
    truth = numerics.running_error(lambda acp, x, n: _theirs(theirs, method, acp, x, n, t), (acp64, x0, noise),
                                   dtype=torch.float64)
    numerics.assert_within_bound(got, truth.value, numerics.K * bound + truth.bound, k=1, msg=f"ours {method}")
    truth32 = numerics.running_error(lambda acp, x, n: _theirs(theirs, method, acp, x, n, t),
                                     (theirs.alphas_cumprod, x0, noise), dtype=torch.float32)
    numerics.assert_within_bound(want, truth32.value, truth32.bound, msg=f"diffusers' {method}")


@pytest.mark.parametrize("kind", ["DDPMScheduler", "DDIMScheduler"])
@pytest.mark.parametrize("config", SCHEDULES, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_add_noise_and_velocity_match_fp32(kind, config):
    theirs, mine = _pair(kind, **config)
    x0, noise = torch.randn(6, 3, 8, 8), torch.randn(6, 3, 8, 8)
    t = torch.tensor([0, 1, 17, 500, 998, 999])
    for method in ("add_noise", "get_velocity"):
        _assert_matches_diffusers(theirs, mine, method, x0, noise, t)


def test_single_timestep_broadcasts_like_diffusers():
    theirs, mine = _pair("DDPMScheduler")
    x0, noise = torch.randn(4, 2, 5), torch.randn(4, 2, 5)
    _assert_matches_diffusers(theirs, mine, "add_noise", x0, noise, torch.tensor(321))


@pytest.mark.parametrize("method", ["add_noise", "get_velocity"])
@pytest.mark.parametrize("x_batch, noise_batch, t", [
    (3, 3, [321]),            # (1,) timesteps for a batch of 3: one for all
    (3, 3, [[5], [321], [900]]),  # (B, 1): flattened, one per sample
    (1, 1, [5, 321, 900]),    # one sample, three timesteps: three noised copies
    (3, 1, [5, 321, 900]),    # one noise for the batch
    (1, 3, [321]),
], ids=str)
def test_timesteps_broadcast_as_diffusers_broadcasts(method, x_batch, noise_batch, t):
    """diffusers flattens the timesteps and broadcasts their coefficients along dim 0 against the
    samples and the noise: ours accepts what diffusers accepts, with the same result (the same as
    with every argument broadcast by hand, which the tests above compare with diffusers)."""
    theirs, mine = _pair("DDPMScheduler")
    x0, noise, t = torch.randn(x_batch, 2, 5), torch.randn(noise_batch, 2, 5), torch.tensor(t)
    want = getattr(theirs, method)(x0, noise, t)
    got = getattr(mine, method)(x0, noise, t)
    assert got.shape == want.shape
    batch = want.shape[0]
    by_hand = getattr(mine, method)(x0.expand(want.shape).contiguous(), noise.expand(want.shape).contiguous(),
                                    t.flatten().expand(batch))
    torch.testing.assert_close(got, by_hand, rtol=0, atol=0)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_timesteps_that_do_not_broadcast_are_refused():
    theirs, mine = _pair("DDPMScheduler")
    x0 = torch.randn(3, 2, 5)
    with pytest.raises(RuntimeError):  # diffusers refuses it too
        theirs.add_noise(x0, x0, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="2 timesteps do not broadcast"):
        mine.add_noise(x0, x0, torch.tensor([1, 2]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_more_accurate_than_diffusers(dtype):
    theirs, mine = _pair("DDPMScheduler")
    x0, noise = torch.randn(8, 4, 8, 8).to(dtype), torch.randn(8, 4, 8, 8).to(dtype)
    t = torch.tensor([0, 1, 2, 3, 100, 500, 900, 999])
    # Ours: float32 arithmetic on the half data (the running error bound of our formula, the float64
    # gamma rounded once) and the rounding of the result to half, nothing else.
    want = numerics.running_error(lambda g, x, n: _ours("add_noise", g, x, n),
                                  (mine._vdm_schedule().gammas[t], x0, noise), dtype=torch.float32)
    got = mine.add_noise(x0, noise, t)
    numerics.assert_within_bound(got, want.value, want.bound, msg=str(dtype))
    err_ours = (got.double() - want.value).abs().max()
    err_theirs = (theirs.add_noise(x0, noise, t).double() - want.value).abs().max()
    assert err_ours < err_theirs, (err_ours, err_theirs)


def test_config_round_trip(tmp_path):
    mine = ours.DDIMScheduler(num_train_timesteps=500, beta_schedule="squaredcos_cap_v2", clip_sample=False)
    mine.save_pretrained(tmp_path)
    loaded = ours.DDIMScheduler.from_pretrained(tmp_path)
    assert type(loaded) is ours.DDIMScheduler and loaded.config.num_train_timesteps == 500
    plain = diffusers.DDIMScheduler.from_pretrained(tmp_path)  # still loadable by diffusers itself
    assert plain.config.beta_schedule == "squaredcos_cap_v2"
    assert isinstance(ours.DDIMScheduler.from_config(plain.config), diffusers.DDIMScheduler)


def test_add_noise_and_velocity_compile_fullgraph():
    """Compiled before any eager call, so the schedule (and its betas check) is built in the graph;
    equal to eager up to inductor's own rounding of the float32 alpha, sigma (an ulp or so)."""
    x0, noise, t = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8), torch.tensor([0, 5, 500, 999])
    for method in ("add_noise", "get_velocity"):
        torch._dynamo.reset()
        mine = ours.DDPMScheduler()
        got = torch.compile(getattr(mine, method), fullgraph=True)(x0, noise, t)
        torch.testing.assert_close(got, getattr(ours.DDPMScheduler(), method)(x0, noise, t))


# ---------------------------------------------------------------------------------------------
# Pipelines (issue 16): accelerate() and save_pretrained / from_pretrained.

STEPS = 10


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(8, 16), norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"))


def _images(pipe, **kw):
    pipe.set_progress_bar_config(disable=True)
    return torch.from_numpy(pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=STEPS,
                                 output_type="np", **kw).images)


def _atol(scheduler):
    # Each step agrees with diffusers' float32 step to about 1e-5 of the output's scale (the step
    # parity tests in test_diffusers_step.py; the gap is diffusers' float32 coefficient table). A
    # deterministic DDIM run carries an early difference to the end multiplied by up to
    # sqrt(alpha_bar_0 / alpha_bar_T) ~ 1 / sqrt(alpha_bar_T) (160 for the linear schedule); fresh
    # noise (DDPM, eta = 1) only damps it. Images are x / 2 + 0.5, halving it; kept as a margin.
    return 1e-5 / float(scheduler.alphas_cumprod[-1]) ** 0.5


PIPELINES = [
    (diffusers.DDPMPipeline, diffusers.DDPMScheduler, {}),
    (diffusers.DDIMPipeline, diffusers.DDIMScheduler, dict(eta=0.0)),
    (diffusers.DDIMPipeline, diffusers.DDIMScheduler, dict(eta=1.0)),
]


@pytest.mark.parametrize("pipeline, scheduler, kw", PIPELINES, ids=lambda p: getattr(p, "__name__", str(p)))
def test_accelerate_gives_stock_outputs(unet, pipeline, scheduler, kw):
    stock = pipeline(unet, scheduler())
    if pipeline is diffusers.DDIMPipeline:  # it replaces the scheduler it is given: why accelerate exists
        assert type(pipeline(unet, ours.DDIMScheduler()).scheduler) is diffusers.DDIMScheduler
    mine = ours.accelerate(pipeline(unet, scheduler()))
    assert type(mine.scheduler) is getattr(ours, scheduler.__name__)
    assert dict(mine.scheduler.config) == dict(stock.scheduler.config)
    torch.testing.assert_close(_images(mine, **kw), _images(stock, **kw), rtol=0, atol=_atol(stock.scheduler))
    mine.scheduler.vdm_fast_noise = "philox"  # another stream: same sampler, different samples
    if kw.get("eta", 1.0) > 0:
        assert not torch.allclose(_images(mine, **kw), _images(stock, **kw), atol=1e-3)


def test_accelerate_options_and_errors(unet):
    pipe = ours.accelerate(diffusers.DDIMPipeline(unet, diffusers.DDIMScheduler()), noise="philox",
                           backend="reference")
    assert (pipe.scheduler.vdm_fast_noise, pipe.scheduler.vdm_fast_backend) == ("philox", "reference")
    kept = pipe.scheduler
    assert ours.accelerate(pipe).scheduler is kept and kept.vdm_fast_noise == "diffusers"  # ours: options reset
    with pytest.raises(ValueError, match="PNDMScheduler"):
        ours.accelerate(diffusers.DDPMPipeline(unet, diffusers.PNDMScheduler()))
    with pytest.raises(ValueError, match="no fused step for solver_order=3"):  # a config we do not fuse
        ours.accelerate(diffusers.DDPMPipeline(unet, diffusers.DPMSolverMultistepScheduler(solver_order=3)))
    with pytest.raises(ValueError, match="accelerate: noise must be one of"):
        ours.accelerate(pipe, noise="torch")
    with pytest.raises(TypeError, match="pipe must be a diffusers.DiffusionPipeline"):
        ours.accelerate(pipe.scheduler)


@pytest.mark.parametrize("pipeline, kind", [(diffusers.DDPMPipeline, "DDPMScheduler"),
                                            (diffusers.DDIMPipeline, "DDIMScheduler")], ids=["DDPM", "DDIM"])
def test_saved_pipeline_loads_with_stock_diffusers_and_with_vdm_fast(unet, tmp_path, pipeline, kind):
    mine = ours.accelerate(pipeline(unet, getattr(diffusers, kind)(num_train_timesteps=500)))
    mine.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", kind]  # what a stock scheduler records
    stock = pipeline.from_pretrained(tmp_path)
    assert type(stock.scheduler) is getattr(diffusers, kind) and stock.scheduler.config.num_train_timesteps == 500
    reference = pipeline(unet, getattr(diffusers, kind)(num_train_timesteps=500))
    torch.testing.assert_close(_images(stock), _images(reference), rtol=0, atol=0)  # same weights, same scheduler
    loaded = ours.accelerate(pipeline.from_pretrained(tmp_path))
    assert type(loaded.scheduler) is getattr(ours, kind)
    torch.testing.assert_close(_images(loaded), _images(mine), rtol=0, atol=0)


def test_from_pretrained_takes_our_scheduler(unet, tmp_path):
    diffusers.DDPMPipeline(unet, ours.DDPMScheduler()).save_pretrained(tmp_path)  # saved without accelerate
    passed = ours.DDPMScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    pipe = diffusers.DDPMPipeline.from_pretrained(tmp_path, scheduler=passed)
    assert pipe.scheduler is passed
    # DDIMPipeline rebuilds a passed scheduler as diffusers' own; accelerate restores ours.
    diffusers.DDIMPipeline(unet, ours.DDIMScheduler()).save_pretrained(tmp_path / "ddim")
    pipe = diffusers.DDIMPipeline.from_pretrained(tmp_path / "ddim", scheduler=ours.DDIMScheduler())
    assert type(ours.accelerate(pipe).scheduler) is ours.DDIMScheduler
    with pytest.raises(ValueError, match="should be"):  # a scheduler of the wrong kind, refused by diffusers
        diffusers.DDPMPipeline.from_pretrained(tmp_path, scheduler=diffusers.UNet2DModel(sample_size=8))


class _TwoSchedulers(diffusers.DiffusionPipeline):
    """A pipeline shaped like DeepFloyd IF's super-resolution stage (a second DDPM scheduler for
    noising its input) that also holds a sub-pipeline, as Kandinsky's combined pipelines do."""

    def __init__(self, unet, scheduler, image_noising_scheduler, other=None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, image_noising_scheduler=image_noising_scheduler,
                              other=other)
        self.inner = diffusers.DDPMPipeline(unet, image_noising_scheduler)


def test_accelerate_swaps_every_scheduler_and_keeps_sharing(unet):
    shared = diffusers.DDPMScheduler(num_train_timesteps=300)
    pipe = ours.accelerate(_TwoSchedulers(unet, diffusers.DDIMScheduler(), shared, diffusers.PNDMScheduler()))
    assert type(pipe.scheduler) is ours.DDIMScheduler and type(pipe.image_noising_scheduler) is ours.DDPMScheduler
    assert pipe.inner.scheduler is pipe.image_noising_scheduler  # still one object, now ours
    assert pipe.image_noising_scheduler.config.num_train_timesteps == 300
    assert type(pipe.other) is diffusers.PNDMScheduler  # no counterpart: left alone
    assert pipe.config.image_noising_scheduler == ("diffusers", "DDPMScheduler")
