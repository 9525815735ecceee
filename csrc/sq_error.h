// Host-side checks and outputs of sq_error and sq_error_backward, shared by the CPU and CUDA
// launchers: validate every argument (messages name it), allocate the outputs and bring the data
// inputs the target reads into one layout (common.h). A data input the target does not read is
// never copied: its slot holds pred (same shape and layout), which the kernels do not read.
#pragma once

#include <ATen/ATen.h>

#include <array>

#include "common.h"
#include "targets.h"

namespace vdm_fast {

inline void check_sq_error_args(const char* op, const at::Tensor& pred, const at::Tensor& x0, const at::Tensor& noise,
                                const at::Tensor& alpha, const at::Tensor& sigma) {
  check_data(op, "pred", pred);
  check_same_data(op, "x0", x0, pred, "pred");
  check_same_data(op, "noise", noise, pred, "pred");
  check_coeff_pair(op, pred, "alpha", alpha, "sigma", sigma);
}

inline bool target_reads_x0(Target t) { return t == kX0 || t == kV; }
inline bool target_reads_noise(Target t) { return t != kX0; }

struct SqErrorInputs {
  Target target;
  at::Tensor out;      // (B,), zeros
  at::Tensor p, x, n;  // pred, x0, noise in one layout (undefined when the data is empty)
  int64_t B, D;
};

inline SqErrorInputs prepare_sq_error(const at::Tensor& pred, const at::Tensor& x0, const at::Tensor& noise,
                                      const at::Tensor& alpha, const at::Tensor& sigma,
                                      c10::string_view target_name) {
  constexpr const char* op = "vdm_fast::sq_error";
  SqErrorInputs in;
  in.target = parse_target(op, target_name);
  check_sq_error_args(op, pred, x0, noise, alpha, sigma);
  in.B = pred.size(0);
  in.D = per_sample_numel(pred);
  in.out = at::zeros({in.B}, alpha.options());
  if (pred.numel() == 0) return in;
  // pred's layout when pred is batch-major dense (no copy), else contiguous.
  const at::Tensor layout = empty_out_like(pred);
  in.p = in_layout_of(pred, layout);
  in.x = target_reads_x0(in.target) ? in_layout_of(x0, layout) : in.p;
  in.n = target_reads_noise(in.target) ? in_layout_of(noise, layout) : in.p;
  return in;
}

struct SqErrorBackwardInputs {
  Target target;
  at::Tensor gp, gx, gn, ga, gs;  // the outputs (empty where not wanted; zeros where structurally zero)
  at::Tensor p, x, n;             // pred, x0, noise in the outputs' layout (undefined when `done`)
  bool want_gp, want_gx, want_gn;  // data grads the kernel writes
  bool want_sums;                  // per-sample sums for the alpha / sigma grads
  bool done;                       // nothing to compute: the outputs are final
  int64_t B, D;
};

inline SqErrorBackwardInputs prepare_sq_error_backward(const at::Tensor& grad, const at::Tensor& pred,
                                                       const at::Tensor& x0, const at::Tensor& noise,
                                                       const at::Tensor& alpha, const at::Tensor& sigma,
                                                       c10::string_view target_name,
                                                       std::array<bool, 5> output_mask) {
  constexpr const char* op = "vdm_fast::sq_error_backward";
  SqErrorBackwardInputs in;
  in.target = parse_target(op, target_name);
  check_sq_error_args(op, pred, x0, noise, alpha, sigma);
  in.B = pred.size(0);
  in.D = per_sample_numel(pred);
  check_coeff(op, "grad", grad, in.B, compute_dtype(pred.scalar_type()), pred.device());

  const bool uses_x = target_reads_x0(in.target), uses_n = target_reads_noise(in.target);
  const bool param_target = in.target == kV || in.target == kScore;  // depends on alpha / sigma
  in.want_gp = output_mask[0];
  in.want_gx = output_mask[1] && uses_x;
  in.want_gn = output_mask[2] && uses_n;
  in.want_sums = (output_mask[3] || output_mask[4]) && param_target;
  // A wanted gradient that is structurally zero for this target is zeros, and the kernel skips it.
  const auto data_grad = [&](bool wanted, bool computed) {
    return wanted && !computed ? empty_out_like(pred).zero_() : data_grad_output(wanted, pred);
  };
  in.gp = data_grad(output_mask[0], true);
  in.gx = data_grad(output_mask[1], in.want_gx);
  in.gn = data_grad(output_mask[2], in.want_gn);
  in.ga = coeff_grad_output(output_mask[3], alpha, in.B);
  in.gs = coeff_grad_output(output_mask[4], sigma, in.B);
  in.done = pred.numel() == 0 || !(in.want_gp || in.want_gx || in.want_gn || in.want_sums);
  if (in.done) return in;
  const at::Tensor layout =
      in.want_gp ? in.gp : (in.want_gx ? in.gx : (in.want_gn ? in.gn : empty_out_like(pred)));
  in.p = in_layout_of(pred, layout);
  in.x = uses_x ? in_layout_of(x0, layout) : in.p;
  in.n = uses_n ? in_layout_of(noise, layout) : in.p;
  return in;
}

}  // namespace vdm_fast
