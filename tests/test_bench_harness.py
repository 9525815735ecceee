"""The benchmark harness's derived columns (vdm_fast/bench/harness.py): GB/s, %triad and the
roofline, from given timings (no timing here: speed belongs to the benchmarks, not the tests)."""

from __future__ import annotations

import math

import pytest

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
