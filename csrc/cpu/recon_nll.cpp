// recon_nll: its schema and autograd (csrc/autograd.h), and on the CPU per-sample sums of the
// categorical decoder's per-element nll, and the fused backward. The 256-way log-softmax is
// evaluated in registers over a window of bins (csrc/recon_nll_math.h); nothing of size
// B x D x 256 exists.
//
// float32 compute (float, half and bfloat16 data) runs csrc/cpu/recon_nll_vec.h: vectorised across
// elements, one fmath::exp_f per summed bin. float64 runs recon_nll_math.h's element() per element
// (scalar, libm exp): a handful of bins per element at VDM's sigma_0 (the window is 3-5 bins for
// sigma_0/alpha_0 ~ 1e-3), all 256 only when sigma_0/alpha_0 is large.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>

#include "autograd.h"
#include "common.h"
#include "cpu/isa.h"
#include "cpu/per_sample.h"
#include "cpu/value_checks.h"
#include "cpu/recon_nll_vec.h"
#include "recon_nll.h"
#include "recon_nll_math.h"

// The schema (DESIGN.md §4.5). The backward follows csrc/autograd.h: the forward's arguments in
// order; x0 is data and gets no gradient.
TORCH_LIBRARY_FRAGMENT(vdm_fast, m) {
  m.def("recon_nll(Tensor x0, Tensor z0, Tensor alpha_0, Tensor sigma_0, str decoder=\"categorical\") -> Tensor");
  // One pass over x0 and z0: grad_z0 elementwise, grad_alpha_0 / grad_sigma_0 per-sample sums,
  // each scaled by the (B,) upstream grad.
  m.def(
      "recon_nll_backward(Tensor grad, Tensor x0, Tensor z0, Tensor alpha_0, Tensor sigma_0, str decoder,"
      " bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}

namespace vdm_fast {
namespace cpu {
namespace {

// float64 compute: scalar, per element. Sub-segment length for the per-sample sums (partials are
// combined in double).
constexpr int64_t kSumBlock = 1024;

template <typename scalar_t, typename acc_t>
double recon_nll_segment(const scalar_t* __restrict x, const scalar_t* __restrict z, acc_t alpha, acc_t sigma, int L,
                         int64_t n) {
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int kstar = recon::bin_index(static_cast<double>(x[i]));
    sum += recon::element<acc_t, false>(static_cast<acc_t>(z[i]), alpha, sigma, kstar, L).nll;
  }
  return sum;
}

// Writes g * d nll/d z0 (when gz) and adds the segment's sums of d nll/d alpha, d nll/d sigma.
template <typename scalar_t, typename acc_t>
void recon_nll_backward_segment(scalar_t* __restrict gz, const scalar_t* __restrict x, const scalar_t* __restrict z,
                                acc_t g, acc_t alpha, acc_t sigma, int L, int64_t n, double* sums) {
  double sa = 0, ss = 0;  // summed in double, as the forward
  for (int64_t i = 0; i < n; ++i) {
    const int kstar = recon::bin_index(static_cast<double>(x[i]));
    const auto e = recon::element<acc_t, true>(static_cast<acc_t>(z[i]), alpha, sigma, kstar, L);
    const auto d = recon::element_grads(e, alpha, sigma, kstar);
    if (gz) gz[i] = static_cast<scalar_t>(g * d.dz);
    sa += d.dalpha;
    ss += d.dsigma;
  }
  sums[0] = sa;
  sums[1] = ss;
}

at::Tensor recon_nll_cpu(const at::Tensor& x0, const at::Tensor& z0, const at::Tensor& alpha, const at::Tensor& sigma,
                         c10::string_view decoder) {
  const ReconNllInputs in = prepare_recon_nll(x0, z0, alpha, sigma, decoder);
  const int64_t B = in.B, D = in.D;
  check_positive(sigma, "recon_nll", "sigma_0");
  at::Tensor out = per_sample_output(B, x0.numel() == 0, alpha.options());
  if (x0.numel() == 0) return out;
  check_within(in.x, -1.0f, 1.0f, "recon_nll", "x0", "[-1.0, 1.0]");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "recon_nll_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const ReconNllPtrs<scalar_t> p = recon_nll_ptrs<scalar_t>(in, alpha, sigma);
    const std::vector<double> sums = reduce_per_sample<1>(B, D, [&](int64_t b, int64_t begin, int64_t end, double* acc_out) {
      if constexpr (std::is_same_v<acc, float>) {
        const recon_vec::Coeffs c = recon_vec::coeffs(p.alpha[b], p.sigma[b]);
        acc_out[0] += with_cpu_isa([&] { return recon_vec::forward_segment(p.x + begin, p.z + begin, c, end - begin); });
      } else {
        const int L = recon::window_bins(p.alpha[b], p.sigma[b]);
        for (int64_t i = begin; i < end; i += kSumBlock) {
          acc_out[0] += recon_nll_segment<scalar_t, acc>(p.x + i, p.z + i, p.alpha[b], p.sigma[b], L,
                                                         std::min(kSumBlock, end - i));
        }
      }
    }, kComputeSerial);
    acc* op_ = out.mutable_data_ptr<acc>();
    for (int64_t b = 0; b < B; ++b) op_[b] = static_cast<acc>(sums[b]);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> recon_nll_backward_cpu(const at::Tensor& grad, const at::Tensor& x0,
                                                                      const at::Tensor& z0, const at::Tensor& alpha,
                                                                      const at::Tensor& sigma,
                                                                      c10::string_view decoder,
                                                                      std::array<bool, 3> output_mask) {
  const ReconNllBackwardInputs in = prepare_recon_nll_backward(grad, x0, z0, alpha, sigma, decoder, output_mask);
  if (in.done) return in.outputs();
  const int64_t B = in.B, D = in.D;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "recon_nll_backward_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const ReconNllPtrs<scalar_t> p = recon_nll_backward_ptrs<scalar_t>(in, grad, alpha, sigma);
    const std::vector<double> sums = reduce_per_sample<2>(B, D, [&](int64_t b, int64_t begin, int64_t end, double* out) {
      scalar_t* gz = p.gz ? p.gz + begin : nullptr;
      if constexpr (std::is_same_v<acc, float>) {
        const recon_vec::Coeffs c = recon_vec::coeffs(p.alpha[b], p.sigma[b]);
        with_cpu_isa([&] { recon_vec::backward_segment(gz, p.x + begin, p.z + begin, c, p.grad[b], end - begin, out); });
      } else {
        const int L = recon::window_bins(p.alpha[b], p.sigma[b]);
        for (int64_t i = begin; i < end; i += kSumBlock) {
          double part[2] = {0, 0};
          recon_nll_backward_segment<scalar_t, acc>(gz ? gz + (i - begin) : nullptr, p.x + i, p.z + i, p.grad[b],
                                                    p.alpha[b], p.sigma[b], L, std::min(kSumBlock, end - i), part);
          out[0] += part[0];
          out[1] += part[1];
        }
      }
    }, kComputeSerial);
    for (int64_t b = 0; b < B; ++b) {
      if (p.ga) p.ga[b] = static_cast<acc>(p.grad[b] * sums[2 * b]);
      if (p.gs) p.gs[b] = static_cast<acc>(p.grad[b] * sums[2 * b + 1]);
    }
  });
  return in.outputs();
}

}  // namespace
}  // namespace cpu
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, CPU, m) {
  m.impl("recon_nll", &vdm_fast::cpu::recon_nll_cpu);
  m.impl("recon_nll_backward", &vdm_fast::cpu::recon_nll_backward_cpu);
}

namespace vdm_fast {
struct ReconNllOp {
  static constexpr const char* kName = "vdm_fast::recon_nll";
  static constexpr const char* kBackward = "vdm_fast::recon_nll_backward";
  static constexpr std::array<bool, 5> kDifferentiable = {false, true, true, true, false};
  using Signature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::string_view);
};
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, Autograd, m) { vdm_fast::register_autograd<vdm_fast::ReconNllOp>(m); }
