// prior_kl: its schema and autograd (csrc/autograd.h), and on the CPU L_prior[b] = a^2/2 * sum_i x_i^2 + D/2 (s^2 - 1 - log s^2), and its fused
// backward. The data pass is the per-sample sum of squares; the rest is per-sample arithmetic.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cmath>

#include "autograd.h"
#include "common.h"
#include "cpu/per_sample.h"
#include "cpu/value_checks.h"
#include "prior_kl.h"

// The schema (DESIGN.md §4.4). The backward follows csrc/autograd.h: the forward's arguments in order.
// L_prior[b] = 1/2 sum_i (a^2 x_i^2 + s^2 - 1 - log s^2) = a^2/2 * sum_i x_i^2 + D/2 (s^2 - 1 - log s^2):
// the only pass over the data is the per-sample sum of squares.
TORCH_LIBRARY_FRAGMENT(vdm_fast, m) {
  // (B,) in the compute dtype (float32; float64 for float64 data), nats.
  m.def("prior_kl(Tensor x0, Tensor alpha_1, Tensor sigma_1) -> Tensor");
  // For an upstream grad of shape (B,): grad_x0 = grad*a^2*x0 (data dtype and layout),
  // grad_alpha_1 = grad*a*sum(x0^2) (reads x0 only when wanted), grad_sigma_1 = grad*D*(s - 1/s).
  m.def(
      "prior_kl_backward(Tensor grad, Tensor x0, Tensor alpha_1, Tensor sigma_1, bool[3] output_mask)"
      " -> (Tensor, Tensor, Tensor)");
}

namespace vdm_fast {
namespace cpu {
namespace {

// Sub-segment length of the backward's pass (the gradient written, the sum taken, block by block).
constexpr int64_t kBlock = 1024;

// Double lane partials (lane_sum, DESIGN.md §4.10).
template <typename scalar_t, typename acc_t>
double sum_squares_block(const scalar_t* __restrict x, int64_t len) {
  return lane_sum(len, [&](int64_t i) {
    const acc_t xi = static_cast<acc_t>(x[i]);
    return xi * xi;
  });
}

// gx = k * x (k = grad * a^2), and the block's sum of squares when wanted.
template <typename scalar_t, typename acc_t>
double prior_kl_backward_block(scalar_t* __restrict gx, const scalar_t* __restrict x, acc_t k, bool want_sum,
                               int64_t len) {
  if (gx) {
    for (int64_t i = 0; i < len; ++i) gx[i] = static_cast<scalar_t>(k * static_cast<acc_t>(x[i]));
  }
  return want_sum ? sum_squares_block<scalar_t, acc_t>(x, len) : 0.0;
}

at::Tensor prior_kl_cpu(const at::Tensor& x0, const at::Tensor& alpha, const at::Tensor& sigma) {
  const PriorKlInputs in = prepare_prior_kl(x0, alpha, sigma);
  const at::Tensor &out = in.out, &x = in.x;
  const int64_t B = in.B, D = in.D;
  check_positive(sigma, "prior_kl", "sigma_1");
  if (B == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "prior_kl_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    // One lane sum over the whole segment (at most kGrain elements): its lanes are double, so a
    // longer run loses nothing, and the lanes' final tree is paid once per segment.
    const std::vector<double> sums = reduce_per_sample<1>(B, D, [&](int64_t, int64_t begin, int64_t end, double* o) {
      o[0] += with_cpu_isa([&] { return sum_squares_block<scalar_t, acc>(xp + begin, end - begin); });
    });
    const acc* ap = alpha.const_data_ptr<acc>();
    const acc* sp = sigma.const_data_ptr<acc>();
    acc* outp = out.mutable_data_ptr<acc>();
    for (int64_t b = 0; b < B; ++b) {
      const acc a2 = ap[b] * ap[b], s2 = sp[b] * sp[b];
      outp[b] = acc(0.5) * a2 * static_cast<acc>(sums[b]) +
                acc(0.5) * static_cast<acc>(D) * (s2 - acc(1) - std::log(s2));
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> prior_kl_backward_cpu(const at::Tensor& grad, const at::Tensor& x0,
                                                                     const at::Tensor& alpha, const at::Tensor& sigma,
                                                                     std::array<bool, 3> output_mask) {
  const PriorKlBackwardInputs in = prepare_prior_kl_backward(grad, x0, alpha, sigma, output_mask);
  const at::Tensor &gx = in.gx, &ga = in.ga, &gs = in.gs, &x = in.x;
  if (in.done) return {gx, ga, gs};
  const bool want_gx = in.want_gx, want_sums = in.want_sum;
  const int64_t B = in.B, D = in.D;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "prior_kl_backward_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* gxp = want_gx ? gx.mutable_data_ptr<scalar_t>() : nullptr;
    const acc* ap = alpha.const_data_ptr<acc>();
    const acc* sp = sigma.const_data_ptr<acc>();
    const acc* up = grad.const_data_ptr<acc>();
    std::vector<double> sums;
    if (want_gx || want_sums) {
      sums = reduce_per_sample<1>(B, D, [&](int64_t b, int64_t begin, int64_t end, double* o) {
        const acc k = up[b] * ap[b] * ap[b];
        for (int64_t i = begin; i < end; i += kBlock) {
          o[0] += with_cpu_isa([&] {
            return prior_kl_backward_block<scalar_t, acc>(gxp ? gxp + i : nullptr, xp + i, k, want_sums,
                                                          std::min(kBlock, end - i));
          });
        }
      });
    }
    acc* gap = output_mask[1] ? ga.mutable_data_ptr<acc>() : nullptr;
    acc* gsp = output_mask[2] ? gs.mutable_data_ptr<acc>() : nullptr;
    for (int64_t b = 0; b < B; ++b) {
      if (gap) gap[b] = up[b] * ap[b] * static_cast<acc>(sums[b]);
      if (gsp) gsp[b] = up[b] * static_cast<acc>(D) * (sp[b] - acc(1) / sp[b]);
    }
  });
  return {gx, ga, gs};
}

}  // namespace
}  // namespace cpu
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, CPU, m) {
  m.impl("prior_kl", &vdm_fast::cpu::prior_kl_cpu);
  m.impl("prior_kl_backward", &vdm_fast::cpu::prior_kl_backward_cpu);
}

namespace vdm_fast {
struct PriorKlOp {
  static constexpr const char* kName = "vdm_fast::prior_kl";
  static constexpr const char* kBackward = "vdm_fast::prior_kl_backward";
  static constexpr std::array<bool, 3> kDifferentiable = {true, true, true};
  using Signature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&);
};
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, Autograd, m) { vdm_fast::register_autograd<vdm_fast::PriorKlOp>(m); }
