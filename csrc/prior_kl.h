// Host-side checks and outputs of prior_kl and prior_kl_backward, shared by the CPU and CUDA
// launchers: validate every argument (messages name it), allocate the outputs and bring x0 into
// the layout the kernels read (common.h).
#pragma once

#include <ATen/ATen.h>

#include <array>

#include "common.h"

namespace vdm_fast {

inline void check_prior_kl_args(const char* op, const at::Tensor& x0, const at::Tensor& alpha,
                                const at::Tensor& sigma) {
  check_data(op, "x0", x0);
  check_coeff_pair(op, x0, "alpha_1", alpha, "sigma_1", sigma);
}

struct PriorKlInputs {
  at::Tensor out;  // (B,), uninitialised: the kernels write every entry
  at::Tensor x;    // x0 in the kernels' layout (undefined when B == 0)
  int64_t B, D;
};

inline PriorKlInputs prepare_prior_kl(const at::Tensor& x0, const at::Tensor& alpha, const at::Tensor& sigma) {
  check_prior_kl_args("vdm_fast::prior_kl", x0, alpha, sigma);
  PriorKlInputs in{at::empty({x0.size(0)}, alpha.options()), {}, x0.size(0), per_sample_numel(x0)};
  if (in.B > 0) in.x = in_layout_of(x0, layout_of(x0));
  return in;
}

struct PriorKlBackwardInputs {
  at::Tensor gx, ga, gs;  // the outputs (empty where not wanted)
  at::Tensor x;           // x0 in gx's layout when read (for gx or the sum), else x0 as it is
  bool want_gx, want_sum;  // want_sum: sum(x0^2) per sample, for the alpha grad
  bool done;               // nothing to compute: the outputs are final
  int64_t B, D;
};

inline PriorKlBackwardInputs prepare_prior_kl_backward(const at::Tensor& grad, const at::Tensor& x0,
                                                       const at::Tensor& alpha, const at::Tensor& sigma,
                                                       std::array<bool, 3> output_mask) {
  constexpr const char* op = "vdm_fast::prior_kl_backward";
  check_prior_kl_args(op, x0, alpha, sigma);
  PriorKlBackwardInputs in;
  in.B = x0.size(0);
  in.D = per_sample_numel(x0);
  check_coeff(op, "grad", grad, in.B, compute_dtype(x0.scalar_type()), x0.device());
  in.want_gx = output_mask[0];
  in.want_sum = output_mask[1];
  in.gx = data_grad_output(in.want_gx, x0);
  in.ga = coeff_grad_output(output_mask[1], alpha, in.B);
  in.gs = coeff_grad_output(output_mask[2], sigma, in.B);
  in.done = in.B == 0 || !(output_mask[0] || output_mask[1] || output_mask[2]);
  if (in.done) return in;
  in.x = in.want_gx || in.want_sum ? in_layout_of(x0, in.want_gx ? in.gx : layout_of(x0)) : x0;
  return in;
}

}  // namespace vdm_fast
