"""pytest-benchmark: the end-to-end cases of ``vdm-fast bench --e2e`` (vdm_fast/bench/cases_e2e.py):
diffusers UNet2DModel training steps and sampling loops, diffusers vs vdm_fast, and the VDM ELBO
step with the categorical decoder, fused vs reference, eager and under torch.compile; every case
with its "network only" side, so that the time outside the network can be read off.

    python -m pytest benchmarks/bench_e2e.py                      # all cases (slow on a CPU)
    python -m pytest benchmarks/bench_e2e.py -k elbo              # the ELBO cases
    VDM_FAST_E2E_QUICK=1 python -m pytest benchmarks/bench_e2e.py --benchmark-disable   # smoke run

pytest-benchmark times one provider after another; ``vdm-fast bench --e2e`` times them
interleaved in one process, which is the figure to quote when the machine is shared.
``test_elbo_peak_memory`` measures each side's peak extra resident memory in a fresh process
(cases_e2e.peak_memory) and checks the issue's target: ours <= 1/4 of the reference's.
"""

import os
import warnings

import pytest

from vdm_fast.bench import cases_e2e

QUICK = os.environ.get("VDM_FAST_E2E_QUICK") == "1"
SPECS = cases_e2e.case_specs(quick=QUICK)
_built = {}


def _case(spec):
    key = repr(spec)
    if key not in _built:
        _built.clear()  # one case alive at a time: the UNets and compiled graphs are large
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _built[key] = cases_e2e.build(spec)
    return _built[key]


def _params():
    for spec in SPECS:
        name = spec[0].replace("_case", "") + ("+compile" if spec[1][-1] is True else "")
        for side in ("baseline", "ours", "network", "baseline part", "ours part"):
            if side.endswith("part") and spec[0] == "elbo_case":
                continue
            yield pytest.param(spec, side, id=f"{name}-{'-'.join(str(a) for a in spec[1][:3] if a not in ('cpu', True))}-{side.replace(' ', '_')}")


@pytest.mark.parametrize("spec, role", list(_params()))
def test_e2e(benchmark, spec, role):
    case = _case(spec)
    name, side = next((n, s) for n, s in case["sides"].items() if s.role == role)
    benchmark.group = case["label"]
    benchmark.extra_info["provider"] = name
    side.fn()  # warm-up (compiles under torch.compile)
    benchmark.pedantic(side.fn, rounds=3 if QUICK else 5, iterations=1, warmup_rounds=0)


@pytest.mark.parametrize("network", ["none", "demo"])
def test_elbo_peak_memory(network):
    spec = ("elbo_case", (network,))
    ours = cases_e2e.peak_memory(spec, "vdm_fast")
    ref = cases_e2e.peak_memory(spec, "reference")
    print(f"ELBO step ({network} network), B={cases_e2e.ELBO_BATCH}: peak extra RSS vdm_fast "
          f"{ours / 2**20:.1f} MiB, reference {ref / 2**20:.1f} MiB")
    assert ours <= ref / 4
