"""One declaration per op (DESIGN.md §4.11): what an op is, written once.

An :class:`OpSpec` says, for one op: its arguments in order and the role of each (a data tensor,
a per-sample coefficient, a name chosen from a list, the generator of in-kernel noise), which of
them are differentiable, what it returns (the output and layout rule), its reference twin and its
sample inputs. From it come:

- the public function's checks and normalisation, and the call: ``spec(*args, backend=...)``;
- the fake kernels of the native ops ``vdm_fast::<op>`` / ``<op>_backward`` and of the Triton ops
  ``vdm_fast::<op>_triton`` / ``<op>_backward_triton`` (the launchers ``<op>`` / ``<op>_backward``
  of ``vdm_fast.kernels.<op>``), and the Triton op's autograd (the native op's is the C++
  template of csrc/autograd.h);
- the composite twins that answer forward-mode AD and differentiable backwards (DESIGN.md §4.12,
  vdm_fast/ops/_autodiff.py);
- the table of implementations per backend (the Triton ops are registered on first use, so that
  ``import vdm_fast`` does not import Triton);
- the registry :data:`SPECS`, from which ``vdm_fast.ops.__all__``, ``vdm_fast.env.OPS``, the
  conformance tests (tests/test_ops.py), the CI smoke test and the benchmarks take the ops.

The dtype rule is the spec's too (DESIGN.md §4.13): the public call promotes the data arguments to
one dtype (``_checks.data_dtype``: torch's promotion, float32 at least under autocast), so the
native and Triton ops see one data dtype; per-sample coefficients and per-sample outputs are in
the compute dtype (float64 for float64 data, float32 otherwise: ``_checks.compute_dtype``),
outputs shaped like the data take the promoted dtype. The raw ops get autocast kernels
(:func:`_register_autocast`) that apply the same rule.

Every backward follows one convention (csrc/autograd.h): ``<op>_backward(grad, *forward_args,
output_mask)`` with the forward's arguments in the forward's order, and one mask entry and one
gradient per differentiable argument, in that order.
"""

from __future__ import annotations

import importlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Callable

import torch

from .. import _checks, _library, backends
from ..kernels._layout import empty_out_like
from . import _autodiff
from ._seed import draw_seed

log = logging.getLogger(__name__)

# Argument roles.
DATA = "data"          # a (B, ...) float tensor; every data argument has the first one's shape, dtype, device
LIKE = "like"          # a float tensor of any shape (0-d too) whose shape, dtype and layout the output takes
COEFF = "coeff"        # a per-sample scalar: float, 0-d, (B,) or (B, 1, ..., 1), normalised to (B,) compute dtype
CHOICE = "choice"      # a name from `choices`
GENERATOR = "generator"  # a torch.Generator (or None): the op receives a drawn seed and offset 0 instead
OTHER = "other"        # checked by the op's own public function (reverse_step's optional inputs)

# Output rules.
LIKE_DATA = "like_data"    # the first data argument's shape, dtype and layout (DESIGN.md §4.8)
PER_SAMPLE = "per_sample"  # (B,) in the compute dtype (float64 for float64 data, float32 otherwise)


@dataclass(frozen=True)
class Arg:
    name: str
    role: str
    grad: bool = False                 # differentiable (a gradient in the fused backward)
    choices: tuple[str, ...] = ()      # CHOICE
    default: object = None             # CHOICE: the default name
    positive: bool = False             # COEFF: a scale whose log or inverse is taken (DESIGN.md §4.10)
    bounds: tuple[float, float] | None = None  # DATA: the decoder's data range, NaN rejected (DESIGN.md §4.10)
    aliases: dict = field(default_factory=dict, hash=False, compare=False)  # CHOICE: other spellings -> a choice


class _MemoByKey(dict):
    """A dict that computes a missing value with ``compute(key)`` and keeps it: a hit is one dict
    lookup, with no Python frame (the direct call path reads one per call)."""

    def __init__(self, compute: Callable):
        super().__init__()
        self._compute = compute

    def __missing__(self, key):
        value = self[key] = self._compute(key)
        return value


@dataclass
class OpSpec:
    """One op: see the module docstring. ``sample_inputs(shape, dtype, device, generator)`` returns
    the public function's arguments for a batch of data of ``shape`` (tests and benchmarks)."""

    name: str
    args: tuple[Arg, ...]
    outputs: tuple[str, ...]
    reference: Callable
    sample_inputs: Callable
    # Whether <op>_backward exists (csrc/autograd.h's convention). q_sample_randn's backward is
    # q_sample's: its module attaches it.
    fused_backward: bool = True
    # An op whose arguments the roles do not cover (reverse_step's optional inputs and drawn noise)
    # checks and normalises them itself: public arguments -> the native op's arguments.
    prepare_fn: Callable | None = None
    # The Triton implementation of an op whose backward is another op's (q_sample_randn): called
    # with the Triton forward op when the Triton ops are first registered, attaches the autograd
    # and returns the implementation.
    triton_fn: Callable | None = None
    impls: dict[str, Callable] = field(default_factory=dict)
    # (backend argument, device) -> the implementation: the eager call's lookup, emptied by
    # backends.clear_cache()
    _impl_memo: dict = field(default_factory=dict, repr=False, compare=False)
    # backend argument -> the native CPU op's C++ callable, or None when the backend rules pick
    # another implementation for CPU data (_cpu_direct_call); filled on first use, emptied with
    # _impl_memo
    _cpu_direct: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        self._cpu_direct = _MemoByKey(self._cpu_direct_call)
        backends.on_clear(self._impl_memo.clear)
        backends.on_clear(self._cpu_direct.clear)

    # --- derived facts -------------------------------------------------------------------------

    @property
    def differentiable(self) -> tuple[int, ...]:
        """Positions of the differentiable arguments."""
        return tuple(i for i, a in enumerate(self.args) if a.grad)

    @property
    def has_backward(self) -> bool:
        return bool(self.differentiable) and self.fused_backward

    def native_args(self) -> tuple[Arg, ...]:
        """The arguments of the dispatcher ops: a generator becomes (seed, offset)."""
        out = []
        for a in self.args:
            if a.role == GENERATOR:
                out += [Arg("seed", "seed"), Arg("offset", "offset")]
            else:
                out.append(a)
        return tuple(out)

    # --- the public call -----------------------------------------------------------------------

    def _fast_plan(self):
        """(data, coefficient, choice positions, generator position or None) when every argument
        is DATA, COEFF or CHOICE, or the one argument is LIKE (randn_like: its tensor stands where
        the data would), but for a last GENERATOR: the ops whose native arguments are the public
        ones, a generator replaced by its seed and offset 0. Else None. Computed once."""
        plan = self.__dict__.get("_plan", False)
        if plan is False:
            roles = [a.role for a in self.args]
            gen = len(roles) - 1 if roles and roles[-1] == GENERATOR else None
            body = roles[:gen]
            plan = None
            if self.prepare_fn is None and (set(body) <= {DATA, COEFF, CHOICE} and DATA in body or body == [LIKE]):
                where = lambda role: tuple(i for i, a in enumerate(self.args) if a.role == role)  # noqa: E731
                plan = (where(DATA) or where(LIKE), where(COEFF), where(CHOICE), gen)
            self.__dict__["_plan"] = plan
        return plan

    def _seeded(self, values: tuple, gen: int) -> tuple:
        """``values`` with the generator (last) replaced by its drawn seed: drawn once, before a
        path is chosen, so a call that falls from the direct path to the general one uses the same
        seed (draw_seed returns a seed tensor as it is)."""
        if len(values) != len(self.args):
            return values  # the general path names what is missing
        return (*values[:gen], draw_seed(values[gen], self.name))

    def check_values(self, native_values) -> None:
        """The value checks (DESIGN.md §4.10) on the native ops' arguments: positive scales > 0,
        decoder data within its bounds, NaN rejected. The native CPU op makes the same checks with
        the same messages (csrc/cpu/value_checks.h); this is the Python side's one copy, for the
        other implementations (``_prepare``, ``_prepare_fast``) and the composite twins that stand
        in for the native op under torch.func transforms and forward mode (``_autodiff.forward``)."""
        checked = self.__dict__.get("_checked")
        if checked is None:
            checked = self.__dict__["_checked"] = tuple(
                (i, a) for i, a in enumerate(self.native_args()) if a.positive or a.bounds is not None)
        for i, a in checked:
            if a.positive:
                _checks.positive(self.name, a.name, native_values[i])
            else:
                _checks.within(self.name, a.name, native_values[i], *a.bounds)

    def _prepare_fast(self, values, plan) -> tuple | None:
        """The common call, checked in a few attribute reads: data tensors of one float32/float64
        dtype, shape and device; coefficients already contiguous (B,) tensors of that dtype there;
        choices spelled canonically. None when anything differs (the general path then checks,
        converts and names the argument). Value checks (positive scales, decoder ranges) still run."""
        data_idx, coeff_idx, choice_idx, gen = plan
        if len(values) != len(self.args):
            return None
        first = values[data_idx[0]]
        if type(first) is not torch.Tensor:
            return None
        dtype = first.dtype
        if dtype is not torch.float32 and dtype is not torch.float64:
            return None  # half data: promotion and autocast rules, the general path
        shape, device = first.shape, first.device
        if not shape:
            return None
        for i in data_idx[1:]:
            t = values[i]
            if type(t) is not torch.Tensor or t.dtype is not dtype or t.shape != shape or t.device != device:
                return None
        batch = shape[0]
        for i in coeff_idx:
            t = values[i]
            if (type(t) is not torch.Tensor or t.dtype is not dtype or t.dim() != 1 or t.shape[0] != batch
                    or t.device != device or not t.is_contiguous()):
                return None
        for i in choice_idx:
            if values[i] not in self.args[i].choices:
                return None
        self.check_values(values)
        if self.args[0].role == LIKE:
            # Only its shape and dtype are read: no autograd node through it (as _prepare).
            values = (values[0].detach(), *values[1:])
        return values if gen is None else (*values, 0)  # values[gen] is the seed (_seeded): offset 0

    def prepare(self, *values, **options) -> tuple:
        """The public arguments checked (errors name the argument) and normalised: data tensors in
        their promoted dtype (``_checks.data_dtype``), coefficients as contiguous (B,) tensors of the
        compute dtype on the data's device, a generator drawn into (seed, 0). Returns the native
        ops' arguments."""
        if self.prepare_fn is None and not options:
            plan = self._fast_plan()
            if plan is not None and plan[3] is not None:
                values = self._seeded(values, plan[3])
            fast = self._prepare_fast(values, plan) if plan is not None else None
            if fast is not None:
                return fast
        return self._prepare(values, options, check_values=True)

    def _prepare(self, values: tuple, options: dict, check_values: bool) -> tuple:
        """``prepare`` without its fast check (the public call has made it already); without
        ``check_values`` the value checks (positive scales, decoder ranges) are left to the
        implementation, for a call that goes to the native CPU op: it checks them itself with the
        same messages (csrc/cpu/value_checks.h), and each Python check costs 2-5 us."""
        if self.prepare_fn is not None:
            return self.prepare_fn(*values, **options)
        op, first, out = self.name, None, []
        data = [(arg.name, value) for arg, value in zip(self.args, values) if arg.role == DATA]
        if data:
            # Mixed dtypes (a bfloat16 model output next to float32 data) are computed in the
            # promoted dtype (DESIGN.md §4.13).
            tensors, dtype = _checks.promoted_data(op, data)
            first = data[0][1]
            promoted, cdt = iter(tensors), _checks.compute_dtype(dtype)
        for arg, value in zip(self.args, values):
            if arg.role == DATA:
                out.append(next(promoted))
            elif arg.role == COEFF:
                out.append(_checks.per_sample(op, arg.name, value, first.shape[0], first.device, cdt))
            elif arg.role == LIKE:
                if not isinstance(value, torch.Tensor):
                    raise TypeError(f"{op}: {arg.name} must be a torch.Tensor, got {type(value).__name__}")
                if value.dtype not in _checks.DATA_DTYPES:
                    raise TypeError(f"{op}: {arg.name} must be float32, float64, float16 or bfloat16, got {value.dtype}")
                first = value
                out.append(value.detach())
            elif arg.role == CHOICE:
                value = arg.aliases.get(value, value) if isinstance(value, str) else value
                if value not in arg.choices:
                    raise ValueError(f"{op}: {arg.name} must be one of {arg.choices}, got {value!r}")
                out.append(value)
            elif arg.role == GENERATOR:
                out += [draw_seed(value, op), 0]
            else:
                raise AssertionError(f"{op}: unknown role {arg.role!r} of {arg.name}")
        out = tuple(out)
        if check_values:
            # Last, once every argument is known good (a shape error reads better).
            self.check_values(out)
        return out

    def implementation(self, backend: str | None, device: torch.device) -> Callable:
        name = backends.resolve(backend, device, self.name)
        if name == "triton" and "triton" not in self.impls:
            _load_triton(self.name)
        try:
            return self.impls[name]
        except KeyError:
            raise RuntimeError(f"{self.name}: the {name} backend has no implementation of this op") from None

    def _native_direct(self, values, plan, backend):
        """The common eager call handed straight to the native CPU op, or None for the general path.

        The native ops check what the eager fast path would (csrc/common.h: data of one dtype,
        shape and device; coefficients contiguous (B,) tensors of the compute dtype there) and
        name the argument, so here only what they cannot see is checked: every data/coefficient
        argument a tensor, float32/float64 data (half data follows the promotion rules of the
        general path), choices spelled canonically, a native implementation; and, as they are cheap
        to see, one dtype and the CPU; (B, 1, ..., 1) coefficients are passed as (B,) views. An
        input the op refuses goes to the general path, which converts it (a float alpha, mixed
        dtypes) or raises its own message. The value checks (positive scales, decoder ranges) are the native CPU op's own
        (csrc/cpu/value_checks.h, the same messages): in Python they cost 2-5 us a check.

        Written for speed (the whole public call is ~1.3 us over the raw op, issue 18): one frame,
        no device object built (``is_cpu``), the implementation memoised per backend argument."""
        data_idx, coeff_idx, choice_idx, gen = plan
        if len(values) != len(self.args):
            return None
        first = values[data_idx[0]]
        if type(first) is not torch.Tensor or not first.is_cpu:
            return None
        dtype = first.dtype
        if dtype is not torch.float32 and dtype is not torch.float64:
            return None
        call = self._cpu_direct[backend]
        if call is None:
            return None
        # A refused input costs an exception (~20 us), so the layouts users pass every call (a
        # bfloat16 model output next to float32 data) are sent on before it.
        # Meta tensors too (is_cpu is False for them): the dispatcher sends a call with any meta
        # input to the fake kernel, which checks nothing and returns an uninitialised tensor.
        for i in data_idx:
            t = values[i]
            if type(t) is not torch.Tensor or t.dtype is not dtype or not t.is_cpu:
                return None
        args = values
        for i in coeff_idx:
            t = values[i]
            if type(t) is not torch.Tensor or t.dtype is not dtype or not t.is_cpu:
                return None
            if t.ndim != 1:
                # (B, 1, ..., 1), the shape broadcasting code keeps a per-sample scale in: as (B,)
                # (a view) it costs ~0.5 us here, ~10 us on the general path. Anything else goes there.
                # The rule is _checks.per_sample's: trailing sizes all 1 (so (0, 3) is refused at B = 0).
                if t.ndim == 0 or not first.ndim or t.shape[0] != first.shape[0] or t.shape[1:].numel() != 1:
                    return None
                if args is values:
                    args = list(values)
                args[i] = t.contiguous().view(-1)  # the op takes contiguous coefficients
        for i in choice_idx:
            if values[i] not in self.args[i].choices:
                return None
        if gen is not None:
            args = (*args, 0)  # values[gen] is the seed (_seeded): offset 0
        try:
            return call(*args)
        except RuntimeError:
            # The general path converts the input or raises its own error (a value error: the
            # native op raises it again there, the same message).
            return None

    def _cpu_direct_call(self, backend) -> Callable | None:
        """What the direct path calls for CPU data under this backend argument (the value of
        ``_cpu_direct[backend]``): the native op's C++ callable when the backend rules pick the
        native op, else None. ``OpOverload.__call__`` only forwards to ``_op``; calling that saves
        a Python frame (0.3 us); without it, the overload itself."""
        impl = self._memoised_impl(backend, torch.device("cpu"))
        if impl is not self.impls.get("cpu") or not isinstance(impl, torch._ops.OpOverload):
            return None
        return getattr(impl, "_op", impl)

    def _memoised_impl(self, backend, device) -> Callable:
        """The implementation per (backend, device), looked up once (emptied by
        backends.clear_cache()): the backend rules cost about 2 us of Python a call."""
        impl = self._impl_memo.get((backend, device))
        if impl is None:
            impl = self._impl_memo[(backend, device)] = self.implementation(backend, device)
        return impl

    def __call__(self, *values, backend: str | None = None, **options):
        plan = self._fast_plan()
        compiling = torch.compiler.is_compiling()
        args = None
        if plan is not None and not options and not compiling:
            if plan[3] is not None:
                values = self._seeded(values, plan[3])
            out = self._native_direct(values, plan, backend)
            if out is not None:
                return out
            # The common eager call on another backend, checked in place (_prepare_fast); None:
            # the general path.
            args = self._prepare_fast(values, plan)
        if args is None and compiling:
            args = self.prepare(*values, **options)  # traced: the checks too
        elif args is None:
            # The value checks in Python only where the native CPU op will not make them: for other
            # devices and implementations.
            first = values[plan[0][0]] if plan is not None and len(values) > plan[0][0] else None
            native_checks = isinstance(first, torch.Tensor) and first.is_cpu and self._cpu_direct[backend] is not None
            args = self._prepare(values, options, check_values=not native_checks)
        # The first data argument (its device picks the backend): the native arguments begin with it
        # (an op's own prepare keeps that order too) unless a generator or LIKE argument comes first.
        first = args[plan[0][0]] if plan is not None else args[0]
        if not isinstance(first, torch.Tensor):
            first = next(a for a in args if isinstance(a, torch.Tensor))
        if compiling:
            return self.implementation(backend, first.device)(*args)
        return self.call_prepared(args, first, backend)

    def call_prepared(self, args: tuple, first: torch.Tensor, backend: str | None = None):
        """Eager: the native arguments ``args``, already checked and normalised, run on the
        implementation the backend rules pick for ``first``'s device (the native CPU op's C++
        callable when that is the one). For an op's own fast path (reverse_step's sampler step)."""
        if first.is_cpu:
            call = self._cpu_direct[backend]
            if call is not None:
                return call(*args)
        return self._memoised_impl(backend, first.device)(*args)

    # --- fake kernels ----------------------------------------------------------------------------

    def _first_data(self, args) -> torch.Tensor:
        return next(v for a, v in zip(self.native_args(), args) if a.role in (DATA, LIKE))

    def _out(self, rule: str, like: torch.Tensor) -> torch.Tensor:
        if rule == LIKE_DATA:
            return empty_out_like(like)
        return like.new_empty((like.shape[0],), dtype=_checks.compute_dtype(like.dtype))

    def fake_forward(self, *args):
        like = self._first_data(args)
        outs = tuple(self._out(rule, like) for rule in self.outputs)
        return outs if len(outs) > 1 else outs[0]

    def fake_backward(self, grad, *args):
        """Gradients in the forward's order: data gradients in the first data argument's layout,
        coefficient gradients (B,); an empty tensor where the mask says no."""
        *args, mask = args
        like = self._first_data(args)
        grads = []
        for want, i in zip(mask, self.differentiable):
            value = args[i]
            if not want:
                grads.append(value.new_empty(0))
            elif self.args[i].role == DATA:
                grads.append(empty_out_like(like))
            else:
                grads.append(value.new_empty(value.shape))
        return tuple(grads)

    # --- registration --------------------------------------------------------------------------

    def register(self) -> "OpSpec":
        """Fakes and implementations of every backend built here (call once, at import). The
        Triton ops are registered by :meth:`load_triton`, on first use."""
        self.impls["reference"] = self.reference
        if _library.native_load_error is None and hasattr(torch.ops.vdm_fast, self.name):
            torch.library.register_fake(f"vdm_fast::{self.name}")(self.fake_forward)
            if self.has_backward:
                torch.library.register_fake(f"vdm_fast::{self.name}_backward")(self.fake_backward)
            # Autograd of the native op is registered in C++ (csrc/autograd.h); above first
            # order it calls the composite twins.
            if self.differentiable:
                _autodiff.register_native(self)
            self._register_autocast(f"vdm_fast::{self.name}")
            self.impls["cpu"] = self.impls["cuda"] = getattr(torch.ops.vdm_fast, self.name).default
        SPECS[self.name] = self
        return self

    def load_triton(self) -> bool:
        """Register the Triton ops of this op (importing Triton and ``vdm_fast.kernels.<op>``) on
        the first call; whether the Triton implementation exists (False when Triton cannot be
        imported here)."""
        with _TRITON_LOCK:
            if "triton" not in self.impls:
                kernels = triton_kernels(self.name)
                if kernels is None:
                    return False
                self.impls["triton"] = self._register_triton(kernels)
        return True

    def _register_triton(self, kernels):
        forward = torch.library.triton_op(f"vdm_fast::{self.name}_triton", getattr(kernels, self.name),
                                          mutates_args=())
        # Explicit fakes: triton_op derives one by running the launcher on fake tensors, which the
        # Triton interpreter (TRITON_INTERPRET=1, our CPU CI) cannot do.
        forward.register_fake(self.fake_forward)
        self._register_autocast(forward)
        if self.triton_fn is not None:
            return self.triton_fn(forward)
        if self.has_backward:
            backward = torch.library.triton_op(f"vdm_fast::{self.name}_backward_triton",
                                               getattr(kernels, f"{self.name}_backward"), mutates_args=())
            backward.register_fake(self.fake_backward)
            self._attach_autograd(forward, backward)
        return self.with_tangents(forward)

    def with_tangents(self, forward: Callable) -> Callable:
        """``forward`` (a Python-level implementation: the Triton op) with forward-mode AD and
        torch.func.grad: such a call runs the composite twin (DESIGN.md §4.12); an op without
        derivatives whose output depends on its data refuses a tangent."""
        if self.differentiable:
            composite = _autodiff.forward(self)

            def implementation(*args):
                return composite(*args) if _autodiff.needs_composite(args) else forward(*args)
        elif any(a.role == DATA for a in self.args):
            names = [a.name for a in self.native_args()]

            def implementation(*args):
                _autodiff.reject_tangent(self.name, names, args)
                return forward(*args)
        else:  # the output depends on no input's values (randn_like): its tangent is zero
            return forward
        return implementation

    def _register_autocast(self, op) -> None:
        """Under autocast an op on data runs in float32 (float64 data stays float64): autocast's
        policy for losses and other precision-sensitive ops, and the rule of ``_checks.data_dtype``
        that the public functions apply. The casts are differentiable, so gradients reach a
        float16/bfloat16 model in its dtype. randn_like, whose output dtype is its argument's and
        whose values depend on none, keeps its input's dtype."""
        if not any(a.role == DATA for a in self.args):
            return
        for device_type in ("cpu", "cuda"):
            if torch._C._is_autocast_available(device_type):
                torch.library.register_autocast(op, device_type, torch.float32, lib=_AUTOCAST_LIB)

    def _attach_autograd(self, forward, backward) -> None:
        positions, args = self.differentiable, self.native_args()
        composite = _autodiff.backward(self)

        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(*(v for v in inputs if isinstance(v, torch.Tensor)))
            ctx.others = [_SAVED if isinstance(v, torch.Tensor) else v for v in inputs]

        def backward_fn(ctx, grad):
            saved = iter(ctx.saved_tensors)
            inputs = [next(saved) if v is _SAVED else v for v in ctx.others]
            # A call may leave trailing names at their defaults; the backward takes them all.
            inputs += [a.default for a in args[len(inputs):]]
            needs = ctx.needs_input_grad
            mask = [i < len(needs) and needs[i] for i in positions]
            # Grad mode on in a backward: create_graph=True, the gradients get differentiated.
            run = composite if torch.is_grad_enabled() else backward
            grads = run(grad.contiguous(), *inputs, mask)
            out = [None] * len(ctx.needs_input_grad)
            for i, want, g in zip(positions, mask, grads):
                if want:
                    out[i] = g
            return tuple(out)

        torch.library.register_autograd(forward, backward_fn, setup_context=setup_context)


_SAVED = object()  # marks an input saved with save_for_backward
_AUTOCAST_LIB = torch.library.Library("vdm_fast", "IMPL")  # the autocast kernels, for the process's life
_TRITON_LOCK = threading.RLock()  # load_triton of q_sample_randn loads q_sample's


@backends.assume_constant_result
def _load_triton(name: str) -> bool:
    """Load the Triton ops of op ``name``; under torch.compile this runs eagerly while tracing
    (assume_constant_result), so a compiled function may be the first to use the backend."""
    if not SPECS[name].load_triton():
        raise RuntimeError(f"{name}: the triton backend was chosen, but vdm_fast.kernels.{name} could not be "
                           "imported (set logging to DEBUG for vdm_fast.ops._spec to see why)")
    return True


# --- sample inputs (tests, benchmarks, the CI smoke test) ------------------------------------------


def normal(shape, dtype, device, generator) -> torch.Tensor:
    """Standard normal data, drawn in float32 on the CPU from ``generator`` (the same values on
    every device), then cast."""
    return torch.randn(shape, generator=generator).to(device=device, dtype=dtype)


def uniform(n: int, low: float, high: float, dtype, device, generator) -> torch.Tensor:
    """(n,) per-sample coefficients uniform in [low, high), in the compute dtype of ``dtype`` data."""
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return (low + (high - low) * u).to(device=device, dtype=_checks.compute_dtype(dtype))

# Every op, by name, in the order they registered (vdm_fast.ops imports them in a fixed order).
SPECS: dict[str, OpSpec] = {}


def triton_kernels(module: str):
    """``vdm_fast.kernels.<module>``, or None when Triton cannot be imported here."""
    if backends.triton_status() == "the triton package is not installed":
        return None
    try:
        return importlib.import_module(f"vdm_fast.kernels.{module}")
    except ImportError as exc:  # triton present but broken: the backend reports unavailable
        log.debug("vdm_fast.kernels.%s failed to import: %s", module, exc)
        return None
