"""pytest-benchmark: every case of ``vdm-fast bench`` (vdm_fast/bench/), every provider side by side:
each op on each built backend against eager PyTorch, torch.compile and diffusers where they apply,
and the cases derived from the declaration of every op without hand-written ones (cases_spec.py).

    python -m pytest benchmarks/bench_ops.py                  # everything
    python -m pytest benchmarks/bench_ops.py -k reverse_step  # one op

Each case's minimal bytes moved and the GB/s of its median are recorded in ``extra_info``;
``vdm-fast bench`` prints the same cases as one table with the triad bandwidth measured in the run.
"""

import inspect

import pytest

from vdm_fast.bench.cli import case_modules


def all_cases():
    for name, module in sorted(case_modules().items()):
        kwargs = {"dram": False} if "dram" in inspect.signature(module.cases).parameters else {}
        for case in module.cases("cpu", quick=False, **kwargs):
            for provider in case.providers:
                yield pytest.param(case, provider, id=f"{name}-{case.op}-{case.label}-{provider}")


@pytest.mark.parametrize("case, provider", list(all_cases()))
def test_case(benchmark, case, provider):
    benchmark.group = f"{case.op} {case.label}"
    benchmark.extra_info["bytes_moved"] = case.bytes_moved
    benchmark(case.providers[provider])
    benchmark.extra_info["GB/s"] = case.bytes_moved / benchmark.stats.stats.median / 1e9
