// vdm_fast::fast_math(fn, x): the float32 functions of csrc/cpu/fast_math.h and csrc/cpu/ndtr.h
// applied elementwise, so their error bounds can be tested over every float32 input
// (tests/test_fast_math.py, tests/test_ndtr.py). Runs the
// copy of the loop that the kernels run (with_cpu_isa), so the test sees the rounding they get.
// GCC may not if-convert (so not vectorise) a loop whose ?: arms hold floating-point operations
// while it must assume they trap; nothing here reads FP exception flags, and results are the same
// (no reassociation). Before every #include, so each function of this file gets it alike (GCC does
// not inline across differing options).
#pragma GCC optimize("no-trapping-math")
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>

#include "cpu/fast_math.h"
#include "cpu/isa.h"
#include "cpu/ndtr.h"

namespace vdm_fast {
namespace cpu {
namespace {

template <float (*F)(float)>
void apply(const float* __restrict x, float* __restrict y, int64_t n) {
  with_cpu_isa([&] {
    for (int64_t i = 0; i < n; ++i) y[i] = F(x[i]);
  });
}

at::Tensor fast_math(c10::string_view fn, const at::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, "fast_math: x must be float32, got ", x.scalar_type());
  TORCH_CHECK(x.device().is_cpu(), "fast_math: x must be on the CPU, got ", x.device());
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty_like(xc);
  const float* xp = xc.const_data_ptr<float>();
  float* yp = y.mutable_data_ptr<float>();
  if (fn == "exp") {
    apply<fmath::exp_f>(xp, yp, xc.numel());
  } else if (fn == "exp_normal") {
    apply<fmath::exp_normal_f>(xp, yp, xc.numel());
  } else if (fn == "log") {
    apply<fmath::log_f>(xp, yp, xc.numel());
  } else if (fn == "log_normal") {
    apply<fmath::log_normal_f>(xp, yp, xc.numel());
  } else if (fn == "log_ndtr") {
    apply<fmath::log_ndtr_f>(xp, yp, xc.numel());
  } else if (fn == "log1m") {
    apply<fmath::log1m_f>(xp, yp, xc.numel());
  } else {
    TORCH_CHECK(false, "fast_math: fn must be 'exp', 'exp_normal', 'log', 'log_normal', 'log_ndtr' or 'log1m', got '", std::string(fn), "'");
  }
  return y;
}

}  // namespace
}  // namespace cpu
}  // namespace vdm_fast

TORCH_LIBRARY_FRAGMENT(vdm_fast, m) { m.def("fast_math(str fn, Tensor x) -> Tensor"); }
TORCH_LIBRARY_IMPL(vdm_fast, CPU, m) { m.impl("fast_math", &vdm_fast::cpu::fast_math); }
