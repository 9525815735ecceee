"""Build vdm_fast and its one native extension, ``vdm_fast._C``.

Environment switches (all optional):

- ``VDM_FAST_NO_NATIVE=1``: build no native code at all; the package then runs on the
  Triton and reference backends only.
- ``VDM_FAST_NO_CUDA=1``: build the C++ CPU kernels only, even where CUDA is available.
- ``VDM_FAST_CUDA_ARCH``: the CUDA architectures to build for, in ``TORCH_CUDA_ARCH_LIST``
  syntax (default ``"8.0;9.0+PTX"``; ``TORCH_CUDA_ARCH_LIST`` itself is honoured when set).
- ``VDM_FAST_REQUIRE_CUDA=1``: fail the build unless the CUDA kernels are built (CI sets it).
- ``MAX_JOBS``: parallel compile jobs (ninja).

CUDA sources are compiled whenever a CUDA toolkit (``nvcc``) and a CUDA build of torch are
present. No GPU is needed to build them.
"""

import glob
import os
import shutil

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _find_cuda_home():
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if candidate and os.path.exists(os.path.join(candidate, "bin", "nvcc")):
            return candidate
    nvcc = shutil.which("nvcc")
    if nvcc:
        return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    return None


def _extra_cuda_includes(cuda_home):
    """Header folders of the pip-installed CUDA libraries (cuSPARSE, cuBLAS, ...) that torch's
    headers include, for toolkits that ship only the compiler and runtime."""
    if os.path.exists(os.path.join(cuda_home, "include", "cusparse.h")):
        return []
    try:
        import nvidia
    except ImportError:
        return []
    found = []
    for base in nvidia.__path__:
        found += sorted(glob.glob(os.path.join(base, "*", "include")))
    return [d for d in found if os.path.exists(os.path.join(d, "cusparse.h"))]


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern), recursive=True))


def native_extensions():
    if _flag("VDM_FAST_NO_NATIVE"):
        return [], {}
    import torch
    from torch.utils import cpp_extension

    cpp_sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
    cuda_sources = _sources("csrc/cuda/*.cu")
    cuda_home = _find_cuda_home()
    use_cuda = bool(cuda_sources) and not _flag("VDM_FAST_NO_CUDA") and torch.version.cuda is not None and cuda_home
    if _flag("VDM_FAST_REQUIRE_CUDA") and not use_cuda:
        raise RuntimeError(
            "VDM_FAST_REQUIRE_CUDA=1 but the CUDA kernels cannot be built: "
            f"torch CUDA build: {torch.version.cuda}, nvcc found under: {cuda_home}, VDM_FAST_NO_CUDA: {_flag('VDM_FAST_NO_CUDA')}"
        )
    if use_cuda:
        os.environ["CUDA_HOME"] = cuda_home
        cpp_extension.CUDA_HOME = cuda_home
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            os.environ["TORCH_CUDA_ARCH_LIST"] = os.environ.get("VDM_FAST_CUDA_ARCH", "8.0;9.0+PTX")

    # -fopenmp: at::parallel_for is an inline OpenMP construct in torch's OpenMP builds; without
    # the flag it silently runs on one thread. libgomp.so.1 resolves to the copy torch loads.
    cxx_flags = ["-O3", "-fvisibility=hidden", "-fopenmp"]
    link_flags = ["-fopenmp"]
    # -fno-math-errno: lets GCC vectorise sqrtf (the Philox normals, csrc/cpu/noise.cpp); no
    # vdm_fast code reads errno.
    cxx_flags.append("-fno-math-errno")
    define_macros = []
    include_dirs = [os.path.join(ROOT, "csrc")]
    if use_cuda:
        include_dirs += _extra_cuda_includes(cuda_home)
    if use_cuda:
        ext = cpp_extension.CUDAExtension(
            name="vdm_fast._C",
            sources=cpp_sources + cuda_sources,
            include_dirs=include_dirs,
            define_macros=define_macros + [("VDM_FAST_WITH_CUDA", "1")],
            extra_compile_args={
                "cxx": cxx_flags,
                "nvcc": ["-O3", "-lineinfo"],
            },
            extra_link_args=link_flags,
            py_limited_api=True,
        )
    else:
        ext = cpp_extension.CppExtension(
            name="vdm_fast._C",
            sources=cpp_sources,
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
            py_limited_api=True,
        )
    use_ninja = shutil.which("ninja") is not None

    class BuildExt(cpp_extension.BuildExtension):
        # One object folder whatever the command (editable install, wheel, build_ext --inplace):
        # ninja then recompiles only what changed (it also tracks headers and compile commands),
        # and a wheel built after an editable install reuses its objects instead of compiling
        # everything again. Without ninja, setuptools would reuse objects by source timestamps
        # alone (stale after a header edit), so the default per-build folder stays.
        def finalize_options(self):
            super().finalize_options()
            if use_ninja:
                self.build_temp = os.path.join(ROOT, "build", "temp")

    return [ext], {"build_ext": BuildExt.with_options(use_ninja=use_ninja)}


def packages():
    """Every package under vdm_fast/, and kernels/ (the Triton kernels) installed as
    vdm_fast.kernels: found, not listed, so a new subpackage cannot be left out of the wheel."""
    found = find_packages(include=["vdm_fast", "vdm_fast.*"])
    found += ["vdm_fast.kernels"] + [f"vdm_fast.kernels.{p}" for p in find_packages("kernels")]
    return found


ext_modules, cmdclass = native_extensions()

setup(
    packages=packages(),
    package_dir={"vdm_fast.kernels": "kernels"},
    package_data={"vdm_fast": ["py.typed"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options={"bdist_wheel": {"py_limited_api": "cp310"}} if ext_modules else {},
)
