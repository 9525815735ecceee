// Host-side checks and outputs of gaussian_kl and gaussian_kl_backward, shared by the CPU and CUDA
// launchers: validate every argument (messages name it), allocate the outputs and bring mean_q,
// log_var_q, mean_p, log_var_p into one layout (common.h). Also the per-element math, written once
// for the CPU and CUDA kernels (host and device).
//
// KL(N(mq, exp(lq)) || N(mp, exp(lp))) per element, in nats:
//   1/2 (-1 + lp - lq + exp(lq - lp) + (mq - mp)^2 exp(-lp)),
// the variance ratio as one exp of the log-variance difference (no overflow for large equal
// log-variances). Derivatives, times the upstream grad g of the per-sample sum:
//   d/dmq = (mq - mp) exp(-lp),  d/dmp = -d/dmq,
//   d/dlq = 1/2 (exp(lq - lp) - 1),  d/dlp = 1/2 (1 - exp(lq - lp) - (mq - mp)^2 exp(-lp)).
#pragma once

#include <ATen/ATen.h>
#include <c10/macros/Macros.h>

#include <array>
#include <cmath>

#include "common.h"

namespace vdm_fast {

namespace gaussian_kl_math {

// The exp the math uses by default (CUDA, and the CPU's float64 path); the CPU's float32 loops pass
// fmath::exp_f instead, which vectorises (csrc/cpu/fast_math.h).
struct StdExp {
  template <typename T>
  C10_HOST_DEVICE T operator()(T v) const {
    return std::exp(v);
  }
};

// Twice the element's KL (the kernels sum these and halve the per-sample sum), in the order of
// vdm_fast/reference.py::gaussian_kl.
template <typename acc_t, typename Exp = StdExp>
C10_HOST_DEVICE inline acc_t twice_kl(acc_t mq, acc_t lq, acc_t mp, acc_t lp, Exp exp = {}) {
  const acc_t dm = mq - mp;
  return ((lp - acc_t(1)) - lq) + exp(lq - lp) + dm * dm * exp(-lp);
}

template <typename acc_t>
struct Grads {
  acc_t mq, lq, lp;  // d/dmean_p = -mq
};

// The element's gradients scaled by g (the upstream grad of its sample).
template <typename acc_t, typename Exp = StdExp>
C10_HOST_DEVICE inline Grads<acc_t> grads(acc_t mq, acc_t lq, acc_t mp, acc_t lp, acc_t g, Exp exp = {}) {
  const acc_t dm = mq - mp;
  const acc_t ip = exp(-lp);
  const acc_t r = exp(lq - lp);
  const acc_t h = acc_t(0.5) * g;
  return {g * dm * ip, h * (r - acc_t(1)), h * ((acc_t(1) - r) - dm * dm * ip)};
}

}  // namespace gaussian_kl_math

inline void check_gaussian_kl_args(const char* op, const at::Tensor& mean_q, const at::Tensor& log_var_q,
                                   const at::Tensor& mean_p, const at::Tensor& log_var_p) {
  check_data(op, "mean_q", mean_q);
  check_same_data(op, "log_var_q", log_var_q, mean_q, "mean_q");
  check_same_data(op, "mean_p", mean_p, mean_q, "mean_q");
  check_same_data(op, "log_var_p", log_var_p, mean_q, "mean_q");
}

struct GaussianKlInputs {
  at::Tensor out;             // (B,) in the compute dtype: zeros when `done`, else uninitialised
  at::Tensor mq, lq, mp, lp;  // the inputs in one layout (undefined when `done`)
  bool done;                  // no element: out is final
  int64_t B, D;
};

inline GaussianKlInputs prepare_gaussian_kl(const at::Tensor& mean_q, const at::Tensor& log_var_q,
                                            const at::Tensor& mean_p, const at::Tensor& log_var_p) {
  check_gaussian_kl_args("vdm_fast::gaussian_kl", mean_q, log_var_q, mean_p, log_var_p);
  GaussianKlInputs in;
  in.B = mean_q.size(0);
  in.D = per_sample_numel(mean_q);
  in.done = mean_q.numel() == 0;
  const auto options = mean_q.options().dtype(compute_dtype(mean_q.scalar_type()));
  in.out = per_sample_output(in.B, in.done, options);
  if (in.done) return in;
  const at::Tensor layout = layout_of(mean_q);
  in.mq = in_layout_of(mean_q, layout);
  in.lq = in_layout_of(log_var_q, layout);
  in.mp = in_layout_of(mean_p, layout);
  in.lp = in_layout_of(log_var_p, layout);
  return in;
}

struct GaussianKlBackwardInputs {
  at::Tensor gmq, glq, gmp, glp;  // the outputs (empty where not wanted), one layout
  at::Tensor mq, lq, mp, lp;      // the inputs in the outputs' layout (undefined when `done`)
  std::array<bool, 4> want;
  bool done;  // nothing to compute: the outputs are final
  int64_t B, D;
};

inline GaussianKlBackwardInputs prepare_gaussian_kl_backward(const at::Tensor& grad, const at::Tensor& mean_q,
                                                             const at::Tensor& log_var_q, const at::Tensor& mean_p,
                                                             const at::Tensor& log_var_p,
                                                             std::array<bool, 4> output_mask) {
  constexpr const char* op = "vdm_fast::gaussian_kl_backward";
  check_gaussian_kl_args(op, mean_q, log_var_q, mean_p, log_var_p);
  GaussianKlBackwardInputs in;
  in.B = mean_q.size(0);
  in.D = per_sample_numel(mean_q);
  check_coeff(op, "grad", grad, in.B, compute_dtype(mean_q.scalar_type()), mean_q.device());
  in.want = output_mask;
  in.gmq = data_grad_output(output_mask[0], mean_q);
  in.glq = data_grad_output(output_mask[1], mean_q);
  in.gmp = data_grad_output(output_mask[2], mean_q);
  in.glp = data_grad_output(output_mask[3], mean_q);
  const bool any = output_mask[0] || output_mask[1] || output_mask[2] || output_mask[3];
  in.done = mean_q.numel() == 0 || !any;
  if (in.done) return in;
  // The layout of every wanted gradient (data_grad_output: all like mean_q).
  const at::Tensor& layout = output_mask[0] ? in.gmq : output_mask[1] ? in.glq : output_mask[2] ? in.gmp : in.glp;
  in.mq = in_layout_of(mean_q, layout);
  in.lq = in_layout_of(log_var_q, layout);
  in.mp = in_layout_of(mean_p, layout);
  in.lp = in_layout_of(log_var_p, layout);
  return in;
}

// The raw pointers both backends' kernels take, for data of type scalar_t: the four inputs, and
// for the backward the upstream grad and the gradients (null where not wanted).
template <typename scalar_t>
struct GaussianKlPtrs {
  const scalar_t *mq, *lq, *mp, *lp;
  const acc_t<scalar_t>* grad = nullptr;
  scalar_t *gmq = nullptr, *glq = nullptr, *gmp = nullptr, *glp = nullptr;
};

// Either op's inputs (GaussianKlInputs or GaussianKlBackwardInputs).
template <typename scalar_t, typename Inputs>
GaussianKlPtrs<scalar_t> gaussian_kl_ptrs(const Inputs& in) {
  return {in.mq.template const_data_ptr<scalar_t>(), in.lq.template const_data_ptr<scalar_t>(),
          in.mp.template const_data_ptr<scalar_t>(), in.lp.template const_data_ptr<scalar_t>()};
}

template <typename scalar_t>
GaussianKlPtrs<scalar_t> gaussian_kl_backward_ptrs(const GaussianKlBackwardInputs& in, const at::Tensor& grad) {
  GaussianKlPtrs<scalar_t> ptr = gaussian_kl_ptrs<scalar_t>(in);
  ptr.grad = grad.const_data_ptr<acc_t<scalar_t>>();
  ptr.gmq = output_ptr<scalar_t>(in.want[0], in.gmq);
  ptr.glq = output_ptr<scalar_t>(in.want[1], in.glq);
  ptr.gmp = output_ptr<scalar_t>(in.want[2], in.gmp);
  ptr.glp = output_ptr<scalar_t>(in.want[3], in.glp);
  return ptr;
}

}  // namespace vdm_fast
