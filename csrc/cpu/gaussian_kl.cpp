// gaussian_kl: its schema and autograd (csrc/autograd.h), and on the CPU the per-sample sums of
// KL(N(mean_q, exp(log_var_q)) || N(mean_p, exp(log_var_p))) over the elements, and the fused
// backward (the four gradients elementwise, one pass). Math: csrc/gaussian_kl.h.
// The float32 loops use fmath::exp_f; GCC vectorises them only where it may assume floating-point
// operations do not trap (csrc/cpu/fast_math.h). Before every #include, so all of this file gets it.
#pragma GCC optimize("no-trapping-math")
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "autograd.h"
#include "cpu/fast_math.h"
#include "common.h"
#include "cpu/per_sample.h"
#include "gaussian_kl.h"

// The schema. The backward follows csrc/autograd.h: the forward's arguments in order, all four
// differentiable.
TORCH_LIBRARY_FRAGMENT(vdm_fast, m) {
  // (B,) in the compute dtype (float32; float64 for float64 data), nats.
  m.def("gaussian_kl(Tensor mean_q, Tensor log_var_q, Tensor mean_p, Tensor log_var_p) -> Tensor");
  // One pass over the four inputs: the four gradients elementwise (data dtype, one layout), scaled
  // by the (B,) upstream grad.
  m.def(
      "gaussian_kl_backward(Tensor grad, Tensor mean_q, Tensor log_var_q, Tensor mean_p, Tensor log_var_p,"
      " bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");
}

namespace vdm_fast {
namespace cpu {
namespace {

// exp for the loops: fmath::exp_f in float32 (vectorises; <= 2 ulp), libm's in float64.
struct CpuExp {
  float operator()(float v) const { return fmath::exp_f(v); }
  double operator()(double v) const { return std::exp(v); }
};

// Terms in acc_t, summed in double lane partials (lane_sum): a float running sum absorbs the terms
// below half an ulp of a large partial (DESIGN.md §4.10, tests/test_accurate_sums.py).
template <typename scalar_t, typename acc_t>
double gaussian_kl_block(const scalar_t* __restrict mq, const scalar_t* __restrict lq, const scalar_t* __restrict mp,
                         const scalar_t* __restrict lp, int64_t len) {
  return lane_sum(len, [&](int64_t i) {
    return gaussian_kl_math::twice_kl<acc_t>(static_cast<acc_t>(mq[i]), static_cast<acc_t>(lq[i]),
                                             static_cast<acc_t>(mp[i]), static_cast<acc_t>(lp[i]), CpuExp{});
  });
}

// The gradients of one segment of sample b (upstream grad g); a null output is not wanted.
template <typename scalar_t, typename acc_t>
void gaussian_kl_backward_segment(scalar_t* __restrict gmq, scalar_t* __restrict glq, scalar_t* __restrict gmp,
                                  scalar_t* __restrict glp, const scalar_t* __restrict mq,
                                  const scalar_t* __restrict lq, const scalar_t* __restrict mp,
                                  const scalar_t* __restrict lp, acc_t g, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const auto d = gaussian_kl_math::grads<acc_t>(static_cast<acc_t>(mq[i]), static_cast<acc_t>(lq[i]),
                                                  static_cast<acc_t>(mp[i]), static_cast<acc_t>(lp[i]), g, CpuExp{});
    if (gmq) gmq[i] = static_cast<scalar_t>(d.mq);
    if (glq) glq[i] = static_cast<scalar_t>(d.lq);
    if (gmp) gmp[i] = static_cast<scalar_t>(-d.mq);
    if (glp) glp[i] = static_cast<scalar_t>(d.lp);
  }
}

at::Tensor gaussian_kl_cpu(const at::Tensor& mean_q, const at::Tensor& log_var_q, const at::Tensor& mean_p,
                           const at::Tensor& log_var_p) {
  const GaussianKlInputs in = prepare_gaussian_kl(mean_q, log_var_q, mean_p, log_var_p);
  const at::Tensor& out = in.out;
  if (in.done) return out;
  const int64_t B = in.B, D = in.D;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mean_q.scalar_type(), "gaussian_kl_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const GaussianKlPtrs<scalar_t> ptr = gaussian_kl_ptrs<scalar_t>(in);
    // One lane sum per segment (at most kGrain elements), as sq_error and prior_kl.
    const std::vector<double> sums = reduce_per_sample<1>(B, D, [&](int64_t, int64_t begin, int64_t end, double* o) {
      o[0] += with_cpu_isa([&] {
        return gaussian_kl_block<scalar_t, acc>(ptr.mq + begin, ptr.lq + begin, ptr.mp + begin, ptr.lp + begin,
                                                end - begin);
      });
    });
    acc* outp = out.mutable_data_ptr<acc>();
    for (int64_t b = 0; b < B; ++b) outp[b] = static_cast<acc>(0.5 * sums[b]);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gaussian_kl_backward_cpu(
    const at::Tensor& grad, const at::Tensor& mean_q, const at::Tensor& log_var_q, const at::Tensor& mean_p,
    const at::Tensor& log_var_p, std::array<bool, 4> output_mask) {
  const GaussianKlBackwardInputs in =
      prepare_gaussian_kl_backward(grad, mean_q, log_var_q, mean_p, log_var_p, output_mask);
  if (in.done) return {in.gmq, in.glq, in.gmp, in.glp};
  const int64_t B = in.B, D = in.D;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mean_q.scalar_type(), "gaussian_kl_backward_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const GaussianKlPtrs<scalar_t> ptr = gaussian_kl_backward_ptrs<scalar_t>(in, grad);
    for_each_segment(B, D, [&](int64_t b, int64_t begin, int64_t end) {
      auto seg = [begin](scalar_t* p) { return p ? p + begin : nullptr; };
      with_cpu_isa([&] {
        gaussian_kl_backward_segment<scalar_t, acc>(seg(ptr.gmq), seg(ptr.glq), seg(ptr.gmp), seg(ptr.glp),
                                                    ptr.mq + begin, ptr.lq + begin, ptr.mp + begin, ptr.lp + begin,
                                                    ptr.grad[b], end - begin);
      });
    });
  });
  return {in.gmq, in.glq, in.gmp, in.glp};
}

}  // namespace
}  // namespace cpu
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, CPU, m) {
  m.impl("gaussian_kl", &vdm_fast::cpu::gaussian_kl_cpu);
  m.impl("gaussian_kl_backward", &vdm_fast::cpu::gaussian_kl_backward_cpu);
}

namespace vdm_fast {
struct GaussianKlOp {
  static constexpr const char* kName = "vdm_fast::gaussian_kl";
  static constexpr const char* kBackward = "vdm_fast::gaussian_kl_backward";
  static constexpr std::array<bool, 4> kDifferentiable = {true, true, true, true};
  using Signature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&);
};
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, Autograd, m) { vdm_fast::register_autograd<vdm_fast::GaussianKlOp>(m); }
