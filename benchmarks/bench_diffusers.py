"""pytest-benchmark: the diffusers drop-ins vs diffusers (run: pytest benchmarks/bench_diffusers.py).

DDPMScheduler.step, DDIMScheduler.step and add_noise, ours (each built backend) against
diffusers' own at the same config on the same tensors. Bytes moved are in ``extra_info``;
``vdm-fast bench --ops diffusers`` prints the same cases as one table.
"""

import pytest

pytest.importorskip("diffusers")

from vdm_fast.bench.cases_diffusers import cases  # noqa: E402

CASES = cases("cpu", quick=False)


@pytest.mark.parametrize(
    "case, provider",
    [pytest.param(c, p, id=f"{c.op}-{c.label}-{p}") for c in CASES for p in c.providers],
)
def test_diffusers(benchmark, case, provider):
    benchmark.group = f"{case.op} {case.label}"
    benchmark.extra_info["bytes_moved"] = case.bytes_moved
    fn = case.providers[provider]
    benchmark(fn)
    benchmark.extra_info["GB/s"] = case.bytes_moved / benchmark.stats.stats.median / 1e9
