"""Smoke test of an installed vdm_fast (CI runs it in a fresh virtual environment after installing
the wheel, not editable; DESIGN.md §9).

    python tools/smoke_test.py --tree REPO --native      # a wheel with the C++ kernels
    python tools/smoke_test.py --tree REPO --no-native   # a wheel built with VDM_FAST_NO_NATIVE=1
    python tools/smoke_test.py --tree REPO --sdist dist/vdm_fast-0.1.0.tar.gz
    python tools/smoke_test.py --tree REPO --wheel dist/vdm_fast-0.1.0-py3-none-any.whl

Run it from outside the repository, so that ``import vdm_fast`` finds the installed copy. It checks
that every module of the source tree was installed (vdm_fast/ and kernels/ as vdm_fast.kernels),
that the package imports, that each op listed in ``vdm_fast.env.OPS`` runs once and equals the
reference on its own sample inputs (vdm_fast/ops/_spec.py), and that ``vdm-fast env`` runs. With ``--sdist`` (``--wheel``) it checks instead that the
sdist carries every source file the build reads (that the wheel carries every module).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import warnings

SOURCE_SUFFIXES = (".py", ".h", ".cuh", ".cpp", ".cu")


def tree_files(tree: str, folder: str, suffixes=SOURCE_SUFFIXES) -> list[str]:
    """Source files under ``tree/folder``, relative to ``tree`` (build outputs left out)."""
    found = []
    for root, dirs, files in os.walk(os.path.join(tree, folder)):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        found += [os.path.relpath(os.path.join(root, f), tree) for f in files if f.endswith(suffixes)]
    return sorted(found)


def package_files(tree: str) -> list[str]:
    """The files a wheel must carry under vdm_fast/: every module of vdm_fast/ and of kernels/
    (installed as vdm_fast.kernels), and py.typed."""
    wanted = [p[len("vdm_fast/"):] for p in tree_files(tree, "vdm_fast", (".py",))]
    wanted += [os.path.join("kernels", p[len("kernels/"):]) for p in tree_files(tree, "kernels", (".py",))]
    return wanted + ["py.typed"]


def check_wheel(wheel: str, tree: str) -> None:
    """The wheel carries package_files() and nothing at the top level but vdm_fast and its metadata."""
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [p for p in package_files(tree) if f"vdm_fast/{p}" not in names]
    if missing:
        raise SystemExit(f"{wheel} lacks {len(missing)} file(s) of the tree: {missing}")
    tops = {n.split("/", 1)[0] for n in names}
    strays = sorted(t for t in tops if t != "vdm_fast" and not t.endswith((".dist-info", ".data")))
    if strays:
        raise SystemExit(f"{wheel} installs top-level names besides vdm_fast: {strays}")
    print(f"wheel: all {len(package_files(tree))} package files present in {os.path.basename(wheel)}")


def check_installed_tree(tree: str) -> None:
    """Every module of vdm_fast/ and kernels/ is in the installed package, and py.typed too."""
    import vdm_fast

    installed = os.path.dirname(os.path.abspath(vdm_fast.__file__))
    if os.path.samefile(installed, os.path.join(tree, "vdm_fast")):
        raise SystemExit(f"vdm_fast was imported from the source tree ({installed}), not from an installed copy")
    wanted = package_files(tree)
    missing = [p for p in wanted if not os.path.exists(os.path.join(installed, p))]
    if missing:
        raise SystemExit(f"installed package {installed} lacks {len(missing)} file(s) of the tree: {missing}")
    print(f"installed tree: all {len(wanted)} files of vdm_fast/ and kernels/ present under {installed}")


def check_ops(native: bool) -> None:
    import torch

    import vdm_fast
    from vdm_fast import _library, backends, env
    from vdm_fast.ops import SPECS

    if native:
        if _library.native_load_error is not None:
            raise SystemExit(f"the native library did not load: {_library.native_load_error}")
        backend = "cpu"
    else:
        if _library.native_load_error is None:
            raise SystemExit("a wheel built with VDM_FAST_NO_NATIVE=1 carries a native library")
        backend = "reference"
    for op in env.OPS:
        spec = SPECS[op]
        # The op's own sample inputs, drawn twice from one seed: the same data, and generators in
        # the same state for the ops that draw noise.
        args = spec.sample_inputs((3, 2, 5, 7), torch.float32, "cpu", torch.Generator().manual_seed(0))
        again = spec.sample_inputs((3, 2, 5, 7), torch.float32, "cpu", torch.Generator().manual_seed(0))
        got, want = getattr(vdm_fast, op)(*args, backend=backend), spec.reference(*spec.prepare(*again))
        # Loose on purpose: this checks that each op runs and computes its formula in the installed
        # package; the test suite checks equality to the bound the quantity's conditioning gives.
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=lambda m, op=op: f"{op}: {m}")
        print(f"  {op:<26} backend={backend}: equals the reference")
    if not native:  # an automatic choice without kernels falls back to the reference, with a warning
        backends.clear_cache()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            vdm_fast.q_sample(torch.zeros(2, 3), 0.8, 0.6, torch.ones(2, 3))
        if not any("using the pure-PyTorch reference" in str(w.message) for w in caught):
            raise SystemExit("the automatic backend choice without native kernels did not warn")
        print("  automatic backend choice without native kernels: reference, with one warning")


def check_cli() -> None:
    exe = os.path.join(os.path.dirname(sys.executable), "vdm-fast")
    out = subprocess.run([exe, "env"], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"vdm-fast env failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    print("vdm-fast env:\n  " + "\n  ".join(out.stdout.strip().splitlines()))


def check_sdist(sdist: str, tree: str) -> None:
    """The sdist carries every source file of csrc/, kernels/, vdm_fast/ and the build files."""
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    wanted = tree_files(tree, "csrc") + tree_files(tree, "kernels") + tree_files(tree, "vdm_fast")
    wanted += ["setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE", "vdm_fast/py.typed"]
    missing = [p for p in wanted if p not in names]
    if missing:
        raise SystemExit(f"{sdist} lacks {len(missing)} file(s) the build needs: {missing}")
    strays = [n for n in names if n.endswith((".so", ".o"))]
    if strays:
        raise SystemExit(f"{sdist} carries build outputs: {strays}")
    print(f"sdist: all {len(wanted)} source and build files present in {os.path.basename(sdist)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", required=True, help="the repository the package was built from")
    kind = parser.add_mutually_exclusive_group(required=True)
    kind.add_argument("--native", action="store_true", help="the wheel carries the C++ kernels")
    kind.add_argument("--no-native", action="store_true", help="the wheel was built with VDM_FAST_NO_NATIVE=1")
    kind.add_argument("--sdist", help="check this sdist's file list instead of an installed package")
    kind.add_argument("--wheel", help="check this wheel's file list instead of an installed package")
    args = parser.parse_args()
    if args.sdist:
        check_sdist(args.sdist, args.tree)
        return
    if args.wheel:
        check_wheel(args.wheel, args.tree)
        return
    check_installed_tree(args.tree)
    check_ops(native=args.native)
    check_cli()
    print("smoke test passed")


if __name__ == "__main__":
    main()
