"""The public call's fixed cost on tiny tensors: each op's public function against its dispatcher op.

    python benchmarks/call_path.py               # (2, 3) float32, torch's default thread count
    python benchmarks/call_path.py --threads 1

Per op: the raw dispatcher op ``torch.ops.vdm_fast.<op>`` (what no Python can beat), the public
function (``vdm_fast.<op>``) and the difference, the Python of the call: checks, backend choice,
dispatch. Best of 7 medians of 20000 calls each; inputs from the op's own ``sample_inputs``. A
tiny call is all fixed cost (the kernels run a few elements), so this is what a sampling loop over
small tensors pays per op. Issue 18's target: <= 3 us for the public call. reverse_step is called as
the samplers call it (``stochastic=False`` for a deterministic step: no noise to look up).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import vdm_fast
from vdm_fast.ops._spec import SPECS

SHAPE = (2, 3)
# Keyword arguments of the public call, as vdm_fast.samplers passes them.
OPTIONS = {"reverse_step": {"stochastic": False}, "reverse_step_with_x0": {"stochastic": False}}


def per_call_us(fn, calls: int = 20000, repeats: int = 7) -> float:
    for _ in range(calls // 10):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    print(f"{'op':26s} {'raw op':>8s} {'public':>8s} {'Python':>8s}   "
          f"(us per call, {SHAPE} float32, {torch.get_num_threads()} threads)")
    for name, spec in SPECS.items():
        public = getattr(vdm_fast, name, None)
        if public is None or spec.sample_inputs is None:
            continue
        values = spec.sample_inputs(SHAPE, torch.float32, "cpu", gen)
        raw = getattr(torch.ops.vdm_fast, name)
        try:
            native_args = spec.prepare(*values)
            raw_us = per_call_us(lambda: raw(*native_args))
        except (RuntimeError, TypeError):  # an op whose native arguments differ from the public ones
            raw_us = float("nan")
        options = OPTIONS.get(name, {})
        public_us = per_call_us(lambda: public(*values, **options))
        print(f"{name:26s} {raw_us:8.2f} {public_us:8.2f} {public_us - raw_us:8.2f}")


if __name__ == "__main__":
    main()
