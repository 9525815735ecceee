"""Derivatives above first order for every fused op (DESIGN.md §4.12).

The fused kernels compute an op's value and its first derivatives (the fused backward). Everything
else — forward-mode AD (``torch.func.jvp``, ``jacfwd``, ``torch.autograd.forward_ad``) and a
backward that is itself differentiated (``create_graph=True``: double backward, gradient penalties,
Hessian-vector products) — runs the op's *composite twin*: the reference formula on the native op's
arguments, which PyTorch differentiates in every mode. The twin is exact (it is the oracle every
kernel is tested against) and slower, and it is used only where the fused path cannot answer: the
first-order path never leaves the fused kernels.

Where the twin runs:

- native ops (C++): their Autograd kernels (csrc/autograd.h) call the dispatcher ops
  ``vdm_fast::<op>_composite`` (a forward whose input carries a tangent) and
  ``vdm_fast::<op>_backward_composite`` (a backward called with grad mode on and an input that
  requires grad, or with a tangent), registered here as CompositeImplicitAutograd kernels;
- Triton ops: their autograd (vdm_fast/ops/_spec.py) calls :func:`backward` when grad mode is on in
  the backward, and the public call runs :func:`forward` when an input carries a tangent or needs
  an autograd node inside a torch.func transform (:func:`needs_composite`).

A tensor argument that is not differentiable (the data of the NLL ops, a seed) is a constant of the
twin, as it is of the fused backward. An op with no derivative at all (reverse_step) raises on a
tangent rather than returning zeros.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD

_LIB = torch.library.Library("vdm_fast", "FRAGMENT")  # noqa: TOR901 - the composite twins' definitions


def forward(spec):
    """The composite twin of ``spec`` (an OpSpec)'s forward: native arguments -> the op's outputs."""
    constant = [not a.grad for a in spec.native_args()]

    def composite(*args):
        # The value checks the native CPU op makes itself (csrc/cpu/value_checks.h) and the public
        # call therefore leaves to it: the twin replaces that op under torch.func transforms and
        # forward mode, so it makes them too.
        spec.check_values(args)
        args = [a.detach() if c and isinstance(a, torch.Tensor) else a for a, c in zip(args, constant)]
        return spec.reference(*args)

    return composite


def backward(spec):
    """The composite twin of ``spec``'s fused backward, same arguments and results
    (``grad, *native_args, mask`` -> one gradient per differentiable argument, empty where the mask
    says no): the vector-Jacobian product of the reference, differentiable in ``grad`` and in every
    argument, to any order."""
    run = forward(spec)
    positions = spec.differentiable

    def composite(grad, *args):
        *args, mask = args
        wanted = [i for i, want in zip(positions, mask) if want]

        def of_wanted(*values):
            full = list(args)
            for i, v in zip(wanted, values):
                full[i] = v
            out = run(*full)
            return out[0] if isinstance(out, tuple) else out

        grads = iter(())
        if wanted:
            # torch.func.vjp rather than torch.autograd.grad: it composes with the caller's autograd
            # (create_graph) and with enclosing torch.func transforms alike.
            _, vjp = torch.func.vjp(of_wanted, *(args[i] for i in wanted))
            grads = iter(vjp(grad))
        return tuple(next(grads) if want else args[i].new_empty(0) for i, want in zip(positions, mask))

    return composite


def register_native(spec) -> None:
    """Define ``vdm_fast::<op>_composite`` (and ``<op>_backward_composite``) with the native ops'
    schemas, for the C++ Autograd kernels to call (csrc/autograd.h)."""
    pairs = [(spec.name, forward(spec))]
    if spec.has_backward:
        pairs.append((f"{spec.name}_backward", backward(spec)))
    for name, fn in pairs:
        schema = str(getattr(torch.ops.vdm_fast, name).default._schema)
        _LIB.define(schema.replace(f"vdm_fast::{name}(", f"{name}_composite(", 1))
        _LIB.impl(f"{name}_composite", fn, "CompositeImplicitAutograd")


def has_tangent(args) -> bool:
    """Whether a tensor among ``args`` carries a forward-mode tangent (torch.autograd.forward_ad,
    or torch.func.jvp, which opens a dual level too). Free when no dual level is open."""
    if fwAD._current_level < 0:
        return False
    return any(isinstance(a, torch.Tensor) and torch._unpack_dual(a, 0).tangent is not None for a in args)


def needs_composite(args) -> bool:
    """Whether a call of a Python-level implementation (the Triton ops) must run the composite
    twin: an input carries a tangent, or it needs an autograd node inside a torch.func transform
    (grad, vjp, vmap), where PyTorch refuses torch.library's autograd Function."""
    if has_tangent(args):
        return True
    return (torch._C._functorch.peek_interpreter_stack() is not None and torch.is_grad_enabled()
            and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args))


def reject_tangent(name: str, arg_names, args) -> None:
    """An op without derivatives (reverse_step) refuses a tangent instead of dropping it."""
    if fwAD._current_level < 0:
        return
    for arg_name, a in zip(arg_names, args):
        if isinstance(a, torch.Tensor) and torch._unpack_dual(a, 0).tangent is not None:
            raise NotImplementedError(
                f"vdm_fast::{name}: {arg_name} carries a forward-mode tangent (torch.func.jvp, "
                f"torch.autograd.forward_ad), but {name} is inference-only and has no derivative; pass the primal")
