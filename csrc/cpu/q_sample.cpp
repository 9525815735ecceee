// q_sample: its schema and autograd (csrc/autograd.h), and on the CPU z = alpha[b] * x0 +
// sigma[b] * noise in one pass, and its fused backward.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "autograd.h"
#include "common.h"
#include "cpu/per_sample.h"
#include "q_sample.h"

// The schema (DESIGN.md §4.1). The backward follows csrc/autograd.h: the forward's arguments in order.
TORCH_LIBRARY_FRAGMENT(vdm_fast, m) {
  m.def("q_sample(Tensor x0, Tensor alpha, Tensor sigma, Tensor noise) -> Tensor");
  // One pass over grad, x0 and noise: grad_x0 = alpha*grad, grad_alpha[b] = sum(grad*x0),
  // grad_sigma[b] = sum(grad*noise), grad_noise = sigma*grad.
  m.def(
      "q_sample_backward(Tensor grad, Tensor x0, Tensor alpha, Tensor sigma, Tensor noise, bool[4] output_mask)"
      " -> (Tensor, Tensor, Tensor, Tensor)");
}

namespace vdm_fast {
namespace cpu {
namespace {

template <typename scalar_t, typename acc_t>
void q_sample_segment(scalar_t* __restrict z, const scalar_t* __restrict x0, const scalar_t* __restrict noise,
                      acc_t alpha, acc_t sigma, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    z[i] = static_cast<scalar_t>(alpha * static_cast<acc_t>(x0[i]) + sigma * static_cast<acc_t>(noise[i]));
  }
}

// Writes grad_x0 / grad_noise (either may be null) and returns the segment's sums of grad*x0 and
// grad*noise (computed only when wanted), summed in double: the loop is scalar, and a float running
// sum absorbs the products below half an ulp of a large partial (tests/test_accurate_sums.py).
template <typename scalar_t, typename acc_t>
void q_sample_backward_segment(scalar_t* __restrict gx, scalar_t* __restrict gn, const scalar_t* __restrict g,
                               const scalar_t* __restrict x0, const scalar_t* __restrict noise, acc_t alpha,
                               acc_t sigma, bool want_sums, int64_t n, double* sums) {
  if (gx) {
    for (int64_t i = 0; i < n; ++i) gx[i] = static_cast<scalar_t>(alpha * static_cast<acc_t>(g[i]));
  }
  if (gn) {
    for (int64_t i = 0; i < n; ++i) gn[i] = static_cast<scalar_t>(sigma * static_cast<acc_t>(g[i]));
  }
  if (want_sums) {
    double sx = 0, sn = 0;
    for (int64_t i = 0; i < n; ++i) {
      const acc_t gi = static_cast<acc_t>(g[i]);
      sx += static_cast<double>(gi * static_cast<acc_t>(x0[i]));
      sn += static_cast<double>(gi * static_cast<acc_t>(noise[i]));
    }
    sums[0] = sx;
    sums[1] = sn;
  }
}

// Sub-segment length for the per-sample sums: short enough that a float accumulator stays
// accurate, long enough to vectorise well. Partials are combined in double.
constexpr int64_t kSumBlock = 1024;

at::Tensor q_sample_cpu(const at::Tensor& x0, const at::Tensor& alpha, const at::Tensor& sigma,
                        const at::Tensor& noise) {
  const QSampleInputs in = prepare_q_sample(x0, alpha, sigma, noise);
  if (in.z.numel() == 0) return in.z;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "q_sample_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const QSamplePtrs<scalar_t> p = q_sample_ptrs<scalar_t>(in, alpha, sigma);
    for_each_segment(in.B, in.D, [&](int64_t b, int64_t begin, int64_t end) {
      with_cpu_isa([&] {
        q_sample_segment<scalar_t, acc>(p.z + begin, p.x + begin, p.n + begin, p.alpha[b], p.sigma[b], end - begin);
      });
    });
  });
  return in.z;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> q_sample_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x0, const at::Tensor& alpha, const at::Tensor& sigma,
    const at::Tensor& noise, std::array<bool, 4> output_mask) {
  const QSampleBackwardInputs in = prepare_q_sample_backward(grad, x0, alpha, sigma, noise, output_mask);
  if (in.done) return in.outputs();
  const int64_t B = in.B, D = in.D;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "q_sample_backward_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const QSamplePtrs<scalar_t> p = q_sample_backward_ptrs<scalar_t>(in, alpha, sigma);
    const std::vector<double> sums = reduce_per_sample<2>(B, D, [&](int64_t b, int64_t begin, int64_t end, double* out) {
      for (int64_t i = begin; i < end; i += kSumBlock) {
        const int64_t len = std::min(kSumBlock, end - i);
        double part[2] = {0, 0};
        with_cpu_isa([&] {
          q_sample_backward_segment<scalar_t, acc>(p.gx ? p.gx + i : nullptr, p.gn ? p.gn + i : nullptr, p.g + i,
                                                   p.x + i, p.n + i, p.alpha[b], p.sigma[b], in.want_sums, len, part);
        });
        out[0] += part[0];
        out[1] += part[1];
      }
    });
    for (int64_t b = 0; b < B; ++b) {
      if (p.ga) p.ga[b] = static_cast<acc>(sums[2 * b]);
      if (p.gs) p.gs[b] = static_cast<acc>(sums[2 * b + 1]);
    }
  });
  return in.outputs();
}

}  // namespace
}  // namespace cpu
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, CPU, m) {
  m.impl("q_sample", &vdm_fast::cpu::q_sample_cpu);
  m.impl("q_sample_backward", &vdm_fast::cpu::q_sample_backward_cpu);
}

namespace vdm_fast {
struct QSampleOp {
  static constexpr const char* kName = "vdm_fast::q_sample";
  static constexpr const char* kBackward = "vdm_fast::q_sample_backward";
  static constexpr std::array<bool, 4> kDifferentiable = {true, true, true, true};
  using Signature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&);
};
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, Autograd, m) { vdm_fast::register_autograd<vdm_fast::QSampleOp>(m); }
