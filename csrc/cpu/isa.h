// Which instruction set the CPU loops run with (DESIGN.md §7.1).
//
// The hot loops are plain loops over raw pointers that GCC auto-vectorises. `with_cpu_isa(f)`
// runs f() from one of three copies of it: baseline x86-64, x86-64-v3 (AVX2 + FMA) or x86-64-v4
// (AVX-512). The two wide copies are functions with a `target` attribute and `flatten`, which
// inlines f's whole body (the loop) into them, so the one loop is compiled three ways without
// -march=native and without a second copy of its source. The copy is chosen by `cpu_isa()`: the
// widest level the CPU supports, capped by ATEN_CPU_CAPABILITY ("default", "avx2", "avx512"),
// PyTorch's own switch for its kernels, read once. The cap is what lets the tests run every path
// on one machine: the wide copies contract a*b + c to FMA and the baseline one does not, so the
// paths round differently (tests/test_cpu_paths.py).
//
// Only ISA flags are added (never `arch=`): GCC inlines a function into a caller whose ISA flags
// are a superset of its own, but not into one with another `arch`, so the attribute must leave
// arch and tuning alone for flatten to take the loop in.
#pragma once

namespace vdm_fast {
namespace cpu {

enum class Isa : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

// The level the loops (and the Philox generator, csrc/cpu/noise.cpp) run at in this process.
Isa cpu_isa();
const char* isa_name(Isa isa);

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(VDM_FAST_NO_CLONES)
#define VDM_FAST_X86_DISPATCH 1
// x86-64-v3 and x86-64-v4 as ISA flags (avx2 implies avx and the SSE levels below it).
#define VDM_FAST_ISA_V3 "avx2,fma,f16c,bmi,bmi2,lzcnt,movbe,popcnt"
#define VDM_FAST_ISA_V4 VDM_FAST_ISA_V3 ",avx512f,avx512bw,avx512cd,avx512dq,avx512vl"

template <typename F>
__attribute__((target(VDM_FAST_ISA_V3), flatten)) inline auto run_v3(const F& f) -> decltype(f()) {
  return f();
}

template <typename F>
__attribute__((target(VDM_FAST_ISA_V4), flatten)) inline auto run_v4(const F& f) -> decltype(f()) {
  return f();
}
#endif

// f() compiled for the instruction set of cpu_isa(). f is a lambda around one loop; call this per
// segment or block (the switch costs a load and a branch), not per element.
template <typename F>
inline auto with_cpu_isa(const F& f) -> decltype(f()) {
#if defined(VDM_FAST_X86_DISPATCH)
  switch (cpu_isa()) {
    case Isa::kAvx512:
      return run_v4(f);
    case Isa::kAvx2:
      return run_v3(f);
    case Isa::kBaseline:
      break;
  }
#endif
  return f();
}

}  // namespace cpu
}  // namespace vdm_fast
