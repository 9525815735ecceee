"""Benchmark cases for recon_nll and discretized_gaussian_nll: ours vs eager and torch.compile of
the reference, time (through the shared harness) and peak memory (``peak_memory`` below).

recon_nll at (64, 3, 64, 64): the eager reference materialises B*D*256 logits, 805 MB per float32
intermediate and several of them (more in the backward); it is slow but fits in a few GB of RAM.

Memory is measured, not estimated: each (case, provider) runs in a fresh Python process, one
warm-up call (which also compiles torch.compile providers), then the resident-set high-water mark
is reset (``/proc/self/clear_refs`` = 5, Linux >= 4.0) and one more call is made; the figure is
VmHWM - VmRSS before the call, i.e. the peak of extra resident memory of that call, including the
output and every temporary (tracemalloc cannot see torch's allocations). On CUDA the same is
read from torch.cuda.max_memory_allocated. Memory glibc kept from the warm-up and reuses is not
counted again; allocations above glibc's mmap threshold (all large temporaries) are returned to
the OS on free, so they are.
"""

from __future__ import annotations

import math
import json
import subprocess
import sys

import torch

from .. import backends, reference
from ..ops.discretized_gaussian_nll import discretized_gaussian_nll
from ..ops.recon_nll import recon_nll
from .harness import Case, rss_kib

SHAPES = [(64, 3, 64, 64), (16, 4, 64, 64), (256, 3, 32, 32)]
QUICK_SHAPES = [(4, 3, 32, 32)]
# sigma_0 at VDM's gamma_min = -13.3 (a 5-bin window), and a large one where all 256 bins count.
SIGMAS = {"vdm sigma_0": 1.3e-3, "sigma_0=0.3": 0.3}


def _recon_inputs(shape, device, sigma, requires_grad):
    torch.manual_seed(0)
    k = torch.randint(0, 256, shape, device=device)
    x0 = 2 * (k + 0.5) / 256 - 1
    s = torch.full((shape[0],), sigma, device=device)
    a = torch.sqrt(1 - s**2)
    z0 = a[:, None, None, None] * x0 + s[:, None, None, None] * torch.randn(shape, device=device)
    return x0, z0.requires_grad_(requires_grad), a.requires_grad_(requires_grad), s.requires_grad_(requires_grad)


def _dgauss_inputs(shape, device, requires_grad):
    torch.manual_seed(0)
    x0 = torch.randint(0, 256, shape, device=device) / 127.5 - 1
    mean = (x0 + 0.05 * torch.randn(shape, device=device)).requires_grad_(requires_grad)
    log_scale = (-4 + torch.rand(shape, device=device)).requires_grad_(requires_grad)
    return x0, mean, log_scale


def _ours(device, op):
    return [b for b in backends.available(device, op)
            if b != "reference" and not (b == "triton" and device == "cpu")]  # interpreter: not a benchmark


def _providers(kind, shape, device, variant, compiled):
    """name -> zero-argument callable for one case; ``kind`` is recon / recon_fwd_bwd / dgauss / dgauss_fwd_bwd."""
    out = {}
    if kind.startswith("recon"):
        bwd = kind.endswith("fwd_bwd")
        x0, z0, a, s = _recon_inputs(shape, device, SIGMAS[variant], bwd)
        fns = {f"vdm_fast[{b}]": (lambda *t, b=b: recon_nll(*t, backend=b)) for b in _ours(device, "recon_nll")}
        fns["eager"] = reference.recon_nll
        fns["torch.compile"] = compiled["recon"]
        for name, fn in fns.items():
            if bwd:
                out[name] = lambda fn=fn: torch.autograd.grad(fn(x0, z0, a, s).sum(), (z0, a, s))
            else:
                out[name] = lambda fn=fn: fn(x0, z0, a, s)
        return out
    bwd = kind.endswith("fwd_bwd")
    x0, mean, log_scale = _dgauss_inputs(shape, device, bwd)
    fns = {f"vdm_fast[{b}]": (lambda *t, b=b: discretized_gaussian_nll(*t, variant, backend=b))
           for b in _ours(device, "discretized_gaussian_nll")}
    fns["eager"] = lambda *t: reference.discretized_gaussian_nll(*t, variant)
    fns["torch.compile"] = lambda *t: compiled["dgauss"](*t, variant)
    for name, fn in fns.items():
        if bwd:
            out[name] = lambda fn=fn: torch.autograd.grad(fn(x0, mean, log_scale).sum(), (mean, log_scale))
        else:
            out[name] = lambda fn=fn: fn(x0, mean, log_scale)
    return out


def _compiled():
    return {"recon": torch.compile(reference.recon_nll, dynamic=False),
            "dgauss": torch.compile(reference.discretized_gaussian_nll, dynamic=False)}


def _bytes(kind, shape) -> int:
    n = 1
    for d in shape:
        n *= d
    # minimal traffic, float32: forward reads the inputs; the backward re-reads them and writes grads
    return 4 * n * {"recon": 2, "recon_fwd_bwd": 5, "dgauss": 3, "dgauss_fwd_bwd": 8}[kind]


CASES = [("recon", v) for v in SIGMAS] + [("recon_fwd_bwd", v) for v in SIGMAS] + \
        [("dgauss", "erf"), ("dgauss", "tanh"), ("dgauss_fwd_bwd", "erf"), ("dgauss_fwd_bwd", "tanh")]


def _window_bins(sigma: float) -> int:
    """Bins recon_nll sums per element at this sigma_0 (alpha_0 = sqrt(1 - sigma_0^2)) in float32:
    2W + 1, W the smallest with W (W + 1) >= 2 T / kappa, T = 40 (csrc/recon_nll_math.h)."""
    r = math.sqrt(1 - sigma**2) / (sigma * 128)
    need = 2 * 40.0 / (r * r)
    w = 0
    while w * (w + 1) < need and 2 * w + 1 < 256:
        w += 1
    return min(2 * w + 1, 256)


# exp/log evaluations per element of the float32 CPU kernels (the roofline's compute roof), for a
# forward and for forward + backward (the backward evaluates the forward's again, then its own).
# erf: exp(-log_scale), two log_ndtr (an exp and a log each), the exp and log1m of the bin mass;
# the backward adds the two densities' exps. tanh: exp(-log_scale), one exp per CDF, one log.
DGAUSS_TRANSCENDENTALS = {"erf": (7, 16), "tanh": (4, 8)}  # (forward, forward + backward)


def _transcendentals(kind: str, variant: str) -> float:
    if kind.startswith("recon"):
        per_call = _window_bins(SIGMAS[variant]) + 1  # an exp per bin, a log of the sum
        return 2 * per_call if kind.endswith("fwd_bwd") else per_call
    return DGAUSS_TRANSCENDENTALS[variant][1 if kind.endswith("fwd_bwd") else 0]


# The ops whose benchmarks this module writes by hand (vdm-fast bench derives the others').
OPS = ("recon_nll", "discretized_gaussian_nll")


def cases(device: str = "cpu", quick: bool = False) -> list[Case]:
    shapes = QUICK_SHAPES if quick else SHAPES
    compiled = _compiled()
    out = []
    for kind, variant in CASES:
        op = "recon_nll" if kind.startswith("recon") else "discretized_gaussian_nll"
        label_op = op + (" fwd+bwd" if kind.endswith("fwd_bwd") else "")
        for shape in shapes:
            providers = _providers(kind, shape, device, variant, compiled)
            ours = tuple(p for p in providers if p.startswith("vdm_fast"))
            out.append(Case(label_op, f"{tuple(shape)} fp32 {variant}", _bytes(kind, shape), providers,
                            device=device, elements=math.prod(shape), ours=ours,
                            transcendentals=_transcendentals(kind, variant)))
    return out


# --- peak memory, one fresh process per measurement -------------------------------------------


def _measure_here(kind: str, variant: str, shape, device: str, provider: str) -> int:
    fn = _providers(kind, shape, device, variant, _compiled())[provider]
    fn()  # warm-up (compiles torch.compile providers)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    import gc

    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset VmHWM to the current RSS
    before = rss_kib("VmRSS")
    result = fn()
    peak = rss_kib("VmHWM")
    del result
    return (peak - before) * 1024


def peak_memory(kind: str, variant: str, shape, device: str, provider: str) -> int:
    """Peak extra bytes of one call of ``provider`` (see the module docstring), in a fresh process."""
    code = ("import json,sys; from vdm_fast.bench.cases_recon import _measure_here; "
            "print(json.dumps(_measure_here(*json.loads(sys.argv[1]))))")
    args = json.dumps([kind, variant, list(shape), device, provider])
    res = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True, check=True)
    return int(json.loads(res.stdout.strip().splitlines()[-1]))


def memory_table(device: str = "cpu", quick: bool = False) -> list[dict]:
    rows = []
    for kind, variant in CASES:
        for shape in QUICK_SHAPES if quick else SHAPES:
            for provider in _providers(kind, shape, device, variant, {"recon": None, "dgauss": None}):
                rows.append({"case": kind, "variant": variant, "shape": list(shape), "provider": provider,
                             "peak_extra_bytes": peak_memory(kind, variant, shape, device, provider)})
    return rows


if __name__ == "__main__":  # python -m vdm_fast.bench.cases_recon [--quick]: the memory table as JSON
    for row in memory_table("cuda" if torch.cuda.is_available() else "cpu", quick="--quick" in sys.argv):
        print(json.dumps(row), flush=True)
