"""Peak memory of recon_nll and discretized_gaussian_nll against the reference (run: pytest
benchmarks/bench_recon_memory.py): one call per provider in a fresh process
(vdm_fast/bench/cases_recon.py). Their timings are in benchmarks/bench_ops.py.
"""

import pytest

from vdm_fast.bench.cases_recon import CASES as KINDS, SHAPES, peak_memory

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
