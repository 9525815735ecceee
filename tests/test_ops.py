"""Every op against its declaration (vdm_fast/ops/_spec.py, DESIGN.md §4.11): one parametrised
module instead of the same dozen tests per op (extension-cpp's ``sample_inputs`` idea).

For each op and each backend that runs here: equality with the reference within the running error
bound of tests/numerics.py (forward and, for differentiable ops, backward with a non-unit upstream
gradient) in every dtype at odd shapes and across several reduction chunks, for every name a
choice argument takes; each differentiable input alone; empty batches; every data argument in
every layout, alone and next to others in a second layout, with the layout rule's output and
gradient strides (DESIGN.md §4.8); every coefficient form; inputs not modified; no autograd node
without an input that requires grad, and no gradient for data that is not differentiable;
gradcheck in float64; torch.library.opcheck of the native ops (forward, and backward under partial
masks, channels_last data alone and mixed with contiguous) and of the Triton ops;
torch.compile(fullgraph=True); bad input raising an error that names the argument and leaves the
other inputs unmodified, the cases generated from each argument's role; the native ops' own checks
(forward and backward); unknown and unavailable backends.
What is particular to one op stays in tests/test_<op>.py. Ops that draw noise (a generator
argument) are compared with the reference in tests/test_randn_like.py and tests/test_q_sample_randn.py
(the Philox stream); here they get the rest.
"""

from __future__ import annotations

import importlib
import os

import pytest
import torch

import numerics
import vdm_fast
from vdm_fast import env
from helpers import LAYOUTS, ODD_SHAPES, backend_params, skip_compile_under_interpreter
from vdm_fast.ops._spec import CHOICE, COEFF, DATA, GENERATOR, LIKE, LIKE_DATA, PER_SAMPLE, SPECS

SHAPES = ODD_SHAPES + [(6, 3, 17, 9), (4, 3, 9, 7)]
# More than two reduction chunks per sample (kernels/_common.py REDUCE_CHUNK, csrc's kReduceChunk: 16384).
SEVERAL_CHUNKS = (2, 40000)
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# The layouts a kernel uses in place (batch-major dense, DESIGN.md §4.8); the others are copied.
IN_PLACE = ("contiguous", "transposed", "channels_last")
# The second layout of the other data arguments: dense in other strides (copied into the first's
# layout) and not batch-major (copied).
SECOND_LAYOUTS = ["transposed", "batch_not_outermost"]
FORMS = ["float", "0-d", "(B,)", "(B,1,...,1)", "float64"]
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def op_backends(include_reference=False):
    """(spec, backend) for every op and every backend, skipped where a backend cannot run here."""
    return [pytest.param(spec, p.values[0], id=f"{name}-{p.id}", marks=p.marks)
            for name, spec in SPECS.items() for p in backend_params(name, include_reference)]


def public(spec):
    return getattr(vdm_fast, spec.name)


def sample(spec, shape, dtype, device, seed=0):
    return list(spec.sample_inputs(shape, dtype, device, torch.Generator().manual_seed(seed)))


def with_every_choice(spec, args):
    """``args`` once per combination of the names its choice arguments can take (sq_error's four
    targets, both CDFs of discretized_gaussian_nll)."""
    combos = [list(args)]
    for i, arg in enumerate(spec.args):
        if arg.role == CHOICE:
            combos = [c[:i] + [choice] + c[i + 1:] for c in combos for choice in arg.choices]
    return combos


def draws_noise(spec) -> bool:
    return any(a.role == GENERATOR for a in spec.args)


def reference_of(spec):
    """The reference as a function of the public arguments (normalised as the op normalises them)."""
    return lambda *args: spec.reference(*spec.prepare(*args))


def upstream_for(spec, args):
    """A non-unit upstream gradient of the op's (first) output."""
    first = next(a for a in args if isinstance(a, torch.Tensor))
    shape = (first.shape[0],) if spec.outputs[0] == PER_SAMPLE else first.shape
    dtype = torch.float64 if first.dtype == torch.float64 else (torch.float32 if spec.outputs[0] == PER_SAMPLE
                                                                  else first.dtype)
    return (0.5 + torch.rand(shape, dtype=torch.float64)).to(device=first.device, dtype=dtype)


def check(spec, backend, args, msg="", upstream=None):
    """Our op on ``backend`` equals the reference within the running error bound, value and gradients.
    An op of several outputs (reverse_step_with_x0; none has a gradient) is checked output by output
    and its first output returned."""
    if len(spec.outputs) > 1:
        assert not spec.differentiable
        outs = [numerics.check_against_reference(lambda *a, k=k: public(spec)(*a, backend=backend)[k],
                                                 lambda *a, k=k: reference_of(spec)(*a)[k], args,
                                                 msg=f"{spec.name} {backend} output {k} {msg}")[0]
                for k in range(len(spec.outputs))]
        return outs[0], ()
    wrt = tuple(i for i in spec.differentiable if isinstance(args[i], torch.Tensor))  # a float gets no gradient
    return numerics.check_against_reference(lambda *a: public(spec)(*a, backend=backend), reference_of(spec), args,
                                            upstream=upstream_for(spec, args) if upstream is None else upstream,
                                            wrt=wrt, msg=f"{spec.name} {backend} {msg}")


def outputs(spec, backend, args):
    """Every output of the op, as a tuple."""
    out = public(spec)(*args, backend=backend)
    return out if isinstance(out, tuple) else (out,)


def call(spec, backend, args):
    return outputs(spec, backend, args)[0]


def first_data(spec, args) -> torch.Tensor:
    return next(v for a, v in zip(spec.args, args) if a.role in (DATA, LIKE))


def assert_output_rule(spec, outs, like):
    """Each output's shape and dtype by its rule: the first data argument's, or (B,) in the compute
    dtype (float64 for float64 data, float32 otherwise)."""
    for k, (out, rule) in enumerate(zip(outs, spec.outputs)):
        if rule == PER_SAMPLE:
            want = ((like.shape[0],), torch.float64 if like.dtype == torch.float64 else torch.float32)
        else:
            want = (like.shape, like.dtype)
        assert (out.shape, out.dtype) == want, f"{spec.name} output {k}: {(out.shape, out.dtype)} != {want}"


# --- equality with the reference ---------------------------------------------------------------


@pytest.mark.parametrize("spec, backend", op_backends())
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference(spec, backend, shape, dtype):
    """float16/bfloat16 data is computed in float32: the float32 bound applies, plus one rounding of
    the result to the data's dtype (stricter than twice PyTorch's own error in that dtype)."""
    if draws_noise(spec):
        pytest.skip("the Philox stream is compared with the reference in tests/test_randn_like.py")
    name, device = backend
    for args in with_every_choice(spec, sample(spec, shape, dtype, device)):
        out, grads = check(spec, name, args, msg=str([a for a in args if isinstance(a, str)]))
        assert_output_rule(spec, (out,), first_data(spec, args))
        assert out.shape == ((shape[0],) if spec.outputs[0] == PER_SAMPLE else shape)
        for i, g in zip(spec.differentiable, grads):
            assert g.shape == args[i].shape and g.dtype == args[i].dtype


@pytest.mark.parametrize("spec, backend", op_backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_matches_reference_over_several_chunks(spec, backend, dtype):
    """Per-sample reductions (and the per-sample gradients of coefficients) run over chunks of a
    sample in parallel and sum the partials: a sample of more than two chunks."""
    if draws_noise(spec):
        pytest.skip("the Philox stream is compared with the reference in tests/test_randn_like.py")
    name, device = backend
    if name == "triton" and INTERPRETED and spec.name == "recon_nll":
        pytest.skip("the Triton interpreter runs recon_nll's bin loop in Python: minutes at this size; runs on a GPU")
    for args in with_every_choice(spec, sample(spec, SEVERAL_CHUNKS, dtype, device)):
        out, grads = check(spec, name, args, msg=str([a for a in args if isinstance(a, str)]))
        assert_output_rule(spec, (out,), first_data(spec, args))
        for i, g in zip(spec.differentiable, grads):
            assert g.shape == args[i].shape and g.dtype == args[i].dtype


@pytest.mark.parametrize("spec, backend", op_backends())
def test_each_input_alone_requires_grad(spec, backend):
    """One differentiable input at a time requires grad: its gradient is right (zero where the
    reference has none, e.g. sq_error's x0 for "eps"), whatever the mask holds for the others."""
    if not spec.differentiable:
        pytest.skip(f"{spec.name} has no gradient")
    name, device = backend
    for args in with_every_choice(spec, sample(spec, (3, 4, 5), torch.float32, device)):
        for i in spec.differentiable:
            if draws_noise(spec):
                args[-1] = torch.Generator().manual_seed(3)
                x = args[i].detach().requires_grad_()
                full = args[:i] + [x] + args[i + 1:]
                (g,) = torch.autograd.grad(call(spec, name, full).sum(), x)
                assert g.shape == x.shape and torch.isfinite(g).all()
                continue
            _, (g,) = numerics.check_against_reference(lambda *a: public(spec)(*a, backend=name), reference_of(spec),
                                                       args, upstream=upstream_for(spec, args), wrt=(i,),
                                                       msg=f"{spec.name} {name} {spec.args[i].name} alone")
            assert g.shape == args[i].shape and g.dtype == args[i].dtype


# --- shapes, layouts, coefficient forms ----------------------------------------------------------


@pytest.mark.parametrize("spec, backend", op_backends(include_reference=True))
def test_empty_batch(spec, backend):
    name, device = backend
    for args in with_every_choice(spec, sample(spec, (0, 3, 4, 4), torch.float32, device)):
        for i in spec.differentiable:
            args[i] = args[i].detach().requires_grad_()
        outs = outputs(spec, name, args)
        assert_output_rule(spec, outs, first_data(spec, args))
        assert outs[0].shape[0] == 0
        if spec.differentiable:
            outs[0].sum().backward()
            for i in spec.differentiable:
                # The reference's formula may not read an input (sq_error's x0 for "eps"): no gradient.
                if name == "reference" and args[i].grad is None:
                    continue
                assert args[i].grad is not None and args[i].grad.shape == args[i].shape


def in_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as ``t`` (4-d) in another memory layout."""
    if layout == "transposed":  # dense and batch-major, other strides
        return t.transpose(2, 3).contiguous().transpose(2, 3)
    if layout == "batch_not_outermost":
        return t.transpose(0, 1).contiguous().transpose(0, 1)
    if layout == "sliced":
        big = torch.zeros(t.shape[:3] + (2 * t.shape[3],), dtype=t.dtype, device=t.device)
        big[..., ::2] = t
        return big[..., ::2]
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "expanded":  # a stride-0 dimension: equal values along it
        return t[:, :1].expand(t.shape)
    raise AssertionError(layout)


def layout_cases(spec, layout):
    """({position: layout}, label): each data argument in ``layout`` with the others contiguous, and
    with one other data argument in each second layout (the rest contiguous)."""
    data = [i for i, a in enumerate(spec.args) if a.role in (DATA, LIKE)]
    cases = []
    for i in data:
        cases.append(({i: layout}, f"{spec.args[i].name} {layout}"))
        cases += [({i: layout, k: second}, f"{spec.args[i].name} {layout}, {spec.args[k].name} {second}")
                  for k in data if k != i for second in SECOND_LAYOUTS]
    return cases


@pytest.mark.parametrize("spec, backend", op_backends())
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_data_argument_in_every_layout(spec, backend, layout):
    """Each data argument in turn in another layout, the others contiguous or one of them in a
    second layout, under an upstream gradient in a layout of its own: the same result, and the
    layout rule (DESIGN.md §4.8): outputs and the gradients of data arguments take the strides of
    the first data argument when it is batch-major dense, else they are contiguous."""
    name, device = backend
    base = sample(spec, (4, 6, 10, 8), torch.float32, device)
    first = next(i for i, a in enumerate(spec.args) if a.role in (DATA, LIKE))
    for choice_args in with_every_choice(spec, base):
        for layouts, label in layout_cases(spec, layout):
            args = list(choice_args)
            for k, lay in layouts.items():
                args[k] = in_layout(base[k], lay)
            upstream = upstream_for(spec, args)
            if spec.outputs[0] == LIKE_DATA:  # dense, neither contiguous nor the data's layout
                upstream = upstream.transpose(1, 2).contiguous().transpose(1, 2)
            if draws_noise(spec):
                for i in spec.differentiable:
                    args[i] = args[i].detach().requires_grad_()
                outs = outputs(spec, name, args)
                wrt = [args[i] for i in spec.differentiable]
                grads = torch.autograd.grad(outs[0], wrt, upstream) if wrt else ()
            else:
                out, grads = check(spec, name, args, msg=f"{label} {[a for a in args if isinstance(a, str)]}",
                                   upstream=upstream)
                outs = (out,)
            like = args[first]
            want = like.stride() if layouts.get(first, "contiguous") in IN_PLACE else torch.empty(like.shape).stride()
            for k, (out, rule) in enumerate(zip(outs, spec.outputs)):
                if rule == LIKE_DATA:
                    assert out.stride() == want, f"{label}: output {k} strides {out.stride()}, want {want}"
            for i, g in zip(spec.differentiable, grads):
                if spec.args[i].role == DATA:
                    assert g.stride() == want, f"{label}: gradient of {spec.args[i].name} strides {g.stride()}, want {want}"


@pytest.mark.parametrize("spec, backend", op_backends())
@pytest.mark.parametrize("form", FORMS)
def test_every_coefficient_form(spec, backend, form):
    """A per-sample coefficient as a float, a 0-d tensor, (B,), (B, 1, ..., 1) or float64 (B,)."""
    coeffs = [i for i, a in enumerate(spec.args) if a.role == COEFF]
    if not coeffs:
        pytest.skip(f"{spec.name} takes no per-sample coefficient")
    name, device = backend
    args, as_b = sample(spec, (3, 2, 5, 5), torch.float32, device), sample(spec, (3, 2, 5, 5), torch.float32, device)
    for i in coeffs:
        value = float(args[i][0])
        args[i] = {"float": value, "0-d": torch.tensor(value, device=device),
                   "(B,)": torch.full((3,), value, device=device),
                   "(B,1,...,1)": torch.full((3, 1, 1, 1), value, device=device),
                   "float64": torch.full((3,), value, device=device, dtype=torch.float64)}[form]
        as_b[i] = torch.full((3,), value, device=device)
    if draws_noise(spec):  # the same generator state: exactly the op with (B,) coefficients, every output
        for got, want in zip(outputs(spec, name, args), outputs(spec, name, as_b)):
            assert torch.equal(got, want)
        return
    check(spec, name, args, msg=form)


@pytest.mark.parametrize("spec, backend", op_backends())
def test_inputs_not_modified(spec, backend):
    name, device = backend
    for args in with_every_choice(spec, sample(spec, (3, 4, 5), torch.float32, device)):
        for i in spec.differentiable:
            args[i] = args[i].detach().requires_grad_()
        before = [a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args]
        out = call(spec, name, args)
        if spec.differentiable:
            out.sum().backward()
        for b, a in zip(before, args):
            if isinstance(a, torch.Tensor):
                assert torch.equal(b, a.detach())


@pytest.mark.parametrize("spec, backend", op_backends())
def test_no_autograd_node_without_grad(spec, backend):
    """Without an input that requires grad, no output does (no graph is recorded)."""
    name, device = backend
    for args in with_every_choice(spec, sample(spec, (3, 4), torch.float32, device)):
        for out in outputs(spec, name, args):
            assert out.grad_fn is None and not out.requires_grad


@pytest.mark.parametrize("spec, backend", op_backends())
def test_data_that_is_not_differentiable_gets_no_gradient(spec, backend):
    """A data argument the op has no gradient for (recon_nll's and discretized_gaussian_nll's x0)
    gets none even when it requires grad; the differentiable inputs get theirs. (Ops with no
    gradient at all reject inputs that require grad: tests/test_reverse_step.py.)"""
    fixed = [i for i, a in enumerate(spec.args) if a.role == DATA and not a.grad]
    if not spec.differentiable or not fixed:
        pytest.skip(f"{spec.name}: no data argument without a gradient next to differentiable ones")
    name, device = backend
    args = sample(spec, (2, 3), torch.float32, device)
    for i in spec.differentiable + tuple(fixed):
        args[i] = args[i].detach().requires_grad_()
    call(spec, name, args).sum().backward()
    for i in fixed:
        assert args[i].grad is None, spec.args[i].name
    for i in spec.differentiable:
        assert args[i].grad is not None, spec.args[i].name


# --- autograd, registration, compile -------------------------------------------------------------


@pytest.mark.parametrize("spec, backend", op_backends(include_reference=True))
def test_gradcheck_fp64(spec, backend):
    if not spec.differentiable:
        pytest.skip(f"{spec.name} has no gradient")
    name, device = backend
    diff = [i for i in spec.differentiable]
    for args in with_every_choice(spec, sample(spec, (3, 2, 5), torch.float64, device)):

        def fn(*xs, args=args):
            full = list(args)
            for i, x in zip(diff, xs):
                full[i] = x
            if draws_noise(spec):
                full[-1] = torch.Generator().manual_seed(5)  # the same noise on every call
            return call(spec, name, full)

        assert torch.autograd.gradcheck(fn, [args[i].detach().requires_grad_() for i in diff], check_forward_ad=True)


def first(f):
    """``f`` returning its first output only (q_sample_randn's z; its noise is a constant)."""

    def first_output(*args):
        out = f(*args)
        return out[0] if isinstance(out, tuple) else out

    return first_output


def differentiable_fn(spec, backend_name, args):
    """The op as a function of its differentiable arguments (a fixed generator: the same noise on
    every call), and those arguments."""
    diff = list(spec.differentiable)

    def fn(*xs):
        full = list(args)
        for i, x in zip(diff, xs):
            full[i] = x
        if draws_noise(spec):
            full[-1] = torch.Generator().manual_seed(5)
        return call(spec, backend_name, full)

    return fn, [args[i] for i in diff]


@pytest.mark.parametrize("spec, backend", op_backends(include_reference=True))
def test_gradgradcheck_fp64(spec, backend):
    """The backward is itself differentiable (create_graph=True): second derivatives by finite
    differences of the first, in every input and in the upstream gradient (DESIGN.md §4.12)."""
    if not spec.differentiable:
        pytest.skip(f"{spec.name} has no gradient")
    name, device = backend
    for args in with_every_choice(spec, sample(spec, (2, 2, 3), torch.float64, device)):
        fn, xs = differentiable_fn(spec, name, args)
        assert torch.autograd.gradgradcheck(fn, [x.detach().requires_grad_() for x in xs])


@pytest.mark.parametrize("spec, backend", op_backends())
def test_higher_order_equals_reference(spec, backend):
    """torch.func.jvp, forward_ad's dual tensors, a double backward and a Hessian-vector product
    (forward over reverse) equal the reference's. Second order in float64 only: in float32 the
    reference's own second derivatives of the NLLs lose most digits. Ops that draw noise: the
    backends' normals agree to float32 rounding (DESIGN.md §6), so their results do too."""
    if not spec.differentiable:
        pytest.skip(f"{spec.name} has no gradient")
    name, device = backend
    noise_tol = 1e-5 if draws_noise(spec) else 0.0
    for dtype, tol in ((torch.float64, max(1e-10, noise_tol)), (torch.float32, max(1e-4, noise_tol))):
        for args in with_every_choice(spec, sample(spec, (3, 2, 5), dtype, device)):
            ours, xs = differentiable_fn(spec, name, args)
            ref, _ = differentiable_fn(spec, "reference", args)
            tangents = [torch.randn_like(x) for x in xs]

            def close(a, b, what):
                torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=lambda m: f"{spec.name} {name} {dtype} {what}: {m}")

            out, tangent = torch.func.jvp(first(ours), tuple(xs), tuple(tangents))
            ref_out, ref_tangent = torch.func.jvp(first(ref), tuple(xs), tuple(tangents))
            close(tangent, ref_tangent, "jvp")
            assert tangent.abs().sum() > 0, f"{spec.name} {name}: a zero tangent"
            with torch.autograd.forward_ad.dual_level():
                duals = [torch.autograd.forward_ad.make_dual(x, t) for x, t in zip(xs, tangents)]
                dual_tangent = torch.autograd.forward_ad.unpack_dual(first(ours)(*duals)).tangent
            assert dual_tangent is not None, f"{spec.name} {name}: forward_ad dropped the tangent"
            close(dual_tangent, ref_tangent, "forward_ad")
            if dtype != torch.float64:
                continue

            # Second order: the gradient of a function of the gradient (a gradient penalty).
            def penalty_grads(f):
                leaves = [x.detach().requires_grad_() for x in xs]
                g = torch.autograd.grad(first(f)(*leaves).square().sum(), leaves, create_graph=True,
                                        allow_unused=True, materialize_grads=True)
                return torch.autograd.grad(sum((gi * t).sum() for gi, t in zip(g, tangents)), leaves,
                                           allow_unused=True, materialize_grads=True)

            for a, b in zip(penalty_grads(ours), penalty_grads(ref)):
                close(a, b, "double backward")
            # Forward over reverse: the Hessian-vector product of the summed output.
            hvp = lambda f: torch.func.jvp(torch.func.grad(lambda *v: first(f)(*v).sum(), argnums=tuple(range(len(xs)))),  # noqa: E731
                                           tuple(xs), tuple(tangents))[1]
            for a, b in zip(hvp(ours), hvp(ref)):
                close(a, b, "hvp")


@pytest.mark.parametrize("spec, backend", op_backends())
def test_first_order_stays_fused(spec, backend):
    """The composite twin answers only above first order: a plain forward and backward never run
    the reference formula (it is replaced here by one that raises)."""
    if not spec.differentiable:
        pytest.skip(f"{spec.name} has no gradient")
    name, device = backend
    args = sample(spec, (3, 4), torch.float32, device)
    fn, xs = differentiable_fn(spec, name, args)
    leaves = [x.detach().requires_grad_() for x in xs]
    saved = spec.reference

    def forbidden(*a):
        raise AssertionError(f"{spec.name}: the composite ran on the first-order path")

    spec.reference = forbidden
    try:
        first(fn)(*leaves).sum().backward()
    finally:
        spec.reference = saved
    assert all(x.grad is not None for x in leaves)


def backward_masks(n: int) -> list[list[bool]]:
    """Every gradient, and every other one (both ways): the backward computes only what is asked."""
    masks = [[True] * n, [k % 2 == 0 for k in range(n)], [k % 2 == 1 for k in range(n)]]
    return [m for j, m in enumerate(masks) if any(m) and m not in masks[:j]]


@pytest.mark.parametrize("name", list(SPECS))
def test_opcheck_native(name):
    spec = SPECS[name]
    if not vdm_fast._library.has_native_kernel(name, "CPU"):
        pytest.skip("native CPU kernel not built")
    # Ops that draw noise take (seed, offset): the public ops pass offset 0, others select a stream.
    names = [a.name for a in spec.native_args()]
    offsets = (0, 5, 7) if any(a.role == GENERATOR for a in spec.args) else (None,)
    for shape in [(3, 4, 5), (1, 7), (0, 2), (2, 3, 4, 5)]:
        for public_args in with_every_choice(spec, sample(spec, shape, torch.float32, "cpu")):
            for offset in offsets:
                args = list(spec.prepare(*public_args))
                if offset is not None:
                    args[names.index("offset")] = offset
                for layout_args in channels_last_variants(args):
                    opcheck_native_once(spec, layout_args)


def channels_last_variants(args):
    """4-d data: every 4-d tensor channels_last, and the first one alone (the others contiguous:
    mixed layouts, the fake's output strides follow the first). Other data: as it is."""
    four_d = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.dim() == 4]
    if not four_d:
        return [args]
    return [[a.contiguous(memory_format=torch.channels_last) if i in four_d[:k] else a for i, a in enumerate(args)]
            for k in sorted({len(four_d), 1}, reverse=True)]


def opcheck_native_once(spec, args):
    name = spec.name
    args = list(args)
    for i in spec.differentiable:
        args[i] = args[i].detach().requires_grad_()
    torch.library.opcheck(getattr(torch.ops.vdm_fast, name).default, tuple(args))
    if spec.has_backward:
        plain = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
        out = getattr(torch.ops.vdm_fast, name)(*plain)
        for mask in backward_masks(len(spec.differentiable)):
            torch.library.opcheck(getattr(torch.ops.vdm_fast, f"{name}_backward").default,
                                  (torch.rand_like(out), *plain, mask))


@pytest.mark.parametrize("name", list(SPECS))
def test_opcheck_triton(name):
    spec = SPECS[name]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    reason = vdm_fast.backends.unavailable_reason("triton", device, name)
    if reason or not spec.load_triton():
        pytest.skip(reason or "the Triton kernels cannot be imported here")
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    if device == "cuda":
        utils = utils + ("test_aot_dispatch_dynamic",)
    for public_args in with_every_choice(spec, sample(spec, (3, 4, 5), torch.float32, device)):
        args = list(spec.prepare(*public_args))
        for i in spec.differentiable:
            args[i] = args[i].detach().requires_grad_()
        torch.library.opcheck(getattr(torch.ops.vdm_fast, f"{name}_triton").default, tuple(args), test_utils=utils)


@pytest.mark.parametrize("spec, backend", op_backends())
def test_compile_fullgraph(spec, backend):
    name, device = backend
    skip_compile_under_interpreter(name)
    if draws_noise(spec):
        pytest.skip("compiled noise ops: tests/test_randn_like.py and tests/test_q_sample_randn.py")
    for args in with_every_choice(spec, sample(spec, (4, 3, 8, 8), torch.float32, device)):
        tensors = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]

        def with_tensors(fn, args=args, tensors=tensors):
            def run(*ts):
                full = list(args)
                for i, t in zip(tensors, ts):
                    full[i] = t
                out = fn(*full)
                return sum((o ** 2).sum() for o in (out if isinstance(out, tuple) else (out,)))
            return run

        inputs = [args[i] for i in tensors]
        wrt = tuple(k for k, i in enumerate(tensors) if i in spec.differentiable)
        for label, fn in (("compiled", torch.compile(with_tensors(lambda *a: outputs(spec, name, a)), fullgraph=True)),
                          ("eager", with_tensors(lambda *a: outputs(spec, name, a)))):
            torch._dynamo.reset()
            numerics.check_against_reference(fn, with_tensors(reference_of(spec)), inputs, wrt=wrt,
                                             msg=f"{spec.name} {name} {label} {[a for a in args if isinstance(a, str)]}")


# --- bad input: a clear error naming the argument -------------------------------------------------


def bad_cases(spec):
    """(label, position, bad value or a function of the good one, exception, the name it must say)."""
    cases = []
    data = [i for i, a in enumerate(spec.args) if a.role in (DATA, LIKE)]
    for i, arg in enumerate(spec.args):
        n = arg.name
        if arg.role in (DATA, LIKE):
            cases += [(f"{n}-list", i, lambda v: v.tolist(), TypeError, n),
                      (f"{n}-numpy", i, lambda v: v.numpy(), TypeError, n),
                      (f"{n}-int", i, lambda v: v.to(torch.int64), TypeError, n),
                      (f"{n}-bool", i, lambda v: v > 0, TypeError, n)]
            if arg.role == DATA and i != data[0]:
                cases += [(f"{n}-shape", i, lambda v: v[:, :-1], ValueError, n),
                          (f"{n}-permuted", i, lambda v: v.transpose(1, 2), ValueError, n),  # same numel
                          (f"{n}-rank", i, lambda v: v[..., 0], ValueError, n),
                          (f"{n}-complex", i, lambda v: v.to(torch.complex64), TypeError, n),  # float dtypes promote
                          (f"{n}-device", i, lambda v: v.to("meta"), ValueError, n)]
            if arg.role == DATA and i == data[0]:
                cases.append((f"{n}-0d", i, lambda v: v.flatten()[0], ValueError, n))
        elif arg.role == COEFF:
            cases += [(f"{n}-length", i, lambda v: torch.ones(v.shape[0] + 1), ValueError, n),
                      (f"{n}-short", i, lambda v: torch.ones(v.shape[0] - 1), ValueError, n),
                      (f"{n}-shape", i, lambda v: torch.ones(v.shape[0], 3), ValueError, n),
                      (f"{n}-int", i, lambda v: torch.ones(v.shape[0], dtype=torch.int64), TypeError, n),
                      (f"{n}-int32", i, lambda v: torch.ones(v.shape[0], dtype=torch.int32), TypeError, n),
                      (f"{n}-bool", i, lambda v: True, TypeError, n),
                      (f"{n}-str", i, lambda v: "half", TypeError, n),
                      (f"{n}-device", i, lambda v: v.to("meta"), ValueError, n)]
        elif arg.role == CHOICE:
            cases += [(f"{n}-unknown", i, lambda v: "no-such-" + n, ValueError, n),
                      (f"{n}-case", i, lambda v, c=arg.choices[0]: c.upper(), ValueError, n)]
        elif arg.role == GENERATOR:
            cases.append((f"{n}-seed", i, lambda v: 1234, TypeError, n))
    return cases


@pytest.mark.parametrize("spec, case", [pytest.param(s, c, id=f"{s.name}-{c[0]}") for s in SPECS.values()
                                        for c in bad_cases(s)])
def test_bad_input_names_the_argument(spec, case):
    """The error names the argument, and the other inputs are left as they were."""
    _, position, make_bad, exc, name = case
    args = sample(spec, (4, 3, 5), torch.float32, "cpu")
    args[position] = make_bad(args[position])
    before = {i: a.clone() for i, a in enumerate(args) if isinstance(a, torch.Tensor) and i != position}
    with pytest.raises(exc, match=name):
        public(spec)(*args)
    for i, b in before.items():
        assert torch.equal(args[i], b), f"{spec.args[i].name} was modified"


# The dispatcher ops are public too (torch.ops.vdm_fast.<op>): they check what they are given.
# sq_error's native op raises ValueError for an unknown name (TORCH_CHECK_VALUE), the others RuntimeError.
NATIVE_CHOICE_ERROR = {"sq_error": ValueError}


@pytest.mark.parametrize("name", list(SPECS))
def test_native_op_checks_name_the_argument(name):
    """An unknown name (forward and backward), a coefficient of another dtype or length, an
    upstream gradient of another dtype or length: each an error naming the argument."""
    spec = SPECS[name]
    if not vdm_fast._library.has_native_kernel(name, "CPU"):
        pytest.skip("native CPU kernel not built")
    op = getattr(torch.ops.vdm_fast, name)
    args = list(spec.prepare(*sample(spec, (2, 3), torch.float32, "cpu")))
    native = spec.native_args()
    cases = []
    for i, arg in enumerate(native):
        if arg.role == CHOICE:
            cases.append((op, i, "no-such-" + arg.name, NATIVE_CHOICE_ERROR.get(name, RuntimeError), arg.name))
        elif arg.role == COEFF:
            cases += [(op, i, args[i].double(), RuntimeError, arg.name), (op, i, args[i][:1], RuntimeError, arg.name)]
    if not cases and not spec.has_backward:
        pytest.skip(f"{name}: no name, coefficient or backward to check (its own file checks the rest)")
    for call, i, bad, exc, match in cases:
        with pytest.raises(exc, match=match):
            call(*args[:i], bad, *args[i + 1:])
    if spec.has_backward:
        backward = getattr(torch.ops.vdm_fast, f"{name}_backward")
        out = op(*args)
        mask = [True] * len(spec.differentiable)
        for bad in (torch.ones_like(out)[:1], torch.ones_like(out, dtype=torch.float64)):
            with pytest.raises(RuntimeError, match="grad"):
                backward(bad, *args, mask)
        for i, arg in enumerate(native):
            if arg.role == CHOICE:
                with pytest.raises(NATIVE_CHOICE_ERROR.get(name, RuntimeError), match=arg.name):
                    backward(torch.ones_like(out), *args[:i], "", *args[i + 1:], mask)


@pytest.mark.parametrize("name", list(SPECS))
def test_unknown_backend_names_backend(name):
    spec = SPECS[name]
    with pytest.raises(ValueError, match="backend"):
        public(spec)(*sample(spec, (2, 3), torch.float32, "cpu"), backend="tpu")


@pytest.mark.parametrize("name", list(SPECS))
def test_unavailable_backend_raises(name):
    """The cuda backend asked for CPU tensors: an error saying what was requested, not a fallback."""
    spec = SPECS[name]
    with pytest.raises(RuntimeError, match="backend='cuda'"):
        public(spec)(*sample(spec, (2, 3), torch.float32, "cpu"), backend="cuda")


def test_every_op_is_exported_and_listed():
    assert list(SPECS) == vdm_fast.ops.__all__ == list(env.OPS)
    assert set(SPECS) <= set(vdm_fast.__all__)
    for name, spec in SPECS.items():
        assert spec.impls["reference"] is spec.reference and callable(public(spec))
        # One function, declared next to its spec, re-exported as it is.
        module = importlib.import_module(spec.sample_inputs.__module__)
        assert getattr(module, name) is getattr(vdm_fast.ops, name) is public(spec), name
