// Host-side checks of reverse_step shared by the CPU and CUDA kernels: validate every argument
// (messages name it), allocate the output by the layout rule and bring every data input into the
// output's layout.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "common.h"
#include "noise_args.h"
#include "reverse_step_math.h"

namespace vdm_fast {

struct StepInputs {
  at::Tensor out, z, model_out, uncond, grad, noise;  // data, all in out's layout (optional ones undefined)
  at::Tensor x0_out;                                  // x̂, in out's layout (reverse_step_with_x0 only)
  at::Tensor coeffs, guidance_scale, grad_scale;      // per-sample, compute dtype (optional ones undefined)
  at::Tensor seed;                                    // Philox seed (NoiseSource::kPhilox only)
  uint64_t offset = 0;                                // Philox stream offset
  StepFlags flags;
  double clip;
  int64_t B, D;
};

inline StepInputs prepare_reverse_step(const char* op, const at::Tensor& z, const at::Tensor& model_out,
                                       const at::Tensor& coeffs, const std::optional<at::Tensor>& uncond,
                                       const std::optional<at::Tensor>& guidance_scale,
                                       const std::optional<at::Tensor>& classifier_grad,
                                       const std::optional<at::Tensor>& grad_scale, std::optional<double> clip,
                                       const std::optional<at::Tensor>& noise,
                                       const std::optional<at::Tensor>& seed, int64_t offset,
                                       bool with_x0 = false) {
  check_data(op, "z", z);
  check_same_data(op, "model_out", model_out, z, "z");
  StepInputs in;
  in.B = z.size(0);
  in.D = per_sample_numel(z);
  const auto cdt = compute_dtype(z.scalar_type());
  TORCH_CHECK(coeffs.dim() == 2 && coeffs.size(0) == kStepRows && coeffs.size(1) == in.B, op,
              ": coeffs must have shape (6, B=", in.B, "), rows (a_z, a_m, c_z, c_m, c_x, c_n), got ",
              coeffs.sizes());
  TORCH_CHECK(coeffs.scalar_type() == cdt, op, ": coeffs must be ", cdt, " for this data, got ", coeffs.scalar_type());
  TORCH_CHECK(coeffs.device() == z.device(), op, ": coeffs must be on ", z.device(), ", got ", coeffs.device());
  TORCH_CHECK(coeffs.is_contiguous(), op, ": coeffs must be contiguous");
  in.coeffs = coeffs;

  const bool has_u = uncond.has_value() && uncond->defined();
  const bool has_w = guidance_scale.has_value() && guidance_scale->defined();
  TORCH_CHECK(has_u == has_w, op, ": uncond and guidance_scale go together (classifier-free guidance); got ",
              has_u ? "uncond" : "guidance_scale", " alone");
  const bool has_g = classifier_grad.has_value() && classifier_grad->defined();
  const bool has_gs = grad_scale.has_value() && grad_scale->defined();
  TORCH_CHECK(has_g == has_gs, op, ": classifier_grad and grad_scale go together (classifier guidance); got ",
              has_g ? "classifier_grad" : "grad_scale", " alone");
  const bool has_n = noise.has_value() && noise->defined();
  if (has_u) {
    check_same_data(op, "uncond", *uncond, z, "z");
    check_coeff(op, "guidance_scale", *guidance_scale, in.B, cdt, z.device());
    in.guidance_scale = *guidance_scale;
  }
  if (has_g) {
    check_same_data(op, "classifier_grad", *classifier_grad, z, "z");
    check_coeff(op, "grad_scale", *grad_scale, in.B, cdt, z.device());
    in.grad_scale = *grad_scale;
  }
  const bool has_seed = seed.has_value() && seed->defined();
  TORCH_CHECK(!(has_n && has_seed), op, ": noise and seed are alternatives (a noise tensor, or noise drawn "
              "in-kernel from seed); got both");
  if (has_n) check_same_data(op, "noise", *noise, z, "z");
  if (has_seed) {
    check_seed(op, *seed, z.device());
    in.seed = *seed;
    in.offset = static_cast<uint64_t>(offset);
  }
  TORCH_CHECK(!clip.has_value() || *clip > 0, op, ": clip must be positive, got ", clip.value_or(0.0));
  in.flags = StepFlags{has_u, has_g, clip.has_value(),
                       has_n ? NoiseSource::kTensor : (has_seed ? NoiseSource::kPhilox : NoiseSource::kNone)};
  in.clip = clip.value_or(0.0);

  in.out = new_output_like(z);
  if (with_x0) in.x0_out = at::empty_like(in.out);  // the same layout as out
  if (in.out.numel() == 0) return in;
  in.z = in_layout_of(z, in.out);
  in.model_out = in_layout_of(model_out, in.out);
  if (has_u) in.uncond = in_layout_of(*uncond, in.out);
  if (has_g) in.grad = in_layout_of(*classifier_grad, in.out);
  if (has_n) in.noise = in_layout_of(*noise, in.out);
  return in;
}

// The raw pointers of StepInputs both backends' kernels take, for data of type scalar_t (null for
// an absent optional input), and the clamp bound in the compute type.
template <typename scalar_t>
struct StepPtrs {
  scalar_t* out;
  scalar_t* x0_out;  // null unless reverse_step_with_x0
  const scalar_t *z, *model_out, *uncond, *grad, *noise;  // noise: the tensor (NoiseSource::kTensor)
  const acc_t<scalar_t> *coeffs, *guidance_scale, *grad_scale;
  acc_t<scalar_t> clip;
};

template <typename scalar_t>
StepPtrs<scalar_t> step_ptrs(const StepInputs& in) {
  using acc = acc_t<scalar_t>;
  const bool cfg = in.flags.cfg, cg = in.flags.cg, tensor_noise = in.flags.noise == NoiseSource::kTensor;
  return {in.out.mutable_data_ptr<scalar_t>(),
          in.x0_out.defined() ? in.x0_out.mutable_data_ptr<scalar_t>() : nullptr,
          in.z.const_data_ptr<scalar_t>(),
          in.model_out.const_data_ptr<scalar_t>(),
          cfg ? in.uncond.const_data_ptr<scalar_t>() : nullptr,
          cg ? in.grad.const_data_ptr<scalar_t>() : nullptr,
          tensor_noise ? in.noise.const_data_ptr<scalar_t>() : nullptr,
          in.coeffs.const_data_ptr<acc>(),
          cfg ? in.guidance_scale.const_data_ptr<acc>() : nullptr,
          cg ? in.grad_scale.const_data_ptr<acc>() : nullptr,
          static_cast<acc>(in.clip)};
}

// The two ops' device kernels from one backend's run function (RUN: the step, and x̂ when asked;
// csrc/cpu/reverse_step.cpp, csrc/cuda/reverse_step.cu).
using OptTensor = std::optional<at::Tensor>;
using StepRun = StepInputs (*)(const char*, const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&,
                               const OptTensor&, const OptTensor&, const OptTensor&, std::optional<double>,
                               const OptTensor&, const OptTensor&, int64_t, bool);

template <StepRun RUN>
at::Tensor reverse_step_kernel_of(const at::Tensor& z, const at::Tensor& model_out, const at::Tensor& coeffs,
                                  const OptTensor& uncond, const OptTensor& guidance_scale,
                                  const OptTensor& classifier_grad, const OptTensor& grad_scale,
                                  std::optional<double> clip, const OptTensor& noise, const OptTensor& seed,
                                  int64_t offset) {
  return RUN("vdm_fast::reverse_step", z, model_out, coeffs, uncond, guidance_scale, classifier_grad, grad_scale, clip,
             noise, seed, offset, false)
      .out;
}

template <StepRun RUN>
std::tuple<at::Tensor, at::Tensor> reverse_step_with_x0_kernel_of(
    const at::Tensor& z, const at::Tensor& model_out, const at::Tensor& coeffs, const OptTensor& uncond,
    const OptTensor& guidance_scale, const OptTensor& classifier_grad, const OptTensor& grad_scale,
    std::optional<double> clip, const OptTensor& noise, const OptTensor& seed, int64_t offset) {
  StepInputs in = RUN("vdm_fast::reverse_step_with_x0", z, model_out, coeffs, uncond, guidance_scale, classifier_grad,
                      grad_scale, clip, noise, seed, offset, true);
  return {in.out, in.x0_out};
}

}  // namespace vdm_fast
