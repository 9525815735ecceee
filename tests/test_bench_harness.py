"""The benchmark harness's derived columns (vdm_fast/bench/harness.py): GB/s, %triad and the
roofline, from given timings (no timing here: speed belongs to the benchmarks, not the tests)."""

from __future__ import annotations

import math

import pytest
import torch

from vdm_fast import _library
from vdm_fast.bench import cases_sq_error
from vdm_fast.bench.harness import Case, Result, format_table


def result(elements=1000, transcendentals=0.0, exp_ns=0.5, seconds=2e-6, triad=100.0):
    case = Case("op", "case", bytes_moved=12_000, providers={}, elements=elements, transcendentals=transcendentals)
    return Result(case, seconds={"ours": seconds, "eager": 4 * seconds}, triad_gbps=triad, exp_ns=exp_ns)


def test_memory_roof_is_bytes_per_element_at_triad_bandwidth():
    res = result()
    assert res.roof_ns() == pytest.approx(12 / 100.0)  # 12 bytes per element at 100 GB/s
    row = res.rows()[0]
    assert row["gbps"] == pytest.approx(6.0) and row["pct_triad"] == pytest.approx(6.0)
    assert row["ns_per_element"] == pytest.approx(2.0)
    assert row["pct_roof"] == pytest.approx(100 * 0.12 / 2.0)
    assert row["speedup_vs_eager"] == pytest.approx(4.0)


def test_compute_roof_takes_over_when_larger():
    res = result(transcendentals=6, exp_ns=0.5)
    assert res.roof_ns() == pytest.approx(3.0)  # 6 exps at 0.5 ns > 0.12 ns of memory
    assert res.rows()[0]["pct_roof"] == pytest.approx(150.0)  # faster than the roof is shown, not hidden


def test_no_roofline_without_elements_or_with_unmeasured_exp():
    assert result(elements=0).roof_ns() is None
    assert "roof_ns_per_element" not in result(elements=0).rows()[0]
    assert result(transcendentals=6, exp_ns=math.nan).roof_ns() == pytest.approx(0.12)  # memory roof only


def test_table_has_the_roofline_columns():
    table = format_table([result(transcendentals=6), result(elements=0)])
    header, _, first, *_ = table.splitlines()
    assert "ns/el" in header and "roof" in header and "%roof" in header
    assert "2.00" in first and "3.00" in first and "150%" in first


@pytest.mark.parametrize("with_network", [False, True], ids=["loss_step", "loss_step_with_network"])
def test_loss_step_providers_compute_the_same_gradient(with_network):
    """A benchmark compares providers of one computation: every provider of the loss-step cases
    (ours, eager, torch.compile) returns the same gradient, within float32 rounding of the sums."""
    if with_network and not _library.has_native_kernel("q_sample", "CPU"):
        pytest.skip("the stand-in network is the native q_sample op: not built")
    shape = (3, 2, 4, 5)
    if with_network:
        case = cases_sq_error._loss_step_net_case(shape, "cpu")
    else:
        compiled = torch.compile(cases_sq_error._reference_loss_step, dynamic=False)
        case = cases_sq_error._loss_step_case(shape, "cpu", compiled)
    # loss_step's providers return (z, grads), the network case's the grads.
    got = {name: provider() if with_network else provider()[1] for name, provider in case.providers.items()}
    assert set(got) >= {"eager", "torch.compile"} and case.ours
    for name, grads in got.items():
        for g, w in zip(grads, got["eager"], strict=True):
            # Sums of D = 40 float32 terms in different orders: within D * eps relative (~5e-6).
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6, msg=name)
