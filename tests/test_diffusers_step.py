"""``step`` of the diffusers drop-ins equals diffusers' step (issue 6, part 1).

Parity rule (fp32): diffusers computes its coefficients in float32, and at the first timesteps
(1 - alpha_t of order 1e-4) that arithmetic alone is off by more than 1e-5. So every step is run
three times: ours, diffusers', and diffusers' own code in float64 on the same inputs (tables in
float64: the truth). At every timestep ours must be within 1e-5 of the truth (relative to the
output's scale), or within twice diffusers' own error where that is larger; where diffusers is
itself within 1e-5 / 2 of the truth, ours must be within 1e-5 of diffusers; where diffusers is off
by more than 2e-5, ours must be closer to the truth. Each test also checks that most timesteps
take the direct comparison, so the rule cannot quietly degrade into the fallback.
"""

import contextlib
import inspect

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
import diffusers.schedulers.scheduling_ddim as diffusers_ddim  # noqa: E402
import diffusers.schedulers.scheduling_ddpm as diffusers_ddpm  # noqa: E402
from diffusers.utils.torch_utils import randn_tensor  # noqa: E402

from vdm_fast.integrations import diffusers as ours  # noqa: E402

TOL = 1e-5
PREDICTIONS = ["epsilon", "sample", "v_prediction"]
VARIANCES = ["fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range"]
CLIPPING = {
    "none": dict(clip_sample=False),
    "clip": dict(clip_sample=True, clip_sample_range=1.5),
    "threshold": dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=2.0),
}
SHAPE = (4, 3, 6, 5)


# ---------------------------------------------------------------------------------------------
# Three schedulers per setting: diffusers', ours, and diffusers' code on float64 tables (truth).


def _truth(kind, n_steps=None, timesteps=None, **config):
    if config.get("variance_type") == "fixed_large_log":
        # diffusers' step is NaN there (log(beta) ** 0.5); the intended std is sqrt(beta) = fixed_large's.
        config = dict(config, variance_type="fixed_large")
    sched = getattr(diffusers, kind)(**config)
    _set_timesteps(sched, n_steps, timesteps)
    acp = torch.cumprod(1 - sched.betas.double(), 0)
    sched.alphas_cumprod, sched.one = acp, torch.tensor(1.0, dtype=torch.float64)
    if kind == "DDIMScheduler":
        sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64) if sched.config.set_alpha_to_one else acp[0]
    return sched


def _set_timesteps(sched, n_steps, timesteps):
    if timesteps is not None:
        sched.set_timesteps(timesteps=timesteps)
    elif n_steps is not None:
        sched.set_timesteps(n_steps)


def _three(kind, n_steps=None, timesteps=None, **config):
    theirs, mine = getattr(diffusers, kind)(**config), getattr(ours, kind)(**config)
    _set_timesteps(theirs, n_steps, timesteps)
    _set_timesteps(mine, n_steps, timesteps)
    return theirs, mine, _truth(kind, n_steps, timesteps, **config)


@contextlib.contextmanager
def _diffusers_noise(noise):
    """Make diffusers' modules draw ``noise`` (for the float64 truth, which must see the fp32 draw)."""
    saved = diffusers_ddpm.randn_tensor, diffusers_ddim.randn_tensor

    def fake(shape, generator=None, device=None, dtype=None, layout=None):
        assert tuple(shape) == tuple(noise.shape)
        return noise.to(dtype)

    diffusers_ddpm.randn_tensor = diffusers_ddim.randn_tensor = fake
    try:
        yield
    finally:
        diffusers_ddpm.randn_tensor, diffusers_ddim.randn_tensor = saved


def _inputs(variance_type=None, shape=SHAPE, dtype=torch.float32, scale=2.0):
    sample = (scale * torch.randn(shape)).to(dtype)
    model_output = torch.randn(shape)
    if variance_type in ("learned", "learned_range"):
        # second half of the channels: the predicted variance (learned) or the interpolation
        # fraction in [-1, 1] (learned_range)
        extra = 0.02 * torch.rand(shape) + 1e-4 if variance_type == "learned" else 2 * torch.rand(shape) - 1
        model_output = torch.cat([model_output, extra], dim=1)
    return model_output.to(dtype), sample


def _run(theirs, mine, truth, model_output, t, sample, seed=0, **kw):
    """(ours, diffusers', truth) outputs of one step, each a (prev_sample, pred_original_sample) pair."""
    a = theirs.step(model_output, t, sample, generator=torch.Generator().manual_seed(seed), return_dict=False, **kw)
    b = mine.step(model_output, t, sample, generator=torch.Generator().manual_seed(seed), return_dict=False, **kw)
    noise = randn_tensor(sample.shape, generator=torch.Generator().manual_seed(seed), dtype=sample.dtype)
    with _diffusers_noise(noise):
        c = truth.step(model_output.double(), t, sample.double(), return_dict=False, **kw)
    return b, a, c


class Parity:
    """Applies the parity rule of the module docstring and counts direct comparisons."""

    def __init__(self):
        self.direct = self.total = 0

    def check(self, mine, theirs, truth, nan_theirs_ok=False):
        for name, x, y, z in zip(("prev_sample", "pred_original_sample"), mine, theirs, truth):
            assert x.dtype == y.dtype and x.shape == y.shape, name
            scale = max(1.0, z.abs().max().item())
            err_ours = (x.double() - z).abs().max().item() / scale
            self.total += 1
            if nan_theirs_ok and torch.isnan(y).any():
                assert err_ours <= TOL, f"{name}: ours off the float64 truth by {err_ours:.3g} (x scale)"
                continue
            err_theirs = (y.double() - z).abs().max().item() / scale
            # x̂ of epsilon-prediction at large t cancels terms of size 1/sqrt(alpha_bar) ~ 100s, so the
            # float32 rounding of any implementation can exceed TOL of the result: allow twice diffusers'.
            assert err_ours <= max(TOL, 2 * err_theirs), \
                f"{name}: ours off the float64 truth by {err_ours:.3g}, diffusers by {err_theirs:.3g}"
            if err_theirs <= TOL / 2:
                self.direct += 1
                torch.testing.assert_close(x, y, rtol=0, atol=TOL * scale, msg=lambda m: f"{name}: {m}")
            elif err_theirs > 2 * TOL:  # diffusers' float32 coefficients are off: ours must be closer
                assert err_ours < err_theirs, f"{name}: ours {err_ours:.3g} vs diffusers {err_theirs:.3g}"

    def assert_mostly_direct(self, fraction=0.5):
        assert self.direct >= fraction * self.total, (self.direct, self.total)


# ---------------------------------------------------------------------------------------------
# Parity grids


DDPM_TIMESTEPS = [999, 700, 500, 120, 17, 3, 1, 0]


@pytest.mark.parametrize("clipping", list(CLIPPING))
@pytest.mark.parametrize("variance_type", VARIANCES)
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_ddpm_step_matches_diffusers(prediction_type, variance_type, clipping):
    config = dict(prediction_type=prediction_type, variance_type=variance_type, **CLIPPING[clipping])
    theirs, mine, truth = _three("DDPMScheduler", **config)
    parity = Parity()
    for i, t in enumerate(DDPM_TIMESTEPS):
        model_output, sample = _inputs(variance_type)
        mine_out, theirs_out, truth_out = _run(theirs, mine, truth, model_output, t, sample, seed=i)
        if variance_type == "fixed_large_log" and t > 0:
            assert torch.isnan(theirs_out[0]).all()  # diffusers' NaN; ours follows fixed_large (module docstring)
        parity.check(mine_out, theirs_out, truth_out, nan_theirs_ok=variance_type == "fixed_large_log")
    parity.assert_mostly_direct(0.25 if variance_type == "fixed_large_log" else 0.5)


@pytest.mark.parametrize("clipping", list(CLIPPING))
@pytest.mark.parametrize("use_clipped", [False, True], ids=["model_eps", "clipped_eps"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_ddim_step_matches_diffusers(prediction_type, eta, use_clipped, clipping):
    theirs, mine, truth = _three("DDIMScheduler", n_steps=10, prediction_type=prediction_type, **CLIPPING[clipping])
    parity = Parity()
    for i, t in enumerate(theirs.timesteps.tolist()):
        model_output, sample = _inputs()
        outs = _run(theirs, mine, truth, model_output, t, sample, seed=i, eta=eta, use_clipped_model_output=use_clipped)
        parity.check(*outs)
    parity.assert_mostly_direct()


@pytest.mark.parametrize("steps_offset", [0, 1])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("kind", ["DDPMScheduler", "DDIMScheduler"])
def test_timestep_spacing_and_offset(kind, spacing, steps_offset):
    extra = dict(set_alpha_to_one=False) if kind == "DDIMScheduler" else {}
    theirs, mine, truth = _three(kind, n_steps=7, timestep_spacing=spacing, steps_offset=steps_offset,
                                 prediction_type="v_prediction", **extra)
    parity = Parity()
    for i, t in enumerate(theirs.timesteps.tolist()):
        model_output, sample = _inputs()
        kw = dict(eta=0.3) if kind == "DDIMScheduler" else {}
        parity.check(*_run(theirs, mine, truth, model_output, t, sample, seed=i, **kw))
    parity.assert_mostly_direct()


@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_ddim_set_alpha_to_one(set_alpha_to_one):
    theirs, mine, truth = _three("DDIMScheduler", n_steps=4, set_alpha_to_one=set_alpha_to_one)
    model_output, sample = _inputs()
    # the last timestep is the one whose previous alpha_bar is final_alpha_cumprod
    Parity().check(*_run(theirs, mine, truth, model_output, int(theirs.timesteps[-1]), sample, eta=1.0))


def test_ddpm_custom_timesteps():
    theirs, mine, truth = _three("DDPMScheduler", timesteps=[901, 640, 300, 42, 5, 0], variance_type="fixed_small_log")
    parity = Parity()
    for i, t in enumerate([901, 640, 300, 42, 5, 0]):
        model_output, sample = _inputs()
        parity.check(*_run(theirs, mine, truth, model_output, t, sample, seed=i))
    parity.assert_mostly_direct()


@pytest.mark.parametrize("config", [
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    dict(beta_schedule="squaredcos_cap_v2"),
    dict(beta_schedule="linear", rescale_betas_zero_snr=True, prediction_type="v_prediction",
         timestep_spacing="trailing"),
    dict(trained_betas=torch.linspace(1e-4, 0.03, 300).tolist(), num_train_timesteps=300),
], ids=["scaled_linear", "cosine", "zero_snr", "trained_betas"])
@pytest.mark.parametrize("kind", ["DDPMScheduler", "DDIMScheduler"])
def test_beta_schedules(kind, config):
    theirs, mine, truth = _three(kind, n_steps=8, **config)
    parity = Parity()
    for i, t in enumerate(theirs.timesteps.tolist()):
        model_output, sample = _inputs()
        parity.check(*_run(theirs, mine, truth, model_output, t, sample, seed=i))
    parity.assert_mostly_direct()


def test_timestep_as_tensor_like_diffusers_loops():
    # pipelines pass `t` from `scheduler.timesteps`: a 0-d int64 tensor
    theirs, mine, truth = _three("DDIMScheduler", n_steps=5)
    model_output, sample = _inputs()
    for t in theirs.timesteps:
        Parity().check(*_run(theirs, mine, truth, model_output, t, sample))


def test_ddim_variance_noise():
    theirs, mine, truth = _three("DDIMScheduler", n_steps=10)
    model_output, sample = _inputs()
    noise = torch.randn(SHAPE)
    a = theirs.step(model_output, 500, sample, eta=0.7, variance_noise=noise).prev_sample
    b = mine.step(model_output, 500, sample, eta=0.7, variance_noise=noise).prev_sample
    torch.testing.assert_close(b, a, rtol=TOL, atol=TOL)


def test_tables_follow_set_timesteps():
    theirs, mine = diffusers.DDIMScheduler(), ours.DDIMScheduler()
    model_output, sample = _inputs()
    for n in (10, 25, 10):
        theirs.set_timesteps(n)
        mine.set_timesteps(n)
        t = int(theirs.timesteps[3])
        torch.testing.assert_close(mine.step(model_output, t, sample).prev_sample,
                                   theirs.step(model_output, t, sample).prev_sample, rtol=TOL, atol=TOL)


# ---------------------------------------------------------------------------------------------
# Per-sample timesteps


def _per_sample_setup(kind, config, n_steps):
    theirs, mine, truth = _three(kind, n_steps=n_steps, **config)
    ts = theirs.timesteps
    # every position once, including the last (no previous timestep) and, for DDPM, t = 0
    pick = torch.tensor([0, len(ts) - 1, 2, 1, len(ts) // 2, len(ts) - 2])
    return theirs, mine, truth, ts[pick]


@pytest.mark.parametrize("config", [
    dict(prediction_type="epsilon", variance_type="fixed_small", clip_sample=True),
    dict(prediction_type="v_prediction", variance_type="learned_range", clip_sample=False),
    dict(prediction_type="sample", variance_type="fixed_large", thresholding=True, sample_max_value=3.0),
    dict(prediction_type="epsilon", variance_type="learned", clip_sample=False),
], ids=["eps-small-clip", "v-learned_range", "x0-large-threshold", "eps-learned"])
@pytest.mark.parametrize("n_steps", [None, 10], ids=["all_steps", "10_steps"])
def test_ddpm_per_sample_timesteps_equal_loop(config, n_steps):
    theirs, mine, truth, t = _per_sample_setup("DDPMScheduler", config, n_steps)
    if n_steps is None:
        t = torch.tensor([999, 0, 1, 500, 37, 2])
    _check_per_sample(theirs, mine, truth, t, config.get("variance_type"), {})


@pytest.mark.parametrize("kw", [dict(eta=0.0), dict(eta=1.0, use_clipped_model_output=True)], ids=["eta0", "eta1"])
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_ddim_per_sample_timesteps_equal_loop(prediction_type, kw):
    theirs, mine, truth, t = _per_sample_setup("DDIMScheduler", dict(prediction_type=prediction_type), 10)
    _check_per_sample(theirs, mine, truth, t, None, kw)


def _check_per_sample(theirs, mine, truth, t, variance_type, kw):
    batch = t.shape[0]
    model_output, sample = _inputs(variance_type, shape=(batch, 3, 5, 4))
    seeds = [100 + b for b in range(batch)]
    # ours, once, with one generator per sample (diffusers' randn_tensor draws sample b from generators[b])
    mine_prev, mine_x0 = mine.step(model_output, t, sample, generator=[torch.Generator().manual_seed(s) for s in seeds],
                                   return_dict=False, **kw)
    parity = Parity()
    for b in range(batch):
        sl = slice(b, b + 1)
        outs = _run(theirs, mine, truth, model_output[sl], int(t[b]), sample[sl], seed=seeds[b], **kw)
        parity.check((mine_prev[sl], mine_x0[sl]), outs[1], outs[2])
        # and exactly ours with that one timestep (same table, same kernel)
        torch.testing.assert_close(mine_prev[sl], outs[0][0], rtol=0, atol=0)
        torch.testing.assert_close(mine_x0[sl], outs[0][1], rtol=0, atol=0)
    parity.assert_mostly_direct()


def test_per_sample_timesteps_from_other_int_dtypes():
    mine = ours.DDPMScheduler()
    model_output, sample = _inputs(shape=(3, 2, 4))
    ref = mine.step(model_output, torch.tensor([5, 900, 0]), sample, generator=torch.Generator().manual_seed(0))
    for t in (torch.tensor([5, 900, 0], dtype=torch.int32), torch.tensor([5, 900, 0], dtype=torch.int16)):
        out = mine.step(model_output, t, sample, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(out.prev_sample, ref.prev_sample, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Low precision: coefficients in float64, arithmetic in float32


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind", ["DDPMScheduler", "DDIMScheduler"])
def test_low_precision_more_accurate_than_diffusers(kind, dtype):
    theirs, mine, truth = _three(kind, n_steps=20, prediction_type="epsilon", clip_sample=False)
    eps = torch.finfo(dtype).eps
    worse = 0
    for i, t in enumerate(theirs.timesteps.tolist()):
        model_output, sample = _inputs(dtype=dtype, scale=1.0)
        kw = dict(eta=0.5) if kind == "DDIMScheduler" else {}
        (mp, mx), (tp, tx), (zp, zx) = _run(theirs, mine, truth, model_output, t, sample, seed=i, **kw)
        for x, y, z in ((mp, tp, zp), (mx, tx, zx)):
            assert x.dtype == dtype
            err_ours = (x.double() - z).abs().max().item()
            err_theirs = (y.double() - z).abs().max().item()
            # ours: the output's own rounding (half an ulp) plus float32 arithmetic, nothing else
            assert err_ours <= 0.6 * eps * z.abs().max().item(), (t, err_ours)
            worse += err_ours > err_theirs
    assert worse == 0


# ---------------------------------------------------------------------------------------------
# Whole loops


def _toy_model(x, t):
    # deterministic stand-in for a denoiser, different at every timestep
    return torch.tanh(x) * (0.5 + 0.4 * torch.sin(torch.as_tensor(t, dtype=torch.float32) / 97))


@pytest.mark.parametrize("kind, kw", [
    ("DDIMScheduler", dict(eta=0.0)),
    ("DDIMScheduler", dict(eta=1.0)),
    ("DDPMScheduler", {}),
], ids=["ddim-eta0", "ddim-eta1", "ddpm"])
def test_denoising_loop_equals_diffusers(kind, kw):
    theirs, mine = getattr(diffusers, kind)(clip_sample=False), getattr(ours, kind)(clip_sample=False)
    theirs.set_timesteps(10)
    mine.set_timesteps(10)
    start = torch.randn(2, 3, 8, 8)
    results = []
    for sched in (theirs, mine):
        x, gen = start.clone(), torch.Generator().manual_seed(7)
        for t in sched.timesteps:
            x = sched.step(_toy_model(x, t), t, x, generator=gen, **kw).prev_sample
        results.append(x)
    torch.testing.assert_close(results[1], results[0], rtol=TOL, atol=TOL * max(1.0, results[0].abs().max().item()))


# ---------------------------------------------------------------------------------------------
# API: signature, outputs, layouts, config


@pytest.mark.parametrize("kind", ["DDPMScheduler", "DDIMScheduler"])
def test_signature_and_outputs_like_diffusers(kind):
    def params(fn):
        return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]

    assert params(getattr(ours, kind).step) == params(getattr(diffusers, kind).step)
    mine = getattr(ours, kind)()
    mine.set_timesteps(10)
    model_output, sample = _inputs()
    out = mine.step(model_output, 900, sample)
    expected = diffusers_ddpm.DDPMSchedulerOutput if kind == "DDPMScheduler" else diffusers_ddim.DDIMSchedulerOutput
    assert type(out) is expected
    tup = mine.step(model_output, 900, sample, return_dict=False)
    assert isinstance(tup, tuple) and len(tup) == 2
    torch.testing.assert_close(tup[1], out.pred_original_sample, rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced"])
def test_layouts_and_inputs_untouched(layout):
    theirs, mine, _ = _three("DDIMScheduler", n_steps=10)
    model_output, sample = _inputs(shape=(3, 4, 6, 6))
    if layout == "channels_last":
        model_output, sample = (x.to(memory_format=torch.channels_last) for x in (model_output, sample))
    elif layout == "transposed":
        model_output, sample = (x.transpose(2, 3) for x in (model_output, sample))
    else:
        model_output, sample = (torch.randn(3, 8, 6, 6)[:, ::2] for _ in range(2))
    before = model_output.clone(), sample.clone()
    a = theirs.step(model_output, 601, sample, eta=0.5, generator=torch.Generator().manual_seed(1))
    b = mine.step(model_output, 601, sample, eta=0.5, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(b.prev_sample, a.prev_sample, rtol=TOL, atol=TOL)
    torch.testing.assert_close(model_output, before[0], rtol=0, atol=0)
    torch.testing.assert_close(sample, before[1], rtol=0, atol=0)


def test_float64_and_empty_batch():
    theirs, mine = diffusers.DDPMScheduler(), ours.DDPMScheduler()
    model_output, sample = (x.double() for x in _inputs())
    a = theirs.step(model_output, 300, sample, generator=torch.Generator().manual_seed(0)).prev_sample
    b = mine.step(model_output, 300, sample, generator=torch.Generator().manual_seed(0)).prev_sample
    assert b.dtype == torch.float64
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)  # diffusers' float32 tables bound this
    empty = torch.zeros(0, 3, 4, 4)
    out = mine.step(empty, torch.zeros(0, dtype=torch.long), empty)
    assert out.prev_sample.shape == (0, 3, 4, 4)


def _public(config):
    return {k: v for k, v in config.items() if not k.startswith("_")}  # without diffusers' bookkeeping


@pytest.mark.parametrize("kind", ["DDPMScheduler", "DDIMScheduler"])
def test_config_round_trip_and_step(kind, tmp_path):
    config = dict(num_train_timesteps=600, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                  clip_sample=False, timestep_spacing="trailing")
    mine = getattr(ours, kind)(**config)
    mine.save_pretrained(tmp_path)
    loaded = getattr(ours, kind).from_pretrained(tmp_path)
    plain = getattr(diffusers, kind).from_pretrained(tmp_path)
    assert type(loaded) is getattr(ours, kind) and _public(loaded.config) == _public(mine.config)
    from_plain = getattr(ours, kind).from_config(plain.config)
    assert type(from_plain) is getattr(ours, kind) and _public(from_plain.config) == _public(plain.config)
    for sched in (loaded, plain, from_plain):
        sched.set_timesteps(6)
    model_output, sample = _inputs()
    t = int(plain.timesteps[2])
    expected = plain.step(model_output, t, sample, generator=torch.Generator().manual_seed(3)).prev_sample
    for sched in (loaded, from_plain):
        got = sched.step(model_output, t, sample, generator=torch.Generator().manual_seed(3)).prev_sample
        torch.testing.assert_close(got, expected, rtol=TOL, atol=TOL)


def test_backend_attribute_reaches_the_ops_and_is_not_config(tmp_path):
    mine = ours.DDIMScheduler()
    mine.set_timesteps(10)
    model_output, sample = _inputs()
    expected = mine.step(model_output, 501, sample).prev_sample
    mine.vdm_fast_backend = "reference"
    # The reference and the fused kernel agree to float32 rounding (the kernel may fuse a multiply-add).
    torch.testing.assert_close(mine.step(model_output, 501, sample).prev_sample, expected, rtol=1e-5, atol=1e-6)
    mine.vdm_fast_backend = "no-such-backend"
    with pytest.raises(ValueError, match="no-such-backend"):
        mine.step(model_output, 501, sample)
    with pytest.raises(ValueError, match="no-such-backend"):
        mine.add_noise(sample, model_output, torch.tensor([3, 4, 5, 6]))
    mine.save_pretrained(tmp_path)
    assert "vdm_fast_backend" not in ours.DDIMScheduler.from_pretrained(tmp_path).config
    assert ours.DDIMScheduler.from_pretrained(tmp_path).vdm_fast_backend is None


# ---------------------------------------------------------------------------------------------
# Bad input


def _ddpm_and_inputs():
    sched = ours.DDPMScheduler()
    model_output, sample = _inputs()
    return sched, model_output, sample


@pytest.mark.parametrize("timestep, error, match", [
    (500.0, TypeError, "timestep"),
    (True, TypeError, "timestep"),
    (torch.tensor(3.0), TypeError, "timestep"),
    (1000, ValueError, "timestep"),
    (-1, ValueError, "timestep"),
    (torch.tensor([1, 2]), ValueError, "timestep"),
    (torch.tensor([[1], [2], [3], [4]]), ValueError, "timestep"),
    (torch.tensor([1, 2, 3, 1000]), ValueError, "timestep"),
    ("10", TypeError, "timestep"),
])
def test_bad_timestep(timestep, error, match):
    sched, model_output, sample = _ddpm_and_inputs()
    with pytest.raises(error, match=match):
        sched.step(model_output, timestep, sample)


def test_timestep_not_in_schedule():
    sched, model_output, sample = _ddpm_and_inputs()
    sched.set_timesteps(10)
    with pytest.raises(ValueError, match="timestep"):
        sched.step(model_output, 901, sample)
    with pytest.raises(ValueError, match="timestep"):
        sched.step(model_output, torch.tensor([900, 800, 901, 0]), sample)


def test_bad_tensors():
    sched, model_output, sample = _ddpm_and_inputs()
    with pytest.raises(ValueError, match="model_output"):
        sched.step(model_output[:, :2], 10, sample)
    with pytest.raises(TypeError, match="model_output"):
        sched.step(model_output.double(), 10, sample)
    with pytest.raises(TypeError, match="sample"):
        sched.step(model_output, 10, sample.long())
    with pytest.raises(TypeError, match="model_output"):
        sched.step(model_output.numpy(), 10, sample)
    learned = ours.DDPMScheduler(variance_type="learned_range")
    with pytest.raises(ValueError, match="model_output"):
        learned.step(model_output, 10, sample)


def test_ddim_bad_arguments():
    sched = ours.DDIMScheduler()
    model_output, sample = _inputs()
    with pytest.raises(ValueError, match="set_timesteps"):
        sched.step(model_output, 10, sample)
    sched.set_timesteps(10)
    with pytest.raises(ValueError, match="generator"):
        sched.step(model_output, 901, sample, eta=1.0, generator=torch.Generator(), variance_noise=torch.randn(SHAPE))
    with pytest.raises(ValueError, match="variance_noise"):
        sched.step(model_output, 901, sample, eta=1.0, variance_noise=torch.randn(2, 3))
    with pytest.raises(TypeError, match="eta"):
        sched.step(model_output, 901, sample, eta="1")
    with pytest.raises(ValueError, match="prediction_type"):
        bad = ours.DDIMScheduler(prediction_type="score")
        bad.set_timesteps(10)
        bad.step(model_output, 901, sample)


# ---------------------------------------------------------------------------------------------
# GPU: tables built on the sample's device, timesteps and generators from either device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_equals_cpu_and_diffusers():
    theirs, mine, cpu = diffusers.DDIMScheduler(), ours.DDIMScheduler(), ours.DDIMScheduler()
    theirs.set_timesteps(10, device="cuda")
    mine.set_timesteps(10, device="cuda")
    cpu.set_timesteps(10)
    model_output, sample = _inputs()
    mo_gpu, s_gpu = model_output.cuda(), sample.cuda()
    for t in theirs.timesteps:  # 0-d CUDA tensors, as a pipeline passes them
        noise = torch.randn(SHAPE)
        a = theirs.step(mo_gpu, t, s_gpu, eta=0.5, variance_noise=noise.cuda()).prev_sample
        b = mine.step(mo_gpu, t, s_gpu, eta=0.5, variance_noise=noise.cuda()).prev_sample
        c = cpu.step(model_output, t.cpu(), sample, eta=0.5, variance_noise=noise).prev_sample
        torch.testing.assert_close(b.cpu(), c, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)  # diffusers' float32 coefficients bound this
    t = theirs.timesteps[[0, 3, 9, 5]]
    for ts in (t, t.cpu()):  # per-sample timesteps on either device
        got = mine.step(mo_gpu, ts, s_gpu).prev_sample
        torch.testing.assert_close(got.cpu(), cpu.step(model_output, t.cpu(), sample).prev_sample, rtol=1e-6, atol=1e-6)
    ddpm_gpu, ddpm_cpu = ours.DDPMScheduler(), ours.DDPMScheduler()
    # a CPU generator with CUDA data: diffusers' randn_tensor draws on the CPU and moves the noise
    got = ddpm_gpu.step(mo_gpu, 400, s_gpu, generator=torch.Generator().manual_seed(5)).prev_sample
    want = ddpm_cpu.step(model_output, 400, sample, generator=torch.Generator().manual_seed(5)).prev_sample
    torch.testing.assert_close(got.cpu(), want, rtol=1e-6, atol=1e-6)
    assert {key[0].type for key in ddpm_gpu._vdm_fast_tables} == {"cuda"}
