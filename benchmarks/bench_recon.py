"""pytest-benchmark: recon_nll and discretized_gaussian_nll providers side by side
(run: pytest benchmarks/bench_recon.py). Each case's minimal bytes moved and, per provider, the
peak extra memory of one call (vdm_fast/bench/cases_recon.py: measured in a fresh process) are
recorded in ``extra_info``. ``vdm-fast bench --ops recon`` prints the timings as one table.
"""

import pytest

from vdm_fast.bench.cases_recon import CASES as KINDS, SHAPES, cases, peak_memory

CASES = cases("cpu", quick=False)


@pytest.mark.parametrize(
    "case, provider",
    [pytest.param(c, p, id=f"{c.op}-{c.label}-{p}") for c in CASES for p in c.providers],
)
def test_recon(benchmark, case, provider):
    benchmark.group = f"{case.op} {case.label}"
    benchmark.extra_info["bytes_moved"] = case.bytes_moved
    benchmark(case.providers[provider])
    benchmark.extra_info["GB/s"] = case.bytes_moved / benchmark.stats.stats.median / 1e9


@pytest.mark.parametrize("kind, variant", KINDS, ids=[f"{k}-{v}" for k, v in KINDS])
def test_peak_memory(kind, variant):
    """Peak extra memory per provider at the first shape; ours must stay O(B*D) (two input-sized
    tensors at most) while the eager reference holds B*D*256 logits."""
    shape = SHAPES[0]
    numel = 1
    for d in shape:
        numel *= d
    ours = peak_memory(kind, variant, shape, "cpu", "vdm_fast[cpu]")
    eager = peak_memory(kind, variant, shape, "cpu", "eager")
    print(f"{kind} {variant} {shape}: vdm_fast[cpu] {ours / 2**20:.1f} MiB, eager {eager / 2**20:.1f} MiB")
    assert ours <= 2 * 4 * numel + (8 << 20)  # two float32 input-sized tensors + allocator slack
