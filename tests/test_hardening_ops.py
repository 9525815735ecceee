"""Hardening of every op (issue 7): property-based equality with the reference on every backend
that runs here, the NaN/Inf and domain policy (DESIGN.md §4.10), and extreme schedules. Bad input
(an error naming the argument, the other inputs unmodified) is checked for every op from its
declaration in tests/test_ops.py, reverse_step's optional inputs in tests/test_reverse_step.py.

Hypothesis profiles as in tests/test_hardening.py (``ci`` by default, ``HYPOTHESIS_PROFILE=dev``
for a longer local run).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import numerics
import vdm_fast
from vdm_fast import backends, reference

from strategies import assert_matches_reference, coefficient, data_tensors, per_sample
from helpers import run_in_threads


def _cpu_backends(op: str) -> list[str]:
    return [b for b in backends.BACKENDS if b != "reference" and backends.unavailable_reason(b, "cpu", op) is None]


def _pick_backend(data, op: str, numel: int) -> str:
    names = _cpu_backends(op)
    if not names:
        pytest.skip(f"no fused CPU backend of {op} built")
    backend = data.draw(st.sampled_from(names))
    limit = 2_000 if op == "recon_nll" else 20_000  # all-256-bin recon cases are slow in the interpreter
    if backend == "triton" and numel > limit and len(names) > 1:
        backend = [b for b in names if b != "triton"][0]  # the interpreter is slow: keep its cases small
    return backend


def _positive(coeff, batch):
    """A coefficient drawn by ``coefficient`` made strictly positive (for sigma where a log is taken)."""
    if isinstance(coeff, float):
        return abs(coeff) + 0.05
    return coeff.abs() + 0.05


def _unchanged(before, after):
    for b, a in zip(before, after):
        assert torch.equal(b, a), "an input was modified"


# --- property-based equality, per op -----------------------------------------------------------------


@given(data=st.data())
def test_sq_error_property(data):
    pred, x0, noise = data.draw(data_tensors(3))
    batch = x0.shape[0]
    alpha, sigma = data.draw(coefficient(batch)), _positive(data.draw(coefficient(batch)), batch)
    target = data.draw(st.sampled_from(["eps", "x0", "v", "score"]))
    backend = _pick_backend(data, "sq_error", x0.numel())
    before = [t.clone() for t in (pred, x0, noise)]
    ours = vdm_fast.sq_error(pred, x0, noise, alpha, sigma, target, backend=backend)
    assert ours.shape == (batch,)
    assert_matches_reference(ours, lambda *a: reference.sq_error(*a, target),
                             (pred, x0, noise, per_sample(alpha, batch), per_sample(sigma, batch)),
                             msg=f"{backend} {target}")
    _unchanged(before, (pred, x0, noise))


@given(data=st.data())
def test_prior_kl_property(data):
    (x0,) = data.draw(data_tensors(1))
    batch = x0.shape[0]
    alpha, sigma = data.draw(coefficient(batch)), _positive(data.draw(coefficient(batch)), batch)
    backend = _pick_backend(data, "prior_kl", x0.numel())
    before = x0.clone()
    ours = vdm_fast.prior_kl(x0, alpha, sigma, backend=backend)
    assert_matches_reference(ours, reference.prior_kl, (x0, per_sample(alpha, batch), per_sample(sigma, batch)),
                             msg=backend)
    _unchanged([before], [x0])


@given(data=st.data())
def test_recon_nll_property(data):
    raw, z0 = data.draw(data_tensors(2))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    x0 = (2 * (torch.randint(0, 256, raw.shape, generator=gen) + 0.5) / 256 - 1).to(raw.dtype)
    batch = x0.shape[0]
    alpha = _positive(data.draw(coefficient(batch)), batch)
    sigma = data.draw(st.sampled_from([1e-3, 0.01, 0.3, 1.0]))
    backend = _pick_backend(data, "recon_nll", x0.numel())
    before = [t.clone() for t in (x0, z0)]
    ours = vdm_fast.recon_nll(x0, z0, alpha, sigma, backend=backend)
    assert_matches_reference(ours, reference.recon_nll, (x0, z0, per_sample(alpha, batch), per_sample(sigma, batch)),
                             msg=f"{backend} sigma_0={sigma}")
    _unchanged(before, (x0, z0))


@given(data=st.data())
def test_discretized_gaussian_nll_property(data):
    raw, mean, log_scale = data.draw(data_tensors(3))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    x0 = (torch.randint(0, 256, raw.shape, generator=gen) / 127.5 - 1).to(raw.dtype)
    cdf = data.draw(st.sampled_from(["erf", "tanh"]))
    backend = _pick_backend(data, "discretized_gaussian_nll", x0.numel())
    log_scale = log_scale.clamp(-4, 1)
    before = [t.clone() for t in (x0, mean, log_scale)]
    ours = vdm_fast.discretized_gaussian_nll(x0, mean, log_scale, cdf=cdf, backend=backend)
    assert_matches_reference(ours, lambda *a: reference.discretized_gaussian_nll(*a, cdf), (x0, mean, log_scale),
                             msg=f"{backend} {cdf}")
    _unchanged(before, (x0, mean, log_scale))


@given(data=st.data())
def test_reverse_step_property(data):
    z, m, u, g, n = data.draw(data_tensors(5))
    batch = z.shape[0]
    coeffs = [data.draw(coefficient(batch)) for _ in range(6)]
    kwargs = {"noise": n}
    if data.draw(st.booleans()):
        kwargs.update(uncond=u, guidance_scale=data.draw(coefficient(batch)))
    if data.draw(st.booleans()):
        kwargs.update(classifier_grad=g, grad_scale=data.draw(coefficient(batch)))
    clip = data.draw(st.sampled_from([0.5, 1.0, 3.0])) if data.draw(st.booleans()) else None
    if clip is not None:
        kwargs["clip"] = clip
    backend = _pick_backend(data, "reverse_step", z.numel())
    before = [t.clone() for t in (z, m, u, g, n)]
    with torch.inference_mode():
        ours = vdm_fast.reverse_step(z, m, coeffs, backend=backend, **kwargs)
    assert ours.shape == z.shape and ours.dtype == z.dtype

    def ref(z, m, a_z, a_m, c_z, c_m, c_x, c_n, uncond, guidance_scale, classifier_grad, grad_scale, noise):
        return reference.reverse_step(z, m, torch.stack([a_z, a_m, c_z, c_m, c_x, c_n]), uncond, guidance_scale,
                                      classifier_grad, grad_scale, clip, noise)

    def scale(name):  # an optional per-sample coefficient
        return None if name not in kwargs else per_sample(kwargs[name], batch)

    inputs = (z, m, *(per_sample(c, batch) for c in coeffs), kwargs.get("uncond"), scale("guidance_scale"),
              kwargs.get("classifier_grad"), scale("grad_scale"), n)
    assert_matches_reference(ours, ref, inputs, msg=f"{backend} clip={clip}")
    _unchanged(before, (z, m, u, g, n))


_GEN = torch.Generator().manual_seed(7)  # module-level inputs: seeded, the same in every worker
X = torch.randn(3, 2, 4, generator=_GEN)
GRID = (2 * (torch.randint(0, 256, (3, 2, 4), generator=_GEN) + 0.5) / 256 - 1).float()


# --- policies: domain errors and NaN/Inf -------------------------------------------------------------


@pytest.mark.parametrize("call, name", [
    (lambda s: vdm_fast.prior_kl(X, 0.5, s), "sigma_1"),
    (lambda s: vdm_fast.recon_nll(GRID, X, 1.0, s), "sigma_0"),
])
@pytest.mark.parametrize("sigma", [0.0, -0.5])
def test_sigma_not_positive_where_a_log_is_taken(call, name, sigma):
    with pytest.raises((ValueError, RuntimeError), match=name):
        call(torch.full((3,), sigma))


@pytest.mark.parametrize("call", [
    lambda x: vdm_fast.recon_nll(x, X, 1.0, 0.01),
    lambda x: vdm_fast.discretized_gaussian_nll(x, X, X.clamp(-3, 0)),
])
@pytest.mark.parametrize("value", [1.5, -1.01, float("nan")])
def test_decoder_data_out_of_range(call, value):
    x = GRID.clone()
    x[1, 0, 2] = value
    with pytest.raises((ValueError, RuntimeError), match="x0"):
        call(x)


def _native_cpu(op: str) -> bool:
    return "cpu" in _cpu_backends(op)


@pytest.mark.skipif(not _native_cpu("prior_kl"), reason="native CPU ops not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("value", [0.0, -0.5, float("nan")])
def test_value_checks_of_the_direct_call_and_the_native_op(dtype, value):
    """The common call (plain (B,) coefficient tensors, float32/float64) goes straight to the native
    CPU op, which checks the values itself (csrc/cpu/value_checks.h): the same message as the
    Python check (vdm_fast/_checks.py) of the general path, from the public call and the raw op."""
    x, grid = X.to(dtype), GRID.to(dtype)
    ones, bad = torch.ones(3, dtype=dtype), torch.tensor([0.5, value, 0.5], dtype=dtype)
    ops = torch.ops.vdm_fast
    for call in (lambda s: vdm_fast.prior_kl(x, ones, s), lambda s: ops.prior_kl(x, ones, s)):
        with pytest.raises(RuntimeError, match=r"^prior_kl: sigma_1 must be > 0 \(its log is taken\)"):
            call(bad)
    for call in (lambda s: vdm_fast.recon_nll(grid, x, ones, s), lambda s: ops.recon_nll(grid, x, ones, s, "categorical")):
        with pytest.raises(RuntimeError, match=r"^recon_nll: sigma_0 must be > 0"):
            call(bad)
    out_of_range = grid.clone()
    out_of_range[2, 1, 3] = 1.5 if value == 0.0 else (-1.01 if value < 0 else value)
    message = r"^{}: x0 must lie in \[-1\.0, 1\.0\] \(data for the decoder\), with no NaN"
    for call in (lambda g: vdm_fast.recon_nll(g, x, ones, ones * 0.01), lambda g: ops.recon_nll(g, x, ones, ones * 0.01, "categorical")):
        with pytest.raises(RuntimeError, match=message.format("recon_nll")):
            call(out_of_range)
    for call in (lambda g: vdm_fast.discretized_gaussian_nll(g, x, x.clamp(-3, 0)),
                 lambda g: ops.discretized_gaussian_nll(g, x, x.clamp(-3, 0), "erf")):
        with pytest.raises(RuntimeError, match=message.format("discretized_gaussian_nll")):
            call(out_of_range)


def _value_checked_args():
    from vdm_fast.ops._spec import SPECS

    for name, spec in SPECS.items():
        for i, arg in enumerate(spec.args):
            if arg.positive or arg.bounds is not None:
                yield pytest.param(spec, i, id=f"{name}-{arg.name}")


@pytest.mark.parametrize("spec, index", list(_value_checked_args()))
def test_every_value_checked_argument_is_checked_by_the_native_cpu_op(spec, index):
    """The public call's direct path leaves value checks to the native CPU op (vdm_fast/ops/_spec.py,
    _native_direct): every argument declared positive or bounded must be checked there, or a new op
    would lose its check silently. Each bad value, put into the op's own sample inputs, raises the
    Python check's message from the raw op and from the public call."""
    if not _native_cpu(spec.name):
        pytest.skip("native CPU ops not built")
    arg = spec.args[index]
    values = list(spec.sample_inputs((2, 3, 4), torch.float32, "cpu", torch.Generator().manual_seed(0)))
    bad = values[index].clone()
    if arg.positive:
        bad[1] = -0.25
        message = f"^{spec.name}: {arg.name} must be > 0"
    else:
        bad[1, 2, 3] = arg.bounds[1] + 0.5
        message = f"^{spec.name}: {arg.name} must lie in"
    values[index] = bad
    with pytest.raises(RuntimeError, match=message):
        getattr(torch.ops.vdm_fast, spec.name)(*values)
    with pytest.raises(RuntimeError, match=message):
        getattr(vdm_fast, spec.name)(*values)


@pytest.mark.parametrize("spec, index", list(_value_checked_args()))
@pytest.mark.parametrize("transform", ["grad", "jvp"])
def test_value_checks_hold_under_torch_func_transforms(spec, index, transform):
    """Under torch.func.grad and forward mode the native op hands the call to its composite twin
    (csrc/autograd.h), which must make the value checks the native op makes (the public call leaves
    them to it): a bad value raises there too, for a (B,) tensor and for a coefficient the general
    path converts."""
    arg = spec.args[index]
    values = list(spec.sample_inputs((2, 3, 4), torch.float32, "cpu", torch.Generator().manual_seed(0)))
    if arg.positive:
        variants = [values[index].clone(), -0.25]
        variants[0][1] = -0.25
        message = f"^{spec.name}: {arg.name} must be > 0"
    else:
        variants = [values[index].clone()]
        variants[0][1, 2, 3] = arg.bounds[1] + 0.5
        message = f"^{spec.name}: {arg.name} must lie in"
    wrt = next(i for i in spec.differentiable if i != index)
    public = getattr(vdm_fast, spec.name)
    for bad in variants:
        def f(v, bad=bad):
            args = list(values)
            args[index], args[wrt] = bad, v
            return public(*args)

        with pytest.raises(RuntimeError, match=message):
            if transform == "grad":
                torch.func.grad(lambda v: f(v).sum())(values[wrt])
            else:
                torch.func.jvp(f, (values[wrt],), (torch.ones_like(values[wrt]),))


@pytest.mark.skipif(not _native_cpu("prior_kl"), reason="native CPU ops not built")
def test_broadcast_shaped_coefficients_take_the_direct_path(monkeypatch):
    """(B, 1, ..., 1) coefficients, as broadcasting code holds them, go to the native op as (B,)
    views without the general path (made to fail here), with the same results as (B,) tensors;
    the shapes the general path refuses still reach it and its message."""
    from vdm_fast.ops._spec import SPECS

    x, grid = X, GRID
    alpha, sigma = torch.rand(3, generator=torch.Generator().manual_seed(1)) + 0.2, torch.full((3,), 0.05)
    want_prior, want_recon = vdm_fast.prior_kl(x, alpha, sigma), vdm_fast.recon_nll(grid, x, alpha, sigma)
    wide = torch.zeros(3, 4)[:, :1]  # (3, 1) with a row stride of 4: not contiguous as (3,) either
    wide.copy_(sigma[:, None])

    def general_path(*args, **kwargs):
        raise AssertionError("the general path was taken")

    for name in ("prior_kl", "recon_nll"):
        monkeypatch.setattr(SPECS[name], "_prepare", general_path)
    for a, s in ((alpha[:, None, None], sigma[:, None, None]), (alpha[:, None], wide)):
        torch.testing.assert_close(vdm_fast.prior_kl(x, a, s), want_prior, rtol=0, atol=0)
        torch.testing.assert_close(vdm_fast.recon_nll(grid, x, a, s), want_recon, rtol=0, atol=0)
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match=r"^prior_kl: sigma_1 must be > 0"):
        vdm_fast.prior_kl(x, alpha[:, None], -sigma[:, None])
    for bad in (alpha[None, :], alpha[:, None].expand(3, 2), torch.tensor(0.5)[None, None].expand(1, 3)):
        with pytest.raises(ValueError, match=r"^prior_kl: alpha_1 must be a float, a 0-d tensor"):
            vdm_fast.prior_kl(x, bad, sigma)
    # An empty batch: (0, 3) has as many elements as samples but is not (B, 1, ..., 1).
    with pytest.raises(ValueError, match=r"^prior_kl: alpha_1 must be a float, a 0-d tensor"):
        vdm_fast.prior_kl(x[:0], torch.zeros(0, 3), torch.zeros(0, 3))
    assert vdm_fast.prior_kl(x[:0], torch.zeros(0, 1), torch.ones(0, 1)).shape == (0,)


@pytest.mark.skipif(not _native_cpu("prior_kl"), reason="native CPU ops not built")
def test_general_path_leaves_value_checks_to_the_native_cpu_op(monkeypatch):
    """A CPU call that needs converting (a float coefficient) runs the value checks once, in the
    native op: the Python check runs for the other implementations (here the reference) and still
    gives the same error on the CPU."""
    from vdm_fast import _checks

    calls = []
    real_positive = _checks.positive
    monkeypatch.setattr(_checks, "positive", lambda *args: (calls.append(args[1]), real_positive(*args))[1])
    vdm_fast.prior_kl(X, 0.9, 0.3)
    assert calls == []
    vdm_fast.prior_kl(X, 0.9, 0.3, backend="reference")
    assert calls == ["sigma_1"]
    for backend in ("cpu", "reference"):
        with pytest.raises(RuntimeError, match=r"^prior_kl: sigma_1 must be > 0 \(its log is taken\)"):
            vdm_fast.prior_kl(X, 0.9, -0.3, backend=backend)


@pytest.mark.skipif(not _native_cpu("recon_nll"), reason="native CPU ops not built")
def test_decoder_range_check_is_exact_in_float64_and_passes_the_ends():
    """float64 data compared in float64 (1 + 2^-40 would round to 1.0 in float32); -1 and 1 pass."""
    grid = GRID.double()
    z, ones = X.double(), torch.ones(3, dtype=torch.float64)
    edges = grid.clone()
    edges[0, 0, 0], edges[0, 0, 1] = -1.0, 1.0
    vdm_fast.recon_nll(edges, z, ones, ones * 0.01)
    vdm_fast.discretized_gaussian_nll(edges, z, z.clamp(-3, 0))
    edges[1, 1, 1] = 1.0 + 2.0**-40
    with pytest.raises(RuntimeError, match="x0 must lie in"):
        vdm_fast.recon_nll(edges, z, ones, ones * 0.01)
    with pytest.raises(RuntimeError, match="x0 must lie in"):
        vdm_fast.discretized_gaussian_nll(edges, z, z.clamp(-3, 0))


def test_nan_coefficient_poisons_only_its_own_sample():
    """Policy: coefficients are not scanned for NaN/Inf (a scan is a host sync on a GPU); samples
    are independent, so a bad coefficient of sample b affects output b only, on every backend."""
    alpha = torch.tensor([0.5, float("nan"), 0.5])
    sigma = torch.tensor([0.5, 0.5, float("inf")])
    for backend in _cpu_backends("q_sample") + ["reference"]:
        z = vdm_fast.q_sample(X, alpha, sigma, X, backend=backend)
        assert torch.isfinite(z[0]).all() and torch.isnan(z[1]).all() and not torch.isfinite(z[2]).all()
    for backend in _cpu_backends("sq_error") + ["reference"]:
        e = vdm_fast.sq_error(X, X, X, alpha, sigma, "v", backend=backend)
        assert torch.isfinite(e[0]) and not torch.isfinite(e[1]) and not torch.isfinite(e[2])


# --- extreme schedules --------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [-40.0, -30.0, -20.0, -13.3, 0.0, 13.3, 20.0, 30.0, 40.0])
def test_extreme_schedule_values_stay_finite(gamma):
    g = torch.full((3,), gamma)
    alpha, sigma = torch.sigmoid(-g).sqrt(), torch.sigmoid(g).sqrt()
    assert (alpha > 0).all() and (sigma > 0).all()
    for backend in _cpu_backends("q_sample") + ["reference"]:
        assert torch.isfinite(vdm_fast.q_sample(X, alpha, sigma, X, backend=backend)).all()
    for target in ("eps", "x0", "v", "score"):
        assert torch.isfinite(vdm_fast.sq_error(X, X, X, alpha, sigma, target)).all()
    assert torch.isfinite(vdm_fast.prior_kl(X, alpha, sigma)).all()
    z0 = vdm_fast.q_sample(GRID, alpha, sigma, X)
    nll = vdm_fast.recon_nll(GRID, z0, alpha, sigma)
    truth = numerics.running_error(reference.recon_nll, (GRID, z0, alpha, sigma))
    allowed = numerics.K * truth.bound  # how far ours may lie from the float64 truth (tests/numerics.py)
    assert torch.isfinite(nll).all()
    numerics.assert_within_bound(nll, truth.value, truth.bound, msg=f"recon_nll at gamma={gamma}")
    assert (nll.double() >= -allowed).all()  # a -log p, >= 0 up to rounding
    if gamma <= -20.0:
        # The decoder is certain: sigma_0 <= 4.5e-5 puts the neighbouring bins (2/256 apart) ~170
        # sigma_0 away, so the exact -log p is below 255 exp(-10^4) per element: 0.
        assert (nll.double().abs() <= allowed).all()
    if gamma >= 20.0:
        # Uniform over 256 values: log-sum-exp of the logits l_k lies within [min l, max l] + log 256,
        # so the exact -log p of an element is log 256 within (max l - min l).
        centres = 2 * (torch.arange(256, dtype=torch.float64) + 0.5) / 256 - 1
        a, s = alpha.double().view(-1, 1, 1, 1), sigma.double().view(-1, 1, 1, 1)
        logits = -0.5 * ((z0.double()[..., None] - a * centres) / s) ** 2
        spread = (logits.amax(-1) - logits.amin(-1)).flatten(1).sum(1)
        assert ((nll.double() - 8 * math.log(256)).abs() <= spread + allowed).all()


@given(data=st.data(), gamma=st.floats(-40, 40, allow_nan=False, width=32))
def test_property_coefficients_from_any_gamma(data, gamma):
    """q_sample, sq_error (every target), prior_kl and recon_nll with alpha, sigma drawn from gamma
    in [-40, 40] (issue 15) equal the reference within the running error bound on a random backend,
    dtype and layout."""
    (x, n) = data.draw(data_tensors(2))
    batch = x.shape[0]
    g = torch.full((batch,), gamma, dtype=torch.float64)
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    alpha, sigma = torch.sigmoid(-g).sqrt().to(cdt), torch.sigmoid(g).sqrt().to(cdt)
    backend = _pick_backend(data, "q_sample", x.numel())
    assert_matches_reference(vdm_fast.q_sample(x, alpha, sigma, n, backend=backend), reference.q_sample,
                             (x, alpha, sigma, n), msg=f"q_sample {backend} gamma={gamma}")
    for target in ("eps", "x0", "v"):
        assert_matches_reference(vdm_fast.sq_error(n, x, n, alpha, sigma, target, backend=backend),
                                 reference.sq_error, (n, x, n, alpha, sigma, target),
                                 msg=f"sq_error {target} {backend} gamma={gamma}")
    assert_matches_reference(vdm_fast.prior_kl(x, alpha, sigma, backend=backend), reference.prior_kl,
                             (x, alpha, sigma), msg=f"prior_kl {backend} gamma={gamma}")
    grid = (2 * (torch.randint(0, 256, x.shape, generator=torch.Generator().manual_seed(batch)) + 0.5) / 256 - 1)
    grid = grid.to(x.dtype)
    z0 = reference.q_sample(grid, alpha, sigma, n)
    assert_matches_reference(vdm_fast.recon_nll(grid, z0, alpha, sigma, backend=backend), reference.recon_nll,
                             (grid, z0, alpha, sigma), msg=f"recon_nll {backend} gamma={gamma}")


# --- many calls, many threads, every op -----------------------------------------------------------------


def _every_op_once(tensors):
    """One forward (+ backward where differentiable) call of every op on small tensors."""
    x, grid, ddpm, z, alpha, sigma = tensors
    loss = (vdm_fast.q_sample(x, alpha, sigma, z).sum() + vdm_fast.sq_error(x, z, z, alpha, sigma, "v").sum()
            + vdm_fast.prior_kl(x, alpha, sigma).sum() + vdm_fast.recon_nll(grid, x, alpha, sigma).sum()
            + vdm_fast.discretized_gaussian_nll(ddpm, x, x.clamp(-3, 0)).sum())
    loss.backward()
    with torch.no_grad():
        vdm_fast.reverse_step(z, z, [0.5] * 6)
        vdm_fast.q_sample_randn(z, 0.5, 0.5)
        vdm_fast.randn_like(z)


def _small_inputs():
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    grid = (2 * (torch.randint(0, 256, (4, 3, 8, 8)) + 0.5) / 256 - 1).float()
    ddpm = (torch.randint(0, 256, (4, 3, 8, 8)) / 127.5 - 1).float()
    return x, grid, ddpm, torch.randn(4, 3, 8, 8), torch.rand(4) * 0.5 + 0.5, (torch.rand(4) * 0.5 + 0.2).requires_grad_()


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/statm"), reason="needs /proc")
def test_no_memory_growth_over_many_calls_of_every_op():
    from test_hardening import _rss_bytes

    tensors = _small_inputs()
    for _ in range(2_000):  # warm-up: allocator caches and lazily built tables settle
        _every_op_once(tensors)
    start = _rss_bytes()
    for _ in range(12_500):  # 8 ops: 10^5 calls
        _every_op_once(tensors)
    growth = _rss_bytes() - start
    assert growth < 8 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB over 10^5 calls"


def test_every_op_from_many_threads():
    inputs = [_small_inputs() for _ in range(4)]
    # The float64 truths and their running error bounds (tests/numerics.py), computed here: the
    # dispatch mode that computes them is not for the worker threads.
    want = [(numerics.running_error(lambda x, z, a, s: reference.sq_error(x, z, z, a, s, "v"), (x, z, alpha, sigma)),
             numerics.running_error(reference.recon_nll, (grid, x, alpha, sigma)))
            for x, grid, ddpm, z, alpha, sigma in inputs]
    def worker(i):
        x, grid, ddpm, z, alpha, sigma = inputs[i]
        for _ in range(100):
            got = (vdm_fast.sq_error(x, z, z, alpha, sigma, "v").detach(), vdm_fast.recon_nll(grid, x, alpha, sigma).detach())
            for g, w, label in zip(got, want[i], ("sq_error", "recon_nll")):
                numerics.assert_within_bound(g, w.value, w.bound, msg=f"thread {i} {label}")
            _every_op_once(inputs[i])

    run_in_threads(worker, len(inputs))


# --- nothing silently wrong (issue 15): sq_error at sigma = 0, the checks under vmap -------------------


@pytest.mark.parametrize("backend", _cpu_backends("sq_error"))
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the Triton interpreter's numpy: 1/0 and 0*inf
def test_sq_error_score_at_sigma_zero_agrees_with_the_reference(backend):
    """The score target -noise/sigma is inf at sigma = 0: the loss is +inf there (NaN only where a
    noise element is 0, 0 * inf), as in the reference, forward and backward. (Triton's masked lanes
    past a sample's end once made it NaN: 5 elements a sample leave most of a block masked.)"""
    pred, x0, noise = torch.randn(3, 5), torch.randn(3, 5), torch.randn(3, 5)
    noise[2, 1] = 0.0
    alpha, sigma = torch.tensor([0.5, 1.0, 1.0]), torch.tensor([0.5, 0.0, 0.0])
    outs = {}
    for name in (backend, "reference"):
        p, s = pred.clone().requires_grad_(), sigma.clone().requires_grad_()
        out = vdm_fast.sq_error(p, x0, noise, alpha, s, "score", backend=name)
        out.sum().backward()
        outs[name] = (out.detach(), p.grad, s.grad)
    assert outs["reference"][0][1] == float("inf") and outs["reference"][0][2].isnan()
    for got, want in zip(outs[backend], outs["reference"]):
        torch.testing.assert_close(got, want, equal_nan=True)


def _vmap_backends(op: str) -> list[str]:
    return _cpu_backends(op) + ["reference"]


@pytest.mark.parametrize("backend", _vmap_backends("prior_kl"))
@pytest.mark.filterwarnings("ignore:There is a performance drop")  # vmap's fallback: a loop over the ops
def test_vmap_over_prior_kl_and_recon_nll(backend):
    """torch.func.vmap over the ops with value checks equals a loop over the vmapped dim, and the
    checks still raise on a bad value of any entry."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, 2, 5, generator=g)
    grid = (2 * (torch.randint(0, 256, (4, 3, 2, 5), generator=g) + 0.5) / 256 - 1).float()
    alpha, sigma = torch.rand(4, 3, generator=g) + 0.1, torch.rand(4, 3, generator=g) + 0.1

    def prior(x, a, s):
        return vdm_fast.prior_kl(x, a, s, backend=backend)

    def recon(x, z, a, s):
        return vdm_fast.recon_nll(x, z, a, s, backend=backend)

    torch.testing.assert_close(torch.func.vmap(prior)(x, alpha, sigma),
                               torch.stack([prior(x[i], alpha[i], sigma[i]) for i in range(4)]), rtol=0, atol=0)
    torch.testing.assert_close(torch.func.vmap(recon)(grid, x, alpha, sigma),
                               torch.stack([recon(grid[i], x[i], alpha[i], sigma[i]) for i in range(4)]),
                               rtol=0, atol=0)
    # An unbatched coefficient (in_dims None): the check sees a plain tensor inside vmap.
    torch.testing.assert_close(torch.func.vmap(prior, in_dims=(0, None, None))(x, alpha[0], sigma[0]),
                               torch.stack([prior(x[i], alpha[0], sigma[0]) for i in range(4)]), rtol=0, atol=0)

    bad_sigma = sigma.clone()
    bad_sigma[2, 1] = 0.0
    with pytest.raises(RuntimeError, match="sigma_1 must be > 0"):
        torch.func.vmap(prior)(x, alpha, bad_sigma)
    with pytest.raises(RuntimeError, match="sigma_0 must be > 0"):
        torch.func.vmap(recon)(grid, x, alpha, bad_sigma)
    bad_grid = grid.clone()
    bad_grid[3, 0, 1, 2] = 1.5
    with pytest.raises(RuntimeError, match="x0 must lie in"):
        torch.func.vmap(recon)(bad_grid, x, alpha, sigma)
