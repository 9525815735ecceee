// Host-side checks and outputs of q_sample, q_sample_backward and q_sample_randn, shared by the
// CPU and CUDA launchers: validate every argument (messages name it), allocate the outputs by the
// layout rule (common.h) and bring the data inputs into the outputs' layout.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <tuple>

#include "common.h"
#include "noise_args.h"

namespace vdm_fast {

struct QSampleInputs {
  at::Tensor z;     // the output
  at::Tensor x, n;  // x0 and noise in z's layout (undefined when z is empty)
  int64_t B, D;
};

inline QSampleInputs prepare_q_sample(const at::Tensor& x0, const at::Tensor& alpha, const at::Tensor& sigma,
                                      const at::Tensor& noise) {
  constexpr const char* op = "vdm_fast::q_sample";
  check_data(op, "x0", x0);
  check_same_data(op, "noise", noise, x0, "x0");
  check_coeff_pair(op, x0, "alpha", alpha, "sigma", sigma);
  QSampleInputs in{new_output_like(x0), {}, {}, x0.size(0), per_sample_numel(x0)};
  if (in.z.numel() == 0) return in;
  in.x = in_layout_of(x0, in.z);
  in.n = in_layout_of(noise, in.z);
  return in;
}

struct QSampleBackwardInputs {
  at::Tensor gx, ga, gs, gn;  // the outputs: grads to x0, alpha, sigma, noise (empty where not wanted)
  at::Tensor g, x, n;         // grad, x0, noise in the outputs' layout (undefined when `done`)
  bool want_gx, want_ga, want_gs, want_gn;
  bool want_sums;             // per-sample sums for the alpha / sigma grads
  bool done;                  // nothing to compute: the outputs are final
  int64_t B, D;

  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> outputs() const { return {gx, ga, gs, gn}; }
};

// The forward's arguments in the forward's order (csrc/autograd.h); output_mask: x0, alpha, sigma, noise.
inline QSampleBackwardInputs prepare_q_sample_backward(const at::Tensor& grad, const at::Tensor& x0,
                                                       const at::Tensor& alpha, const at::Tensor& sigma,
                                                       const at::Tensor& noise, std::array<bool, 4> output_mask) {
  constexpr const char* op = "vdm_fast::q_sample_backward";
  check_data(op, "x0", x0);
  check_same_data(op, "noise", noise, x0, "x0");
  check_same_data(op, "grad", grad, x0, "x0");
  check_coeff_pair(op, x0, "alpha", alpha, "sigma", sigma);
  QSampleBackwardInputs in;
  in.B = x0.size(0);
  in.D = per_sample_numel(x0);
  in.want_gx = output_mask[0];
  in.want_ga = output_mask[1];
  in.want_gs = output_mask[2];
  in.want_gn = output_mask[3];
  in.want_sums = in.want_ga || in.want_gs;
  in.gx = data_grad_output(in.want_gx, x0);
  in.gn = data_grad_output(in.want_gn, x0);
  in.ga = coeff_grad_output(in.want_ga, alpha, in.B);
  in.gs = coeff_grad_output(in.want_gs, sigma, in.B);
  in.done = x0.numel() == 0 || !(in.want_gx || in.want_gn || in.want_sums);
  if (in.done) return in;
  const at::Tensor layout = in.want_gx ? in.gx : (in.want_gn ? in.gn : layout_of(x0));
  in.g = in_layout_of(grad, layout);
  in.x = in_layout_of(x0, layout);
  in.n = in_layout_of(noise, layout);
  return in;
}

// The raw pointers both backends' q_sample and q_sample_backward kernels take, for data of type
// scalar_t; the backward's outputs are null where not wanted.
template <typename scalar_t>
struct QSamplePtrs {
  const scalar_t *x, *n;
  const acc_t<scalar_t> *alpha, *sigma;
  scalar_t* z = nullptr;                         // the forward's output
  const scalar_t* g = nullptr;                   // the backward's upstream grad
  scalar_t *gx = nullptr, *gn = nullptr;         // the backward's grads to x0, noise
  acc_t<scalar_t> *ga = nullptr, *gs = nullptr;  // the backward's grads to alpha, sigma
};

// Either op's inputs (QSampleInputs or QSampleBackwardInputs).
template <typename scalar_t, typename Inputs>
QSamplePtrs<scalar_t> q_sample_input_ptrs(const Inputs& in, const at::Tensor& alpha, const at::Tensor& sigma) {
  return {in.x.template const_data_ptr<scalar_t>(), in.n.template const_data_ptr<scalar_t>(),
          alpha.const_data_ptr<acc_t<scalar_t>>(), sigma.const_data_ptr<acc_t<scalar_t>>()};
}

template <typename scalar_t>
QSamplePtrs<scalar_t> q_sample_ptrs(const QSampleInputs& in, const at::Tensor& alpha, const at::Tensor& sigma) {
  QSamplePtrs<scalar_t> ptr = q_sample_input_ptrs<scalar_t>(in, alpha, sigma);
  ptr.z = in.z.mutable_data_ptr<scalar_t>();
  return ptr;
}

template <typename scalar_t>
QSamplePtrs<scalar_t> q_sample_backward_ptrs(const QSampleBackwardInputs& in, const at::Tensor& alpha,
                                             const at::Tensor& sigma) {
  using acc = acc_t<scalar_t>;
  QSamplePtrs<scalar_t> ptr = q_sample_input_ptrs<scalar_t>(in, alpha, sigma);
  ptr.g = in.g.const_data_ptr<scalar_t>();
  ptr.gx = output_ptr<scalar_t>(in.want_gx, in.gx);
  ptr.gn = output_ptr<scalar_t>(in.want_gn, in.gn);
  ptr.ga = output_ptr<acc>(in.want_ga, in.ga);
  ptr.gs = output_ptr<acc>(in.want_gs, in.gs);
  return ptr;
}

struct QSampleRandnInputs {
  at::Tensor z, noise;  // the outputs, one layout
  at::Tensor x;         // x0 in z's layout (undefined when z is empty)
  int64_t B, D;
};

inline QSampleRandnInputs prepare_q_sample_randn(const at::Tensor& x0, const at::Tensor& alpha,
                                                 const at::Tensor& sigma, const at::Tensor& seed) {
  constexpr const char* op = "vdm_fast::q_sample_randn";
  check_data(op, "x0", x0);
  check_coeff_pair(op, x0, "alpha", alpha, "sigma", sigma);
  check_seed(op, seed, x0.device());
  QSampleRandnInputs in{new_output_like(x0), new_output_like(x0), {}, x0.size(0), per_sample_numel(x0)};
  if (in.z.numel() > 0) in.x = in_layout_of(x0, in.z);
  return in;
}

}  // namespace vdm_fast
