// cpu_isa(): the instruction set of the CPU loops (csrc/cpu/isa.h, DESIGN.md §7.1).
#include "cpu/isa.h"

#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <string>

namespace vdm_fast {
namespace cpu {
namespace {

Isa detect() {
#if defined(VDM_FAST_X86_DISPATCH)
  __builtin_cpu_init();
  Isa supported = Isa::kBaseline;
  if (__builtin_cpu_supports("x86-64-v4")) {
    supported = Isa::kAvx512;
  } else if (__builtin_cpu_supports("x86-64-v3")) {
    supported = Isa::kAvx2;
  }
  // PyTorch's values; anything else (unset, "zvector", a typo) leaves the CPU's own level.
  Isa cap = Isa::kAvx512;
  if (const char* want = std::getenv("ATEN_CPU_CAPABILITY")) {
    if (std::strcmp(want, "default") == 0) cap = Isa::kBaseline;
    if (std::strcmp(want, "avx2") == 0) cap = Isa::kAvx2;
  }
  return static_cast<int>(cap) < static_cast<int>(supported) ? cap : supported;
#else
  return Isa::kBaseline;
#endif
}

}  // namespace

Isa cpu_isa() {
  static const Isa isa = detect();
  return isa;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kBaseline:
      break;
  }
  return "default";
}

}  // namespace cpu
}  // namespace vdm_fast

// vdm_fast::cpu_isa() -> str: the level in use, for `vdm-fast env` and the tests that run every path.
TORCH_LIBRARY_FRAGMENT(vdm_fast, m) {
  m.def("cpu_isa() -> str", [] { return std::string(vdm_fast::cpu::isa_name(vdm_fast::cpu::cpu_isa())); });
}
