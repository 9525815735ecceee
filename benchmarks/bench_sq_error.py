"""pytest-benchmark: sq_error (forward + backward) and the training-loss step, providers side by side
(run: pytest benchmarks/bench_sq_error.py).

Each case's bytes moved are recorded in ``extra_info`` so GB/s can be read off the report;
``vdm-fast bench`` prints the same cases as one table with the triad bandwidth.
"""

import pytest

from vdm_fast.bench.cases_sq_error import cases

CASES = cases("cpu", quick=False)


@pytest.mark.parametrize(
    "case, provider",
    [pytest.param(c, p, id=f"{c.op}-{c.label}-{p}") for c in CASES for p in c.providers],
)
def test_sq_error(benchmark, case, provider):
    benchmark.group = f"{case.op} {case.label}"
    benchmark.extra_info["bytes_moved"] = case.bytes_moved
    fn = case.providers[provider]
    benchmark(fn)
    benchmark.extra_info["GB/s"] = case.bytes_moved / benchmark.stats.stats.median / 1e9
