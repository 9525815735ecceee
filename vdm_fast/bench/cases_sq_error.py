"""Benchmark cases for sq_error: ours (each built backend) vs eager and torch.compile of the reference.

Three kinds of case, all forward + backward (what training runs):
- ``sq_error``: the op alone, grads to pred only (the model output), as in a training loss;
- ``loss_step``: one whole diffusion training-loss step without the model: z_t = q_sample(x0,
  alpha, sigma, noise) (the model's input) and loss = sq_error(pred, x0, noise, alpha, sigma).mean(),
  backward to pred (grads to x0 and noise are not needed). Nothing links pred to z_t here, so
  torch.compile may fuse q_sample into the loss, which no training step allows;
- the same step with a stand-in network between, pred = w * z_t with a learnable per-sample w,
  backward to w: the order a training step imposes. The stand-in (``_stand_in_net``) is a C++ op
  torch.compile cannot see into, as a network's convolutions are extern kernels it cannot fuse
  across; its cost is the same for every provider.
"""

from __future__ import annotations

import math
import torch

from .. import _library, backends, reference
from ..ops.q_sample import q_sample
from ..ops.sq_error import sq_error
from .harness import Case

SHAPES = [(64, 3, 64, 64), (16, 4, 64, 64), (256, 3, 32, 32)]
QUICK_SHAPES = [(16, 3, 32, 32)]
# The target decides how much data is read: eps and score read pred, noise; x0 reads pred, x0;
# v reads all three.
TENSORS_READ = {"eps": 2, "x0": 2, "v": 3, "score": 2}


def _ours(device: str) -> list[str]:
    # The Triton interpreter is a correctness tool, not a benchmark.
    found = backends.available(device, "sq_error")
    return [b for b in found if b != "reference" and not (b == "triton" and device == "cpu")]


def _inputs(shape, device):
    x0 = torch.randn(shape, device=device)
    noise = torch.randn(shape, device=device)
    pred = torch.randn(shape, device=device, requires_grad=True)
    alpha = 0.1 + 0.9 * torch.rand(shape[0], device=device)
    sigma = (1 - alpha**2).sqrt()
    return pred, x0, noise, alpha, sigma


def _sq_error_case(shape, device: str, target: str, compiled_ref) -> Case:
    # Built in its own scope so every provider closes over this case's tensors.
    pred, x0, noise, alpha, sigma = _inputs(shape, device)
    upstream = torch.rand(shape[0], device=device)

    def fwd_bwd(fn):
        return lambda: torch.autograd.grad(fn(pred, x0, noise, alpha, sigma, target), pred, upstream)

    providers, ours = {}, []
    for backend in _ours(device):
        name = f"vdm_fast[{backend}]"
        providers[name] = fwd_bwd(lambda *a, b=backend: sq_error(*a, backend=b))
        ours.append(name)
    providers["eager"] = fwd_bwd(reference.sq_error)
    providers["torch.compile"] = fwd_bwd(compiled_ref)
    # Minimal traffic: forward reads its tensors; backward reads them again and writes grad_pred.
    nbytes = (2 * TENSORS_READ[target] + 1) * pred.numel() * pred.element_size()
    return Case("sq_error", f"{tuple(shape)} fp32 {target} fwd+bwd", nbytes, providers, device=device, elements=math.prod(shape),
                ours=tuple(ours))


def _reference_loss_step(pred, x0, noise, alpha, sigma):
    z = reference.q_sample(x0, alpha, sigma, noise)
    return z, reference.sq_error(pred, x0, noise, alpha, sigma, "eps").mean()


def _loss_step_case(shape, device: str, compiled_step) -> Case:
    pred, x0, noise, alpha, sigma = _inputs(shape, device)

    def run(step):
        def call():
            z, loss = step(pred, x0, noise, alpha, sigma)
            return z, torch.autograd.grad(loss, pred)
        return call

    providers, ours = {}, []
    for backend in _ours(device):
        def step(pred, x0, noise, alpha, sigma, b=backend):
            z = q_sample(x0, alpha, sigma, noise, backend=b)
            return z, sq_error(pred, x0, noise, alpha, sigma, "eps", backend=b).mean()
        providers[f"vdm_fast[{backend}]"] = run(step)
        ours.append(f"vdm_fast[{backend}]")
    providers["eager"] = run(_reference_loss_step)
    providers["torch.compile"] = run(compiled_step)
    # q_sample: read x0, noise, write z; sq_error eps: read pred, noise twice, write grad_pred.
    nbytes = (3 + 5) * pred.numel() * pred.element_size()
    return Case("loss_step", f"{tuple(shape)} fp32 q_sample+sq_error fwd+bwd", nbytes, providers, device=device, elements=math.prod(shape),
                ours=tuple(ours))


def _stand_in_net(z, w, zero):
    """The network of the loss step with a network: pred = w * z per sample, as the native CPU
    q_sample op (w * z + 0 * z): a C++ op with a C++ autograd node, as a network's layers are, and
    opaque to torch.compile, as their convolutions (extern kernels) are. The same op for every
    provider; its backward gives w's gradient, a per-sample sum of grad * z."""
    return torch.ops.vdm_fast.q_sample(z, w, zero, z)


def _reference_net_step(w, zero, x0, noise, alpha, sigma):
    pred = _stand_in_net(reference.q_sample(x0, alpha, sigma, noise), w, zero)
    return reference.sq_error(pred, x0, noise, alpha, sigma, "eps").mean()


def _loss_step_net_case(shape, device: str) -> Case:
    _, x0, noise, alpha, sigma = _inputs(shape, device)
    w = torch.ones(shape[0], device=device, requires_grad=True)
    zero = torch.zeros(shape[0], device=device)

    def run(step):
        return lambda: torch.autograd.grad(step(w, zero, x0, noise, alpha, sigma), w)

    providers, ours = {}, []
    for backend in _ours(device):
        def step(w, zero, x0, noise, alpha, sigma, b=backend):
            pred = _stand_in_net(q_sample(x0, alpha, sigma, noise, backend=b), w, zero)
            return sq_error(pred, x0, noise, alpha, sigma, "eps", backend=b).mean()
        providers[f"vdm_fast[{backend}]"] = run(step)
        ours.append(f"vdm_fast[{backend}]")
    providers["eager"] = run(_reference_net_step)
    providers["torch.compile"] = run(torch.compile(_reference_net_step, dynamic=False))
    # As loss_step (8 passes), plus the stand-in's forward (read z twice, write pred) and its
    # backward (read z and grad_pred).
    nbytes = (8 + 5) * x0.numel() * x0.element_size()
    return Case("loss_step", f"{tuple(shape)} fp32 q_sample, net, sq_error fwd+bwd", nbytes, providers,
                device=device, elements=math.prod(shape), ours=tuple(ours))


# The ops whose benchmarks this module writes by hand (vdm-fast bench derives the others').
OPS = ("sq_error",)


def cases(device: str = "cpu", quick: bool = False) -> list[Case]:
    shapes = QUICK_SHAPES if quick else SHAPES
    compiled_ref = torch.compile(reference.sq_error, dynamic=False)
    compiled_step = torch.compile(_reference_loss_step, dynamic=False)
    out = [_sq_error_case(shape, device, "eps", compiled_ref) for shape in shapes]
    if not quick:
        out.append(_sq_error_case(shapes[0], device, "v", compiled_ref))
    out += [_loss_step_case(shape, device, compiled_step) for shape in shapes]
    if not quick and _library.has_native_kernel("q_sample", torch.device(device).type.upper()):  # the stand-in
        out += [_loss_step_net_case(shape, device) for shape in shapes]
    return out
