"""pytest-benchmark: prior_kl providers side by side (run: pytest benchmarks/bench_prior_kl.py)."""

import pytest

from vdm_fast.bench.cases_prior_kl import cases

CASES = cases("cpu", quick=False)


@pytest.mark.parametrize(
    "case, provider",
    [pytest.param(c, p, id=f"{c.label}-{p}") for c in CASES for p in c.providers],
)
def test_prior_kl(benchmark, case, provider):
    benchmark.group = f"prior_kl {case.label}"
    benchmark.extra_info["bytes_moved"] = case.bytes_moved
    fn = case.providers[provider]
    benchmark(fn)
    benchmark.extra_info["GB/s"] = case.bytes_moved / benchmark.stats.stats.median / 1e9
