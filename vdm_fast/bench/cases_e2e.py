"""End-to-end benchmarks (``vdm-fast bench --e2e``; pytest-benchmark: benchmarks/bench_e2e.py).

Whole training and sampling steps with a real network, the stock loop against the same loop on
vdm_fast, timed side by side in one process (harness.time_interleaved: median per call,
providers interleaved round after round). Every case also times the network alone ("network
only": the same forward, backward with a fixed upstream gradient and optimizer step, or the same
forwards when sampling), so each side's fraction of step time spent outside the network is
(step - network only) / step. Where that difference is below the timing noise (the UNet cases),
the work outside the network is also timed on its own ("diffusers part" / "vdm_fast part": the
draws, noising and loss forward + backward to a fixed prediction; or the scheduler steps on a
fixed model output), and its share of the step is reported as part / step.

Cases (sizes chosen so that a step takes well under a few seconds on a 2-core CPU):

* ``train``: a diffusers ``UNet2DModel`` training step (noise and timesteps drawn, forward, loss,
  backward, AdamW step) at two sizes: "tiny" (32x32, 2 levels, 0.65M parameters, batch 16) and
  "10M" (32x32, (64, 128, 256) channels, attention at 16x16, ~10.3M parameters, batch 4).
  diffusers: ``DDPMScheduler.add_noise`` + ``F.mse_loss(pred, noise)``; vdm_fast:
  ``vdm_fast.q_sample`` + ``vdm_fast.sq_error`` (``/ D``, the same loss), alpha and sigma from
  ``DiscreteSchedule.linear(1000)`` (equal to diffusers' table).
* ``sample``: ``SAMPLE_STEPS`` steps of a sampling loop (``unet(x, t)`` under no_grad then
  ``scheduler.step``) with the same UNets: DDPM (1000-step schedule, clip_sample on, noise drawn)
  and DDIM (50-step schedule, eta = 0); diffusers' schedulers vs our drop-ins
  (``vdm_fast.integrations.diffusers``). Only the first ``SAMPLE_STEPS`` steps are timed.
* ``elbo``: a VDM continuous-time ELBO training step with the categorical decoder at 32x32x3
  (``VDMLoss(LearnedLinearGamma(), weighting="elbo")``, fused ops vs ``backend="reference"``),
  (1) with the network excluded (the model is ``z * w``, one scalar parameter, so that the
  gradient still flows through q_sample): the loss's forward + backward at batch 32; and (2) the
  whole step (forward, backward, Adam) with the demo's network scaled to 32x32: the demo's MLP
  trunk (Fourier log-SNR features, hidden 256, 3 residual blocks) with 3072 inputs and 3072
  outputs, ~1.8M parameters. The demo's per-pixel 256-value posterior head is left out: at 3072
  pixels it alone would be 201M parameters.
* ``+compile``: the elbo cases and the UNet training steps with ``torch.compile`` on both
  sides (each side's whole forward, network and loss, compiled as one function; backward through
  AOTAutograd; the optimizer step eager), and the tiny UNet's sampling loops with the UNet
  compiled (step() eager on both sides). The first call of each side, which compiles, is printed
  (Inductor's on-disk cache may make a second run's first calls shorter).

Peak memory (elbo cases): ``peak_memory`` runs each (case, provider) in a fresh process with
glibc's mmap threshold fixed at 64 KiB (``MALLOC_MMAP_THRESHOLD_=65536``: every buffer above
64 KiB is mmapped and returned to the OS when freed, so resident memory follows what is live);
after two warm-up steps it resets the resident high-water mark (``/proc/self/clear_refs`` = 5)
and reports VmHWM - VmRSS over one more step: the peak of extra resident memory during the step,
temporaries and autograd's saved tensors included, parameters and inputs (allocated before)
excluded. Granularity is a page; buffers under 64 KiB may come from the heap and not show.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .harness import rss_kib, time_interleaved

SAMPLE_STEPS = 10
QUICK_SAMPLE_STEPS = 2

UNETS = {
    # name: (UNet2DModel kwargs, training batch, sampling batch)
    "tiny": (dict(block_out_channels=(32, 64), layers_per_block=1, down_block_types=("DownBlock2D",) * 2,
                  up_block_types=("UpBlock2D",) * 2, norm_num_groups=8), 16, 16),
    "10M": (dict(block_out_channels=(64, 128, 256), layers_per_block=1,
                 down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D")), 4, 4),
}
ELBO_BATCH = 32
NOISE_FLOOR = 0.03  # below this share of a step, (step - network only) is not quoted as a ratio
ELBO_SHAPE = (3, 32, 32)


class Side:
    """One provider of a case: a zero-argument step; ``ours``/``baseline``/``network`` role."""

    def __init__(self, fn, role: str):
        self.fn, self.role = fn, role


# --- networks ------------------------------------------------------------------------------------


def _unet(name: str, seed: int = 0):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(sample_size=32, in_channels=3, out_channels=3, **UNETS[name][0])


class DemoTrunk(nn.Module):
    """The demo's denoiser trunk (vdm_fast/demo/model.py) at 32x32x3, unconditional, eps output."""

    def __init__(self, dim: int = 3 * 32 * 32, hidden: int = 256, depth: int = 3, embed: int = 64):
        super().__init__()
        from ..demo.model import FourierFeatures

        self.time = FourierFeatures(embed)
        self.inp = nn.Linear(dim + embed, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, z, log_snr):
        from .. import parameterization

        alpha2, sigma2 = (c[:, None] for c in parameterization.alpha_sigma_squared(-log_snr))
        zf = z.reshape(z.shape[0], -1)
        h = self.inp(torch.cat([zf * torch.rsqrt(alpha2 * 0.25 + sigma2), self.time(log_snr)], dim=1))
        for block in self.blocks:
            h = h + block(h)
        return self.out(h).reshape(z.shape)


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- (a) diffusers UNet training step --------------------------------------------------------------


def train_case(size: str, device: str = "cpu", compiled: bool = False) -> dict:
    from diffusers import DDPMScheduler

    import vdm_fast
    from ..schedules import DiscreteSchedule

    batch = UNETS[size][1]
    unet = _unet(size).to(device)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    theirs = DDPMScheduler(num_train_timesteps=1000)
    table = DiscreteSchedule.linear(1000)
    gen = torch.Generator(device).manual_seed(0)
    x0 = (torch.rand(batch, 3, 32, 32, generator=gen, device=device) * 2 - 1)
    fixed_t = torch.randint(0, 1000, (batch,), generator=gen, device=device)
    upstream = torch.randn(x0.shape, generator=gen, device=device) / x0.numel()

    def draw():
        return torch.randn(x0.shape, device=device), torch.randint(0, 1000, (batch,), device=device)

    def finish(loss):
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def diffusers_loss(noise, t):
        noisy = theirs.add_noise(x0, noise, t)
        return F.mse_loss(unet(noisy, t).sample, noise)

    def vdm_fast_loss(noise, t):
        alpha, sigma = table.alpha_sigma(t)
        z = vdm_fast.q_sample(x0, alpha, sigma, noise)
        pred = unet(z, t).sample
        return vdm_fast.sq_error(pred, x0, noise, alpha, sigma, "eps").mean() / x0[0].numel()

    def make(loss_fn):
        fwd = torch.compile(loss_fn) if compiled else loss_fn  # network and loss compiled together
        return lambda: finish(fwd(*draw()))

    net = torch.compile(unet) if compiled else unet
    pred = torch.randn(x0.shape, generator=gen, device=device).requires_grad_()

    def part(loss_fn):  # the same step's work outside the network: draw, noise, loss fwd+bwd to pred
        def run():
            pred.grad = None
            loss_fn(*draw()).backward()
        return run

    def diffusers_part(noise, t):
        theirs.add_noise(x0, noise, t)
        return F.mse_loss(pred, noise)

    def vdm_fast_part(noise, t):
        alpha, sigma = table.alpha_sigma(t)
        vdm_fast.q_sample(x0, alpha, sigma, noise)
        return vdm_fast.sq_error(pred, x0, noise, alpha, sigma, "eps").mean() / x0[0].numel()

    def network_only():
        opt.zero_grad(set_to_none=True)
        net(x0, fixed_t).sample.backward(upstream)
        opt.step()

    tag = " torch.compile" if compiled else ""
    return dict(group="train" + ("+compile" if compiled else ""),
                label=f"UNet2DModel {size} ({_params(unet) / 1e6:.2f}M) B={batch} 32x32{tag}",
                sides={"diffusers": Side(make(diffusers_loss), "baseline"), "vdm_fast": Side(make(vdm_fast_loss), "ours"),
                       "network only": Side(network_only, "network"),
                       "diffusers part": Side(part(diffusers_part), "baseline part"),
                       "vdm_fast part": Side(part(vdm_fast_part), "ours part")})


# --- (b) sampling loop -----------------------------------------------------------------------------


def sample_case(size: str, kind: str, steps: int, device: str = "cpu", compiled: bool = False) -> dict:
    import diffusers

    from ..integrations import diffusers as ours

    batch = UNETS[size][2]
    unet = _unet(size).to(device).eval()
    if compiled:  # the network compiled (shared by both sides); step() stays eager on both
        unet = torch.compile(unet)
    n_sched = 1000 if kind == "DDPMScheduler" else 50
    theirs = getattr(diffusers, kind)(num_train_timesteps=1000)
    mine = getattr(ours, kind)(num_train_timesteps=1000)
    theirs.set_timesteps(n_sched)
    mine.set_timesteps(n_sched)
    timesteps = [int(t) for t in theirs.timesteps[:steps]]
    assert timesteps == [int(t) for t in mine.timesteps[:steps]]
    start = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
    kw = {"eta": 0.0} if kind == "DDIMScheduler" else {}

    def loop(sched):
        gen = torch.Generator(device).manual_seed(1)
        x = start
        with torch.no_grad():
            for t in timesteps:
                x = sched.step(unet(x, t).sample, t, x, generator=gen, **kw).prev_sample
        return x

    def network_only():
        with torch.no_grad():
            for t in timesteps:
                unet(start, t)

    fixed_out = torch.randn(start.shape, generator=torch.Generator().manual_seed(2)).to(device)

    def steps_only(sched):  # the loop without the network: the same steps on a fixed model output
        gen = torch.Generator(device).manual_seed(1)
        x = start
        for t in timesteps:
            x = sched.step(fixed_out, t, x, generator=gen, **kw).prev_sample
        return x

    return dict(group="sample" + ("+compile" if compiled else ""),
                label=f"{kind} ({n_sched}-step schedule), first {steps} steps, UNet {size} B={batch}"
                      + (" torch.compile (UNet)" if compiled else ""),
                sides={"diffusers": Side(lambda: loop(theirs), "baseline"), "vdm_fast": Side(lambda: loop(mine), "ours"),
                       "network only": Side(network_only, "network"),
                       "diffusers part": Side(lambda: steps_only(theirs), "baseline part"),
                       "vdm_fast part": Side(lambda: steps_only(mine), "ours part")})


# --- (c) VDM ELBO step with the categorical decoder ------------------------------------------------


def elbo_case(network: str, device: str = "cpu", compiled: bool = False, batch: int = ELBO_BATCH) -> dict:
    from ..elbo import VDMLoss
    from ..schedules import LearnedLinearGamma

    gen = torch.Generator().manual_seed(0)
    x0 = (2 * (torch.randint(0, 256, (batch, *ELBO_SHAPE), generator=gen) + 0.5) / 256 - 1).to(device)
    losses = {side: VDMLoss(LearnedLinearGamma(), weighting="elbo", backend=backend).to(device)
              for side, backend in (("vdm_fast", None), ("reference", "reference"))}
    torch.manual_seed(0)
    if network == "none":
        w = nn.Parameter(torch.ones((), device=device))
        net = lambda z, log_snr: z * w  # noqa: E731
        params = [w]
        label = f"ELBO loss fwd+bwd, network excluded (model = z*w), B={batch} 3x32x32"
    else:
        trunk = DemoTrunk().to(device)
        net = trunk
        params = list(trunk.parameters())
        label = f"ELBO step, demo MLP trunk at 32x32 ({_params(trunk) / 1e6:.2f}M), B={batch}"
    call_net = torch.compile(net) if compiled and network != "none" else net
    opt = torch.optim.Adam(params + [p for l in losses.values() for p in l.parameters()], lr=1e-4) \
        if network != "none" else None

    def make(loss_fn):
        def step_loss():
            return loss_fn(lambda z, t: call_net(z, -loss_fn.schedule.gamma(t)), x0)

        fwd = torch.compile(step_loss) if compiled else step_loss

        def step():
            for p in params + list(loss_fn.parameters()):
                p.grad = None
            fwd().backward()
            if opt is not None:
                opt.step()
        return step

    fixed_t = torch.rand(batch, generator=gen).to(device)
    sched = losses["vdm_fast"].schedule
    upstream = torch.randn(x0.shape, generator=gen).to(device)

    def network_only():
        for p in params:
            p.grad = None
        with torch.no_grad():
            log_snr = -sched.gamma(fixed_t)
        call_net(x0, log_snr).backward(upstream)
        if opt is not None:
            opt.step()

    if compiled:
        label += " torch.compile"
    return dict(group="elbo" + ("+compile" if compiled else ""), label=label,
                sides={"reference": Side(make(losses["reference"]), "baseline"),
                       "vdm_fast": Side(make(losses["vdm_fast"]), "ours"),
                       "network only": Side(network_only, "network")})


# --- the case list, timing, report -----------------------------------------------------------------


def case_specs(quick: bool = False) -> list[tuple]:
    """(builder name, args) of every e2e case; builders are looked up in this module by name, so a
    fresh process can rebuild a case (peak_memory)."""
    steps = QUICK_SAMPLE_STEPS if quick else SAMPLE_STEPS
    sizes = ["tiny"] if quick else ["tiny", "10M"]
    specs = [("train_case", (s,)) for s in sizes]
    specs += [("sample_case", (s, k, steps)) for s in sizes for k in ("DDPMScheduler", "DDIMScheduler")]
    specs += [("elbo_case", ("none",)), ("elbo_case", ("demo",))]
    specs += [("elbo_case", ("none", "cpu", True)), ("elbo_case", ("demo", "cpu", True)),
              ("train_case", ("tiny", "cpu", True))]
    if not quick:
        specs += [("train_case", ("10M", "cpu", True))]
    specs += [("sample_case", ("tiny", k, steps, "cpu", True)) for k in ("DDPMScheduler", "DDIMScheduler")]
    return specs


# Cases not run with torch.compile, and why (printed by ``vdm-fast bench --e2e``).
COMPILE_SKIPPED = [
    "sample loops, 10M UNet + torch.compile: not run (the compiled tiny-UNet loops show the effect; "
    "compiling the 10M UNet was left out to keep the run short). In the compiled sampling cases only "
    "the UNet is compiled: diffusers' and our step() are Python with per-call branching and run eagerly.",
]


def build(spec, device: str = "cpu") -> dict:
    name, args = spec
    args = list(args)
    if name != "sample_case" and len(args) >= 2:
        args[1] = device
    if name == "sample_case":
        return sample_case(*args[:3], device=device, compiled=len(args) > 4 and args[4] is True)
    return globals()[name](*args)


def run_case(case: dict, min_time: float) -> dict:
    """Warm up each side (timing the first call: the compile time under torch.compile), then time
    all sides interleaved; returns medians and the derived ratios."""
    first = {}
    for name, side in case["sides"].items():
        t0 = time.perf_counter()
        side.fn()
        first[name] = time.perf_counter() - t0
    sec = time_interleaved({n: s.fn for n, s in case["sides"].items()}, "cpu", min_time, warmup=1)
    roles = {s.role: n for n, s in case["sides"].items()}
    base, ours, net = sec[roles["baseline"]], sec[roles["ours"]], sec[roles["network"]]
    row = {"group": case["group"], "case": case["label"], "baseline": roles["baseline"], "seconds": sec,
            "first_call_s": first, "speedup": base / ours,
            "outside_network": {roles["baseline"]: max(0.0, (base - net) / base), roles["ours"]: max(0.0, (ours - net) / ours)},
            "non_network_speedup": (base - net) / (ours - net) if ours > net else float("inf")}
    if "ours part" in roles:  # the non-network work timed on its own: a direct, less noisy figure
        bp, op = sec[roles["baseline part"]], sec[roles["ours part"]]
        row["part_speedup"] = bp / op
        row["part_fraction"] = {roles["baseline"]: bp / base, roles["ours"]: op / ours}
    return row


def format_rows(rows: list[dict]) -> str:
    out = []
    for r in rows:
        out.append(f"[{r['group']}] {r['case']}")
        b = r["baseline"]
        for name, s in r["seconds"].items():
            frac = r["outside_network"].get(name)
            extra = f"  outside network {100 * frac:5.1f} %" if frac is not None else ""
            out.append(f"    {name:<14} {1e3 * s:10.2f} ms  (first call {r['first_call_s'][name]:.1f} s){extra}")
        nn_ = r["non_network_speedup"]
        # (step - network only) is a difference of two noisy medians: below ~3 % of the step it is noise
        noisy = min(r["outside_network"].values()) < NOISE_FLOOR or not math.isfinite(nn_)
        out.append(f"    step: vdm_fast {r['speedup']:.2f}x {b}; outside the network (step - network only): "
                   + (f"below the timing noise (< {100 * NOISE_FLOOR:.0f} % of a step)" if noisy else f"{nn_:.2f}x"))
        if "part_speedup" in r:
            pf = r["part_fraction"]
            out.append(f"    outside-network work timed alone: vdm_fast {r['part_speedup']:.2f}x {b}; "
                       + ", ".join(f"{k} {100 * v:.2f} % of its step" for k, v in pf.items()))
        if "peak_mib" in r:
            pk = r["peak_mib"]
            out.append("    peak extra RSS: " + ", ".join(f"{k} {v:.1f} MiB" for k, v in pk.items())
                       + (f"; vdm_fast/{b} = {pk['vdm_fast'] / pk[b]:.3f}" if pk.get(b) else ""))
    return "\n".join(out)


# --- peak memory (fresh process per measurement) ---------------------------------------------------


def _measure_here(spec, provider: str) -> int:
    import gc

    fn = build((spec[0], tuple(spec[1])))["sides"][provider].fn
    fn()
    fn()
    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    before = rss_kib("VmRSS")
    fn()
    return (rss_kib("VmHWM") - before) * 1024


def peak_memory(spec, provider: str, mmap_threshold: int = 65536) -> int:
    code = ("import json,sys,warnings; warnings.simplefilter('ignore'); "
            "from vdm_fast.bench.cases_e2e import _measure_here; "
            "print(json.dumps(_measure_here(*json.loads(sys.argv[1]))))")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(mmap_threshold))
    res = subprocess.run([sys.executable, "-c", code, json.dumps([[spec[0], list(spec[1])], provider])],
                         capture_output=True, text=True, check=True, env=env)
    return int(json.loads(res.stdout.strip().splitlines()[-1]))


def main(quick: bool = False, min_time: float | None = None, out: str | None = None, device: str = "cpu",
         memory: bool = True) -> list[dict]:
    if device != "cpu":
        print("vdm-fast bench --e2e: only --device cpu is wired up (no GPU was available to test the GPU path)")
        device = "cpu"
    min_time = min_time if min_time is not None else (0.2 if quick else 2.0)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for spec in case_specs(quick):
            case = build(spec, device)
            print(f"  timing {case['label']} ...", flush=True)
            row = run_case(case, min_time)
            if memory and spec[0] == "elbo_case":
                row["peak_mib"] = {p: peak_memory(spec, p) / 2**20 for p in case["sides"] if p != "network only"}
            rows.append(row)
            print(format_rows([row]), flush=True)
            del case
    print(f"\nvdm-fast bench --e2e on {torch.get_num_threads()} CPU threads, torch {torch.__version__}; "
          "median per call, sides interleaved")
    print(format_rows(rows))
    for reason in COMPILE_SKIPPED:
        print("skipped: " + reason)
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "e2e.json"), "w") as fh:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows,
                       "skipped": COMPILE_SKIPPED}, fh, indent=1)
        print(f"wrote {os.path.join(out, 'e2e.json')}")
    return rows


# vdm-fast bench's op discovery skips this module (cli.case_modules); it runs only with --e2e.
OPS = ()
