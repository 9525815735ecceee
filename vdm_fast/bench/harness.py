"""Timing, bandwidth and reporting for the op benchmarks.

Timing: each provider is warmed up (which also compiles torch.compile providers), then run in
repeated batches until ``min_time`` seconds have passed; the figure is the median time per call
over the batches. Providers of one case are timed interleaved, round after round, so that
frequency or co-tenant noise hits them alike.

Bandwidth: the triad ``a = b + s * c`` (torch.add with out=, all threads) on tensors of the
case's working-set size, timed the same way in the same run, is the reference "achievable" GB/s.

Roofline (ns per element): the larger of the memory time (the case's minimal bytes per element at
the triad's GB/s) and the compute time (the transcendentals per element the kernel evaluates, at
the cost of one vectorised float32 exp measured in the same run: vdm_fast's own exp over an
L2-resident array, per core, divided by the threads). "%roof" is the roofline over our time.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class Case:
    """One benchmark: an op at one shape/dtype, with several implementations ("providers")."""

    op: str
    label: str
    bytes_moved: int  # minimal bytes read + written by one call (the roofline's numerator)
    providers: dict[str, Callable[[], object]]
    device: str = "cpu"
    ours: tuple[str, ...] = ()  # provider names that are vdm_fast implementations
    baselines: tuple[str, ...] = ("eager", "torch.compile", "diffusers")
    working_set_bytes: int = 0  # for the triad; defaults to bytes_moved
    elements: int = 0  # data elements per call (B x D): the roofline's denominator; 0: no roofline
    transcendentals: float = 0.0  # exp/log evaluations per element by the kernel (the compute roof)


@dataclass
class Result:
    case: Case
    seconds: dict[str, float] = field(default_factory=dict)
    triad_gbps: float = float("nan")
    exp_ns: float = float("nan")  # one float32 exp with all threads, ns (this run's measurement)
    errors: dict[str, str] = field(default_factory=dict)

    def gbps(self, provider: str) -> float:
        return self.case.bytes_moved / self.seconds[provider] / 1e9

    def roof_ns(self) -> float | None:
        """The roofline in ns per element (module docstring), None without an element count."""
        case = self.case
        if not case.elements or self.triad_gbps != self.triad_gbps:
            return None
        memory = case.bytes_moved / case.elements / self.triad_gbps  # bytes / (GB/s) = ns
        compute = case.transcendentals * self.exp_ns if case.transcendentals else 0.0
        return max(memory, compute) if compute == compute else memory

    def rows(self) -> list[dict]:
        out = []
        for name, sec in self.seconds.items():
            row = {
                "op": self.case.op,
                "case": self.case.label,
                "provider": name,
                "us": sec * 1e6,
                "gbps": self.gbps(name),
                "pct_triad": 100 * self.gbps(name) / self.triad_gbps if self.triad_gbps == self.triad_gbps else None,
            }
            roof = self.roof_ns()
            if roof is not None:
                row["ns_per_element"] = sec * 1e9 / self.case.elements
                row["roof_ns_per_element"] = roof
                row["pct_roof"] = 100 * roof / row["ns_per_element"]
            for base in self.case.baselines:
                if base in self.seconds and name != base:
                    row[f"speedup_vs_{base}"] = self.seconds[base] / sec
            out.append(row)
        for name, err in self.errors.items():
            out.append({"op": self.case.op, "case": self.case.label, "provider": name, "error": err})
        return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _calls_per_batch(fn, device: str, target: float = 0.02) -> int:
    t0 = time.perf_counter()
    fn()
    _sync(device)
    once = max(time.perf_counter() - t0, 1e-7)
    return max(1, min(10_000, int(target / once)))


def time_interleaved(providers: dict[str, Callable], device: str, min_time: float, warmup: int = 3) -> dict[str, float]:
    """Median seconds per call of each provider, timed in interleaved rounds."""
    for fn in providers.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    per_batch = {name: _calls_per_batch(fn, device) for name, fn in providers.items()}
    samples: dict[str, list[float]] = {name: [] for name in providers}
    deadline = time.perf_counter() + min_time * len(providers)
    rounds = 0
    while rounds < 5 or (time.perf_counter() < deadline and rounds < 200):
        for name, fn in providers.items():
            n = per_batch[name]
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            _sync(device)
            samples[name].append((time.perf_counter() - t0) / n)
        rounds += 1
    return {name: statistics.median(s) for name, s in samples.items()}


def triad_gbps(working_set_bytes: int, device: str, min_time: float) -> float:
    """GB/s of a = b + s*c over three float32 tensors that together hold ``working_set_bytes``."""
    n = max(1024, working_set_bytes // 12)
    b = torch.randn(n, device=device)
    c = torch.randn(n, device=device)
    a = torch.empty(n, device=device)
    sec = time_interleaved({"triad": lambda: torch.add(b, c, alpha=0.5, out=a)}, device, min_time)["triad"]
    return 12 * n / sec / 1e9


def exp_ns(device: str, min_time: float) -> float:
    """ns per float32 exp with all threads: vdm_fast's vectorised exp (csrc/cpu/fast_math.h, a
    one-thread loop) over 64 Ki L2-resident floats, divided by the threads; NaN where that op is not
    built or the device is not the CPU (the roofline is then the memory roof alone)."""
    from .. import _library

    if not device.startswith("cpu") or not _library.has_native_kernel("fast_math", "CPU"):
        return float("nan")
    x = torch.randn(1 << 16)
    sec = time_interleaved({"exp": lambda: torch.ops.vdm_fast.fast_math("exp", x)}, device, min_time)["exp"]
    return sec * 1e9 / x.numel() / torch.get_num_threads()


def run(cases: list[Case], min_time: float = 0.3, progress: Callable[[str], None] | None = None) -> list[Result]:
    results = []
    exp_cost = {}  # per device
    for case in cases:
        if progress:
            progress(f"{case.op} {case.label}")
        res = Result(case)
        runnable = {}
        for name, fn in case.providers.items():
            try:
                fn()
                runnable[name] = fn
            except Exception as exc:  # a provider that cannot run here is reported, not hidden
                res.errors[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        res.seconds = time_interleaved(runnable, case.device, min_time) if runnable else {}
        res.triad_gbps = triad_gbps(case.working_set_bytes or case.bytes_moved, case.device, min_time)
        if case.transcendentals:
            if case.device not in exp_cost:
                exp_cost[case.device] = exp_ns(case.device, min_time)
            res.exp_ns = exp_cost[case.device]
        results.append(res)
    return results


def format_table(results: list[Result]) -> str:
    header = (f"{'op':<16} {'case':<28} {'provider':<22} {'µs':>10} {'GB/s':>8} {'%triad':>7} {'ns/el':>7} "
              f"{'roof':>6} {'%roof':>6} {'vs eager':>9} {'vs compile':>11} {'vs diffusers':>13}")
    lines = [header, "-" * len(header)]
    for res in results:
        for row in res.rows():
            if "error" in row:
                lines.append(f"{row['op']:<16} {row['case']:<28} {row['provider']:<22} unavailable: {row['error']}")
                continue

            def sp(key):
                v = row.get(key)
                return f"{v:.2f}x" if v is not None else "-"

            pct = f"{row['pct_triad']:.0f}%" if row["pct_triad"] is not None else "-"
            if "roof_ns_per_element" in row:
                roof = (f"{row['ns_per_element']:>7.2f} {row['roof_ns_per_element']:>6.2f} "
                        f"{row['pct_roof']:>5.0f}%")
            else:
                roof = f"{'-':>7} {'-':>6} {'-':>6}"
            lines.append(
                f"{row['op']:<16} {row['case']:<28} {row['provider']:<22} {row['us']:>10.1f} {row['gbps']:>8.1f} {pct:>7} "
                f"{roof} {sp('speedup_vs_eager'):>9} {sp('speedup_vs_torch.compile'):>11} {sp('speedup_vs_diffusers'):>13}"
            )
        lines.append(f"{'':<16} {res.case.label:<28} {'triad (same size)':<22} {'':>10} {res.triad_gbps:>8.1f}")
    return "\n".join(lines)


def rss_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in KiB: ``VmRSS`` (resident now) or
    ``VmHWM`` (the resident peak), for the peak-memory cases (one fresh process per measurement)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")

