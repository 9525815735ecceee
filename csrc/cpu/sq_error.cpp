// sq_error on the CPU: out[b] = sum_i (pred - target)^2 over sample b, and its fused backward.
// The target (csrc/targets.h) is built in the loop from x0, noise and the sample's alpha, sigma.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "common.h"
#include "cpu/per_sample.h"
#include "sq_error.h"
#include "targets.h"

namespace vdm_fast {
namespace cpu {
namespace {

// Sub-segment length: short enough that float accumulators stay accurate and the residuals of
// one block stay in L1 between the backward's loops, long enough to vectorise well. Partials are
// combined in double.
constexpr int64_t kBlock = 1024;

template <int T, typename scalar_t, typename acc_t>
acc_t sq_error_block(const scalar_t* __restrict p, const scalar_t* __restrict x, const scalar_t* __restrict n,
                     acc_t tx, acc_t tn, int64_t len) {
  acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < len; ++i) {
    const acc_t xi = target_uses_x0<T>() ? static_cast<acc_t>(x[i]) : acc_t(0);
    const acc_t ni = target_uses_noise<T>() ? static_cast<acc_t>(n[i]) : acc_t(0);
    const acc_t r = static_cast<acc_t>(p[i]) - target_value<T, acc_t>(xi, ni, tx, tn);
    sum += r * r;
  }
  return sum;
}

// One block of the backward: residuals r = pred - target into `r`, then (each when wanted)
// sums[0] = sum(r*x0), sums[1] = sum(r*noise), and gp = kp*r, gx = kx*r, gn = kn*r.
template <int T, typename scalar_t, typename acc_t>
void sq_error_backward_block(scalar_t* __restrict gp, scalar_t* __restrict gx, scalar_t* __restrict gn,
                             const scalar_t* __restrict p, const scalar_t* __restrict x,
                             const scalar_t* __restrict n, acc_t tx, acc_t tn, acc_t kp, acc_t kx, acc_t kn,
                             bool want_sums, int64_t len, acc_t* __restrict r, acc_t* sums) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    const acc_t xi = target_uses_x0<T>() ? static_cast<acc_t>(x[i]) : acc_t(0);
    const acc_t ni = target_uses_noise<T>() ? static_cast<acc_t>(n[i]) : acc_t(0);
    r[i] = static_cast<acc_t>(p[i]) - target_value<T, acc_t>(xi, ni, tx, tn);
  }
  if (want_sums) {
    acc_t sx = 0, sn = 0;
    if (target_uses_x0<T>()) {
#pragma omp simd reduction(+ : sx)
      for (int64_t i = 0; i < len; ++i) sx += r[i] * static_cast<acc_t>(x[i]);
    }
    if (target_uses_noise<T>()) {
#pragma omp simd reduction(+ : sn)
      for (int64_t i = 0; i < len; ++i) sn += r[i] * static_cast<acc_t>(n[i]);
    }
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
  const at::Tensor& out = in.out;
  if (pred.numel() == 0) return out;
  const at::Tensor &p = in.p, &x = in.x, &n = in.n;
  const Target target = in.target;
  const int64_t B = in.B, D = in.D;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "sq_error_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* pp = p.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* np = n.const_data_ptr<scalar_t>();
    const acc* ap = alpha.const_data_ptr<acc>();
    const acc* sp = sigma.const_data_ptr<acc>();
    dispatch_target(target, [&](auto tag) {
      constexpr int T = decltype(tag)::value;
      const std::vector<double> sums = reduce_per_sample<1>(B, D, [&](int64_t b, int64_t begin, int64_t end, double* o) {
        const TargetCoeffs<acc> c = target_coeffs<T, acc>(ap[b], sp[b]);
        for (int64_t i = begin; i < end; i += kBlock) {
          o[0] += with_cpu_isa(
              [&] { return sq_error_block<T, scalar_t, acc>(pp + i, xp + i, np + i, c.tx, c.tn, std::min(kBlock, end - i)); });
        }
      });
      acc* op_ = out.mutable_data_ptr<acc>();
      for (int64_t b = 0; b < B; ++b) op_[b] = static_cast<acc>(sums[b]);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sq_error_backward_cpu(
    const at::Tensor& grad, const at::Tensor& pred, const at::Tensor& x0, const at::Tensor& noise,
    const at::Tensor& alpha, const at::Tensor& sigma, c10::string_view target_name, std::array<bool, 5> output_mask) {
  const SqErrorBackwardInputs in =
      prepare_sq_error_backward(grad, pred, x0, noise, alpha, sigma, target_name, output_mask);
  const at::Tensor &gp = in.gp, &gx = in.gx, &gn = in.gn, &ga = in.ga, &gs = in.gs;
  if (in.done) return {gp, gx, gn, ga, gs};
  const at::Tensor &p = in.p, &x = in.x, &n = in.n;
  const Target target = in.target;
  const bool want_gp = in.want_gp, want_gx = in.want_gx, want_gn = in.want_gn, want_sums = in.want_sums;
  const int64_t B = in.B, D = in.D;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "sq_error_backward_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* pp = p.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* np = n.const_data_ptr<scalar_t>();
    scalar_t* gpp = want_gp ? gp.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* gxp = want_gx ? gx.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* gnp = want_gn ? gn.mutable_data_ptr<scalar_t>() : nullptr;
    const acc* ap = alpha.const_data_ptr<acc>();
    const acc* sp = sigma.const_data_ptr<acc>();
    const acc* up = grad.const_data_ptr<acc>();
    dispatch_target(target, [&](auto tag) {
      constexpr int T = decltype(tag)::value;
      const std::vector<double> sums =
          reduce_per_sample<2>(B, D, [&](int64_t b, int64_t begin, int64_t end, double* o) {
            const TargetCoeffs<acc> c = target_coeffs<T, acc>(ap[b], sp[b]);
            const acc k = acc(2) * up[b];  // d(r^2)/dr times the upstream grad
            acc r[kBlock];
            for (int64_t i = begin; i < end; i += kBlock) {
              acc part[2] = {0, 0};
              with_cpu_isa([&] {
                sq_error_backward_block<T, scalar_t, acc>(gpp ? gpp + i : nullptr, gxp ? gxp + i : nullptr,
                                                          gnp ? gnp + i : nullptr, pp + i, xp + i, np + i, c.tx, c.tn,
                                                          k, -k * c.tx, -k * c.tn, want_sums,
                                                          std::min(kBlock, end - i), r, part);
              });
              o[0] += part[0];
              o[1] += part[1];
            }
          });
      if (!want_sums) return;
      // d/dtheta sum(r^2) = -2 sum(r * (dtx/dtheta x0 + dtn/dtheta noise)), theta in {alpha, sigma}.
      acc* gap = output_mask[3] ? ga.mutable_data_ptr<acc>() : nullptr;
      acc* gsp = output_mask[4] ? gs.mutable_data_ptr<acc>() : nullptr;
      for (int64_t b = 0; b < B; ++b) {
        const TargetCoeffs<acc> c = target_coeffs<T, acc>(ap[b], sp[b]);
        const double k = -2.0 * static_cast<double>(up[b]), srx = sums[2 * b], srn = sums[2 * b + 1];
        if (gap) gap[b] = static_cast<acc>(k * (c.dtx_da * srx + c.dtn_da * srn));
        if (gsp) gsp[b] = static_cast<acc>(k * (c.dtx_ds * srx + c.dtn_ds * srn));
      }
    });
  });
  return {gp, gx, gn, ga, gs};
}

}  // namespace
}  // namespace cpu
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, CPU, m) {
  m.impl("sq_error", &vdm_fast::cpu::sq_error_cpu);
  m.impl("sq_error_backward", &vdm_fast::cpu::sq_error_backward_cpu);
}
