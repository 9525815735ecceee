// Host-side checks and outputs of sq_error and sq_error_backward, shared by the CPU and CUDA
// launchers: validate every argument (messages name it), allocate the outputs and bring the data
// inputs the target reads into one layout (common.h). A data input the target does not read is
// never copied: its slot holds pred (same shape and layout), which the kernels do not read.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <tuple>

#include "common.h"
#include "targets.h"

namespace vdm_fast {

// What the forward and the backward share: the checks, the target, the sizes and pred, x0, noise
// in one layout.
struct SqErrorData {
  Target target;
  at::Tensor p, x, n;  // pred, x0, noise in one layout (undefined until load)
  int64_t B, D;

  SqErrorData(const char* op, const at::Tensor& pred, const at::Tensor& x0, const at::Tensor& noise,
              const at::Tensor& alpha, const at::Tensor& sigma, c10::string_view target_name)
      : target(parse_target(op, target_name)) {
    check_data(op, "pred", pred);
    check_same_data(op, "x0", x0, pred, "pred");
    check_same_data(op, "noise", noise, pred, "pred");
    check_coeff_pair(op, pred, "alpha", alpha, "sigma", sigma);
    B = pred.size(0);
    D = per_sample_numel(pred);
  }

  // pred, x0, noise in the storage layout of `layout`.
  void load(const at::Tensor& pred, const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& layout) {
    p = in_layout_of(pred, layout);
    x = target_uses_x0(target) ? in_layout_of(x0, layout) : p;
    n = target_uses_noise(target) ? in_layout_of(noise, layout) : p;
  }
};

struct SqErrorInputs : SqErrorData {
  using SqErrorData::SqErrorData;
  at::Tensor out;  // (B,): zeros when pred has no elements, else uninitialised (the kernels write every entry)
};

inline SqErrorInputs prepare_sq_error(const at::Tensor& pred, const at::Tensor& x0, const at::Tensor& noise,
                                      const at::Tensor& alpha, const at::Tensor& sigma,
                                      c10::string_view target_name) {
  SqErrorInputs in("vdm_fast::sq_error", pred, x0, noise, alpha, sigma, target_name);
  in.out = per_sample_output(in.B, pred.numel() == 0, alpha.options());
  // pred's layout when pred is batch-major dense (no copy), else contiguous.
  if (pred.numel() > 0) in.load(pred, x0, noise, layout_of(pred));
  return in;
}

struct SqErrorBackwardInputs : SqErrorData {
  using SqErrorData::SqErrorData;
  at::Tensor gp, gx, gn, ga, gs;   // the outputs (empty where not wanted; zeros where structurally zero)
  bool want_gp, want_gx, want_gn;  // data grads the kernel writes
  bool want_ga, want_gs;           // wanted alpha / sigma grads
  bool want_sums;                  // per-sample sums for the alpha / sigma grads
  bool done;                       // nothing to compute: the outputs are final

  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> outputs() const {
    return {gp, gx, gn, ga, gs};
  }
};

inline SqErrorBackwardInputs prepare_sq_error_backward(const at::Tensor& grad, const at::Tensor& pred,
                                                       const at::Tensor& x0, const at::Tensor& noise,
                                                       const at::Tensor& alpha, const at::Tensor& sigma,
                                                       c10::string_view target_name,
                                                       std::array<bool, 5> output_mask) {
  constexpr const char* op = "vdm_fast::sq_error_backward";
  SqErrorBackwardInputs in(op, pred, x0, noise, alpha, sigma, target_name);
  check_coeff(op, "grad", grad, in.B, compute_dtype(pred.scalar_type()), pred.device());
  in.want_gp = output_mask[0];
  in.want_gx = output_mask[1] && target_uses_x0(in.target);
  in.want_gn = output_mask[2] && target_uses_noise(in.target);
  in.want_ga = output_mask[3];
  in.want_gs = output_mask[4];
  in.want_sums = (in.want_ga || in.want_gs) && target_uses_alpha_sigma(in.target);
  // A wanted gradient that is structurally zero for this target is zeros, and the kernel skips it.
  const auto data_grad = [&](bool wanted, bool computed) {
    return wanted && !computed ? empty_out_like(pred).zero_() : data_grad_output(wanted, pred);
  };
  in.gp = data_grad(output_mask[0], true);
  in.gx = data_grad(output_mask[1], in.want_gx);
  in.gn = data_grad(output_mask[2], in.want_gn);
  in.ga = coeff_grad_output(in.want_ga, alpha, in.B);
  in.gs = coeff_grad_output(in.want_gs, sigma, in.B);
  in.done = pred.numel() == 0 || !(in.want_gp || in.want_gx || in.want_gn || in.want_sums);
  if (in.done) return in;
  in.load(pred, x0, noise, in.want_gp ? in.gp : (in.want_gx ? in.gx : (in.want_gn ? in.gn : layout_of(pred))));
  return in;
}

// The raw pointers both backends' kernels take, for data of type scalar_t. x and n are pred's
// where the target does not read them (never read); the backward's outputs are null where the
// kernels do not write them.
template <typename scalar_t>
struct SqErrorPtrs {
  const scalar_t *p, *x, *n;
  const acc_t<scalar_t> *alpha, *sigma;
  const acc_t<scalar_t>* up = nullptr;                   // the backward's upstream grad
  scalar_t *gp = nullptr, *gx = nullptr, *gn = nullptr;  // the backward's data grads
  acc_t<scalar_t> *ga = nullptr, *gs = nullptr;          // the backward's alpha / sigma grads
};

template <typename scalar_t>
SqErrorPtrs<scalar_t> sq_error_ptrs(const SqErrorData& in, const at::Tensor& alpha, const at::Tensor& sigma) {
  return {in.p.const_data_ptr<scalar_t>(), in.x.const_data_ptr<scalar_t>(), in.n.const_data_ptr<scalar_t>(),
          alpha.const_data_ptr<acc_t<scalar_t>>(), sigma.const_data_ptr<acc_t<scalar_t>>()};
}

template <typename scalar_t>
SqErrorPtrs<scalar_t> sq_error_backward_ptrs(const SqErrorBackwardInputs& in, const at::Tensor& grad,
                                             const at::Tensor& alpha, const at::Tensor& sigma) {
  using acc = acc_t<scalar_t>;
  SqErrorPtrs<scalar_t> ptr = sq_error_ptrs<scalar_t>(in, alpha, sigma);
  ptr.up = grad.const_data_ptr<acc>();
  ptr.gp = output_ptr<scalar_t>(in.want_gp, in.gp);
  ptr.gx = output_ptr<scalar_t>(in.want_gx, in.gx);
  ptr.gn = output_ptr<scalar_t>(in.want_gn, in.gn);
  ptr.ga = output_ptr<acc>(in.want_ga, in.ga);
  ptr.gs = output_ptr<acc>(in.want_gs, in.gs);
  return ptr;
}

}  // namespace vdm_fast
