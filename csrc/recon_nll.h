// Host-side checks and inputs of recon_nll and recon_nll_backward, shared by the CPU and CUDA
// launchers: validate every argument (messages name it), allocate the gradients and bring x0 and
// z0 into one layout (common.h).
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <tuple>

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
  const at::Tensor layout = layout_of(x0);
  in.x = in_layout_of(x0, layout);
  in.z = in_layout_of(z0, layout);
  return in;
}

struct ReconNllBackwardInputs {
  at::Tensor gz, ga, gs;  // the outputs: grads to z0, alpha_0, sigma_0 (empty where not wanted)
  at::Tensor x, z;        // x0 and z0 in gz's layout (undefined when `done`)
  bool want_gz, want_ga, want_gs;
  bool want_sums;         // per-sample sums for the alpha_0 / sigma_0 grads
  bool done;              // nothing to compute: the outputs are final
  int64_t B, D;

  std::tuple<at::Tensor, at::Tensor, at::Tensor> outputs() const { return {gz, ga, gs}; }
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
  in.want_ga = output_mask[1];
  in.want_gs = output_mask[2];
  in.want_sums = in.want_ga || in.want_gs;
  in.gz = data_grad_output(in.want_gz, x0);
  in.ga = coeff_grad_output(in.want_ga, alpha, in.B);
  in.gs = coeff_grad_output(in.want_gs, sigma, in.B);
  in.done = x0.numel() == 0 || !(in.want_gz || in.want_sums);
  if (in.done) return in;
  const at::Tensor layout = in.want_gz ? in.gz : layout_of(x0);
  in.x = in_layout_of(x0, layout);
  in.z = in_layout_of(z0, layout);
  return in;
}

// The raw pointers both backends' kernels take, for data of type scalar_t; the backward's outputs
// are null where not wanted.
template <typename scalar_t>
struct ReconNllPtrs {
  const scalar_t *x, *z;
  const acc_t<scalar_t> *alpha, *sigma;
  const acc_t<scalar_t>* grad = nullptr;         // the backward's upstream grad
  scalar_t* gz = nullptr;                        // the backward's grad to z0
  acc_t<scalar_t> *ga = nullptr, *gs = nullptr;  // the backward's grads to alpha_0, sigma_0
};

// Either op's inputs (ReconNllInputs or ReconNllBackwardInputs).
template <typename scalar_t, typename Inputs>
ReconNllPtrs<scalar_t> recon_nll_ptrs(const Inputs& in, const at::Tensor& alpha, const at::Tensor& sigma) {
  return {in.x.template const_data_ptr<scalar_t>(), in.z.template const_data_ptr<scalar_t>(),
          alpha.const_data_ptr<acc_t<scalar_t>>(), sigma.const_data_ptr<acc_t<scalar_t>>()};
}

template <typename scalar_t>
ReconNllPtrs<scalar_t> recon_nll_backward_ptrs(const ReconNllBackwardInputs& in, const at::Tensor& grad,
                                               const at::Tensor& alpha, const at::Tensor& sigma) {
  using acc = acc_t<scalar_t>;
  ReconNllPtrs<scalar_t> ptr = recon_nll_ptrs<scalar_t>(in, alpha, sigma);
  ptr.grad = grad.const_data_ptr<acc>();
  ptr.gz = output_ptr<scalar_t>(in.want_gz, in.gz);
  ptr.ga = output_ptr<acc>(in.want_ga, in.ga);
  ptr.gs = output_ptr<acc>(in.want_gs, in.gs);
  return ptr;
}

}  // namespace vdm_fast
