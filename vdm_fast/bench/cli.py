"""``vdm-fast bench``: every op's benchmark cases, one table, JSON and a PNG chart."""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import platform
import types
import warnings

import torch

from . import harness


def case_modules() -> dict[str, object]:
    """name -> an object with ``cases(device, quick[, dram])``: the modules ``vdm_fast.bench.cases_<name>``
    (ops with baselines of their own, and whole steps such as elbo and diffusers), and for every
    other op the cases derived from its declaration (cases_spec.py)."""
    import vdm_fast.bench as pkg
    from vdm_fast.ops import SPECS

    from . import cases_spec

    found = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("cases_") and info.name not in ("cases_spec", "cases_e2e"):  # e2e: --e2e only
            found[info.name[len("cases_"):]] = importlib.import_module(f"vdm_fast.bench.{info.name}")
    covered = {op for module in found.values() for op in module.OPS}
    for name, spec in SPECS.items():
        if name not in covered:
            found[name] = types.SimpleNamespace(cases=lambda device, quick, spec=spec: cases_spec.cases_for(spec, device,
                                                                                                       quick))
    return found


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def _chart(results: list[harness.Result], path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    labels, series = [], {}
    for res in results:
        labels.append(f"{res.case.op}\n{res.case.label}")
        for name in res.seconds:
            series.setdefault(name.split("[")[0] if name.startswith("vdm_fast") else name, [])
    for res in results:
        for key in series:
            match = [v for n, v in res.seconds.items() if (n.split("[")[0] if n.startswith("vdm_fast") else n) == key]
            series[key].append(res.case.bytes_moved / match[0] / 1e9 if match else 0.0)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(labels)), 4.5))
    width = 0.8 / max(1, len(series))
    for i, (name, vals) in enumerate(series.items()):
        ax.bar([j + i * width for j in range(len(labels))], vals, width, label=name)
    ax.plot([j + 0.4 - width / 2 for j in range(len(labels))], [r.triad_gbps for r in results], "k_", ms=20,
            label="triad (same size)")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))], labels, fontsize=7)
    ax.set_ylabel("GB/s (higher is better)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(args) -> int:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if getattr(args, "e2e", False):  # whole training and sampling steps with a network (cases_e2e.py)
        from . import cases_e2e

        cases_e2e.main(quick=args.quick, min_time=args.min_time, out=args.out, device=device)
        return 0
    modules = case_modules()
    wanted = args.ops.split(",") if args.ops else sorted(modules)
    unknown = [op for op in wanted if op not in modules]
    if unknown:
        raise SystemExit(f"vdm-fast bench: --ops: unknown {unknown}; known: {sorted(modules)}")
    min_time = args.min_time if args.min_time is not None else (0.05 if args.quick else 0.5)
    cases = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for op in wanted:
            kwargs = {"quick": args.quick}
            if "dram" in modules[op].cases.__code__.co_varnames:
                kwargs["dram"] = not (args.quick or args.no_dram)
            cases += modules[op].cases(device, **kwargs)
        results = harness.run(cases, min_time=min_time, progress=lambda s: print(f"  timing {s} ...", flush=True))
    header = (f"vdm-fast bench on {_device_name(device)}; torch {torch.__version__}; "
              f"median per call, providers interleaved; MALLOC_MMAP_THRESHOLD_="
              f"{os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset (glibc default)')}")
    print(header)
    print(harness.format_table(results))
    os.makedirs(args.out, exist_ok=True)
    payload = {
        "device": _device_name(device),
        "torch": torch.__version__,
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
        "rows": [row for res in results for row in res.rows()],
        "triad_gbps": {f"{r.case.op} {r.case.label}": r.triad_gbps for r in results},
    }
    with open(os.path.join(args.out, "bench.json"), "w") as fh:
        json.dump(payload, fh, indent=1)
    charted = _chart(results, os.path.join(args.out, "bench.png"))
    print(f"wrote {os.path.join(args.out, 'bench.json')}" + (f" and {os.path.join(args.out, 'bench.png')}" if charted else ""))
    return 0
