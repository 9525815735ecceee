// discretized_gaussian_nll: its schema and autograd (csrc/autograd.h), and on the CPU per-sample sums of -log P(x0's bin), and the fused
// backward (elementwise grads to mean and log_scale). Math: csrc/discretized_gaussian_math.h,
// with ATen's own log_ndtr so results equal torch.special.log_ndtr's.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/native/Math.h>
#include <torch/library.h>

#include "autograd.h"
#include "common.h"
#include "cpu/per_sample.h"
#include "discretized_gaussian_math.h"
#include "discretized_gaussian_nll.h"

// The schema (DESIGN.md §4.5). The backward follows csrc/autograd.h: the forward's arguments in
// order; x0 is data and gets no gradient.
TORCH_LIBRARY_FRAGMENT(vdm_fast, m) {
  m.def("discretized_gaussian_nll(Tensor x0, Tensor mean, Tensor log_scale, str cdf=\"erf\") -> Tensor");
  // One pass over x0, mean, log_scale: grad_mean and grad_log_scale elementwise, scaled by the
  // (B,) upstream grad.
  m.def(
      "discretized_gaussian_nll_backward(Tensor grad, Tensor x0, Tensor mean, Tensor log_scale, str cdf,"
      " bool[2] output_mask) -> (Tensor, Tensor)");
}

namespace vdm_fast {
namespace cpu {
namespace {

constexpr int64_t kSumBlock = 1024;

struct LogNdtr {
  template <typename T>
  T operator()(T x) const {
    return calc_log_ndtr(x);  // ATen/native/Math.h, global namespace
  }
};

// Terms in acc_t, summed in double (scalar loop, compute-bound: a float running sum would absorb
// the small terms, a bias; see recon_nll.cpp).
template <typename scalar_t, typename acc_t, bool TANH>
double dgauss_segment(const scalar_t* __restrict x, const scalar_t* __restrict m, const scalar_t* __restrict ls,
                      int64_t n) {
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    sum += dgauss::element<acc_t, TANH, false>(static_cast<acc_t>(x[i]), static_cast<acc_t>(m[i]),
                                               static_cast<acc_t>(ls[i]), LogNdtr{})
               .lp;
  }
  return sum;
}

template <typename scalar_t, typename acc_t, bool TANH>
void dgauss_backward_segment(scalar_t* __restrict gm, scalar_t* __restrict gl, const scalar_t* __restrict x,
                             const scalar_t* __restrict m, const scalar_t* __restrict ls, acc_t g, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const auto e = dgauss::element<acc_t, TANH, true>(static_cast<acc_t>(x[i]), static_cast<acc_t>(m[i]),
                                                      static_cast<acc_t>(ls[i]), LogNdtr{});
    // nll = -sum lp: the gradients carry a minus sign.
    if (gm) gm[i] = static_cast<scalar_t>(-g * e.dmean);
    if (gl) gl[i] = static_cast<scalar_t>(-g * e.dls);
  }
}

at::Tensor dgauss_cpu(const at::Tensor& x0, const at::Tensor& mean, const at::Tensor& log_scale,
                      c10::string_view cdf) {
  const DgaussInputs in = prepare_dgauss(x0, mean, log_scale, cdf);
  const int64_t B = in.B, D = in.D;
  const bool tanh = in.tanh;
  at::Tensor out = at::zeros({B}, x0.options().dtype(compute_dtype(x0.scalar_type())));
  if (x0.numel() == 0) return out;
  const at::Tensor &x = in.x, &m = in.m, &l = in.l;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "discretized_gaussian_nll_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* mp = m.const_data_ptr<scalar_t>();
    const scalar_t* lp = l.const_data_ptr<scalar_t>();
    const std::vector<double> sums = reduce_per_sample<1>(B, D, [&](int64_t, int64_t begin, int64_t end, double* o) {
      for (int64_t i = begin; i < end; i += kSumBlock) {
        const int64_t len = std::min(kSumBlock, end - i);
        o[0] += tanh ? dgauss_segment<scalar_t, acc, true>(xp + i, mp + i, lp + i, len)
                     : dgauss_segment<scalar_t, acc, false>(xp + i, mp + i, lp + i, len);
      }
    });
    acc* outp = out.mutable_data_ptr<acc>();
    for (int64_t b = 0; b < B; ++b) outp[b] = static_cast<acc>(-sums[b]);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> dgauss_backward_cpu(const at::Tensor& grad, const at::Tensor& x0,
                                                       const at::Tensor& mean, const at::Tensor& log_scale,
                                                       c10::string_view cdf, std::array<bool, 2> output_mask) {
  const DgaussBackwardInputs in = prepare_dgauss_backward(grad, x0, mean, log_scale, cdf, output_mask);
  const at::Tensor &gm = in.gm, &gl = in.gl;
  if (in.done) return {gm, gl};
  const at::Tensor &x = in.x, &m = in.m, &l = in.l;
  const bool tanh = in.tanh, want_gm = in.want_gm, want_gl = in.want_gl;
  const int64_t B = in.B, D = in.D;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "discretized_gaussian_nll_backward_cpu",
                                  [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* mp = m.const_data_ptr<scalar_t>();
    const scalar_t* lp = l.const_data_ptr<scalar_t>();
    scalar_t* gmp = want_gm ? gm.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* glp = want_gl ? gl.mutable_data_ptr<scalar_t>() : nullptr;
    const acc* gp = grad.const_data_ptr<acc>();
    for_each_segment(B, D, [&](int64_t b, int64_t begin, int64_t end) {
      const int64_t n = end - begin;
      scalar_t* gmi = gmp ? gmp + begin : nullptr;
      scalar_t* gli = glp ? glp + begin : nullptr;
      if (tanh) {
        dgauss_backward_segment<scalar_t, acc, true>(gmi, gli, xp + begin, mp + begin, lp + begin, gp[b], n);
      } else {
        dgauss_backward_segment<scalar_t, acc, false>(gmi, gli, xp + begin, mp + begin, lp + begin, gp[b], n);
      }
    });
  });
  return {gm, gl};
}

}  // namespace
}  // namespace cpu
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, CPU, m) {
  m.impl("discretized_gaussian_nll", &vdm_fast::cpu::dgauss_cpu);
  m.impl("discretized_gaussian_nll_backward", &vdm_fast::cpu::dgauss_backward_cpu);
}

namespace vdm_fast {
struct DiscretizedGaussianNllOp {
  static constexpr const char* kName = "vdm_fast::discretized_gaussian_nll";
  static constexpr const char* kBackward = "vdm_fast::discretized_gaussian_nll_backward";
  static constexpr std::array<bool, 4> kDifferentiable = {false, true, true, false};
  using Signature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::string_view);
};
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, Autograd, m) { vdm_fast::register_autograd<vdm_fast::DiscretizedGaussianNllOp>(m); }
