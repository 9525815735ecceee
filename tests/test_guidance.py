"""Guidance: classifier-free (one batched call, per-sample scale, w = 1 conditional, w = 0
unconditional) and classifier guidance (autograd gradient, conversion to every parameterization,
samples move to the class) on the exact 2-D Gaussian mixture of tests/gmm.py.

Two computations of one quantity agree within the sum of their running error bounds
(tests/numerics.py); whole sampler runs are compared step by step (assert_steps_agree). Random
inputs come from the seeded global generator (tests/conftest.py) or seeded generators."""

from __future__ import annotations

import contextlib
from unittest import mock

import pytest
import torch
from torch.utils._python_dispatch import _disable_current_modes

import numerics
import vdm_fast
from vdm_fast import guidance, reference, samplers, schedules
from gmm import default_gmm, energy_distance
from sync_trap import SyncTrap

BACKEND = None  # the default backend: the reference today, the fused kernels once they are built

NULL = 2  # the mixture has components 0 and 1; label 2 is "no label"
SCH = schedules.LinearGamma(-10.0, 6.0)


def a0(sch=SCH):
    return torch.sigmoid(-sch.gamma(torch.zeros(1))).sqrt()


@pytest.fixture(scope="module")
def gmm():
    return default_gmm()


def labels_for(n):
    return torch.arange(n) % 2


@contextlib.contextmanager
def exact_noise():
    """Under the bound, the reference step's drawn noise is an exact input (it is drawn outside
    the bound's mode): both sides of a comparison draw the same numbers from one generator state."""
    draw = reference.randn_like

    def outside_the_bound(*args, **kwargs):
        with _disable_current_modes():
            return draw(*args, **kwargs)

    with mock.patch.object(reference, "randn_like", outside_the_bound):
        yield


def assert_steps_agree(step_a, step_b, z, times, seed=0, msg=""):
    """``step_x(z, times, generator, backend)`` runs a sampler over ``times``. Two samplers of one
    quantity are compared step by step along a's trajectory: from each state, one step of each (the
    same generator state) agrees within the sum of both steps' running error bounds (the reference
    backend under tests/numerics.py). A whole run is not compared at once: its first-order bound
    compounds through the model and the step, ~100x a step here, far beyond the rounding it bounds.
    Returns a's final state."""
    gen = torch.Generator().manual_seed(seed)
    for i in range(times.shape[0] - 1):
        level, state = times[i:i + 2], gen.get_state()

        def at_state():
            g = torch.Generator()
            g.set_state(state)
            return g

        b = step_b(z, level, at_state(), BACKEND)
        with exact_noise():
            bound = sum(numerics.running_error(lambda z, s=s: s(z, level, at_state(), "reference"), (z,)).bound
                        for s in (step_a, step_b))
        a = step_a(z, level, gen, BACKEND)  # advances gen as a whole run does
        numerics.assert_within_bound(a, b, bound, msg=f"{msg} step {i}")
        z = a
    return z


@pytest.mark.parametrize("param", ["eps", "x0", "v", "score"])
@pytest.mark.parametrize("w,which", [(1.0, "cond"), (0.0, "uncond")])
def test_cfg_scale_one_is_conditional_zero_unconditional(gmm, param, w, which):
    fn = gmm.model(SCH, param, null_class=NULL)
    y = labels_for(64)
    z = torch.randn(64, 2, dtype=torch.float64)
    target = (lambda zz, t: fn(zz, t, y)) if which == "cond" else (lambda zz, t: fn(zz, t, torch.full_like(y, NULL)))
    times = samplers.uniform_times(20, dtype=torch.float64)
    for run in (samplers.sample_ddim, samplers.sample_ancestral):
        def guided(z, times, g, backend, run=run):
            return run(guidance.classifier_free(fn, y, NULL), z, SCH, times, guidance_scale=w, parameterization=param,
                       generator=g, backend=backend)

        def plain(z, times, g, backend, run=run):
            return run(target, z, SCH, times, parameterization=param, generator=g, backend=backend)

        assert_steps_agree(guided, plain, z, times, msg=f"{run.__name__} w={w}")


def test_cfg_one_batched_call_per_step(gmm):
    fn = gmm.model(SCH, "eps", null_class=NULL)
    calls = []

    def spy(z, t, y):
        calls.append((z.shape[0], t.clone(), y.clone()))
        return fn(z, t, y)

    y = labels_for(6)
    samplers.sample_ancestral(guidance.classifier_free(spy, y, NULL), torch.randn(6, 2), SCH, samplers.uniform_times(5),
                              guidance_scale=3.0, backend=BACKEND)
    assert len(calls) == 5
    for i, (batch, t, yy) in enumerate(calls):
        assert batch == 12
        assert torch.equal(yy, torch.cat([y, torch.full_like(y, NULL)]))
        assert torch.equal(t, torch.full((12,), 1 - i / 5))


def test_cfg_per_sample_scale(gmm):
    fn = gmm.model(SCH, "eps", null_class=NULL)
    y = labels_for(8)
    z = torch.randn(8, 2, dtype=torch.float64)
    times = samplers.uniform_times(10, dtype=torch.float64)
    w = torch.tensor([0.0, 1.0, 2.5, 4.0] * 2, dtype=torch.float64)
    got = samplers.sample_ddim(guidance.classifier_free(fn, y, NULL), z, SCH, times, guidance_scale=w, backend=BACKEND)
    for scale in (0.0, 1.0, 2.5, 4.0):
        rows = w == scale
        one = samplers.sample_ddim(guidance.classifier_free(fn, y, NULL), z, SCH, times, guidance_scale=scale,
                                   backend=BACKEND)
        # Exact: these rows see the same inputs and scale, and every operation is per sample.
        assert torch.equal(got[rows], one[rows])


def test_cfg_matches_explicit_combination(gmm):
    """One DDIM step with CFG equals the step on m = uncond + w (cond - uncond) formed by hand."""
    fn = gmm.model(SCH, "eps", null_class=NULL)
    y = labels_for(5)
    z = torch.randn(5, 2, dtype=torch.float64)
    times = torch.tensor([0.8, 0.6], dtype=torch.float64)
    got = samplers.sample_ddim(guidance.classifier_free(fn, y, NULL), z, SCH, times, guidance_scale=3.0, clip=2.0,
                               backend=BACKEND)
    t = times[0].expand(5)

    def by_hand(z, backend):
        m = fn(z, t, torch.full_like(y, NULL)) + 3.0 * (fn(z, t, y) - fn(z, t, torch.full_like(y, NULL)))
        g = samplers.gammas(SCH, times, torch.float64)
        return vdm_fast.reverse_step(z, m, samplers.ddim_coeffs(g[0].expand(5), g[1].expand(5)), clip=2.0,
                                     noise=torch.zeros_like(z), backend=backend)

    want = by_hand(z, BACKEND)
    bound = (numerics.running_error(lambda z: samplers.sample_ddim(guidance.classifier_free(fn, y, NULL), z, SCH, times,
                                                                   guidance_scale=3.0, clip=2.0, backend="reference"),
                                    (z,)).bound
             + numerics.running_error(lambda z: by_hand(z, "reference"), (z,)).bound)
    numerics.assert_within_bound(got, want, bound)


def test_cfg_pair_form_equals_batched_form(gmm):
    fn = gmm.model(SCH, "v", null_class=NULL)
    y = labels_for(10)
    pair = guidance.classifier_free_pair(lambda z, t: (fn(z, t, y), fn(z, t, torch.full_like(y, NULL))))
    z = torch.randn(10, 2)

    def run(model):
        return lambda z, times, g, backend: samplers.sample_ancestral(model, z, SCH, times, guidance_scale=2.0,
                                                                      parameterization="v", generator=g,
                                                                      backend=backend)

    # Two calls of the model against one on the doubled batch: the same numbers per sample, but the
    # batched call's elementwise ops may take other (vectorised) paths: compared within the bound.
    assert_steps_agree(run(pair), run(guidance.classifier_free(fn, y, NULL)), z, samplers.uniform_times(8), seed=1)
    # the object is also usable outside the samplers
    t = torch.full((10,), 0.5)
    uncond = fn(z, t, torch.full_like(y, NULL))
    assert torch.equal(pair(z, t, 2.0), uncond + 2.0 * (fn(z, t, y) - uncond))  # its definition, the same arithmetic


def test_cfg_strong_scale_moves_samples_to_class(gmm):
    fn = gmm.model(SCH, "eps", null_class=NULL)
    y = labels_for(800)
    z = torch.randn(800, 2, generator=torch.Generator().manual_seed(3))
    out = samplers.sample_ddim(guidance.classifier_free(fn, y, NULL), z, SCH, samplers.uniform_times(50),
                               guidance_scale=3.0, backend=BACKEND) / a0()
    nearest = torch.cdist(out.double(), gmm.means).argmin(1)
    # Statistical: an exact sample of a component is nearer the other mean (2.5 away) with
    # probability ~2e-4 (std <= 0.35); scale 3 sharpens the class further; 1% is the sampler's slack.
    assert (nearest == y).float().mean() > 0.99


# --- classifier guidance -------------------------------------------------------------------------------


def exact_classifier(gmm, sch, y, output="logits"):
    def fn(z, t):
        g = samplers.gammas(sch, t, torch.float64)
        lr = gmm.log_resp(z, torch.sigmoid(-g).sqrt(), torch.sigmoid(g).sqrt())
        return lr if output == "logits" else lr.gather(1, y[:, None]).squeeze(1)
    return guidance.classifier(fn, y if output == "logits" else None, output=output)


@pytest.mark.parametrize("param", ["eps", "x0", "v", "score"])
def test_classifier_guidance_conversion_is_exact(gmm, param):
    """Bayes: ∇ log q(z|y) = ∇ log q(z) + ∇ log p(y|z). With the exact unconditional model and the
    exact classifier at scale 1, the guided output of every parameterization is the exact
    conditional model's output."""
    y = labels_for(9)
    z = torch.randn(9, 2, dtype=torch.float64) * 1.5
    t = torch.linspace(0.05, 0.95, 9, dtype=torch.float64)
    g = samplers.gammas(SCH, t, torch.float64)
    alpha, sigma = torch.sigmoid(-g).sqrt(), torch.sigmoid(g).sqrt()
    clf = exact_classifier(gmm, SCH, y)
    grad = clf.grad(z, t)
    m = gmm.model(SCH, param)(z, t)
    scale = guidance.classifier_grad_scale(param, alpha, sigma, 1.0)
    got = guidance.guided_output(m, classifier_grad=grad, grad_scale=scale)

    def guided(z, t):
        g = samplers.gammas(SCH, t, torch.float64)
        alpha, sigma = torch.sigmoid(-g).sqrt(), torch.sigmoid(g).sqrt()
        return guidance.guided_output(gmm.model(SCH, param)(z, t), classifier_grad=clf.grad(z, t),
                                      grad_scale=guidance.classifier_grad_scale(param, alpha, sigma, 1.0))

    def conditional(z, t):
        return gmm.model(SCH, param, component=y)(z, t)

    # Two formulas of the conditional model: the sum of both bounds. Classifier.log_prob takes the
    # logits' log-softmax in float32, so the guided side is bounded at float32 there (~1e-5 relative;
    # the old 1e-7 was tuned on this CPU's float32 rounding of it).
    bound = numerics.running_error(guided, (z, t)).bound + numerics.running_error(conditional, (z, t)).bound
    numerics.assert_within_bound(got, conditional(z, t), bound, msg="guided output")
    # log_prob form gives the same gradient
    log_prob = exact_classifier(gmm, SCH, y, "log_prob")
    bound = (numerics.running_error(lambda z, t: clf.grad(z, t), (z, t)).bound
             + numerics.running_error(lambda z, t: log_prob.grad(z, t), (z, t)).bound)
    numerics.assert_within_bound(log_prob.grad(z, t), grad, bound, msg="log_prob form")


def test_classifier_gradient_is_autograd_of_log_prob(gmm):
    y = labels_for(4)
    z = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    t = torch.full((4,), 0.3, dtype=torch.float64)
    g = samplers.gammas(SCH, t, torch.float64)
    lp = gmm.log_resp(z, torch.sigmoid(-g).sqrt(), torch.sigmoid(g).sqrt()).gather(1, y[:, None]).sum()
    (want,) = torch.autograd.grad(lp, z)
    clf = exact_classifier(gmm, SCH, y)
    got = clf.grad(z.detach(), t)
    # Autograd of the float64 log-probability against the wrapper's gradient (its log-softmax in
    # float32): the sum of both bounds.
    direct = numerics.running_error(
        lambda z: gmm.log_resp(z, torch.sigmoid(-g).sqrt(), torch.sigmoid(g).sqrt()).gather(1, y[:, None]).sum(),
        (z,), wrt=(0,))
    bound = numerics.running_error(lambda z: clf.grad(z, t), (z,)).bound + direct.grad_bounds[0]
    numerics.assert_within_bound(got, want, bound)


@pytest.mark.parametrize("param", ["eps", "v"])
def test_classifier_guidance_samples_the_class(gmm, param):
    n = 1000
    y = labels_for(n)
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(6)
    out = samplers.sample_ancestral(gmm.model(SCH, param), z, SCH, samplers.uniform_times(100), parameterization=param,
                                    classifier=exact_classifier(gmm, SCH, y), classifier_scale=1.0, generator=gen,
                                    backend=BACKEND) / a0()
    out = out.double()
    unguided = samplers.sample_ancestral(gmm.model(SCH, param), z, SCH, samplers.uniform_times(100),
                                         parameterization=param, generator=torch.Generator().manual_seed(6),
                                         backend=BACKEND) / a0()
    nearest = torch.cdist(out, gmm.means).argmin(1)
    nearest_unguided = torch.cdist(unguided.double(), gmm.means).argmin(1)
    # Statistical (seeded draws). Guided: an exact class sample is nearer the other mean with
    # probability ~2e-4, 2% is the sampler's slack. Unguided: labels independent of the sample
    # match the nearest mean half the time; 0.6 is 6 standard errors (0.016 for 1000 samples) above.
    assert (nearest == y).float().mean() > 0.98  # guided: (almost) all in their class
    assert (nearest_unguided == y).float().mean() < 0.6  # unguided: the mixture's weights
    # and each class matches its component (scale 1 with exact parts samples q(x | y) exactly).
    # Between two samples (500 and 4000) of one component the energy distance (V-statistic) is
    # ~1.4e-3 +- 0.9e-3 (300 seeded trials, maximum 4.9e-3): 8e-3 is that plus the sampler's error.
    for k in (0, 1):
        xk, _ = gmm.sample(4000, torch.Generator().manual_seed(10 + k), component=k)
        assert energy_distance(out[y == k], xk) < 8e-3


def test_classifier_scale_per_sample(gmm):
    y = labels_for(6)
    z = torch.randn(6, 2, dtype=torch.float64)
    times = samplers.uniform_times(6, dtype=torch.float64)
    scale = torch.tensor([0.0, 1.0, 3.0] * 2, dtype=torch.float64)
    clf = exact_classifier(gmm, SCH, y)
    got = samplers.sample_ddim(gmm.model(SCH), z, SCH, times, classifier=clf, classifier_scale=scale, backend=BACKEND)
    for s in (0.0, 1.0, 3.0):
        one = samplers.sample_ddim(gmm.model(SCH), z, SCH, times, classifier=clf, classifier_scale=s, backend=BACKEND)
        # Exact: these rows see the same inputs and scale, and every operation is per sample.
        assert torch.equal(got[scale == s], one[scale == s])

    def guided(z, times, g, backend):
        return samplers.sample_ddim(gmm.model(SCH), z, SCH, times, classifier=clf, classifier_scale=0.0,
                                    backend=backend)

    def plain(z, times, g, backend):
        return samplers.sample_ddim(gmm.model(SCH), z, SCH, times, backend=backend)

    # Scale 0 adds 0 x the gradient, in another instantiation of the step than no classifier at all.
    assert_steps_agree(guided, plain, z, times, msg="scale 0")


def test_guidance_no_host_sync(gmm):
    """The GMM model itself is sync-free; CFG + classifier guidance add no host reads."""
    y = labels_for(8)
    z = torch.randn(8, 2)
    cfg = guidance.classifier_free(gmm.model(SCH, "eps", null_class=NULL), y, NULL)
    clf = exact_classifier(gmm, SCH, y)
    vdm_fast.reverse_step(z, z, torch.zeros(6, 8), noise=z, backend=BACKEND)
    with SyncTrap() as trap:
        samplers.sample_ancestral(cfg, z, SCH, samplers.uniform_times(4), guidance_scale=2.0, classifier=clf,
                                  classifier_scale=0.5, clip=1.0, backend=BACKEND)
        samplers.sample_pc(cfg, z, SCH, samplers.uniform_times(4), guidance_scale=2.0, classifier=clf,
                           classifier_scale=0.5, backend=BACKEND)
        samplers.sample_ode(cfg, z, SCH, samplers.uniform_times(4), guidance_scale=2.0, backend=BACKEND)
    assert trap.calls == []


def test_guidance_bad_arguments(gmm):
    fn = gmm.model(SCH, "eps", null_class=NULL)
    z = torch.randn(4, 2)
    times = samplers.uniform_times(3)
    with pytest.raises(ValueError, match="guidance_scale is required"):
        samplers.sample_ddim(guidance.classifier_free(fn, labels_for(4), NULL), z, SCH, times)
    with pytest.raises(ValueError, match="labels"):
        samplers.sample_ddim(guidance.classifier_free(fn, labels_for(3), NULL), z, SCH, times, guidance_scale=1.0)
    with pytest.raises(ValueError, match="classifier_scale"):
        samplers.sample_ddim(gmm.model(SCH), z, SCH, times, classifier=exact_classifier(gmm, SCH, labels_for(4)))
    with pytest.raises(TypeError, match="classifier"):
        samplers.sample_ddim(gmm.model(SCH), z, SCH, times, classifier=lambda z, t: z, classifier_scale=1.0)
    with pytest.raises(ValueError, match="output"):
        guidance.classifier(lambda z, t: z, labels_for(4), output="probs")
    with pytest.raises(ValueError, match="parameterization"):
        guidance.classifier_grad_scale("mu", torch.ones(2), torch.ones(2), 1.0)
