"""The numerics tests on every CPU path (DESIGN.md §7.1, §10).

The C++ CPU loops run in one of three versions (baseline x86-64, AVX2+FMA, AVX-512) chosen by
csrc/cpu/isa.h, and PyTorch's own reference kernels use libm or SLEEF at different widths. Both
follow ATEN_CPU_CAPABILITY. The rest of the suite runs at the widest level this CPU has; here the
op-equals-reference tests of the CPU backend run again, in a subprocess, at every lower level the
CPU has, so that a tolerance that only one instruction set meets fails here rather than on a
user's machine (FMA contraction, and libm versus SLEEF in the reference, round differently).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import vdm_fast

TESTS = os.path.dirname(os.path.abspath(__file__))
LEVELS = ["default", "avx2", "avx512"]
# The tests that compare the CPU kernels with the reference: every op, every dtype, odd shapes,
# several reduction chunks, layouts (test_ops.py), and what is particular to one op (its extremes,
# guidance combinations, the noise streams). Not recon_nll over several chunks: its float64
# reference over 256 bins takes over a minute per level, and the chunk sums are the same code on
# every path (recon_nll's elementwise math runs at every level in the other shapes).
FILES = ["test_ops.py", "test_fast_math.py", "test_ndtr.py", "test_accurate_sums.py", "test_q_sample_randn.py", "test_prior_kl.py",
         "test_recon_nll.py", "test_discretized_gaussian_nll.py", "test_reverse_step.py", "test_randn_like.py"]
SELECT = ("cpu and (matches_reference or match_reference or every_data_argument or every_combination or odd_shapes"
          " or fast_math or exact_box_muller or noncontiguous or extremes or sigma_near_one or tanh_clamps"
          " or nan_propagates or keeps_small_terms)"
          " and not (several_chunks and recon_nll)")


def native_isa() -> str | None:
    return vdm_fast._library.cpu_isa()


def levels_below_native() -> list[str]:
    isa = native_isa()
    return LEVELS[:LEVELS.index(isa)] if isa in LEVELS else []


def run(level: str, *args: str, cache: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "ATEN_CPU_CAPABILITY": level}
    if cache is not None:
        # Inductor's on-disk cache does not key its C++ kernels on ATEN_CPU_CAPABILITY: a kernel
        # compiled for AVX-512 by the main run would be reused at a lower level (and give wrong
        # results there), so each level compiles into its own cache.
        env["TORCHINDUCTOR_CACHE_DIR"] = cache
    return subprocess.run([sys.executable, *args], cwd=TESTS, env=env, capture_output=True, text=True, timeout=900)


def test_the_cap_reaches_our_loops_and_torch():
    if native_isa() is None:
        pytest.skip("the native library is not built")
    for level in LEVELS[:LEVELS.index(native_isa()) + 1]:
        out = run(level, "-c", "import torch, vdm_fast; print(vdm_fast._library.cpu_isa(), "
                               "torch.backends.cpu.get_cpu_capability())")
        assert out.returncode == 0, out.stderr
        ours, theirs = out.stdout.split()
        assert ours == level and theirs.lower() == {"default": "default", "avx2": "avx2", "avx512": "avx512"}[level]


@pytest.mark.parametrize("level", LEVELS[:-1])
def test_reference_equality_on_every_lower_cpu_path(level, tmp_path):
    if level not in levels_below_native():
        pytest.skip(f"this CPU's widest path is {native_isa()}: {level} is it, or above it, and the suite runs it")
    out = run(level, "-m", "pytest", *FILES, "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-k", SELECT,
              cache=str(tmp_path / "inductor"))
    tail = "\n".join(out.stdout.splitlines()[-15:])
    assert out.returncode == 0, f"ATEN_CPU_CAPABILITY={level}:\n{tail}\n{out.stderr[-2000:]}"
    assert " passed" in tail and " failed" not in tail, tail


def test_isa_versions_compute_the_same_function():
    """The three versions are one loop compiled three ways: on data where FMA cannot change the
    rounding (small integers), every path gives the same bits."""
    if native_isa() is None:
        pytest.skip("the native library is not built")
    code = ("import torch, vdm_fast; x = torch.arange(-50., 50.).reshape(4, 25); n = x.flip(1); "
            "print(vdm_fast.q_sample(x, 2.0, 3.0, n).sum().item(), "
            "vdm_fast.sq_error(x, x, n, 1.0, 1.0, 'v').tolist())")
    outs = {level: run(level, "-c", code) for level in LEVELS[:LEVELS.index(native_isa()) + 1]}
    for level, out in outs.items():
        assert out.returncode == 0, f"{level}: {out.stderr}"
    assert len({out.stdout for out in outs.values()}) == 1, {k: v.stdout for k, v in outs.items()}
    assert torch.equal(vdm_fast.q_sample(torch.ones(2, 3), 2.0, 3.0, torch.ones(2, 3)), torch.full((2, 3), 5.0))
