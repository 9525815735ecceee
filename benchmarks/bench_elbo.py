"""pytest-benchmark: a continuous-time ELBO training step, fused ops vs the reference backend
(run: pytest benchmarks/bench_elbo.py)."""

import pytest

from vdm_fast.bench.cases_elbo import cases

CASES = cases("cpu", quick=False)


@pytest.mark.parametrize(
    "case, provider",
    [pytest.param(c, p, id=f"{c.label}-{p}") for c in CASES for p in c.providers],
)
def test_elbo(benchmark, case, provider):
    benchmark.group = f"elbo {case.label}"
    benchmark.extra_info["bytes_moved"] = case.bytes_moved
    benchmark(case.providers[provider])
    benchmark.extra_info["GB/s"] = case.bytes_moved / benchmark.stats.stats.median / 1e9
