"""Mixed input dtypes and autocast (DESIGN.md §4.13), every op on every backend here.

The rule: the data arguments are promoted as ``torch.result_type`` promotes them (a bfloat16 or
float16 model output next to float32 data is computed in float32, next to float64 data in float64),
and to float32 at least under autocast; the result is in that dtype, and each input's gradient in
the input's own dtype. Reading a float16/bfloat16 value into float32 is exact, so a mixed call must
give, bit for bit, the call on the inputs converted to the promoted dtype, and that must equal the
float64 reference within the running error bound of tests/numerics.py (as tests/test_ops.py checks
for one dtype).
"""

from __future__ import annotations

import pytest
import torch

import vdm_fast
from test_ops import check, draws_noise, op_backends, public, sample
from vdm_fast.elbo import VDMLoss
from vdm_fast.ops._spec import DATA, LIKE_DATA, PER_SAMPLE, SPECS
from vdm_fast.schedules import LinearGamma

LOW = (torch.bfloat16, torch.float16)


def data_positions(spec):
    return [i for i, a in enumerate(spec.args) if a.role == DATA]


def mixing_ops():
    """(spec, backend) for the ops with two or more data arguments (one can differ from another)."""
    return [p for p in op_backends(include_reference=True) if len(data_positions(p.values[0])) > 1]


def converted(spec, args, dtype):
    """``args`` with every data argument converted to ``dtype`` (coefficients as they are)."""
    return [a.to(dtype) if i in data_positions(spec) else a for i, a in enumerate(args)]


def outs(out) -> tuple:
    """An op's outputs as a tuple (reverse_step_with_x0 has two)."""
    return out if isinstance(out, tuple) else (out,)


def same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(outs(a), outs(b), strict=True))


def expected_dtype(spec, rule, dtype):
    return (torch.float64 if dtype == torch.float64 else torch.float32) if rule == PER_SAMPLE else dtype


@pytest.mark.parametrize("spec, backend", mixing_ops())
@pytest.mark.parametrize("low", LOW, ids=str)
def test_one_low_precision_argument_next_to_float32(spec, backend, low):
    """Each data argument in turn in bfloat16/float16, the others float32: float32 results equal
    to the float64 reference, bit-equal to the all-float32 call, gradients in each input's dtype."""
    name, device = backend
    base = sample(spec, (5, 3, 7), torch.float32, device)
    for i in data_positions(spec):
        args = list(base)
        args[i] = args[i].to(low)
        out, grads = check(spec, name, args, msg=f"{spec.args[i].name} in {low}")
        full = public(spec)(*args, backend=name)
        assert all(o.dtype == torch.float32 for o in outs(full))
        assert same(full, public(spec)(*converted(spec, args, torch.float32), backend=name))
        for j, g in zip(spec.differentiable, grads):
            assert g.dtype == args[j].dtype, f"grad of {spec.args[j].name}: {g.dtype} != {args[j].dtype}"


@pytest.mark.parametrize("spec, backend", mixing_ops())
def test_float64_argument_promotes_to_float64(spec, backend):
    """A float64 argument next to float32 ones: the op runs in float64, the float32 inputs read
    exactly (the result is the all-float64 call's, bit for bit)."""
    name, device = backend
    args = sample(spec, (4, 3, 5), torch.float32, device)
    i = data_positions(spec)[-1]
    args[i] = args[i].double()
    out = public(spec)(*args, backend=name)
    assert [o.dtype for o in outs(out)] == [expected_dtype(spec, rule, torch.float64) for rule in spec.outputs]
    assert same(out, public(spec)(*converted(spec, args, torch.float64), backend=name))


def autocast_ops():
    """Every op with data arguments (randn_like has none: its output dtype is its argument's)."""
    return [p for p in op_backends(include_reference=True) if data_positions(p.values[0])
            and not draws_noise(p.values[0])]


@pytest.mark.parametrize("spec, backend", autocast_ops())
@pytest.mark.parametrize("low", LOW, ids=str)
def test_autocast_runs_in_float32(spec, backend, low):
    """Under autocast, low-precision data runs in float32 (autocast's policy for losses), on every
    backend and through the raw dispatcher op too; gradients come back in the inputs' dtype."""
    name, device = backend
    args = converted(spec, sample(spec, (4, 3, 5), torch.float32, device), low)
    wrt = [i for i in spec.differentiable if isinstance(args[i], torch.Tensor)]
    args = [a.detach().requires_grad_(i in wrt) if isinstance(a, torch.Tensor) else a for i, a in enumerate(args)]
    with torch.autocast(device, low):
        out = public(spec)(*args, backend=name)
    want = public(spec)(*converted(spec, [a.detach() if isinstance(a, torch.Tensor) else a for a in args],
                                   torch.float32), backend=name)
    assert all(o.dtype == torch.float32 for o in outs(out)) and same(out, want)
    if wrt:
        grads = torch.autograd.grad(out.sum(), [args[i] for i in wrt])
        assert [g.dtype for g in grads] == [args[i].dtype for i in wrt]
    if name != "reference":  # the dispatcher ops (native and Triton) register the same rule
        native = spec.prepare(*[a.detach() if isinstance(a, torch.Tensor) else a for a in args])
        if name == "triton":
            spec.load_triton()
        with torch.autocast(device, low):
            raw = getattr(torch.ops.vdm_fast, spec.name + ("_triton" if name == "triton" else ""))(*native)
        assert all(o.dtype == torch.float32 for o in outs(raw)) and same(raw, want)


def test_compiled_mixed_and_autocast_calls():
    """The promotion traces: torch.compile(fullgraph=True) of a mixed call and of one under
    autocast gives the eager results."""
    def loss(pred, x0, noise):
        with torch.autocast("cpu", torch.bfloat16, enabled=pred.dtype == torch.float16):
            return vdm_fast.sq_error(pred, x0, noise, 0.6, 0.8, "v")

    x0, noise = torch.randn(3, 2, 5), torch.randn(3, 2, 5)
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    for pred in (torch.randn(3, 2, 5, dtype=torch.bfloat16), torch.randn(3, 2, 5, dtype=torch.float16)):
        got = compiled(pred, x0, noise)
        assert got.dtype == torch.float32 and torch.equal(got, loss(pred, x0, noise))


def test_randn_like_keeps_its_dtype_under_autocast():
    x = torch.zeros(3, 4, dtype=torch.bfloat16)
    with torch.autocast("cpu", torch.bfloat16):
        assert vdm_fast.randn_like(x, torch.Generator().manual_seed(0)).dtype == torch.bfloat16


def test_reverse_step_mixed_guidance_and_noise():
    """reverse_step's optional data inputs take part in the promotion too."""
    z = torch.randn(3, 2, 5)
    m, uncond, grad, noise = (torch.randn(3, 2, 5, dtype=d) for d in (torch.bfloat16, torch.float16,
                                                                          torch.bfloat16, torch.float32))
    coeffs = torch.rand(6, 3)
    kw = dict(guidance_scale=2.0, grad_scale=0.5, noise=noise)
    out = vdm_fast.reverse_step(z, m, coeffs, uncond=uncond, classifier_grad=grad, **kw)
    want = vdm_fast.reverse_step(z, m.float(), coeffs, uncond=uncond.float(), classifier_grad=grad.float(), **kw)
    assert out.dtype == torch.float32 and torch.equal(out, want)


def test_rule_in_the_output_rule():
    """The LIKE_DATA output takes the promoted dtype, a per-sample one the compute dtype of it."""
    x0, noise = torch.randn(2, 3, dtype=torch.bfloat16), torch.randn(2, 3, dtype=torch.float16)
    z = vdm_fast.q_sample(x0, 0.6, 0.8, noise)  # bfloat16 with float16: float32, as torch promotes
    assert SPECS["q_sample"].outputs == (LIKE_DATA,) and z.dtype == torch.result_type(x0, noise) == torch.float32


# --- a whole training step under autocast --------------------------------------------------------


def _tiny_unet():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32),
                                 layers_per_block=1, norm_num_groups=8,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"))
    return unet, (lambda z, t: unet(z, t * 1000).sample)


def _step(unet, loss_fn):
    unet.zero_grad()
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.autocast("cpu", torch.bfloat16):
        loss = loss_fn(x)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in unet.parameters()]


@pytest.mark.parametrize("weighting", ["elbo", "simple"])
def test_autocast_training_step_with_vdm_loss(weighting):
    """A diffusers UNet2DModel under torch.autocast("cpu", bfloat16) (its output is bfloat16) with
    VDMLoss: the fused loss equals the reference backend's, and so do the parameter gradients.

    Both runs evaluate the same network on the same inputs, so they differ only in the loss's float32
    rounding: the loss within a few float32 roundings of its terms (rtol 1e-5 for a sum of a few
    dozen O(1) terms), and dL/dm, which the network's bfloat16 backward receives rounded to bfloat16,
    within one bfloat16 rounding of each other; mapped back through the same backward that is at
    most about a bfloat16 unit (2^-8) relative to each gradient's norm, so 2^-6 has room."""
    unet, model = _tiny_unet()
    out = {}
    for backend in ("cpu", "reference"):
        loss_fn = VDMLoss(LinearGamma(), weighting=weighting, backend=backend)
        out[backend] = _step(unet, lambda x: loss_fn(model, x, generator=torch.Generator().manual_seed(1)))
    (loss, grads), (ref_loss, ref_grads) = out["cpu"], out["reference"]
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=0)
    for g, r in zip(grads, ref_grads):
        assert g.dtype == torch.float32 and torch.isfinite(g).all()
        assert (g - r).norm() <= 2**-6 * r.norm()


def test_autocast_training_step_with_fused_ops():
    """The same step written with the fused ops (q_sample, sq_error with diffusers' name for the
    target): the loss reaches the network's parameters, and equals the reference backend's."""
    unet, model = _tiny_unet()
    g = torch.Generator().manual_seed(3)
    alpha, sigma = torch.rand(4, generator=g) * 0.9 + 0.05, torch.rand(4, generator=g) * 0.9 + 0.05
    t = torch.rand(4, generator=g)
    noise = torch.randn(4, 3, 8, 8, generator=g)

    def loss_fn(backend):
        def loss(x):
            z = vdm_fast.q_sample(x, alpha, sigma, noise, backend=backend)
            return vdm_fast.sq_error(model(z, t), x, noise, alpha, sigma, "epsilon", backend=backend).mean()
        return loss

    loss, grads = _step(unet, loss_fn("cpu"))
    ref_loss, ref_grads = _step(unet, loss_fn("reference"))
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=0)  # see the test above
    assert any(g.abs().sum() > 0 for g in grads)
    for g, r in zip(grads, ref_grads):
        assert (g - r).norm() <= 2**-6 * r.norm()


def test_diffusers_target_names():
    """sq_error and VDMLoss accept diffusers' prediction_type spellings."""
    x0, noise, pred = (torch.randn(3, 4) for _ in range(3))
    for ours, theirs in (("eps", "epsilon"), ("v", "v_prediction"), ("x0", "sample")):
        assert torch.equal(vdm_fast.sq_error(pred, x0, noise, 0.6, 0.8, theirs),
                           vdm_fast.sq_error(pred, x0, noise, 0.6, 0.8, ours))
        assert VDMLoss(LinearGamma(), parameterization=theirs).parameterization == ours
    with pytest.raises(ValueError, match="target"):
        vdm_fast.sq_error(pred, x0, noise, 0.6, 0.8, "noise")
