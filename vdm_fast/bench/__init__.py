"""Benchmarks behind ``vdm-fast bench`` and ``benchmarks/`` (pytest-benchmark).

Each op contributes ``vdm_fast/bench/cases_<op>.py`` with ``cases(device, quick) -> list[Case]``;
``harness.run`` times every provider of every case side by side in one process and reports µs,
GB/s, % of the triad bandwidth measured at the same working-set size in the same run, and
speed-ups against eager PyTorch, torch.compile and diffusers where present.
"""
