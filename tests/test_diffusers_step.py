"""``step`` of the diffusers drop-ins equals diffusers' step (issue 6, part 1).

Parity rule (tests/numerics.py): every step is run by ours and by diffusers in float32, and by
diffusers' own step code on float64 data twice, with its alphas_cumprod in float64 (from the betas,
the table ours is built from) and with its float32 table (exactly as its float32 run has it). Ours
must lie within K times the running error bound of our step (our float64 coefficient table rounded
once to the compute dtype, reference.reverse_step, thresholding and learned variances as ``step``
does them) of the first, plus that truth's own float64 bound; diffusers' float32 step within K
times the running error bound of its own step at float32 of the second. So ours differs from
diffusers' float32 step by at most both bounds plus the effect of diffusers' float32 table (its
float32 cumprod, a few ulps off, and 1 - alpha_bar formed from it: off by ~3e-4 relative at t = 1).
Where x̂ of epsilon-prediction cancels terms of size 1/sqrt(alpha_bar) ~ 150 (t = 999), our bound
exceeds the old fixed 1e-5 of the output's scale (up to 13x, with thresholding), as the old rule's
fallback, twice diffusers' own error, did.
"""

import contextlib
import inspect
import math
from dataclasses import dataclass

import pytest
import torch
import torch._inductor.config  # fallback_random, patched by the compile tests
from torch.utils._python_dispatch import _disable_current_modes

diffusers = pytest.importorskip("diffusers")
import diffusers.schedulers.scheduling_ddim as diffusers_ddim  # noqa: E402
import diffusers.schedulers.scheduling_ddpm as diffusers_ddpm  # noqa: E402
from diffusers.utils.torch_utils import randn_tensor  # noqa: E402

import numerics  # noqa: E402
import vdm_fast  # noqa: E402
from vdm_fast import reference  # noqa: E402
from vdm_fast.integrations import _diffusers_coeffs as coeffs  # noqa: E402
from vdm_fast.integrations import diffusers as ours  # noqa: E402

PREDICTIONS = ["epsilon", "sample", "v_prediction"]
VARIANCES = ["fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range"]
CLIPPING = {
    "none": dict(clip_sample=False),
    "clip": dict(clip_sample=True, clip_sample_range=1.5),
    "threshold": dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=2.0),
}
SHAPE = (4, 3, 6, 5)


# ---------------------------------------------------------------------------------------------
# Three schedulers per setting: diffusers', ours, and diffusers' code run on float64 data (truth).


def _truth(kind, n_steps=None, timesteps=None, **config):
    """The scheduler whose step, on float64 data and a table given with ``_table``, is a truth."""
    if config.get("variance_type") == "fixed_large_log":
        # diffusers' step is NaN there (log(beta) ** 0.5); the intended std is sqrt(beta) = fixed_large's.
        config = dict(config, variance_type="fixed_large")
    sched = getattr(diffusers, kind)(**config)
    _set_timesteps(sched, n_steps, timesteps)
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
def _table(sched, acp):
    """``sched`` with alphas_cumprod ``acp`` and what diffusers derives from it (DDPM's ``one``,
    DDIM's final alpha_bar) in its dtype; restored afterwards."""
    with _disable_current_modes():  # an exact 1 (diffusers' torch.tensor(1.0)), not a rounded literal
        one = torch.ones((), dtype=acp.dtype)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sched, "alphas_cumprod", acp)
        if isinstance(sched, diffusers.DDPMScheduler):
            mp.setattr(sched, "one", one)
        else:
            mp.setattr(sched, "final_alpha_cumprod", one if sched.config.set_alpha_to_one else acp[0])
        yield sched


@contextlib.contextmanager
def _diffusers_noise(noise):
    """Make diffusers' modules draw ``noise`` (for its float64 runs, which must see the fp32 draw)."""
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


@dataclass
class Step:
    """One step four ways (module docstring); each tensor stacks (prev_sample, pred_original_sample)."""

    mine: torch.Tensor
    theirs: torch.Tensor
    truth: numerics.Reference  # diffusers' code in float64 on its float64 table, with its float64 bound
    bound: torch.Tensor  # of our step
    theirs_truth: numerics.Reference  # diffusers' code in float64 on its float32 table, with the bound at float32


def _their_step(sched, acp, model_output, t, sample, **kw):
    with _table(sched, acp):
        return torch.stack(sched.step(model_output, t, sample, return_dict=False, **kw))


def _ours_reference(mine, model_output, t, sample, noise, kw):
    """Our step's float64 truth and running error bound at its compute precision (stacked as
    ``Step``'s): the float64 table columns of ``t`` (rounded once, as the op rounds them), then what
    ``step`` does with them, on the reference backend (dynamic thresholding's quantile, learned
    variances, both reverse_step passes)."""
    if isinstance(mine, ours.DDIMScheduler):
        step_args = (float(kw.get("eta", 0.0)), bool(kw.get("use_clipped_model_output", False)))
    else:
        step_args = ()
    predicted_variance = None
    if getattr(mine, "variance_type", None) in coeffs.LEARNED:
        model_output, predicted_variance = torch.split(model_output, sample.shape[1], dim=1)
    cols, _ = mine._vdm_columns("bound", t, sample, step_args)
    if cols.dim() == 1:  # one timestep for all: reverse_step's (6, B) form
        cols = cols[:, None].expand(-1, sample.shape[0])
    threshold, clip = mine._vdm_clip()

    def step(cols, model_output, sample, noise, predicted_variance):
        if threshold:
            cols = mine._vdm_threshold(cols, sample, model_output)
        if predicted_variance is not None:
            noise = mine._vdm_learned_noise(cols, predicted_variance, noise)
        return torch.stack([reference.reverse_step(sample, model_output, cols[coeffs.STEP], clip=clip, noise=noise),
                            reference.reverse_step(sample, model_output, cols[coeffs.X0], clip=clip)])

    precision = torch.float64 if sample.dtype == torch.float64 else torch.float32
    return numerics.running_error(step, (cols, model_output, sample, noise, predicted_variance), dtype=precision)


def _run(theirs, mine, truth, model_output, t, sample, seed=0, variance_noise=None, **kw):
    """One step four ways (module docstring): ``Step``. The noise is drawn from ``seed`` as diffusers
    draws it, or given as ``variance_noise`` (DDIM)."""
    def draw():  # a fresh generator for each scheduler, or the given noise
        if variance_noise is None:
            return {"generator": torch.Generator().manual_seed(seed)}
        return {"variance_noise": variance_noise}

    a = theirs.step(model_output, t, sample, return_dict=False, **draw(), **kw)
    b = mine.step(model_output, t, sample, return_dict=False, **draw(), **kw)
    noise = variance_noise
    if noise is None:
        noise = randn_tensor(sample.shape, generator=torch.Generator().manual_seed(seed), dtype=sample.dtype)
    acp64 = torch.cumprod(1 - truth.betas.double(), 0)
    with _diffusers_noise(noise):
        want = numerics.running_error(lambda acp, m, s: _their_step(truth, acp, m, t, s, **kw),
                                      (acp64, model_output, sample), dtype=torch.float64)
        theirs_truth = numerics.running_error(lambda acp, m, s: _their_step(truth, acp, m, t, s, **kw),
                                              (theirs.alphas_cumprod, model_output, sample), dtype=torch.float32)
    return Step(torch.stack(b), torch.stack(a), want, _ours_reference(mine, model_output, t, sample, noise, kw).bound,
                theirs_truth)


def _check(step, mine=None, theirs=None, nan_theirs_ok=False):
    """The parity rule of the module docstring; ``mine`` and ``theirs`` replace ``step.mine`` and
    ``step.theirs`` (a slice of a batched run, a run on another device)."""
    mine = step.mine if mine is None else mine
    theirs = step.theirs if theirs is None else theirs
    assert mine.dtype == theirs.dtype and mine.shape == theirs.shape
    for i, name in enumerate(("prev_sample", "pred_original_sample")):
        numerics.assert_within_bound(mine[i], step.truth.value[i], numerics.K * step.bound[i] + step.truth.bound[i],
                                     k=1, msg=f"{name}: ours")
        if nan_theirs_ok and torch.isnan(theirs[i]).any():
            continue  # diffusers' fixed_large_log NaN; the truth follows fixed_large
        numerics.assert_within_bound(theirs[i], step.theirs_truth.value[i], step.theirs_truth.bound[i],
                                     msg=f"{name}: diffusers' float32 step")


# ---------------------------------------------------------------------------------------------
# Parity grids


DDPM_TIMESTEPS = [999, 700, 500, 120, 17, 3, 1, 0]


@pytest.mark.parametrize("clipping", list(CLIPPING))
@pytest.mark.parametrize("variance_type", VARIANCES)
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_ddpm_step_matches_diffusers(prediction_type, variance_type, clipping):
    config = dict(prediction_type=prediction_type, variance_type=variance_type, **CLIPPING[clipping])
    theirs, mine, truth = _three("DDPMScheduler", **config)
    for i, t in enumerate(DDPM_TIMESTEPS):
        model_output, sample = _inputs(variance_type)
        step = _run(theirs, mine, truth, model_output, t, sample, seed=i)
        if variance_type == "fixed_large_log" and t > 0:
            assert torch.isnan(step.theirs[0]).all()  # diffusers' NaN; ours follows fixed_large (module docstring)
        _check(step, nan_theirs_ok=variance_type == "fixed_large_log")


@pytest.mark.parametrize("clipping", list(CLIPPING))
@pytest.mark.parametrize("use_clipped", [False, True], ids=["model_eps", "clipped_eps"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_ddim_step_matches_diffusers(prediction_type, eta, use_clipped, clipping):
    theirs, mine, truth = _three("DDIMScheduler", n_steps=10, prediction_type=prediction_type, **CLIPPING[clipping])
    for i, t in enumerate(theirs.timesteps.tolist()):
        model_output, sample = _inputs()
        _check(_run(theirs, mine, truth, model_output, t, sample, seed=i, eta=eta, use_clipped_model_output=use_clipped))


@pytest.mark.parametrize("steps_offset", [0, 1])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("kind", ["DDPMScheduler", "DDIMScheduler"])
def test_timestep_spacing_and_offset(kind, spacing, steps_offset):
    extra = dict(set_alpha_to_one=False) if kind == "DDIMScheduler" else {}
    theirs, mine, truth = _three(kind, n_steps=7, timestep_spacing=spacing, steps_offset=steps_offset,
                                 prediction_type="v_prediction", **extra)
    for i, t in enumerate(theirs.timesteps.tolist()):
        model_output, sample = _inputs()
        kw = dict(eta=0.3) if kind == "DDIMScheduler" else {}
        _check(_run(theirs, mine, truth, model_output, t, sample, seed=i, **kw))


@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_ddim_set_alpha_to_one(set_alpha_to_one):
    theirs, mine, truth = _three("DDIMScheduler", n_steps=4, set_alpha_to_one=set_alpha_to_one)
    model_output, sample = _inputs()
    # the last timestep is the one whose previous alpha_bar is final_alpha_cumprod
    _check(_run(theirs, mine, truth, model_output, int(theirs.timesteps[-1]), sample, eta=1.0))


def test_ddpm_custom_timesteps():
    theirs, mine, truth = _three("DDPMScheduler", timesteps=[901, 640, 300, 42, 5, 0], variance_type="fixed_small_log")
    for i, t in enumerate([901, 640, 300, 42, 5, 0]):
        model_output, sample = _inputs()
        _check(_run(theirs, mine, truth, model_output, t, sample, seed=i))


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
    for i, t in enumerate(theirs.timesteps.tolist()):
        model_output, sample = _inputs()
        _check(_run(theirs, mine, truth, model_output, t, sample, seed=i))


def test_timestep_as_tensor_like_diffusers_loops():
    # pipelines pass `t` from `scheduler.timesteps`: a 0-d int64 tensor
    theirs, mine, truth = _three("DDIMScheduler", n_steps=5)
    model_output, sample = _inputs()
    for t in theirs.timesteps:
        _check(_run(theirs, mine, truth, model_output, t, sample))


def test_ddim_variance_noise():
    theirs, mine, truth = _three("DDIMScheduler", n_steps=10)
    model_output, sample = _inputs()
    noise = torch.randn(SHAPE)
    _check(_run(theirs, mine, truth, model_output, 500, sample, eta=0.7, variance_noise=noise))


def test_tables_follow_set_timesteps():
    theirs, mine = diffusers.DDIMScheduler(), ours.DDIMScheduler()
    model_output, sample = _inputs()
    for n in (10, 25, 10):
        theirs.set_timesteps(n)
        mine.set_timesteps(n)
        t = int(theirs.timesteps[3])
        _check(_run(theirs, mine, _truth("DDIMScheduler", n), model_output, t, sample))


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
    for b in range(batch):
        sl = slice(b, b + 1)
        step = _run(theirs, mine, truth, model_output[sl], int(t[b]), sample[sl], seed=seeds[b], **kw)
        _check(step, mine=torch.stack([mine_prev[sl], mine_x0[sl]]))
        # and exactly ours with that one timestep (same table, same kernel)
        torch.testing.assert_close(mine_prev[sl], step.mine[0], rtol=0, atol=0)
        torch.testing.assert_close(mine_x0[sl], step.mine[1], rtol=0, atol=0)


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
    worse = 0
    for i, t in enumerate(theirs.timesteps.tolist()):
        model_output, sample = _inputs(dtype=dtype, scale=1.0)
        kw = dict(eta=0.5) if kind == "DDIMScheduler" else {}
        step = _run(theirs, mine, truth, model_output, t, sample, seed=i, **kw)
        assert step.mine.dtype == dtype
        for x, y, z, bound in zip(step.mine, step.theirs, step.truth.value, step.bound):
            # ours: float32 arithmetic on the half data (its running error bound), and the rounding
            # of the result to half (which assert_within_bound adds), nothing else
            numerics.assert_within_bound(x, z, bound, msg=f"t={t}")
            worse += (x.double() - z).abs().max().item() > (y.double() - z).abs().max().item()
    assert worse == 0


# ---------------------------------------------------------------------------------------------
# Whole loops


def _toy_model(x, t):
    # deterministic stand-in for a denoiser, different at every timestep
    return torch.tanh(x) * (0.5 + 0.4 * math.sin(int(t) / 97))


@pytest.mark.parametrize("kind, kw", [
    ("DDIMScheduler", dict(eta=0.0)),
    ("DDIMScheduler", dict(eta=1.0)),
    ("DDPMScheduler", {}),
], ids=["ddim-eta0", "ddim-eta1", "ddpm"])
def test_denoising_loop_equals_diffusers(kind, kw):
    """Whole loops, bounded as single steps are (module docstring): running_error follows the
    model and every step, so the bounds grow with the steps."""
    theirs, mine = getattr(diffusers, kind)(clip_sample=False), getattr(ours, kind)(clip_sample=False)
    truth = _truth(kind, 10, clip_sample=False)
    theirs.set_timesteps(10)
    mine.set_timesteps(10)
    start = torch.randn(2, 3, 8, 8)
    results = []
    for sched in (theirs, mine):
        x, gen = start.clone(), torch.Generator().manual_seed(7)
        for t in sched.timesteps:
            x = sched.step(_toy_model(x, t), t, x, generator=gen, **kw).prev_sample
        results.append(x)
    # The noise of every step, drawn as both drew it (only where diffusers draws); zeros elsewhere,
    # where the step has no noise term.
    gen, noises = torch.Generator().manual_seed(7), []
    for t in theirs.timesteps:
        draws = kw.get("eta", 0) > 0 if kind == "DDIMScheduler" else int(t) > 0
        noises.append(randn_tensor(start.shape, generator=gen, dtype=start.dtype) if draws else torch.zeros_like(start))
    step_args = (kw["eta"], False) if kind == "DDIMScheduler" else ()
    columns = [mine._vdm_columns("loop", int(t), start, step_args)[0][:, None].expand(-1, 2) for t in mine.timesteps]

    def our_loop(x, *cols_and_noises):
        for t, cols, n in zip(mine.timesteps, cols_and_noises[:10], cols_and_noises[10:]):
            x = reference.reverse_step(x, _toy_model(x, t), cols[coeffs.STEP], noise=n)
        return x

    def their_loop(acp, x, *noises):
        for t, n in zip(truth.timesteps, noises):
            with _diffusers_noise(n):
                x = _their_step(truth, acp, _toy_model(x, t), t, x, **kw)[0]
        return x

    bound = numerics.running_error(our_loop, (start, *columns, *noises), dtype=torch.float32).bound
    want = numerics.running_error(their_loop, (torch.cumprod(1 - truth.betas.double(), 0), start, *noises),
                                  dtype=torch.float64)
    numerics.assert_within_bound(results[1], want.value, numerics.K * bound + want.bound, k=1, msg="ours")
    want = numerics.running_error(their_loop, (theirs.alphas_cumprod, start, *noises), dtype=torch.float32)
    numerics.assert_within_bound(results[0], want.value, want.bound, msg="diffusers' float32 loop")


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
    theirs, mine, truth = _three("DDIMScheduler", n_steps=10)
    model_output, sample = _inputs(shape=(3, 4, 6, 6))
    if layout == "channels_last":
        model_output, sample = (x.to(memory_format=torch.channels_last) for x in (model_output, sample))
    elif layout == "transposed":
        model_output, sample = (x.transpose(2, 3) for x in (model_output, sample))
    else:
        model_output, sample = (torch.randn(3, 8, 6, 6)[:, ::2] for _ in range(2))
    before = model_output.clone(), sample.clone()
    _check(_run(theirs, mine, truth, model_output, 601, sample, seed=1, eta=0.5))
    torch.testing.assert_close(model_output, before[0], rtol=0, atol=0)
    torch.testing.assert_close(sample, before[1], rtol=0, atol=0)


def test_float64_and_empty_batch():
    theirs, mine, truth = _three("DDPMScheduler")
    model_output, sample = (x.double() for x in _inputs())
    step = _run(theirs, mine, truth, model_output, 300, sample)
    assert step.mine.dtype == torch.float64
    # Ours at float64's bound; diffusers' float64 step still takes its coefficients from its float32
    # table in float32 (0-d float32 tensors): its bound at float32 counts that (and, an upper bound,
    # the float64 tensor arithmetic as float32 too).
    _check(step)
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
    truth = _truth(kind, 6, **config)
    for sched in (loaded, from_plain):
        _check(_run(plain, sched, truth, model_output, t, sample, seed=3))


def test_backend_attribute_reaches_the_ops_and_is_not_config(tmp_path):
    mine = ours.DDIMScheduler()
    mine.set_timesteps(10)
    model_output, sample = _inputs()
    expected = mine.step(model_output, 501, sample).prev_sample
    mine.vdm_fast_backend = "reference"
    # The reference and the fused kernel (which may fuse a multiply-add) within the running error
    # bound of our step (eta = 0: no noise term).
    want = _ours_reference(mine, model_output, 501, sample, torch.zeros_like(sample), {})
    for label, out in (("default backend", expected), ("reference", mine.step(model_output, 501, sample).prev_sample)):
        numerics.assert_within_bound(out, want.value[0], want.bound[0], msg=label)
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
        sched.step(model_output.long(), 10, sample)  # another float dtype is promoted
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
    """On the GPU as on the CPU: ours and diffusers' steps (both devices) against the CPU truths of
    the parity rule, and two runs of ours (per-sample timesteps, a CPU generator) within the running
    error bound of our step."""
    theirs, mine, cpu = diffusers.DDIMScheduler(), ours.DDIMScheduler(), ours.DDIMScheduler()
    theirs.set_timesteps(10, device="cuda")
    mine.set_timesteps(10, device="cuda")
    cpu.set_timesteps(10)
    theirs_cpu, truth = diffusers.DDIMScheduler(), _truth("DDIMScheduler", 10)
    theirs_cpu.set_timesteps(10)
    model_output, sample = _inputs()
    mo_gpu, s_gpu = model_output.cuda(), sample.cuda()
    for t in theirs.timesteps:  # 0-d CUDA tensors, as a pipeline passes them
        noise = torch.randn(SHAPE)
        a = torch.stack(theirs.step(mo_gpu, t, s_gpu, eta=0.5, variance_noise=noise.cuda(), return_dict=False))
        b = torch.stack(mine.step(mo_gpu, t, s_gpu, eta=0.5, variance_noise=noise.cuda(), return_dict=False))
        step = _run(theirs_cpu, cpu, truth, model_output, int(t), sample, eta=0.5, variance_noise=noise)
        _check(step)  # on the CPU
        _check(step, mine=b.cpu(), theirs=a.cpu())  # on the GPU
    t = theirs.timesteps[[0, 3, 9, 5]]
    want = _ours_reference(cpu, model_output, t.cpu(), sample, torch.zeros_like(sample), {})
    numerics.assert_within_bound(cpu.step(model_output, t.cpu(), sample).prev_sample, want.value[0], want.bound[0],
                                 msg="per-sample timesteps, CPU")
    for ts in (t, t.cpu()):  # per-sample timesteps on either device
        got = mine.step(mo_gpu, ts, s_gpu).prev_sample
        numerics.assert_within_bound(got, want.value[0], want.bound[0], msg=f"per-sample timesteps on {ts.device}")
    ddpm_gpu, ddpm_cpu = ours.DDPMScheduler(), ours.DDPMScheduler()
    # a CPU generator with CUDA data: diffusers' randn_tensor draws on the CPU and moves the noise
    got = ddpm_gpu.step(mo_gpu, 400, s_gpu, generator=torch.Generator().manual_seed(5)).prev_sample
    want = ddpm_cpu.step(model_output, 400, sample, generator=torch.Generator().manual_seed(5)).prev_sample
    noise = randn_tensor(SHAPE, generator=torch.Generator().manual_seed(5), dtype=sample.dtype)
    truth = _ours_reference(ddpm_cpu, model_output, 400, sample, noise, {})
    for label, out in (("GPU", got), ("CPU", want)):
        numerics.assert_within_bound(out, truth.value[0], truth.bound[0], msg=f"DDPM, CPU generator, {label}")
    assert {key[0].type for key in ddpm_gpu._vdm_fast_tables} == {"cuda"}


# ---------------------------------------------------------------------------------------------
# noise="philox" (issue 16, item 4) and torch.compile (item 3).


@pytest.mark.parametrize("variance_type", ["fixed_small", "learned_range"])
def test_ddpm_philox_noise_is_randn_like_of_the_generator(variance_type):
    """With vdm_fast_noise="philox" the step's noise is vdm_fast's Philox stream for the generator
    (drawn in the kernel; learned variances draw it with randn_like to scale it first): the step
    equals the default step with diffusers' randn_tensor replaced by randn_like of the same seed."""
    mine = ours.DDPMScheduler(variance_type=variance_type)
    mine.set_timesteps(10)
    channels = 6 if variance_type == "learned_range" else 3
    sample, model_output = torch.randn(SHAPE), torch.randn(SHAPE[0], channels, *SHAPE[2:])
    t = int(mine.timesteps[2])
    mine.vdm_fast_noise = "philox"
    got = mine.step(model_output, t, sample, generator=torch.Generator().manual_seed(3)).prev_sample
    mine.vdm_fast_noise = "diffusers"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ours, "randn_tensor", lambda shape, generator, device, dtype: vdm_fast.randn_like(sample, generator))
        want = mine.step(model_output, t, sample, generator=torch.Generator().manual_seed(3)).prev_sample
    # The same normals times the same c_n: only the order of the last additions may differ (kernel
    # c_n n inside the fused sum vs a noise tensor given to it), an ulp or so of the result.
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert not torch.equal(got, mine.step(model_output, t, sample, generator=torch.Generator().manual_seed(3))
                           .prev_sample)  # the default is diffusers' stream, not Philox


def test_ddim_philox_noise_and_default_stream():
    theirs, mine, _ = _three("DDIMScheduler", n_steps=10)
    sample, model_output = torch.randn(SHAPE), torch.randn(SHAPE)
    t = int(mine.timesteps[3])
    # Default: diffusers' noise stream bit for bit (same generator -> same draws), so the steps agree
    # to the float32 parity of the tests above (1e-5 of the output's scale suffices here: t mid-grid).
    step = lambda s: s.step(model_output, t, sample, eta=1.0, generator=torch.Generator().manual_seed(5)).prev_sample
    torch.testing.assert_close(step(mine), step(theirs), rtol=1e-5, atol=1e-5)
    mine.vdm_fast_noise = "philox"
    got = step(mine)
    want = mine.step(model_output, t, sample, eta=1.0,
                     variance_noise=vdm_fast.randn_like(sample, torch.Generator().manual_seed(5))).prev_sample
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)  # as in the DDPM test above
    with pytest.raises(TypeError, match="generator must be one torch.Generator"):
        mine.step(model_output, t, sample, eta=1.0, generator=[torch.Generator()] * SHAPE[0])
    with pytest.raises(ValueError, match="vdm_fast_noise must be one of"):
        mine.vdm_fast_noise = "cuda"


def _compiled(fn):
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True)  # fullgraph: any graph break is an error


@pytest.mark.parametrize("timestep_kind", ["int", "tensor"])
def test_ddim_step_compiles_fullgraph(timestep_kind):
    """Compiled before any eager call (the coefficient table is built inside the graph), with one
    timestep as an int or as the 0-d tensor pipelines pass; equal to eager up to the rounding of
    inductor's own float64/float32 math (an ulp or so of each coefficient)."""
    mine = ours.DDIMScheduler()
    mine.set_timesteps(10)
    sample, model_output, noise = torch.randn(SHAPE), torch.randn(SHAPE), torch.randn(SHAPE)
    t = mine.timesteps[3] if timestep_kind == "tensor" else int(mine.timesteps[3])
    step = _compiled(lambda m, t, x, n: mine.step(m, t, x, eta=1.0, variance_noise=n, return_dict=False))
    got = step(model_output, t, sample, noise)
    fresh = ours.DDIMScheduler()
    fresh.set_timesteps(10)
    want = fresh.step(model_output, t, sample, eta=1.0, variance_noise=noise, return_dict=False)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@torch._inductor.config.patch(fallback_random=True)
def test_ddpm_step_compiles_fullgraph():
    """DDPM with set_timesteps and per-sample timesteps: the table and the timestep check run in the
    graph. fallback_random makes the graph's torch.randn eager's, so both draw the same noise."""
    mine = ours.DDPMScheduler(variance_type="fixed_small")
    mine.set_timesteps(10)
    sample, model_output = torch.randn(SHAPE), torch.randn(SHAPE)
    t = mine.timesteps[[0, 3, 5, 9]]  # the last is 0: no noise there
    step = _compiled(lambda m, t, x: mine.step(m, t, x, return_dict=False))
    torch.manual_seed(1)
    got = step(model_output, t, sample)
    torch.manual_seed(1)
    want = mine.step(model_output, t, sample, return_dict=False)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@torch._inductor.config.patch(fallback_random=True)
def test_ddim_philox_step_compiles_fullgraph():
    """The in-kernel noise path traces too (generator=None: dynamo cannot take a torch.Generator
    argument, in diffusers' randn_tensor either). fallback_random: the graph draws the seed as eager."""
    mine = ours.DDIMScheduler()
    mine.set_timesteps(10)
    mine.vdm_fast_noise = "philox"
    sample, model_output = torch.randn(SHAPE), torch.randn(SHAPE)
    step = _compiled(lambda m, t, x: mine.step(m, t, x, eta=1.0).prev_sample)
    torch.manual_seed(2)
    got = step(model_output, mine.timesteps[2], sample)
    torch.manual_seed(2)
    want = mine.step(model_output, mine.timesteps[2], sample, eta=1.0).prev_sample
    torch.testing.assert_close(got, want)
    assert not torch.equal(want, mine.step(model_output, mine.timesteps[2], sample, eta=0.0).prev_sample)


@pytest.mark.parametrize("name", ["DDPMScheduler", "DDIMScheduler"])
def test_mixed_precision_model_output(name):
    """A bfloat16 model output next to a float32 sample (an autocast UNet in a float32 loop): the
    step runs in float32 (DESIGN.md §4.13) and equals diffusers' float64 step on the same values
    within float32 rounding of a few terms (atol 1e-5 of the result's scale), where a step rounded
    through bfloat16, as diffusers' own mixed step is (a 0-d coefficient times a bfloat16 tensor
    stays bfloat16), is off by ~1e-2."""
    mine, theirs = getattr(ours, name)(), getattr(diffusers, name)()
    mine.set_timesteps(50)
    theirs.set_timesteps(50)
    g = torch.Generator().manual_seed(0)
    x, m = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g).to(torch.bfloat16)
    # No noise, so that both steps compute the same numbers: DDIM's default eta = 0, DDPM's last step.
    t = mine.timesteps[10] if name == "DDIMScheduler" else mine.timesteps[-1]
    got = mine.step(m, t, x)
    want = theirs.step(m.double(), t, x.double())
    for field in ("prev_sample", "pred_original_sample"):
        a, b = getattr(got, field), getattr(want, field)
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b, rtol=0, atol=1e-5 * (1 + b.abs().max().item()), msg=field)
