"""reverse_step (DESIGN.md §4.6): every backend equals the reference, for every combination of
optional inputs. Inference-only op: there is no backward to test; instead, inputs requiring grad
are rejected with a clear error, and the op runs under no_grad and inference_mode."""

from __future__ import annotations

import itertools
import os
import sys

import pytest
import torch

import vdm_fast
from vdm_fast import _library, backends, reference
from vdm_fast.ops import SPECS
from vdm_fast.ops.reverse_step import reverse_step
import numerics
from helpers import LAYOUTS, LOW_PRECISION, ODD_SHAPES, backend_params, layouts, skip_compile_under_interpreter

BACKENDS = backend_params("reverse_step")
ALL_BACKENDS = backend_params("reverse_step", include_reference=True)
CLIP = 0.7  # small enough that the clamp is active on many elements
# (cfg, classifier guidance, clip, noise given) — noise off means every c_n is 0.
COMBOS = list(itertools.product([False, True], repeat=4))
COMBO_IDS = ["-".join(n if on else f"no_{n}" for n, on in zip(("cfg", "cg", "clip", "noise"), c)) for c in COMBOS]
# Per the documented accuracy of the in-kernel normals (DESIGN.md §6, tests/test_randn_like.py's
# test_normals_match_exact_box_muller): |n_backend - n_reference| <= NORMALS_TOL (1 + |n_reference|).
NORMALS_TOL = 2e-6


def make_inputs(shape, dtype, device, cfg=True, cg=True, noise=True):
    """Positional args and keyword args of the public op, with realistic coefficient ranges."""
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    B = shape[0]

    def data():
        return torch.randn(shape, device=device).to(dtype)

    coeffs = torch.stack([
        1 + 3 * torch.rand(B, device=device, dtype=cdt),  # a_z = 1/alpha
        -2 * torch.rand(B, device=device, dtype=cdt),  # a_m = -sigma/alpha
        torch.rand(B, device=device, dtype=cdt),  # c_z
        torch.rand(B, device=device, dtype=cdt) - 0.5,  # c_m
        torch.rand(B, device=device, dtype=cdt),  # c_x
        0.1 + torch.rand(B, device=device, dtype=cdt) if noise else torch.zeros(B, device=device, dtype=cdt),
    ])
    kw = {}
    if cfg:
        kw.update(uncond=data(), guidance_scale=1 + 6 * torch.rand(B, device=device, dtype=cdt))
    if cg:
        kw.update(classifier_grad=data(), grad_scale=torch.rand(B, device=device, dtype=cdt))
    if noise:
        kw["noise"] = data()
    return (data(), data(), coeffs), kw


def ref_call(args, kw, clip=None):
    """The reference with the normalised signature (what every backend must equal)."""
    z, m, coeffs = args
    return reference.reverse_step(z, m, coeffs, kw.get("uncond"), kw.get("guidance_scale"),
                                  kw.get("classifier_grad"), kw.get("grad_scale"), clip, kw.get("noise"))


def naive(args, kw, clip=None):
    """DESIGN.md §4.6 written out in float64, independently of vdm_fast.reference."""
    z, m, coeffs = (t.double() for t in args)
    view = (-1,) + (1,) * (z.dim() - 1)
    a_z, a_m, c_z, c_m, c_x, c_n = (c.reshape(view) for c in coeffs)
    if "uncond" in kw:
        u = kw["uncond"].double()
        m = u + kw["guidance_scale"].double().reshape(view) * (m - u)
    if "classifier_grad" in kw:
        m = m + kw["grad_scale"].double().reshape(view) * kw["classifier_grad"].double()
    x_hat = a_z * z + a_m * m
    if clip is not None:
        x_hat = x_hat.clamp(-clip, clip)  # its error rule counts the rounding of the literal clip
    out = c_z * z + c_m * m + c_x * x_hat
    if "noise" in kw:
        out = out + c_n * kw["noise"].double()
    return out


KWARGS = ("uncond", "guidance_scale", "classifier_grad", "grad_scale", "noise")


def flat_inputs(args, kw):
    """The op's tensors in one tuple, None where absent: the inputs of a numerics check."""
    return (*args, *(kw.get(k) for k in KWARGS))


def unflat(z, m, coeffs, *rest):
    return (z, m, coeffs), {k: v for k, v in zip(KWARGS, rest) if v is not None}


def assert_matches_reference(out, args, kw, clip=None, ref=ref_call, msg=""):
    """``out``, our step on (args, kw), equals ``ref`` (ref_call, or the independent ``naive``)
    evaluated in float64 within K times the running error bound of the formula at the op's
    compute precision (tests/numerics.py). A given noise is an exact input."""
    numerics.check_against_reference(lambda *_: out, lambda *a: ref(*unflat(*a), clip), flat_inputs(args, kw),
                                     msg=msg or "z_next")


# --- equality with the reference -----------------------------------------------------------------


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("combo", COMBOS, ids=COMBO_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_every_combination_matches(backend, combo, dtype):
    name, device = backend
    cfg, cg, clip_on, noise = combo
    clip = CLIP if clip_on else None
    args, kw = make_inputs((5, 3, 11, 7), dtype, device, cfg=cfg, cg=cg, noise=noise)
    out = reverse_step(*args, clip=clip, backend=name, **kw)
    assert out.dtype == dtype and out.shape == args[0].shape
    # The reference is checked against the independent float64 formula, the kernels against it.
    assert_matches_reference(out, args, kw, clip, ref=ref_call if name != "reference" else naive)
    if clip_on:  # the clamp must have mattered, or this case tests nothing about it
        assert not torch.allclose(naive(args, kw, None), naive(args, kw, clip))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("combo", COMBOS, ids=COMBO_IDS)
@pytest.mark.parametrize("drawn", [False, True], ids=["given-noise", "drawn-noise"])
def test_with_x0_is_the_step_and_its_x_hat(backend, combo, drawn):
    """reverse_step_with_x0 returns reverse_step's z_next bit for bit (given or drawn noise, same
    generator state) and the x̂ it formed: bit-equal to the step with rows (a_z, a_m, 0, 0, 1, 0),
    which adds 0 z + 0 m to x̂ exactly, and to x̂ in float64 within the formula's bound."""
    name, device = backend
    cfg, cg, clip_on, noise = combo
    clip = CLIP if clip_on else None
    args, kw = make_inputs((3, 5, 7), torch.float32, device, cfg=cfg, cg=cg, noise=noise)
    if drawn:
        kw.pop("noise", None)
        kw["generator"] = torch.Generator().manual_seed(5)
    z_next, x_hat = vdm_fast.reverse_step_with_x0(*args, clip=clip, backend=name, **kw)
    if drawn:
        kw["generator"] = torch.Generator().manual_seed(5)
    assert torch.equal(z_next, reverse_step(*args, clip=clip, backend=name, **kw))
    z, m, coeffs = args
    x_rows = torch.stack([coeffs[0], coeffs[1], *torch.zeros(2, 3, device=device), torch.ones(3, device=device),
                          torch.zeros(3, device=device)])
    kw.pop("noise", None), kw.pop("generator", None)
    assert x_hat.dtype == z.dtype and x_hat.stride() == z_next.stride()
    assert torch.equal(x_hat, reverse_step(z, m, x_rows, clip=clip, backend=name, stochastic=False, **kw))
    assert_matches_reference(x_hat, (z, m, x_rows), kw, clip, ref=naive, msg="x_hat")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", ODD_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_odd_shapes(backend, shape, dtype):
    name, device = backend
    for cfg, cg, clip in [(False, False, None), (True, False, None), (False, False, CLIP), (True, True, CLIP)]:
        args, kw = make_inputs(shape, dtype, device, cfg=cfg, cg=cg)
        assert_matches_reference(reverse_step(*args, clip=clip, backend=name, **kw), args, kw, clip,
                                 msg=f"cfg={cfg} cg={cg} clip={clip}")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("clip", [None, CLIP])
def test_low_precision_inputs_match_reference(backend, dtype, clip):
    """float16/bfloat16 data is read as it is and computed in float32: the float32 bound applies,
    plus one rounding of the result to the data's dtype."""
    name, device = backend
    args, kw = make_inputs((6, 3, 17, 9), dtype, device)
    out = reverse_step(*args, clip=clip, backend=name, **kw)
    assert out.dtype == dtype
    assert_matches_reference(out, args, kw, clip, ref=naive)  # float64 on the same rounded inputs


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_empty_batch(backend):
    name, device = backend
    args, kw = make_inputs((0, 3, 4, 4), torch.float32, device)
    out = reverse_step(*args, clip=1.0, backend=name, **kw)
    assert out.shape == (0, 3, 4, 4)
    out = reverse_step(*args[:2], [0.5, 0.1, 0.2, 0.3, 0.4, 0.0], backend=name)  # sequence form, B = 0
    assert out.shape == (0, 3, 4, 4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("which", ["z", "others"])
def test_noncontiguous_inputs(backend, layout, which):
    name, device = backend
    view = layouts(device)[layout]
    args, kw = make_inputs(tuple(view.shape), torch.float32, device)
    if which == "z":
        args = (view, args[1], args[2])  # the others contiguous: mixed layouts
    else:
        kw = {k: (layouts(device)[layout] if k in ("uncond", "classifier_grad", "noise") else v) for k, v in kw.items()}
        args = (args[0], layouts(device)[layout], args[2])
    out = reverse_step(*args, clip=CLIP, backend=name, **kw)
    assert_matches_reference(out, args, kw, CLIP)
    if which == "z" and layout in ("channels_last", "transposed"):
        assert out.stride() == view.stride(), "the output takes z's layout when z is batch-major dense"
    if which == "z" and layout in ("sliced", "expanded", "batch_not_outermost"):
        assert out.is_contiguous()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("form", ["(6,B)", "(6,)", "sequence of floats", "sequence of tensors", "float64 (6,B)",
                                  "transposed (6,B)"])
def test_coefficient_forms(backend, form):
    name, device = backend
    args, kw = make_inputs((3, 2, 5, 5), torch.float32, device, cfg=False, cg=False)
    z, m, _ = args
    vals = [1.5, -0.7, 0.4, 0.1, 0.6, 0.3]
    B = z.shape[0]
    coeffs = {
        "(6,B)": lambda: torch.tensor(vals, device=device)[:, None].repeat(1, B),
        "(6,)": lambda: torch.tensor(vals, device=device),
        "sequence of floats": lambda: vals,
        "sequence of tensors": lambda: [torch.tensor(vals[0], device=device), torch.full((B,), vals[1], device=device),
                                        torch.full((B, 1, 1, 1), vals[2], device=device), vals[3],
                                        torch.full((B,), vals[4], device=device, dtype=torch.float64), vals[5]],
        "float64 (6,B)": lambda: torch.tensor(vals, device=device, dtype=torch.float64)[:, None].repeat(1, B),
        "transposed (6,B)": lambda: torch.tensor(vals, device=device)[None, :].repeat(B, 1).T,
    }[form]()

    def expected(z, m, noise):
        x_hat = (vals[0] * z + vals[1] * m).clamp(-1, 1)
        return vals[2] * z + vals[3] * m + vals[4] * x_hat + vals[5] * noise

    numerics.check_against_reference(
        lambda z, m, noise: reverse_step(z, m, coeffs, clip=1.0, noise=noise, backend=name),
        expected, (z, m, kw["noise"]), msg=form)
    # Per-sample guidance scales accept the same forms as any per-sample coefficient.
    u = torch.randn_like(z)

    def expected_guided(z, m, u, noise):
        mg = u + 2.0 * (m - u) + 0.5 * u
        return vals[2] * z + vals[3] * mg + vals[4] * (vals[0] * z + vals[1] * mg) + vals[5] * noise

    for w in (2.0, torch.tensor(2.0, device=device), torch.full((B, 1, 1, 1), 2.0, device=device)):
        numerics.check_against_reference(
            lambda z, m, u, noise: reverse_step(z, m, coeffs, uncond=u, guidance_scale=w, classifier_grad=u,
                                                grad_scale=0.5, noise=noise, backend=name),
            expected_guided, (z, m, u, kw["noise"]), msg=f"{form} guidance_scale={w!r}")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_inputs_not_modified(backend):
    name, device = backend
    args, kw = make_inputs((3, 4, 5), torch.float32, device)
    tensors = list(args) + list(kw.values())
    before = [t.clone() for t in tensors]
    reverse_step(*args, clip=CLIP, backend=name, **kw)
    for b, t in zip(before, tensors):
        assert torch.equal(b, t)


# --- noise: given, drawn in-kernel (Philox, DESIGN.md §6), or none ----------------------------------
# With noise=None on a stochastic step the kernel draws element i's noise from the randn_like
# stream of a seed drawn from the generator, rounded to z's dtype: the result must equal the step
# with noise = vdm_fast.randn_like(z, generator) for the same generator state.

# Shapes whose per-sample size D is a multiple of 4 (whole Philox blocks per sample) and not
# (blocks straddle samples; D < 4: one block spans several samples).
NOISE_SHAPES = [(3, 4, 5), (5, 3, 7), (7, 1), (6, 2), (2, 2053)]


def _some_c_n_zero(coeffs):
    """Every other sample deterministic: the kernels skip their draw, the others must not shift."""
    coeffs = coeffs.clone()
    coeffs[5, ::2] = 0
    return coeffs


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("shape", NOISE_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_drawn_noise_is_randn_like_of_the_generator(backend, shape, dtype):
    name, device = backend
    (z, m, coeffs), kw = make_inputs(shape, dtype, device, cfg=True, cg=False)
    del kw["noise"]
    coeffs = _some_c_n_zero(coeffs)
    got = reverse_step(z, m, coeffs, clip=CLIP, generator=torch.Generator().manual_seed(7), backend=name, **kw)
    # randn_like of the same backend: the normals of different backends agree to float32 rounding
    # (tests/test_randn_like.py); within one backend the step must be exactly the step with that noise.
    n = vdm_fast.randn_like(z, generator=torch.Generator().manual_seed(7), backend=name)
    want = reverse_step(z, m, coeffs, clip=CLIP, noise=n, backend=name, **kw)
    assert torch.equal(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_drawn_noise_is_the_same_on_every_backend(backend):
    """Bit-identical streams: a backend's step equals the reference's step for the same generator
    state, the one with the reference's noise (the exact Box-Muller of the same uniforms), up to
    the documented accuracy of the normals times c_n and the step's own running error bound."""
    name, device = backend
    (z, m, coeffs), _ = make_inputs((4, 3, 7), torch.float32, device, cfg=False, cg=False)
    got = reverse_step(z, m, coeffs, generator=torch.Generator().manual_seed(11), backend=name)
    n = vdm_fast.randn_like(z.cpu(), generator=torch.Generator().manual_seed(11), backend="reference")
    # The same draw through the reference backend's step: the same seed, so the same noise.
    want = reverse_step(z.cpu(), m.cpu(), coeffs.cpu(), generator=torch.Generator().manual_seed(11), backend="reference")
    assert torch.equal(want, reverse_step(z.cpu(), m.cpu(), coeffs.cpu(), noise=n, backend="reference"))
    truth = numerics.running_error(lambda z, m, c, n: reference.reverse_step(z, m, c, noise=n), (z.cpu(), m.cpu(),
                                   coeffs.cpu(), n))
    noise_part = coeffs[5].double().cpu().abs().reshape(-1, 1, 1) * NORMALS_TOL * (1 + n.double().abs())
    numerics.assert_within_bound(got.cpu(), truth.value, numerics.K * truth.bound + noise_part, k=1, msg=name)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_drawn_noise_is_fresh_on_each_call_and_reproducible(backend):
    name, device = backend
    (z, m, coeffs), _ = make_inputs((3, 4, 5), torch.float32, device, cfg=False, cg=False)
    gen = torch.Generator().manual_seed(5)
    a = reverse_step(z, m, coeffs, generator=gen, backend=name)
    b = reverse_step(z, m, coeffs, generator=gen, backend=name)
    assert not torch.equal(a, b), "consecutive calls must draw fresh noise"
    again = reverse_step(z, m, coeffs, generator=torch.Generator().manual_seed(5), backend=name)
    assert torch.equal(a, again), "the same generator state must give the same step"


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_drawn_noise_is_standard_normal(backend):
    """(step - step without noise) / c_n over many elements: mean 0, variance 1, no correlation
    between neighbours or between samples (the full statistics of the stream: tests/test_randn_like.py)."""
    name, device = backend
    B, D = 4, 4099
    (z, m, coeffs), _ = make_inputs((B, D), torch.float32, device, cfg=False, cg=False)
    got = reverse_step(z, m, coeffs, generator=torch.Generator().manual_seed(9), backend=name).double()
    no_noise = coeffs.clone()
    no_noise[5] = 0
    base = reverse_step(z, m, no_noise, stochastic=False, backend=name).double()
    n = ((got - base) / coeffs[5].double().to(got.device)[:, None]).cpu()
    assert abs(n.mean().item()) < 4 / (B * D) ** 0.5
    assert abs(n.var().item() - 1) < 0.05
    assert abs(torch.corrcoef(torch.stack([n[:, 1:].flatten(), n[:, :-1].flatten()]))[0, 1].item()) < 0.03
    assert abs(torch.corrcoef(n[:2])[0, 1].item()) < 0.06


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_drawn_noise_nan_c_n_stays_in_its_sample(backend):
    name, device = backend
    (z, m, coeffs), _ = make_inputs((3, 5, 3), torch.float32, device, cfg=False, cg=False)
    coeffs = coeffs.clone()
    coeffs[5, 1] = float("nan")
    out = reverse_step(z, m, coeffs, generator=torch.Generator().manual_seed(2), backend=name)
    assert out[1].isnan().all()
    assert out[[0, 2]].isfinite().all()


def test_noise_and_seed_are_alternatives_in_the_native_op():
    if not _library.has_native_kernel("reverse_step", "CPU"):
        pytest.skip("native CPU kernel not built")
    (z, m, coeffs), kw = make_inputs((3, 4, 5), torch.float32, "cpu", cfg=False, cg=False)
    seed = torch.tensor(3, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="noise and seed"):
        torch.ops.vdm_fast.reverse_step(z, m, coeffs, noise=kw["noise"], seed=seed)
    with pytest.raises(RuntimeError, match="seed must be an int64"):
        torch.ops.vdm_fast.reverse_step(z, m, coeffs, seed=seed.float())


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("how", ["cpu coeffs", "float c_n", "stochastic=False"])
def test_no_draw_when_every_c_n_is_zero(backend, how):
    name, device = backend
    args, _ = make_inputs((3, 4, 5), torch.float32, device, cfg=False, cg=False, noise=False)
    z, m, coeffs = args
    gen = torch.Generator(device).manual_seed(3)
    state = gen.get_state()
    if how == "float c_n":
        coeffs = [*coeffs[:5].unbind(0), 0.0]
    out = reverse_step(z, m, coeffs, generator=gen, backend=name, stochastic=False if how == "stochastic=False" else None)
    assert torch.equal(gen.get_state(), state), "nothing may be drawn when every c_n is 0"
    assert_matches_reference(out, args, {})


def test_stochastic_flag_checks():
    args, kw = make_inputs((3, 4, 5), torch.float32, "cpu", cfg=False, cg=False)
    with pytest.raises(ValueError, match="stochastic"):
        reverse_step(*args, noise=kw["noise"], stochastic=False)
    # stochastic=False leaves the c_n term out without reading c_n (no device sync).
    z, m, coeffs = args
    deterministic = coeffs.clone()
    deterministic[5] = 0
    assert torch.equal(reverse_step(*args, stochastic=False), reverse_step(z, m, deterministic, stochastic=False))
    with pytest.raises(TypeError, match="stochastic"):
        reverse_step(*args, stochastic=1)
    # stochastic=True draws even though every c_n is 0 (what happens on a GPU, where c_n is not read).
    z, m, coeffs = make_inputs((3, 4, 5), torch.float32, "cpu", cfg=False, cg=False, noise=False)[0]
    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    out = reverse_step(z, m, coeffs, generator=gen, stochastic=True)
    assert not torch.equal(gen.get_state(), state)
    assert_matches_reference(out, (z, m, coeffs), {})


# --- inference only ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("arg", ["z", "model_out", "uncond", "classifier_grad", "noise", "guidance_scale", "coeffs"])
def test_inputs_requiring_grad_are_rejected(backend, arg):
    name, device = backend
    args, kw = make_inputs((3, 4, 5), torch.float32, device)
    if arg in ("z", "model_out", "coeffs"):
        i = ("z", "model_out", "coeffs").index(arg)
        args = tuple(a.requires_grad_() if j == i else a for j, a in enumerate(args))
    else:
        kw[arg].requires_grad_()
    with pytest.raises(ValueError, match=f"{arg} requires grad.*inference-only"):
        reverse_step(*args, clip=CLIP, backend=name, **kw)
    with torch.no_grad():
        out = reverse_step(*args, clip=CLIP, backend=name, **kw)
    assert_matches_reference(out, args, kw, CLIP, msg="no_grad")
    with torch.inference_mode():
        out = reverse_step(*args, clip=CLIP, backend=name, **kw)
    assert_matches_reference(out, args, kw, CLIP, msg="inference_mode")


def test_native_op_rejects_grad_and_runs_in_inference_mode():
    if not _library.has_native_kernel("reverse_step", "CPU"):
        pytest.skip("native CPU kernel not built")
    args, kw = make_inputs((3, 4, 5), torch.float32, "cpu")
    op = torch.ops.vdm_fast.reverse_step.default
    z, m, coeffs = args
    nargs = (kw["uncond"], kw["guidance_scale"], kw["classifier_grad"], kw["grad_scale"], CLIP, kw["noise"])
    with pytest.raises(ValueError, match="grad_scale requires grad"):
        op(z, m, coeffs, *nargs[:3], nargs[3].clone().requires_grad_(), *nargs[4:])
    with torch.inference_mode():
        out = op(z, m, coeffs, *nargs)
    assert_matches_reference(out, args, kw, CLIP, msg="inference_mode")
    with torch.no_grad():
        out = op(z.clone().requires_grad_(), m, coeffs, *nargs)
    assert_matches_reference(out, args, kw, CLIP, msg="no_grad")


# --- registration: opcheck and torch.compile ---------------------------------------------------------
# No autograd tests: the op has no backward by design (inference only); its Autograd kernel only
# raises (tested above), so opcheck's test_autograd_registration is the relevant check.


def _native_args(shape, combo):
    cfg, cg, clip_on, noise = combo
    args, kw = make_inputs(shape, torch.float32, "cpu", cfg=cfg, cg=cg, noise=noise)
    return (*args, kw.get("uncond"), kw.get("guidance_scale"), kw.get("classifier_grad"), kw.get("grad_scale"),
            CLIP if clip_on else None, kw.get("noise"))


def test_opcheck_native():
    if not _library.has_native_kernel("reverse_step", "CPU"):
        pytest.skip("native CPU kernel not built")
    op = torch.ops.vdm_fast.reverse_step.default
    for shape, combo in [((3, 4, 5), (True, True, True, True)), ((1, 7), (False, False, False, False)),
                         ((0, 2), (True, False, True, True)), ((2, 3), (False, True, False, True))]:
        torch.library.opcheck(op, _native_args(shape, combo))
    z_cl = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(op, (z_cl, torch.randn(2, 3, 4, 5), torch.rand(6, 2)))
    # In-kernel noise: seed and offset, whole and straddling Philox blocks.
    seed = torch.tensor(-1234567890123, dtype=torch.int64)
    for shape in [(3, 4, 5), (5, 3)]:
        (z, m, coeffs), _ = make_inputs(shape, torch.float32, "cpu", cfg=False, cg=False)
        torch.library.opcheck(op, (z, m, coeffs), dict(clip=CLIP, seed=seed, offset=3))


def test_opcheck_triton():
    if backends.unavailable_reason("triton", "cpu", "reverse_step") and not torch.cuda.is_available():
        pytest.skip(backends.unavailable_reason("triton", "cpu", "reverse_step"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # Under the interpreter, AOT-dispatch tracing would run the kernel on fake tensors, which the
    # interpreter cannot; schema, fake-tensor and autograd registration are checked regardless.
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    if device == "cuda":
        utils = utils + ("test_aot_dispatch_dynamic",)
    args = [a.to(device) if isinstance(a, torch.Tensor) else a for a in _native_args((3, 4, 5), (True, True, True, True))]
    SPECS["reverse_step"].load_triton()  # the Triton ops are registered on first use
    torch.library.opcheck(torch.ops.vdm_fast.reverse_step_triton.default, tuple(args), test_utils=utils)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_compile_fullgraph(backend):
    name, device = backend
    skip_compile_under_interpreter(name)
    torch._dynamo.reset()

    def step(z, m, coeffs, u, w, noise):
        # Two steps: CFG + clip + noise, then a deterministic one (c_n passed as a float).
        z = reverse_step(z, m, coeffs, uncond=u, guidance_scale=w, clip=1.0, noise=noise, backend=name)
        return reverse_step(z, m, [*coeffs[:5].unbind(0), 0.0], backend=name)

    def reference_step(z, m, coeffs, u, w, noise):
        z = reference.reverse_step(z, m, coeffs, u, w, clip=1.0, noise=noise)
        return reference.reverse_step(z, m, torch.cat([coeffs[:5], torch.zeros_like(coeffs[:1])]))

    args, kw = make_inputs((4, 3, 8, 8), torch.float32, device, cg=False)
    inputs = (*args, kw["uncond"], kw["guidance_scale"], kw["noise"])
    # Compiled, as eager, within the running error bound of the two reference steps.
    with torch.no_grad():
        for label, fn in (("compiled", torch.compile(step, fullgraph=True)), ("eager", step)):
            numerics.check_against_reference(fn, reference_step, inputs, msg=label)

    # In-kernel noise: the seed is drawn inside the graph (torch.compile's own RNG, so not the
    # eager draw); the graph must not break and the noise recovered from the step must be N(0, 1).
    # Not for the reference: Inductor needs minutes to compile its integer-math Philox oracle.
    if name == "reference":
        return
    z, m, coeffs = args

    with torch.no_grad():
        coeffs_no_noise = coeffs.clone()
        coeffs_no_noise[5] = 0

        def drawn(z, m, coeffs, coeffs_no_noise):
            return (reverse_step(z, m, coeffs, backend=name)
                    - reverse_step(z, m, coeffs_no_noise, stochastic=False, backend=name))

        n = torch.compile(drawn, fullgraph=True)(z, m, coeffs, coeffs_no_noise) / coeffs[5].reshape(-1, 1, 1, 1)
    assert n.isfinite().all() and abs(n.var().item() - 1) < 0.25


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph_op_with_seed(backend):
    """The op with an explicit seed under torch.compile equals the eager op: same noise."""
    name, device = backend
    skip_compile_under_interpreter(name)
    torch._dynamo.reset()
    if name == "triton":
        SPECS["reverse_step"].load_triton()
    op = torch.ops.vdm_fast.reverse_step_triton if name == "triton" else torch.ops.vdm_fast.reverse_step
    (z, m, coeffs), _ = make_inputs((4, 3, 5, 5), torch.float32, device, cfg=False, cg=False)
    seed = torch.tensor(42, dtype=torch.int64)

    def step(z, m, coeffs, seed):
        return op(z, m, coeffs, clip=1.0, seed=seed, offset=0)

    with torch.no_grad():
        got = torch.compile(step, fullgraph=True)(z, m, coeffs, seed)
        want = step(z, m, coeffs, seed)
    assert torch.equal(got, want)


# --- agreement with diffusers' schedulers (the benchmark's coefficient helpers) ------------------------


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("scheduler", ["DDPM", "DDIM eta=0", "DDIM eta=0.7"])
def test_coefficients_reproduce_diffusers(scheduler, clip, monkeypatch):
    """The coefficient helpers and the op reproduce diffusers' step run in float64 (DESIGN.md §8),
    within the running error bound of reference.reverse_step at float32 on the helpers' float64
    coefficients (each rounded to float32 once); diffusers' own float32 step meets the same bound."""
    diffusers = pytest.importorskip("diffusers")
    from vdm_fast.bench.cases_reverse_step import ddim_step_coeffs, ddpm_step_coeffs

    shape = (4, 3, 8, 8)
    z, eps = torch.randn(shape), torch.randn(shape)
    if scheduler == "DDPM":
        sched = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=clip)
        steps = [(t, t - 1) for t in (999, 500, 1, 0)]
    else:
        sched = diffusers.DDIMScheduler(num_train_timesteps=1000, clip_sample=clip)
        sched.set_timesteps(50)
        steps = [(t, t - 20) for t in (981, 481, 1)]
    eta = 0.7 if scheduler.endswith("0.7") else 0.0
    # diffusers forms 1 - alpha_bar in float32 (off by ~3e-4 relative at t = 1); with its table in
    # float64 the comparison checks the formulas rather than that rounding. With float32 data its
    # scalar coefficients are then float64 values rounded to float32 once, as ours are.
    table32 = sched.alphas_cumprod
    sched.alphas_cumprod = table32.double()
    sched.one = torch.tensor(1.0, dtype=torch.float64)
    sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    for t, prev in steps:
        tt = torch.full((shape[0],), t)
        noise = torch.randn(shape)
        if scheduler == "DDPM":
            coeffs = ddpm_step_coeffs(table32, tt, torch.full_like(tt, prev))
            coeffs64 = ddpm_step_coeffs(table32, tt, torch.full_like(tt, prev), dtype=torch.float64)
            want = sched.step(eps, t, z, generator=torch.Generator().manual_seed(t)).prev_sample
            noise = torch.randn(shape, generator=torch.Generator().manual_seed(t))  # diffusers' draw
            # Its float64 run gets the same draw (a float64 draw from the generator is other numbers).
            with monkeypatch.context() as mp:
                mp.setattr(sys.modules[type(sched).__module__], "randn_tensor",
                           lambda *a, dtype=None, _n=noise, **k: _n.to(dtype))
                truth = sched.step(eps.double(), t, z.double(), generator=torch.Generator().manual_seed(t)).prev_sample
        else:
            coeffs = ddim_step_coeffs(table32, tt, torch.full_like(tt, prev), eta=eta)
            coeffs64 = ddim_step_coeffs(table32, tt, torch.full_like(tt, prev), eta=eta, dtype=torch.float64)
            want = sched.step(eps, t, z, eta=eta, variance_noise=noise).prev_sample
            truth = sched.step(eps.double(), t, z.double(), eta=eta, variance_noise=noise.double()).prev_sample
        assert truth.dtype == torch.float64
        clip_value = 1.0 if clip else None
        # The bound of our formula at float32, the float64 coefficients counted as rounded once.
        # (Our float64 coefficients and diffusers' float64 scalars differ by float64 roundings of
        # the same table values, < 1e-12 relative: far below it.)
        bound = numerics.running_error(lambda z, m, c, n: reference.reverse_step(z, m, c, clip=clip_value, noise=n),
                                       (z, eps, coeffs64, noise), dtype=torch.float32).bound
        # diffusers' float32 step is another order of the same operations: x̂ = (z - s eps) / a
        # rounds its two scalars, a product, a difference and a quotient (at most twice our
        # formula's a_z z + a_m eps terms), the rest is the same sum of scaled terms: K x the bound.
        numerics.assert_within_bound(want, truth, bound, msg=f"diffusers' float32 step t={t}")
        for backend in backends.available("cpu", "reverse_step"):
            got = reverse_step(z, eps, coeffs, clip=clip_value, noise=noise, backend=backend)
            numerics.assert_within_bound(got, truth, bound, msg=f"{backend} t={t}")


# --- bad input: a clear error naming the argument -----------------------------------------------------


@pytest.mark.parametrize(
    "case, exc, match",
    [
        ("model_out_shape", ValueError, "model_out"),
        ("model_out_dtype", TypeError, "model_out"),
        ("int_z", TypeError, "z"),
        ("scalar_z", ValueError, "z"),
        ("list_z", TypeError, "z"),
        ("coeffs_shape", ValueError, "coeffs"),
        ("coeffs_int", TypeError, "coeffs"),
        ("coeffs_len", TypeError, "coeffs"),
        ("coeffs_row_length", ValueError, "coeffs.c_x"),
        ("coeffs_device", ValueError, "coeffs"),
        ("uncond_alone", ValueError, "uncond and guidance_scale"),
        ("guidance_scale_alone", ValueError, "guidance_scale"),
        ("guidance_scale_length", ValueError, "guidance_scale"),
        ("uncond_shape", ValueError, "uncond"),
        ("classifier_grad_alone", ValueError, "classifier_grad"),
        ("grad_scale_alone", ValueError, "grad_scale"),
        ("grad_scale_bool", TypeError, "grad_scale"),
        ("classifier_grad_dtype", TypeError, "classifier_grad"),
        ("noise_shape", ValueError, "noise"),
        ("noise_dtype", TypeError, "noise"),
        ("noise_device", ValueError, "noise"),
        ("clip_negative", ValueError, "clip"),
        ("clip_bool", ValueError, "clip"),
        ("clip_tensor", ValueError, "clip"),
        ("generator", TypeError, "generator"),
    ],
)
def test_bad_inputs_name_the_argument(case, exc, match):
    (z, m, coeffs), kw = make_inputs((4, 3, 5), torch.float32, "cpu", cfg=False, cg=False)
    args = dict(z=z, model_out=m, coeffs=coeffs, **kw)
    meta = torch.device("meta")
    args.update(
        {
            "model_out_shape": dict(model_out=torch.randn(4, 3, 6)),
            "model_out_dtype": dict(model_out=m.to(torch.int32)),  # a float dtype is promoted
            "int_z": dict(z=torch.ones(4, 3, 5, dtype=torch.int64)),
            "scalar_z": dict(z=torch.tensor(1.0), model_out=torch.tensor(1.0)),
            "list_z": dict(z=[1.0, 2.0]),
            "coeffs_shape": dict(coeffs=torch.rand(6, 3)),
            "coeffs_int": dict(coeffs=torch.ones(6, 4, dtype=torch.int64)),
            "coeffs_len": dict(coeffs=[1.0] * 5),
            "coeffs_row_length": dict(coeffs=[1.0, 1.0, 1.0, 1.0, torch.rand(3), 1.0]),
            "coeffs_device": dict(coeffs=coeffs.to(meta)),
            "uncond_alone": dict(uncond=torch.randn(4, 3, 5)),
            "guidance_scale_alone": dict(guidance_scale=2.0),
            "guidance_scale_length": dict(uncond=torch.randn(4, 3, 5), guidance_scale=torch.rand(3)),
            "uncond_shape": dict(uncond=torch.randn(4, 3), guidance_scale=2.0),
            "classifier_grad_alone": dict(classifier_grad=torch.randn(4, 3, 5)),
            "grad_scale_alone": dict(grad_scale=1.0),
            "grad_scale_bool": dict(classifier_grad=torch.randn(4, 3, 5), grad_scale=True),
            "classifier_grad_dtype": dict(classifier_grad=torch.ones(4, 3, 5, dtype=torch.int64), grad_scale=1.0),
            "noise_shape": dict(noise=torch.randn(4, 3, 6)),
            "noise_dtype": dict(noise=kw["noise"].to(torch.int32)),
            "noise_device": dict(noise=kw["noise"].to(meta)),
            "clip_negative": dict(clip=-1.0),
            "clip_bool": dict(clip=True),
            "clip_tensor": dict(clip=torch.tensor(1.0)),
            "generator": dict(noise=None, generator=0),
        }[case]
    )
    z, m, coeffs = args.pop("z"), args.pop("model_out"), args.pop("coeffs")
    tensors = [t for t in (z, m, coeffs, *args.values()) if isinstance(t, torch.Tensor) and t.device.type == "cpu"]
    before = [t.clone() for t in tensors]
    with pytest.raises(exc, match=match):
        reverse_step(z, m, coeffs, **args)
    for b, t in zip(before, tensors):
        assert torch.equal(b, t), "an input was modified"


def test_native_op_checks_name_the_argument():
    if not _library.has_native_kernel("reverse_step", "CPU"):
        pytest.skip("native CPU kernel not built")
    op = torch.ops.vdm_fast.reverse_step.default
    z, m = torch.randn(4, 3), torch.randn(4, 3)
    with pytest.raises(RuntimeError, match="coeffs must have shape"):
        op(z, m, torch.rand(6, 3))
    with pytest.raises(RuntimeError, match="coeffs must be Float"):
        op(z, m, torch.rand(6, 4, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="guidance_scale go together"):
        op(z, m, torch.rand(6, 4), torch.randn(4, 3))
    with pytest.raises(RuntimeError, match="noise must have the shape"):
        op(z, m, torch.rand(6, 4), noise=torch.randn(4, 2))
    with pytest.raises(RuntimeError, match="clip must be positive"):
        op(z, m, torch.rand(6, 4), clip=0.0)


_COMPILE_SCRIPT = """
import sys
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile
from vdm_fast.kernels.reverse_step import _reverse_step_kernel

# flags: CFG, CG, CLIP, NOISE (tensor), PHILOX (in-kernel), X0 (x̂ written too), ALIGNED4 (whole
# Philox blocks per program)
for data, flags in [("*fp32", (1, 1, 1, 1, 0, 0, 1)), ("*fp16", (0, 0, 0, 0, 0, 1, 1)),
                    ("*fp64", (0, 0, 1, 1, 0, 0, 0)), ("*bf16", (1, 0, 1, 0, 0, 1, 1)),
                    ("*fp32", (1, 0, 1, 0, 1, 1, 1)), ("*fp16", (0, 0, 1, 0, 1, 0, 0)),
                    ("*fp64", (0, 1, 0, 0, 1, 1, 1))]:
    acc = "*fp64" if data == "*fp64" else "*fp32"
    sig = {"out_ptr": data, "x0_ptr": data, "z_ptr": data, "m_ptr": data, "u_ptr": data, "g_ptr": data, "n_ptr": data,
           "coeff_ptr": acc, "w_ptr": acc, "gs_ptr": acc, "clip": "fp64", "seed_ptr": "*i64", "off_lo": "i32",
           "off_hi": "i32", "B": "i64", "D": "i64", "chunks": "i64",
           "CFG": "constexpr", "CG": "constexpr", "CLIP": "constexpr", "NOISE": "constexpr", "PHILOX": "constexpr",
           "X0": "constexpr", "ALIGNED4": "constexpr", "BLOCK": "constexpr"}
    consts = dict(zip(("CFG", "CG", "CLIP", "NOISE", "PHILOX", "X0", "ALIGNED4"), map(bool, flags)), BLOCK=1024)
    try:
        kernel = compile(ASTSource(_reverse_step_kernel, sig, consts), target=GPUTarget("cuda", 90, 32))
    except RuntimeError as exc:
        if "ptxas" in str(exc):
            print("NO-PTXAS", exc)
            sys.exit(0)
        raise
    assert ".entry" in kernel.asm["ptx"], data
print("OK")
"""


def test_triton_kernel_compiles_for_sm90():
    """The interpreter runs the kernel's Python, not Triton's compiler: compile it for an H100 (no
    GPU needed) in a process without TRITON_INTERPRET, so errors of the compiled path show up in
    CPU-only CI too (the clip scalar as fp64, as torch.compile passes it)."""
    import subprocess

    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    if res.stdout.startswith("NO-PTXAS"):
        pytest.skip(res.stdout)
    assert res.stdout.strip().endswith("OK"), res.stdout
