"""pytest-benchmark: Philox noise providers side by side (run: pytest benchmarks/bench_noise.py).

randn_like vs torch.randn (eager, torch.compile); q_sample_randn vs randn + q_sample (eager,
torch.compile) and diffusers (torch.randn + DDPMScheduler.add_noise). ``vdm-fast bench --ops noise``
prints the same cases as one table.
"""

import pytest

from vdm_fast.bench.cases_noise import cases

CASES = cases("cpu", quick=False)


@pytest.mark.parametrize(
    "case, provider",
    [pytest.param(c, p, id=f"{c.op}-{c.label}-{p}") for c in CASES for p in c.providers],
)
def test_noise(benchmark, case, provider):
    benchmark.group = f"{case.op} {case.label}"
    benchmark.extra_info["bytes_moved"] = case.bytes_moved
    benchmark(case.providers[provider])
    benchmark.extra_info["GB/s"] = case.bytes_moved / benchmark.stats.stats.median / 1e9
