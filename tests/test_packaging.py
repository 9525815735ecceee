"""The package travels (DESIGN.md §9): the contract lives in the repository and every citation of it
resolves, nothing points outside the repository, public namespaces show their API only, a wheel
carries every module, and the GPU check script is ready to run."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import types
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import smoke_test  # noqa: E402  (tools/smoke_test.py: the tree walk and the wheel check CI uses)

TEXT_SUFFIXES = (".py", ".h", ".cuh", ".cpp", ".cu", ".md", ".toml", ".in", ".sh", ".txt")
CHECKED = ["README.md", "CONTRIBUTING.md", "setup.py", "pyproject.toml", "Makefile", "MANIFEST.in", ".ci/run",
           "docs", "vdm_fast", "kernels", "csrc", "tests", "tools", "benchmarks"]


def repo_texts():
    """(path, text) of every text file the repository ships or runs."""
    for entry in CHECKED:
        path = os.path.join(ROOT, entry)
        if os.path.isfile(path):
            yield entry, open(path, encoding="utf-8").read()
            continue
        for root, dirs, files in os.walk(path):
            dirs[:] = [d for d in dirs if d not in ("__pycache__",)]
            for f in files:
                if f.endswith(TEXT_SUFFIXES):
                    full = os.path.join(root, f)
                    yield os.path.relpath(full, ROOT), open(full, encoding="utf-8").read()


def design_sections() -> set[str]:
    """Section numbers of docs/DESIGN.md's headings: '## 4. Ops' -> '4', '### 4.3 sq_error' -> '4.3'."""
    found = set()
    with open(os.path.join(ROOT, "docs", "DESIGN.md"), encoding="utf-8") as fh:
        for line in fh:
            m = re.match(r"#{2,3} (\d+(?:\.\d+)?)\.? ", line)
            if m:
                found.add(m.group(1))
    return found


# "DESIGN.md §3, §4.3-4.5", possibly across a line break.
CITATION = re.compile(r"DESIGN\.md\s*((?:[,;]?\s*(?:and\s+)?§\d+(?:\.\d+)?(?:\s*[-–]\s*§?\d+(?:\.\d+)?)?)+)")


def cited_sections(text: str) -> list[str]:
    out = []
    for m in CITATION.finditer(text):
        for first, last in re.findall(r"§(\d+(?:\.\d+)?)(?:\s*[-–]\s*§?(\d+(?:\.\d+)?))?", m.group(1)):
            out.append(first)
            if last:  # a range within one section: 4.3-4.5 -> 4.3, 4.4, 4.5
                major, lo = first.split(".")
                out += [f"{major}.{k}" for k in range(int(lo) + 1, int(last.split(".")[-1]) + 1)]
    return out


def test_every_design_citation_resolves():
    sections = design_sections()
    assert {"1", "2", "3", "4", "4.1", "4.6", "5", "6", "7", "9", "10"} <= sections
    citations, unresolved = 0, []
    for path, text in repo_texts():
        for number in cited_sections(text):
            citations += 1
            if number not in sections:
                unresolved.append(f"{path}: §{number}")
    assert citations > 50, f"found only {citations} citations: the pattern no longer matches the code's style"
    assert not unresolved, f"citations of sections docs/DESIGN.md does not have: {unresolved}"


def test_citation_pattern_reads_lists_and_ranges():
    assert cited_sections("see DESIGN.md §3, §4.3-4.5 and the code") == ["3", "4.3", "4.4", "4.5"]
    assert cited_sections("(DESIGN.md\n§4.10)") == ["4.10"]
    assert cited_sections("DESIGN.md says nothing here") == []


def test_nothing_points_outside_the_repository():
    outside = re.compile(r"\.\./" + "shared|" + r"\bshared/")  # split so this file does not match itself
    hits = [f"{path}:{n + 1}" for path, text in repo_texts() for n, line in enumerate(text.splitlines())
            if outside.search(line) and path != "tests/test_packaging.py"]
    assert not hits, f"files that point outside the repository: {hits}"
    assert not os.path.exists(os.path.join(ROOT, "docs", "DESIGN_NOTES.md")), "DESIGN_NOTES.md is merged into DESIGN.md"


PUBLIC_MODULES = ["vdm_fast", "vdm_fast.ops", "vdm_fast.reference", "vdm_fast.schedules", "vdm_fast.backends",
                  "vdm_fast.elbo", "vdm_fast.bpd", "vdm_fast.samplers", "vdm_fast.guidance", "vdm_fast.karras",
                  "vdm_fast.coefficients", "vdm_fast.posterior", "vdm_fast.respace",
                  "vdm_fast.tables"]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_public_namespace_is_its_all(name):
    module = importlib.import_module(name)
    assert dir(module) == sorted(module.__all__)
    for attr in module.__all__:
        value = getattr(module, attr)  # every name in __all__ exists
        if isinstance(value, types.ModuleType):
            assert value.__name__.startswith("vdm_fast."), f"{name}.{attr} is the foreign module {value.__name__}"


def test_diffusers_namespace_is_its_all():
    module = pytest.importorskip("vdm_fast.integrations.diffusers")
    assert dir(module) == sorted(module.__all__) == ["DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler",
                                                     "EulerAncestralDiscreteScheduler", "EulerDiscreteScheduler",
                                                     "accelerate"]


def test_wheel_carries_every_module(tmp_path):
    """A pure-Python wheel (VDM_FAST_NO_NATIVE=1: no compile) built from this tree carries every module
    of vdm_fast/ and kernels/ (as vdm_fast.kernels), py.typed, and no other top-level name."""
    env = {**os.environ, "VDM_FAST_NO_NATIVE": "1"}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), ROOT], check=True, env=env, capture_output=True)
    (wheel,) = tmp_path.glob("vdm_fast-*.whl")
    smoke_test.check_wheel(str(wheel), ROOT)
    assert not any(n.endswith(".so") for n in zipfile.ZipFile(wheel).namelist())


def test_wheel_check_catches_a_missing_module(tmp_path):
    """The check the test above relies on fails when a module is left out."""
    wheel = tmp_path / "vdm_fast-0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for p in smoke_test.package_files(ROOT):
            if p != "samplers.py":
                zf.writestr(f"vdm_fast/{p}", "")
    with pytest.raises(SystemExit, match="samplers.py"):
        smoke_test.check_wheel(str(wheel), ROOT)


def gpu_check(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gpu_check.py"), *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def test_gpu_check_plan():
    out = gpu_check("--plan", "--arch", "9.0", "--jobs", "16")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split(" ")[0] for line in lines] == ["build", "tests-cuda", "tests-triton", "bench"]
    assert "TORCH_CUDA_ARCH_LIST=9.0" in lines[0] and "build_ext --inplace" in lines[0]
    assert "-k cuda" in lines[1] and "-k triton" in lines[2] and "bench --device cuda" in lines[3]
    limits = [int(re.search(r"<= (\d+) s", line).group(1)) for line in lines]
    assert sum(limits) <= 540  # the default budget: the whole check fits a 10-minute slot


def test_gpu_check_without_a_gpu_says_so():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the check would run")
    out = gpu_check()
    assert out.returncode == 2 and "no CUDA device" in out.stderr


def equation_map_references():
    """(path, name) of every `path::name` in docs/EQUATIONS.md; `::name` continues the last path."""
    text = open(os.path.join(ROOT, "docs", "EQUATIONS.md"), encoding="utf-8").read()
    refs, last = [], None
    for token in re.findall(r"`([^`\s]*::[^`\s]+)`", text):
        path, name = token.split("::", 1)
        if "<" in token or path == "file.py":  # the legend's placeholders
            continue
        last = path or last
        refs.append((last, name))
    return refs


def test_equation_map_names_real_functions_and_tests():
    refs = equation_map_references()
    assert len(refs) > 300
    missing = []
    for path, name in refs:
        if path.startswith("tests/"):
            found = re.search(rf"^def {re.escape(name)}\(", open(os.path.join(ROOT, path)).read(), re.M)
        else:
            module = importlib.import_module(path[:-3].replace("/", "."))
            found = module
            for part in name.split("."):
                found = getattr(found, part, None)
        if not found:
            missing.append(f"{path}::{name}")
    assert not missing, f"docs/EQUATIONS.md names what does not exist: {missing}"


def test_the_triton_kernels_import_nothing_from_above():
    """vdm_fast.kernels is the bottom layer (DESIGN.md §1): data flows down."""
    upward = []
    for root, _, files in os.walk(os.path.join(ROOT, "kernels")):
        for f in files:
            if f.endswith(".py"):
                text = open(os.path.join(root, f), encoding="utf-8").read()
                upward += [f"kernels/{f}: {line.strip()}" for line in text.splitlines()
                           if re.match(r"\s*(from|import)\s+(vdm_fast|\.\.)", line)]
    assert not upward, upward
