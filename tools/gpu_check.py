"""``make gpu-check``: the one script to run first on a machine with an NVIDIA GPU (DESIGN.md §10).

Builds vdm_fast for the local GPU's architecture (in place, all cores), runs the CUDA and the
Triton tests, then the GPU benchmarks, and writes everything into one JSON file,
``benchmarks/RESULTS-gpu.json`` (device, versions, build result, test counts and failures, the
benchmark rows), with the logs next to it in ``--logs``. Each stage has a time limit so that the
whole check ends inside ``--budget`` seconds (default 540: it was sized for a 16-core machine with
one H200-class GPU and a 10-minute slot) and a stage that runs out still leaves its partial log.
Nothing is fetched: it uses the Python it is run with and what that Python has (a package the
tests need and that is missing there skips those tests).

    python3 tools/gpu_check.py                 # everything
    python3 tools/gpu_check.py --skip-build    # reuse vdm_fast/_C*.so built for this GPU
    python3 tools/gpu_check.py --plan          # print the stages and commands, run nothing
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "RESULTS-gpu.json")


def gpu_facts() -> dict:
    """Name, architecture and versions of the local GPU, or an empty dict when there is none."""
    import torch

    if not torch.cuda.is_available():
        return {}
    major, minor = torch.cuda.get_device_capability()
    facts = {"device": torch.cuda.get_device_name(), "arch": f"{major}.{minor}", "torch": torch.__version__,
             "cuda": torch.version.cuda, "python": sys.version.split()[0]}
    try:
        import triton

        facts["triton"] = triton.__version__
    except ImportError:
        facts["triton"] = None
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        facts["nvidia_smi"] = smi.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        facts["nvidia_smi"] = None
    return facts


def stages(arch: str, jobs: int, logs: str, skip_build: bool, budget: float) -> list[dict]:
    """The stages in order: name, command, extra environment, share of the time budget."""
    py = sys.executable
    out = []
    if not skip_build:
        out.append({"name": "build", "share": 0.45,
                    "cmd": [py, "setup.py", "build_ext", "--inplace"],
                    "env": {"TORCH_CUDA_ARCH_LIST": arch, "VDM_FAST_REQUIRE_CUDA": "1", "MAX_JOBS": str(jobs)}})
    pytest = [py, "-m", "pytest", "tests", "-q", "-p", "no:cacheprovider", "-rfE", "--continue-on-collection-errors",
              "-n", str(min(jobs, 8))]
    # The backend-parametrised tests carry the backend in their ids; Triton runs compiled here, so
    # also its torch.compile and opcheck tests that the interpreter skips.
    out.append({"name": "tests-cuda", "share": 0.2, "env": {},
                "cmd": pytest + ["-k", "cuda", "--junitxml", os.path.join(logs, "junit-cuda.xml")]})
    out.append({"name": "tests-triton", "share": 0.2, "env": {},
                "cmd": pytest + ["-k", "triton", "--junitxml", os.path.join(logs, "junit-triton.xml")]})
    out.append({"name": "bench", "share": 0.15, "env": {},
                "cmd": [py, "-m", "vdm_fast.cli", "bench", "--device", "cuda", "--min-time", "0.1",
                        "--out", os.path.join(logs, "bench")]})
    for st in out:
        st["limit_s"] = round(st["share"] * budget)
    return out


def run_stage(stage: dict, logs: str) -> dict:
    env = {**os.environ, **stage["env"]}
    env.pop("TRITON_INTERPRET", None)  # a GPU is here: Triton compiles for it
    log_path = os.path.join(logs, f"{stage['name']}.log")
    start = time.monotonic()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(stage["cmd"]) + "\n")
        log.flush()
        try:
            rc = subprocess.run(stage["cmd"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                timeout=stage["limit_s"]).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    seconds = round(time.monotonic() - start, 1)
    with open(log_path) as log:
        text = log.read()
    result = {"rc": rc, "seconds": seconds, "limit_s": stage["limit_s"], "log": os.path.relpath(log_path, ROOT)}
    if stage["name"].startswith("tests"):
        result.update(test_summary(text))
    print(f"[gpu-check] {stage['name']}: rc={rc} in {seconds} s (limit {stage['limit_s']} s)", flush=True)
    return result


def test_summary(text: str) -> dict:
    """Counts from pytest's closing line and the FAILED/ERROR lines of -rfE."""
    counts = {}
    closing = [line for line in text.splitlines() if re.search(r"\d+ (passed|failed|error)", line)]
    if closing:
        for n, what in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)", closing[-1]):
            counts[what.rstrip("s") if what.startswith("error") else what] = int(n)
    failures = [line for line in text.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    return {"counts": counts, "failures": failures[:200]}


def main() -> int:
    parser = argparse.ArgumentParser(description="build, test and benchmark vdm_fast on the local GPU")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 8, help="compile jobs and test workers")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for all stages together")
    parser.add_argument("--logs", default=os.path.join(ROOT, "vdm_fast_out", "gpu-check"), help="folder for the logs")
    parser.add_argument("--skip-build", action="store_true", help="use the vdm_fast/_C*.so already built here")
    parser.add_argument("--plan", action="store_true", help="print the stages and commands and run nothing")
    parser.add_argument("--arch", default=None, help="CUDA architecture, e.g. 9.0 (default: the local GPU's)")
    args = parser.parse_args()
    if args.jobs < 1 or args.budget <= 0:
        parser.error("--jobs must be >= 1 and --budget > 0")

    facts = gpu_facts()
    arch = args.arch or facts.get("arch")
    if arch is None:
        if args.plan:
            arch = "9.0"
        else:
            print("gpu-check: no CUDA device is visible to torch here; run it on a machine with an NVIDIA GPU "
                  "(`vdm-fast env` shows what torch sees)", file=sys.stderr)
            return 2
    plan = stages(arch, args.jobs, args.logs, args.skip_build, args.budget)
    if args.plan:
        for st in plan:
            env = " ".join(f"{k}={v}" for k, v in st["env"].items())
            print(f"{st['name']} (<= {st['limit_s']} s): {env + ' ' if env else ''}{' '.join(st['cmd'])}")
        return 0

    os.makedirs(args.logs, exist_ok=True)
    report = {"when": time.strftime("%Y-%m-%d %H:%M:%S %Z"), **facts, "stages": {}}
    for st in plan:
        result = run_stage(st, args.logs)
        report["stages"][st["name"]] = result
        if st["name"] == "build" and result["rc"] != 0:
            print("[gpu-check] the build failed: see the log; the tests and benchmarks are skipped", flush=True)
            break
    bench_json = os.path.join(args.logs, "bench", "bench.json")
    if os.path.exists(bench_json):
        with open(bench_json) as fh:
            report["bench"] = json.load(fh)
    with open(RESULTS, "w") as fh:
        json.dump(report, fh, indent=1)
    print(f"[gpu-check] wrote {os.path.relpath(RESULTS, ROOT)}; logs in {os.path.relpath(args.logs, ROOT)}")
    ok = all(r["rc"] == 0 for r in report["stages"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
