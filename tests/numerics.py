"""Tolerances that follow from the quantity's conditioning (DESIGN.md §10), not from one CPU.

The rule. An op's result is compared with its reference twin evaluated in float64 from the same
inputs (the *truth* for float32 results; for float64 results the reference's own rounding counts
too). The allowed difference is K times the **first-order running error bound** of the reference
formula at the precision the op computes in (Wilkinson's running error analysis):

    E(r) = sum over the operations v of the formula of |dr/dv| * (rounding error of v),

where an arithmetic operation rounds with a relative error of at most u (the unit roundoff:
2^-24 for float32, 2^-53 for float64), a library function (exp, log, tanh, erf, log_ndtr, ...)
with at most ULPS[f] units in the last place of its result (libm, SLEEF, CUDA's and Triton's math
libraries all stay within these), a sum of n terms with at most LAMBDA * sqrt(n) * u * sum|terms|
(probabilistic rounding-error analysis, Higham & Mary 2019: exceeded with probability below
n * 2 exp(-LAMBDA^2 / 2)), and the inputs are exact. E is the condition-weighted count of the
rounding errors a stable evaluation of the same formula makes; it is large exactly where the
quantity is ill-conditioned: a difference of two CDFs in the tails (1/P), a sum of cancelling
terms, a latent far from its bin at tiny sigma_0. K = 2 allows our kernel a different (equally
stable) order of operations than the reference formula; for float64 results the reference's own
error adds one more E.

How it is computed. `running_error` evaluates the reference (and its backward) in float64 under a
TorchDispatchMode that carries, next to every intermediate tensor, a tensor of its error bounds,
propagated by the rules in RULES (one per aten op the references use, forward and backward). An op
without a rule raises, so a new reference cannot silently get a zero bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

aten = torch.ops.aten

# Probabilistic bound for sums: with LAMBDA = 7 a sum of 10^4 terms exceeds it with probability
# below 10^4 * 2 exp(-24.5) = 5e-7.
LAMBDA = 7.0
# Units in the last place a library function may be off (glibc's documented maxima on x86-64 are
# 1-2 ulp for these in double, SLEEF's u10 functions 1.0 ulp, CUDA's 1-4 ulp in float); log_ndtr
# composes erfcx or erfc with a log and an exp, so its bound is the sum of theirs.
ULPS = {"exp": 2, "log": 2, "log1p": 2, "expm1": 2, "tanh": 2, "sigmoid": 4, "erf": 2, "pow": 2, "sqrt": 1,
        "cos": 2, "softplus": 4,  # softplus = log1p(exp(a)): log1p's 2, and exp's 2 reach it as at most 2
        "log_ndtr": 8, "log_softmax": 4}
# IEEE 754 requires these to round correctly, so an exact argument with a representable result is exact.
CORRECTLY_ROUNDED = {"sqrt"}
# How many times the reference formula's bound our kernels may differ from the truth (our order of
# operations may differ from the reference's; both are stable).
K = 2.0


def unit_roundoff(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps / 2


class _Bounds(TorchDispatchMode):
    """Runs aten ops in float64 and records an error bound for every floating-point result."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype  # the precision simulated
        self.u = unit_roundoff(dtype)
        self.tiny = torch.finfo(dtype).tiny
        # Keyed by what the data is (storage address, offset, sizes, strides): autograd hands saved
        # outputs back to the backward as new tensor objects over the same memory. The tensors are
        # kept alive, so an address is never reused while the mode runs.
        self.err: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def rnd(self, out: torch.Tensor, units: float = 1.0, exact_from=None) -> torch.Tensor:
        """The local error of a result: ``units`` roundings (u |out| each) and an underflow (tiny).

        ``exact_from``: the operands of a correctly rounded operation (+, -, *, /, sqrt). Where they
        are exact and the result is a value of the simulated dtype, the operation is exact: no error.
        (The float64 evaluation of float32 operands gives the exact result of such an operation
        whenever that result is a float32 value.) Not decidable this way when simulating float64.
        """
        local = units * self.u * out.abs() + self.tiny
        if exact_from is None or self.dtype == torch.float64:
            return local
        exact = out == out.to(self.dtype).to(out.dtype)
        for a in exact_from:
            if isinstance(a, torch.Tensor) and a.is_floating_point():
                exact = exact & (self.error(a) == 0)
            elif self.literal(a) != 0:
                return local
        return torch.where(exact, 0, local)

    def literal(self, v) -> float:
        """The relative error of a Python number the formula uses: none if the simulated dtype holds
        it exactly (1, 0.5, 255, ...; every Python float when simulating float64), else u."""
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            return 0.0
        v = float(v)
        return 0.0 if not math.isfinite(v) or float(torch.tensor(v, dtype=self.dtype)) == v else self.u

    def set_dtype(self, dtype: torch.dtype) -> None:
        self.dtype, self.u, self.tiny = dtype, unit_roundoff(dtype), torch.finfo(dtype).tiny

    @staticmethod
    def _key(t: torch.Tensor) -> tuple:
        return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)

    def error(self, t) -> torch.Tensor | float:
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            return 0.0
        found = self.err.get(self._key(t))
        if found is not None:
            return found[1]
        return torch.zeros_like(t)  # an input: exact

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        rule = RULES.get(func.overloadpacket)
        if rule is None:
            if all(not (isinstance(o, torch.Tensor) and o.is_floating_point()) for o in _flat(out)):
                return out  # comparisons, indices, shapes: nothing to bound
            raise NotImplementedError(f"tests/numerics.py has no error rule for {func}: add one to RULES")
        # A result narrower than the compute precision (a float32 island in a float64 computation,
        # e.g. a classifier's log-softmax) rounds at its own dtype's unit roundoff.
        simulated = self.dtype
        for o in _flat(out):
            if isinstance(o, torch.Tensor) and o.is_floating_point() and unit_roundoff(o.dtype) > self.u:
                self.set_dtype(o.dtype)
        try:
            errs = rule(self, func, args, kwargs, out)
        finally:
            self.set_dtype(simulated)
        for o, e in zip(_flat(out), _flat(errs)):
            if isinstance(o, torch.Tensor) and o.is_floating_point():
                e = torch.as_tensor(e, dtype=o.dtype).expand(o.shape) if not isinstance(e, torch.Tensor) else e
                # An infinite or NaN result carries no error bound: it must match the reference's
                # exactly (assert_within_bound), and what it feeds (exp(-inf), sigmoid(inf)) has zero
                # derivative there.
                e = torch.where(o.isfinite(), e, 0)
                self.err[self._key(o)] = (o, e.abs())
        return out


def _flat(x):
    return list(x) if isinstance(x, (tuple, list)) else [x]


# --- the rules: rule(mode, func, args, kwargs, out) -> error bound(s) of out ------------------------


def _structural(m, func, args, kwargs, out):
    """Views, copies, gathers: the same op applied to the errors."""
    def swap(a):
        return m.error(a) if isinstance(a, torch.Tensor) and a.is_floating_point() else a

    with _suspend(m):
        return func(*tree_map(swap, args), **tree_map(swap, kwargs))


def _constant(m, func, args, kwargs, out):
    """A literal (1/255, sqrt(2/pi), ...) rounded to the compute precision (exact if it is a value
    of it: 0, 1, integers, 2^-k)."""
    return m.rnd(out, exact_from=())


def _add(m, func, args, kwargs, out):
    a, b = args[0], args[1]
    alpha = abs(kwargs.get("alpha", args[2] if len(args) > 2 else 1))
    eb = m.error(b) if isinstance(b, torch.Tensor) else m.literal(b) * abs(b)  # a Python scalar is a literal
    return m.error(a) + alpha * eb + m.rnd(out, exact_from=(a, b, alpha))


def _rsub(m, func, args, kwargs, out):
    return m.error(args[0]) + m.literal(args[1]) * abs(args[1]) + m.rnd(out, exact_from=args[:2])


def _mul(m, func, args, kwargs, out):
    a, b = args
    if not isinstance(b, torch.Tensor):
        return abs(b) * m.error(a) + m.literal(b) * out.abs() + m.rnd(out, exact_from=(a, b))
    return b.abs() * m.error(a) + a.abs() * m.error(b) + m.rnd(out, exact_from=(a, b))


def _div(m, func, args, kwargs, out):
    a, b = args
    if not isinstance(b, torch.Tensor):
        return m.error(a) / abs(b) + m.literal(b) * out.abs() + m.rnd(out, exact_from=(a, b))
    ea = m.error(a) if isinstance(a, torch.Tensor) else m.literal(a) * abs(a)
    return (ea + out.abs() * m.error(b)) / b.abs() + m.rnd(out, exact_from=(a, b))


def _neg(m, func, args, kwargs, out):
    return m.error(args[0])


def _unary(name, derivative):
    """f(a): |f'(a)| e_a plus the function's own ULPS[name] ulps."""
    def rule(m, func, args, kwargs, out):
        a = args[0]
        with _suspend(m):
            d = derivative(a, out).abs()
        exact_from = (a,) if name in CORRECTLY_ROUNDED else None
        return torch.where(d.isfinite(), d, 0) * m.error(a) + m.rnd(out, 2 * ULPS[name], exact_from)
    return rule


def _pow(m, func, args, kwargs, out):
    a, p = args
    if p == 2:
        return 2 * a.abs() * m.error(a) + m.rnd(out, exact_from=(a,))
    with _suspend(m):
        e = m.error(a)
        d = (p * a.abs() ** (p - 1)).abs()
        prop = torch.where(e > 0, d * e, 0)  # an exact argument: nothing to propagate, even at a ** 0.5 = 0
        if 0 < p < 1:  # |x^p - y^p| <= |x - y|^p: finite where the derivative is not (a square root at 0)
            prop = torch.minimum(prop, e ** p)
    return prop + m.rnd(out, 2 * ULPS["pow"])


def _sum(m, func, args, kwargs, out):
    a = args[0]
    dims = args[1] if len(args) > 1 else kwargs.get("dim")
    keep = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    n = a.numel() // max(out.numel(), 1) if a.numel() else 0
    with _suspend(m):
        if dims is None or dims == []:
            e, mag = m.error(a).sum(), a.abs().sum()
        else:
            e, mag = m.error(a).sum(dims, keepdim=keep), a.abs().sum(dims, keepdim=keep)
    return e + LAMBDA * math.sqrt(max(n, 1)) * m.u * mag + m.rnd(out)


def _mean(m, func, args, kwargs, out):
    """sum(a) / n: the bound of the sum (n * out) over n, plus the division's rounding."""
    n = max(args[0].numel() // max(out.numel(), 1), 1)
    return _sum(m, func, args, kwargs, out * n) / n + m.rnd(out)


def _where(m, func, args, kwargs, out):
    cond, a, b = args
    ea = m.error(a) if isinstance(a, torch.Tensor) else m.literal(a) * abs(a)
    eb = m.error(b) if isinstance(b, torch.Tensor) else m.literal(b) * abs(b)
    with _suspend(m):
        return torch.where(cond, ea, eb)


def _clamp(m, func, args, kwargs, out):
    # 1-Lipschitz; a clamped value is the bound itself, a rounded literal, unless its argument lies
    # within its error of the bound (then it may land inside: that error less the distance).
    with _suspend(m):
        clamped = out != args[0]
        inside = (m.error(args[0]) - (args[0] - out).abs()).clamp_min(0)
        e = torch.where(clamped, inside + m.rnd(out), m.error(args[0]))
        # A tensor bound (dynamic thresholding's clamp(x, -s, s)): clamp is 1-Lipschitz in it too.
        for b in (args[1:3] if func.overloadpacket is aten.clamp else args[1:2]):
            if isinstance(b, torch.Tensor) and b.is_floating_point():
                e = torch.maximum(e, m.error(b))
        return e


def _tanh_backward(m, func, args, kwargs, out):
    g, y = args  # g * (1 - y^2)
    return ((1 - y * y).abs() * m.error(g) + 2 * (g * y).abs() * m.error(y)
            + m.u * g.abs() * (1 + y * y) + m.rnd(out))


def _log_softmax(m, func, args, kwargs, out):
    a, dim = args[0], args[1]
    with _suspend(m):
        p = out.exp()
        ea = m.error(a)
        # d out_i / d a_j = delta_ij - p_j. ATen evaluates (a - max) - log(sum(exp(a - max))): its
        # roundings scale with |a - max| and that log (none at the argmax, however large the logits),
        # plus the sum's, not with |logsumexp(a)|.
        mx = a.amax(dim, keepdim=True)
        shifted, log_sum = (a - mx).abs(), ((a - out) - mx).abs()
        return ((1 - p) * ea + ((p * ea).sum(dim, keepdim=True) - p * ea).clamp_min(0)
                + 2 * ULPS["log_softmax"] * m.u * (shifted + log_sum) + LAMBDA * math.sqrt(a.shape[dim]) * m.u
                + m.rnd(out, 2 * ULPS["log_softmax"]))


def _log_softmax_backward(m, func, args, kwargs, out):
    g, y, dim = args[0], args[1], args[2]  # g - exp(y) * sum(g)
    with _suspend(m):
        p = y.exp()
        gs = g.sum(dim, keepdim=True)
        eg = m.error(g)
        n = g.shape[dim]
        sum_err = eg.sum(dim, keepdim=True) + LAMBDA * math.sqrt(n) * m.u * g.abs().sum(dim, keepdim=True)
        return (eg + p * sum_err + (p * gs).abs() * (m.error(y) + 2 * ULPS["exp"] * m.u)
                + m.u * (p * gs).abs() + m.rnd(out))


def _scatter_add(m, func, args, kwargs, out):
    self_, dim, index, src = args
    with _suspend(m):
        e = m.error(self_).scatter_add(dim, index, m.error(src))
        return e + m.u * self_.abs().scatter_add(dim, index, src.abs()) + m.tiny


def _log_ndtr_derivative(a, out):
    return torch.exp(-a * a / 2 - out) / math.sqrt(2 * math.pi)


def _to_copy(m, func, args, kwargs, out):
    """A cast: the same values (exact when it widens); narrowing, or from integers, rounds once."""
    if not (isinstance(out, torch.Tensor) and out.is_floating_point()):
        return 0.0
    if not args[0].is_floating_point():
        return m.rnd(out)
    e = _structural(m, func, args, kwargs, out)
    return e + m.rnd(out) if unit_roundoff(out.dtype) > unit_roundoff(args[0].dtype) else e


def _empty(m, func, args, kwargs, out):
    """Uninitialised memory, to be written (copy_) before it is read."""
    return torch.zeros_like(out)


def _copy_(m, func, args, kwargs, out):
    """An in-place copy into (a view of) a tensor, e.g. a loop filling a column of a buffer: the
    source's errors, also written into the errors of every recorded dense tensor over that memory,
    so that later reads of the whole buffer see them."""
    dst, src = args[0], args[1]
    with _suspend(m):
        floating = isinstance(src, torch.Tensor) and src.is_floating_point()
        e = m.error(src) if floating else torch.zeros((), dtype=dst.dtype)
        e = e.to(dst.dtype).expand(dst.shape)
        if floating and unit_roundoff(dst.dtype) > unit_roundoff(src.dtype):
            e = e + m.rnd(dst)
        lo = dst.storage_offset()
        hi = lo + sum((n - 1) * st for n, st in zip(dst.shape, dst.stride()))
        ptr = dst.untyped_storage().data_ptr()
        for t, et in m.err.values():
            if (t is dst or t.untyped_storage().data_ptr() != ptr or t.dtype != dst.dtype
                    or not (t.is_contiguous() and et.is_contiguous())
                    or lo < t.storage_offset() or hi >= t.storage_offset() + t.numel()):
                continue
            et.as_strided(dst.shape, dst.stride(), et.storage_offset() + lo - t.storage_offset()).copy_(e)
        return e


def _abs(m, func, args, kwargs, out):
    return m.error(args[0])  # exact and 1-Lipschitz


def _sgn(m, func, args, kwargs, out):
    return torch.zeros_like(out)  # exact; constant away from 0


def _reciprocal(m, func, args, kwargs, out):
    return out * out * m.error(args[0]) + m.rnd(out)  # d(1/a) = -da / a^2, one rounding


def _sigmoid_backward(m, func, args, kwargs, out):
    g, y = args  # g (1 - y) y: three roundings, each relative to the result
    with _suspend(m):
        return (y * (1 - y)).abs() * m.error(g) + (g * (1 - 2 * y)).abs() * m.error(y) + m.rnd(out, 3)


def _softplus(m, func, args, kwargs, out):
    beta = args[1] if len(args) > 1 else kwargs.get("beta", 1)
    if beta != 1:
        raise NotImplementedError("tests/numerics.py has no rule for softplus with beta != 1")
    return _unary("softplus", lambda a, y: torch.sigmoid(a))(m, func, args, kwargs, out)


def _softmax(m, func, args, kwargs, out):
    """exp(a - max) / sum: y_i (|da_i| + sum_j y_j |da_j|) with da the inputs' errors and the
    shift's rounding, plus exp's ulps (numerator and the sum's terms), the sum and the division."""
    a, dim = args[0], args[1]
    with _suspend(m):
        ea = m.error(a) + m.u * (a - a.amax(dim, keepdim=True)).abs()
        units = 4 * ULPS["exp"] + LAMBDA * math.sqrt(a.shape[dim]) + 1
        return out * (ea + (out * ea).sum(dim, keepdim=True) + units * m.u) + m.tiny


def _cumsum(m, func, args, kwargs, out):
    """Prefix sums: the k-th is a sum of k terms (the bound of _sum, prefix by prefix)."""
    a, dim = args[0], args[1]
    with _suspend(m):
        k = _positions(a.shape[dim], dim, out)
        return m.error(a).cumsum(dim) + LAMBDA * k.sqrt() * m.u * a.abs().cumsum(dim) + m.rnd(out)


def _cumprod(m, func, args, kwargs, out):
    """Prefix products: the factors' relative errors add, and the k-th has k - 1 roundings
    (probabilistically LAMBDA sqrt(k) u, as sums)."""
    a, dim = args[0], args[1]
    with _suspend(m):
        if bool((a == 0).any()):
            raise NotImplementedError("tests/numerics.py has no rule for a cumprod through a zero factor")
        k = _positions(a.shape[dim], dim, out)
        return out.abs() * ((m.error(a) / a.abs()).cumsum(dim) + LAMBDA * k.sqrt() * m.u) + m.tiny


def _positions(n, dim, like):
    """1, 2, ..., n along ``dim`` of ``like``."""
    dim = dim % like.dim()
    return torch.arange(1, n + 1, dtype=like.dtype, device=like.device).reshape((-1,) + (1,) * (like.dim() - 1 - dim))


def _linspace(m, func, args, kwargs, out):
    """torch.linspace's kernel: start + i step, past halfway end - (n - 1 - i) step, step = (end -
    start) / (n - 1): the rounded end point, j times step's error (the rounded ends, their
    difference, the quotient), the product and the sum."""
    start, end, n = float(args[0]), float(args[1]), int(args[2])
    with _suspend(m):
        i = torch.arange(n, dtype=out.dtype, device=out.device)
        first = i < n // 2
        j = torch.where(first, i, n - 1 - i)
        step = abs(end - start) / max(n - 1, 1)
        e_step = m.u * (abs(start) + abs(end)) / max(n - 1, 1) + 2 * m.u * step
        return m.u * torch.where(first, abs(start), abs(end)) + j * (e_step + m.u * step) + m.rnd(out)


def _mm(m, func, args, kwargs, out):
    """A k-term inner product per entry: |A| E_B + E_A |B| + LAMBDA sqrt(k) u |A||B|, then rounded."""
    a, b = args[0], args[1]
    with _suspend(m):
        return (func(m.error(a), b.abs()) + func(a.abs(), m.error(b))
                + LAMBDA * math.sqrt(a.shape[-1]) * m.u * func(a.abs(), b.abs()) + m.rnd(out))


def _convolution(m, func, args, kwargs, out):
    """Each output an inner product of k = C_in / groups * prod(kernel) terms (+ the bias), as _mm."""
    x, w, bias, rest = args[0], args[1], args[2], args[3:]
    if rest[3]:
        raise NotImplementedError("tests/numerics.py has no rule for a transposed convolution")
    with _suspend(m):
        ax, aw = x.abs(), w.abs()
        mag = func(ax, aw, None, *rest)
        e = func(m.error(x), aw, None, *rest) + func(ax, m.error(w), None, *rest)
        if bias is not None:
            shape = (1, -1) + (1,) * (out.dim() - 2)
            e, mag = e + m.error(bias).reshape(shape), mag + bias.abs().reshape(shape)
        return e + LAMBDA * math.sqrt(w[0].numel() + 1) * m.u * mag + m.rnd(out)


def _convolution_backward(m, func, args, kwargs, out):
    """The gradients of _convolution, each an inner product as _mm: input's over C_out * prod(kernel)
    terms, weight's and bias's over N * prod(output spatial)."""
    g, x, w, rest = args[0], args[1], args[2], args[3:]
    if rest[4]:
        raise NotImplementedError("tests/numerics.py has no rule for a transposed convolution")
    with _suspend(m):
        mag = func(g.abs(), x.abs(), w.abs(), *rest)
        e_g = func(m.error(g), x.abs(), w.abs(), *rest)
        e_xw = func(g.abs(), m.error(x), m.error(w), *rest)
        terms = (w.shape[0] * w[0, 0].numel(), g.numel() // g.shape[1], g.numel() // g.shape[1])
        return tuple(None if o is None else
                     e_g[i] + (e_xw[i] if i < 2 else 0) + LAMBDA * math.sqrt(terms[i]) * m.u * mag[i] + m.rnd(o)
                     for i, o in enumerate(out))


def _vector_norm(m, func, args, kwargs, out):
    """||a||_2: | ||a + e|| - ||a|| | <= ||e|| (the triangle inequality); the squares and their sum
    of n terms round by (1 + LAMBDA sqrt(n)) u of ||a||^2, which the square root halves, and it
    rounds once more."""
    a = args[0]
    order = args[1] if len(args) > 1 else kwargs.get("ord", 2)
    dim = args[2] if len(args) > 2 else kwargs.get("dim")
    keep = args[3] if len(args) > 3 else kwargs.get("keepdim", False)
    if order != 2:
        raise NotImplementedError(f"tests/numerics.py has no rule for linalg_vector_norm with ord={order}")
    n = a.numel() // max(out.numel(), 1)
    with _suspend(m):
        e = torch.linalg.vector_norm(m.error(a), 2, dim, keep)
    return e + (1 + LAMBDA * math.sqrt(max(n, 1))) * m.u * out / 2 + m.rnd(out, 2 * ULPS["sqrt"])


def _sort(m, func, args, kwargs, out):
    """Order statistics are 1-Lipschitz in the max norm: each is within the largest error along dim."""
    dim = kwargs.get("dim", args[1] if len(args) > 1 and isinstance(args[1], int) else -1)
    with _suspend(m):
        return m.error(args[0]).amax(dim, keepdim=True).expand_as(out[0]), None


def _masked_fill(m, func, args, kwargs, out):
    a, mask, value = args
    ev = m.error(value) if isinstance(value, torch.Tensor) else m.literal(value) * abs(value)
    with _suspend(m):
        return torch.where(mask, ev, m.error(a))


def _ceil_(m, func, args, kwargs, out):
    """An integer, one off where its argument had an error (in place: the argument is gone)."""
    with _suspend(m):
        return torch.where(m.error(args[0]) > 0, 1.0, 0.0).to(out.dtype)


def _lerp_(m, func, args, kwargs, out):
    """In place, out = a + w (b - a), so b - a = (b - out) / (1 - w) (w < 1: torch.quantile's
    weights): (1 - w) e_a + w e_b + |b - a| e_w, and three roundings of |a| + |w (b - a)|."""
    a, b, w = args
    ew = m.error(w) if isinstance(w, torch.Tensor) else m.literal(w) * abs(w)
    with _suspend(m):
        w = torch.as_tensor(w, dtype=out.dtype)
        span = (b - out).abs() / (1 - w).abs()
        return ((1 - w).abs() * m.error(a) + w.abs() * m.error(b) + span * ew
                + 3 * m.u * ((out - w * (b - out) / (1 - w)).abs() + w.abs() * span) + m.tiny)


def _inplace_view(m, func, args, kwargs, out):
    """squeeze_: in place, the tensor has its new shape already, so its error is found by identity."""
    with _suspend(m):
        for t, e in reversed(list(m.err.values())):
            if t is out:
                return e.reshape(out.shape)
        return torch.zeros_like(out)


RULES = {
    **{op: _structural for op in (aten.view, aten._unsafe_view, aten.expand, aten.unsqueeze, aten.squeeze,
                                  aten.permute, aten.clone, aten.contiguous, aten.select, aten.slice,
                                  aten.unbind, aten.gather, aten.index, aten.cat, aten.stack, aten.detach, aten.alias,
                                  aten.lift_fresh, aten.t, aten.transpose, aten.flip, aten.reshape, aten.as_strided,
                                  aten.copy, aten.repeat, aten.split, aten.select_backward)},
    **{op: _constant for op in (aten.full, aten.scalar_tensor, aten.zeros_like, aten.ones_like, aten.new_zeros,
                                aten.new_ones, aten.zeros, aten.ones, aten.arange, aten.full_like, aten.new_full,
                                aten.round, aten.rand, aten.randn)},
    aten.add: _add, aten.sub: _add, aten.rsub: _rsub, aten.mul: _mul, aten.div: _div, aten.neg: _neg,
    aten.pow: _pow, aten.sum: _sum, aten.mean: _mean, aten.where: _where, aten.clamp: _clamp, aten.clamp_min: _clamp,
    aten.clamp_max: _clamp,
    aten.exp: _unary("exp", lambda a, y: y),
    aten.log: _unary("log", lambda a, y: 1 / a),
    aten.log1p: _unary("log1p", lambda a, y: 1 / (1 + a)),
    aten.expm1: _unary("expm1", lambda a, y: y + 1),
    aten.tanh: _unary("tanh", lambda a, y: 1 - y * y),
    aten.sigmoid: _unary("sigmoid", lambda a, y: y * (1 - y)),
    aten.erf: _unary("erf", lambda a, y: 2 / math.sqrt(math.pi) * torch.exp(-a * a)),
    aten.sqrt: _unary("sqrt", lambda a, y: 0.5 / y),
    aten.special_log_ndtr: _unary("log_ndtr", _log_ndtr_derivative),
    aten.tanh_backward: _tanh_backward,
    aten._log_softmax: _log_softmax,
    aten._log_softmax_backward_data: _log_softmax_backward,
    aten.scatter_add: _scatter_add,
    aten._to_copy: _to_copy, aten.empty: _empty, aten.empty_like: _empty, aten.copy_: _copy_, aten.abs: _abs,
    aten.sgn: _sgn, aten.reciprocal: _reciprocal, aten.cos: _unary("cos", lambda a, y: torch.sin(a)),
    aten.sigmoid_backward: _sigmoid_backward, aten.softplus: _softplus, aten._softmax: _softmax,
    aten.cumsum: _cumsum, aten.cumprod: _cumprod, aten.linspace: _linspace, aten.mm: _mm,
    aten.convolution: _convolution, aten.convolution_backward: _convolution_backward,
    aten.linalg_vector_norm: _vector_norm, aten.sort: _sort, aten.masked_fill: _masked_fill, aten.ceil_: _ceil_,
    aten.lerp_: _lerp_, aten.squeeze_: _inplace_view, aten.index_put_: _structural,  # in place, as index_put
    aten.div_: _div,  # in place: the rule reads only the divisor, the result and the errors
}


class _suspend:
    """Run ops inside a rule without recording them."""

    def __init__(self, mode: _Bounds):
        self.mode = mode

    def __enter__(self):
        self._guard = torch.utils._python_dispatch._disable_current_modes()
        self._guard.__enter__()

    def __exit__(self, *exc):
        self._guard.__exit__(*exc)


# --- the public face --------------------------------------------------------------------------------


@dataclass
class Reference:
    """The float64 reference result and its running error bound, and the same for each gradient."""

    value: torch.Tensor
    bound: torch.Tensor
    grads: tuple[torch.Tensor, ...] = ()
    grad_bounds: tuple[torch.Tensor, ...] = ()


def compute_dtype(inputs) -> torch.dtype:
    """The precision an op computes in: float64 for float64 data (the first tensor), float32 else."""
    first = next(a for a in inputs if isinstance(a, torch.Tensor) and a.is_floating_point())
    return torch.float64 if first.dtype == torch.float64 else torch.float32


def running_error(fn, inputs, *, dtype: torch.dtype | None = None, upstream: torch.Tensor | None = None,
                  wrt: tuple[int, ...] = ()) -> Reference:
    """``fn(*inputs)`` in float64 with the error bound of an evaluation in ``dtype``'s precision
    (default: ``compute_dtype(inputs)``), and, when ``wrt`` names input positions, the gradients of
    ``(fn * upstream).sum()`` with theirs.

    Tensors among ``inputs`` are cast to float64 and detached; other arguments pass through. An
    input is exact, except one wider than ``dtype`` (a float64 coefficient of float32 data), which
    the op first rounds to ``dtype``.
    """
    dtype = dtype or compute_dtype(inputs)
    u = unit_roundoff(dtype)
    args = [a.detach().double().requires_grad_(i in wrt) if isinstance(a, torch.Tensor) and a.is_floating_point()
            else a for i, a in enumerate(inputs)]
    mode = _Bounds(dtype)
    for a, given in zip(args, inputs):
        if isinstance(given, torch.Tensor) and given.is_floating_point() and torch.finfo(given.dtype).bits > \
                torch.finfo(dtype).bits:
            rounds = a.isfinite() & (a != a.to(dtype).to(a.dtype))  # inf, and values of dtype, are exact
            mode.err[mode._key(a)] = (a, torch.where(rounds, u * a.detach().abs(), 0))
    with mode:
        out = fn(*args)
        out_bound = mode.error(out)
        grads, grad_bounds = (), ()
        if wrt:
            up = (torch.ones_like(out) if upstream is None else upstream.detach().double())
            if out.requires_grad:
                grads = torch.autograd.grad(out, [args[i] for i in wrt], up, allow_unused=True)
            else:  # the result does not depend on these inputs at all (sq_error's x0 for "eps")
                grads = (None,) * len(wrt)
            grad_bounds = tuple(mode.error(g) if g is not None else None for g in grads)
    return Reference(out.detach(), out_bound.detach(), tuple(g.detach() if g is not None else None for g in grads),
                     grad_bounds)


def assert_within_bound(actual: torch.Tensor, truth: torch.Tensor, bound: torch.Tensor, *, k: float = K,
                        msg: str = "") -> None:
    """|actual - truth| <= k * bound elementwise (plus the faithful rounding of actual to its own
    dtype), with NaN and infinities where the truth has them."""
    assert actual.shape == truth.shape, f"{msg}: shape {tuple(actual.shape)} != {tuple(truth.shape)}"
    got = actual.detach().double().cpu()
    want, bound = truth.double().cpu(), bound.double().cpu()
    # A truth beyond the range of actual's dtype (a float16 gradient of 1e5) rounds to infinity
    # there, or to the largest finite value; so does anything within the bound of it.
    top = torch.finfo(actual.dtype).max
    reach = want.abs() + k * bound + 2 * unit_roundoff(actual.dtype) * want.abs()
    overflowed = want.isfinite() & (reach >= top) & (got.isinf() | (got.abs() == top)) & (got.sign() == want.sign())
    must = want.isfinite() & (want.abs() - k * bound > top)
    assert not (must & ~overflowed).any(), f"{msg}: a value beyond {actual.dtype}'s range did not overflow"
    want = torch.where(overflowed, got, want)
    same_nonfinite = (got.isnan() == want.isnan()).all() and torch.equal(got.isinf() & (got > 0), want.isinf() & (want > 0)) \
        and torch.equal(got.isinf() & (got < 0), want.isinf() & (want < 0))
    assert same_nonfinite, f"{msg}: NaN/Inf pattern differs from the reference"
    finite = want.isfinite()
    # The result is stored in its own dtype: rounded faithfully there (within one unit in its last
    # place: Triton's interpreter truncates float32 to bfloat16 rather than rounding to nearest).
    allowed = k * bound + 2 * unit_roundoff(actual.dtype) * want.abs() + torch.finfo(actual.dtype).tiny
    err = (got - want).abs()
    bad = finite & ~(err <= allowed)
    if bad.any():
        i = int(bad.flatten().nonzero()[0])
        ratio = (err / allowed.clamp_min(1e-300))[finite].max().item()
        raise AssertionError(
            f"{msg}: {int(bad.sum())} of {want.numel()} entries exceed {k} x the running error bound "
            f"(worst {ratio:.2f}x the allowance); first at flat index {i}: got {got.flatten()[i].item()!r}, "
            f"reference {want.flatten()[i].item()!r}, |diff| {err.flatten()[i].item():.3e}, "
            f"allowed {allowed.flatten()[i].item():.3e}")


def check_against_reference(ours, ref, inputs, *, upstream=None, wrt=(), msg: str = ""):
    """``ours(*inputs)`` and its gradients with respect to the inputs at positions ``wrt`` (under
    the non-unit ``upstream``) equal ``ref``'s float64 truth within K times the running error bound
    at the op's compute precision (``compute_dtype``: float64 for float64 data, float32 for float32,
    float16 and bfloat16 data); for float64 data the reference's own error counts too. Returns our
    output and gradients."""
    compute = compute_dtype(inputs)
    args = [a.detach().requires_grad_(i in wrt) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
            for i, a in enumerate(inputs)]
    out = ours(*args)
    grads = torch.autograd.grad(out, [args[i] for i in wrt], upstream) if wrt else ()
    truth = running_error(ref, inputs, dtype=compute, upstream=upstream, wrt=wrt)
    k = K + 1 if compute == torch.float64 else K
    assert_within_bound(out, truth.value, truth.bound, k=k, msg=f"{msg} value")
    for i, g, want, bound in zip(wrt, grads, truth.grads, truth.grad_bounds):
        if want is None:  # no gradient in the reference: ours must be zero
            assert torch.count_nonzero(g) == 0, f"{msg} grad of input {i}: the reference has none"
            continue
        assert_within_bound(g, want, bound, k=k, msg=f"{msg} grad of input {i}")
    return out, grads
