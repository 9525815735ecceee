// sq_error: its schema and autograd (csrc/autograd.h), and on the CPU out[b] = sum_i (pred -
// target)^2 over sample b, and its fused backward.
// The target (csrc/targets.h) is built in the loop from x0, noise and the sample's alpha, sigma.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "autograd.h"
#include "common.h"
#include "cpu/per_sample.h"
#include "sq_error.h"
#include "targets.h"

// The schema (DESIGN.md §4.3). The backward follows csrc/autograd.h: the forward's arguments in order.
TORCH_LIBRARY_FRAGMENT(vdm_fast, m) {
  // out[b] = sum_i (pred - target)^2 over sample b, in the compute dtype (float32; float64 for
  // float64 data). target is "eps", "x0", "v" or "score", built in-kernel from x0, noise, alpha, sigma.
  m.def("sq_error(Tensor pred, Tensor x0, Tensor noise, Tensor alpha, Tensor sigma, str target) -> Tensor");
  // One pass over pred, x0, noise (only those the target reads) for an upstream grad of shape (B,):
  // grads to pred, x0, noise (elementwise, in the data dtype and layout) and to alpha, sigma
  // (per-sample sums, compute dtype). A wanted grad that is structurally zero (x0 for "eps", say)
  // comes back as zeros.
  m.def(
      "sq_error_backward(Tensor grad, Tensor pred, Tensor x0, Tensor noise, Tensor alpha, Tensor sigma, str target,"
      " bool[5] output_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

namespace vdm_fast {
namespace cpu {
namespace {

// The backward's sub-segment length: the residuals of one block stay in L1 between its loops, long
// enough to vectorise well.
constexpr int64_t kBlock = 1024;

// The sums go through lane_sum (csrc/cpu/per_sample.h): double lane partials. A float lane
// partial holding one large term absorbs every later small term of its lane, and how many share a
// lane depends on the vector width (tests/test_accurate_sums.py failed at AVX2 with float lanes).
template <int T, typename scalar_t, typename acc_t>
double sq_error_block(const scalar_t* __restrict p, const scalar_t* __restrict x, const scalar_t* __restrict n,
                      acc_t tx, acc_t tn, int64_t len) {
  return lane_sum(len, [&](int64_t i) {
    const acc_t xi = target_uses_x0<T>() ? static_cast<acc_t>(x[i]) : acc_t(0);
    const acc_t ni = target_uses_noise<T>() ? static_cast<acc_t>(n[i]) : acc_t(0);
    const acc_t r = static_cast<acc_t>(p[i]) - target_value<T, acc_t>(xi, ni, tx, tn);
    return r * r;
  });
}

// One block of the backward: residuals r = pred - target into `r`, then (each when wanted)
// sums[0] = sum(r*x0), sums[1] = sum(r*noise), and gp = kp*r, gx = kx*r, gn = kn*r.
template <int T, typename scalar_t, typename acc_t>
void sq_error_backward_block(scalar_t* __restrict gp, scalar_t* __restrict gx, scalar_t* __restrict gn,
                             const scalar_t* __restrict p, const scalar_t* __restrict x,
                             const scalar_t* __restrict n, acc_t tx, acc_t tn, acc_t kp, acc_t kx, acc_t kn,
                             bool want_sums, int64_t len, acc_t* __restrict r, double* sums) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    const acc_t xi = target_uses_x0<T>() ? static_cast<acc_t>(x[i]) : acc_t(0);
    const acc_t ni = target_uses_noise<T>() ? static_cast<acc_t>(n[i]) : acc_t(0);
    r[i] = static_cast<acc_t>(p[i]) - target_value<T, acc_t>(xi, ni, tx, tn);
  }
  if (want_sums) {
    double sx = 0, sn = 0;  // double lanes, as in sq_error_block
    if (target_uses_x0<T>()) sx = lane_sum(len, [&](int64_t i) { return r[i] * static_cast<acc_t>(x[i]); });
    if (target_uses_noise<T>()) sn = lane_sum(len, [&](int64_t i) { return r[i] * static_cast<acc_t>(n[i]); });
    sums[0] = sx;
    sums[1] = sn;
  }
  if (gp) {
    for (int64_t i = 0; i < len; ++i) gp[i] = static_cast<scalar_t>(kp * r[i]);
  }
  if (gx) {
    for (int64_t i = 0; i < len; ++i) gx[i] = static_cast<scalar_t>(kx * r[i]);
  }
  if (gn) {
    for (int64_t i = 0; i < len; ++i) gn[i] = static_cast<scalar_t>(kn * r[i]);
  }
}

at::Tensor sq_error_cpu(const at::Tensor& pred, const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& alpha,
                        const at::Tensor& sigma, c10::string_view target_name) {
  const SqErrorInputs in = prepare_sq_error(pred, x0, noise, alpha, sigma, target_name);
  if (pred.numel() == 0) return in.out;
  const int64_t B = in.B, D = in.D;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "sq_error_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const SqErrorPtrs<scalar_t> ptr = sq_error_ptrs<scalar_t>(in, alpha, sigma);
    dispatch_target(in.target, [&](auto tag) {
      constexpr int T = decltype(tag)::value;
      // One lane sum per segment (at most kGrain elements; double lanes lose nothing over a longer
      // run, and their final tree is paid once).
      const std::vector<double> sums = reduce_per_sample<1>(B, D, [&](int64_t b, int64_t begin, int64_t end, double* o) {
        const TargetCoeffs<acc> c = target_coeffs<T, acc>(ptr.alpha[b], ptr.sigma[b]);
        o[0] += with_cpu_isa([&] {
          return sq_error_block<T, scalar_t, acc>(ptr.p + begin, ptr.x + begin, ptr.n + begin, c.tx, c.tn, end - begin);
        });
      });
      acc* op_ = in.out.mutable_data_ptr<acc>();
      for (int64_t b = 0; b < B; ++b) op_[b] = static_cast<acc>(sums[b]);
    });
  });
  return in.out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sq_error_backward_cpu(
    const at::Tensor& grad, const at::Tensor& pred, const at::Tensor& x0, const at::Tensor& noise,
    const at::Tensor& alpha, const at::Tensor& sigma, c10::string_view target_name, std::array<bool, 5> output_mask) {
  const SqErrorBackwardInputs in =
      prepare_sq_error_backward(grad, pred, x0, noise, alpha, sigma, target_name, output_mask);
  if (in.done) return in.outputs();
  const int64_t B = in.B, D = in.D;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "sq_error_backward_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const SqErrorPtrs<scalar_t> ptr = sq_error_backward_ptrs<scalar_t>(in, grad, alpha, sigma);
    dispatch_target(in.target, [&](auto tag) {
      constexpr int T = decltype(tag)::value;
      const std::vector<double> sums =
          reduce_per_sample<2>(B, D, [&](int64_t b, int64_t begin, int64_t end, double* o) {
            const TargetCoeffs<acc> c = target_coeffs<T, acc>(ptr.alpha[b], ptr.sigma[b]);
            const acc k = acc(2) * ptr.up[b];  // d(r^2)/dr times the upstream grad
            acc r[kBlock];
            for (int64_t i = begin; i < end; i += kBlock) {
              double part[2] = {0, 0};
              with_cpu_isa([&] {
                sq_error_backward_block<T, scalar_t, acc>(ptr.gp ? ptr.gp + i : nullptr, ptr.gx ? ptr.gx + i : nullptr,
                                                          ptr.gn ? ptr.gn + i : nullptr, ptr.p + i, ptr.x + i,
                                                          ptr.n + i, c.tx, c.tn, k, -k * c.tx, -k * c.tn,
                                                          in.want_sums, std::min(kBlock, end - i), r, part);
              });
              o[0] += part[0];
              o[1] += part[1];
            }
          });
      if (!in.want_sums) return;
      // d/dtheta sum(r^2) = -2 sum(r * (dtx/dtheta x0 + dtn/dtheta noise)), theta in {alpha, sigma}.
      for (int64_t b = 0; b < B; ++b) {
        const TargetCoeffs<acc> c = target_coeffs<T, acc>(ptr.alpha[b], ptr.sigma[b]);
        const double k = -2.0 * static_cast<double>(ptr.up[b]), srx = sums[2 * b], srn = sums[2 * b + 1];
        if (ptr.ga) ptr.ga[b] = static_cast<acc>(k * (c.dtx_da * srx + c.dtn_da * srn));
        if (ptr.gs) ptr.gs[b] = static_cast<acc>(k * (c.dtx_ds * srx + c.dtn_ds * srn));
      }
    });
  });
  return in.outputs();
}

}  // namespace
}  // namespace cpu
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, CPU, m) {
  m.impl("sq_error", &vdm_fast::cpu::sq_error_cpu);
  m.impl("sq_error_backward", &vdm_fast::cpu::sq_error_backward_cpu);
}

namespace vdm_fast {
struct SqErrorOp {
  static constexpr const char* kName = "vdm_fast::sq_error";
  static constexpr const char* kBackward = "vdm_fast::sq_error_backward";
  static constexpr std::array<bool, 6> kDifferentiable = {true, true, true, true, true, false};
  using Signature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::string_view);
};
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, Autograd, m) { vdm_fast::register_autograd<vdm_fast::SqErrorOp>(m); }
