// Host-side checks and inputs of discretized_gaussian_nll and its backward, shared by the CPU and
// CUDA launchers: validate every argument (messages name it), allocate the gradients and bring
// x0, mean and log_scale into one layout (common.h).
#pragma once

#include <ATen/ATen.h>

#include <array>

#include "common.h"

namespace vdm_fast {

// cdf name -> whether it is the tanh approximation.
inline bool parse_cdf(const char* op, c10::string_view cdf) {
  TORCH_CHECK(cdf == "erf" || cdf == "tanh", op, ": cdf must be \"erf\" or \"tanh\", got \"", cdf, "\"");
  return cdf == "tanh";
}

inline void check_dgauss_args(const char* op, const at::Tensor& x0, const at::Tensor& mean,
                              const at::Tensor& log_scale) {
  check_data(op, "x0", x0);
  check_same_data(op, "mean", mean, x0, "x0");
  check_same_data(op, "log_scale", log_scale, x0, "x0");
}

struct DgaussInputs {
  bool tanh;           // the cdf
  at::Tensor x, m, l;  // x0, mean, log_scale in one layout (undefined when empty)
  int64_t B, D;
};

inline DgaussInputs prepare_dgauss(const at::Tensor& x0, const at::Tensor& mean, const at::Tensor& log_scale,
                                   c10::string_view cdf) {
  constexpr const char* op = "vdm_fast::discretized_gaussian_nll";
  DgaussInputs in;
  in.tanh = parse_cdf(op, cdf);
  check_dgauss_args(op, x0, mean, log_scale);
  in.B = x0.size(0);
  in.D = per_sample_numel(x0);
  if (x0.numel() == 0) return in;
  const at::Tensor layout = layout_of(x0);
  in.x = in_layout_of(x0, layout);
  in.m = in_layout_of(mean, layout);
  in.l = in_layout_of(log_scale, layout);
  return in;
}

struct DgaussBackwardInputs {
  bool tanh;
  at::Tensor gm, gl;   // the outputs: grads to mean and log_scale (empty where not wanted)
  at::Tensor x, m, l;  // x0, mean, log_scale in the outputs' layout (undefined when `done`)
  bool want_gm, want_gl;
  bool done;           // nothing to compute: the outputs are final
  int64_t B, D;
};

inline DgaussBackwardInputs prepare_dgauss_backward(const at::Tensor& grad, const at::Tensor& x0,
                                                    const at::Tensor& mean, const at::Tensor& log_scale,
                                                    c10::string_view cdf, std::array<bool, 2> output_mask) {
  constexpr const char* op = "vdm_fast::discretized_gaussian_nll_backward";
  DgaussBackwardInputs in;
  in.tanh = parse_cdf(op, cdf);
  check_dgauss_args(op, x0, mean, log_scale);
  in.B = x0.size(0);
  in.D = per_sample_numel(x0);
  check_coeff(op, "grad", grad, in.B, compute_dtype(x0.scalar_type()), x0.device());
  in.want_gm = output_mask[0];
  in.want_gl = output_mask[1];
  in.gm = data_grad_output(in.want_gm, x0);
  in.gl = data_grad_output(in.want_gl, x0);
  in.done = x0.numel() == 0 || !(in.want_gm || in.want_gl);
  if (in.done) return in;
  const at::Tensor& layout = in.want_gm ? in.gm : in.gl;
  in.x = in_layout_of(x0, layout);
  in.m = in_layout_of(mean, layout);
  in.l = in_layout_of(log_scale, layout);
  return in;
}

}  // namespace vdm_fast
