// Host-side checks and inputs of recon_nll and recon_nll_backward, shared by the CPU and CUDA
// launchers: validate every argument (messages name it), allocate the gradients and bring x0 and
// z0 into one layout (common.h).
#pragma once

#include <ATen/ATen.h>

#include <array>

#include "common.h"

namespace vdm_fast {

inline void check_recon_args(const char* op, const at::Tensor& x0, const at::Tensor& z0, const at::Tensor& alpha,
                             const at::Tensor& sigma, c10::string_view decoder) {
  TORCH_CHECK(decoder == "categorical", op, ": decoder must be \"categorical\", got \"", decoder, "\"");
  check_data(op, "x0", x0);
  check_same_data(op, "z0", z0, x0, "x0");
  check_coeff_pair(op, x0, "alpha_0", alpha, "sigma_0", sigma);
}

struct ReconNllInputs {
  at::Tensor x, z;  // x0 and z0 in x0's layout when batch-major dense, else contiguous (undefined when empty)
  int64_t B, D;
};

inline ReconNllInputs prepare_recon_nll(const at::Tensor& x0, const at::Tensor& z0, const at::Tensor& alpha,
                                        const at::Tensor& sigma, c10::string_view decoder) {
  check_recon_args("vdm_fast::recon_nll", x0, z0, alpha, sigma, decoder);
  ReconNllInputs in{{}, {}, x0.size(0), per_sample_numel(x0)};
  if (x0.numel() == 0) return in;
  const at::Tensor layout = empty_out_like(x0);  // never written: it only names the layout
  in.x = in_layout_of(x0, layout);
  in.z = in_layout_of(z0, layout);
  return in;
}

struct ReconNllBackwardInputs {
  at::Tensor gz, ga, gs;  // the outputs: grads to z0, alpha_0, sigma_0 (empty where not wanted)
  at::Tensor x, z;        // x0 and z0 in gz's layout (undefined when `done`)
  bool want_gz, want_sums;
  bool done;              // nothing to compute: the outputs are final
  int64_t B, D;
};

inline ReconNllBackwardInputs prepare_recon_nll_backward(const at::Tensor& grad, const at::Tensor& x0,
                                                         const at::Tensor& z0, const at::Tensor& alpha,
                                                         const at::Tensor& sigma, c10::string_view decoder,
                                                         std::array<bool, 3> output_mask) {
  constexpr const char* op = "vdm_fast::recon_nll_backward";
  check_recon_args(op, x0, z0, alpha, sigma, decoder);
  ReconNllBackwardInputs in;
  in.B = x0.size(0);
  in.D = per_sample_numel(x0);
  check_coeff(op, "grad", grad, in.B, compute_dtype(x0.scalar_type()), x0.device());
  in.want_gz = output_mask[0];
  in.want_sums = output_mask[1] || output_mask[2];
  in.gz = data_grad_output(in.want_gz, x0);
  in.ga = coeff_grad_output(output_mask[1], alpha, in.B);
  in.gs = coeff_grad_output(output_mask[2], sigma, in.B);
  in.done = x0.numel() == 0 || !(in.want_gz || in.want_sums);
  if (in.done) return in;
  const at::Tensor layout = in.want_gz ? in.gz : empty_out_like(x0);
  in.x = in_layout_of(x0, layout);
  in.z = in_layout_of(z0, layout);
  return in;
}

}  // namespace vdm_fast
