// Schema and autograd of the discretized_gaussian_nll ops (DESIGN.md §3, §4.5): -log of the
// Gaussian mass of x0's 8-bit bin per sample (DDPM / improved-diffusion decoder). Kernels:
// csrc/cpu/discretized_gaussian_nll.cpp, csrc/cuda/discretized_gaussian_nll.cu (math in
// csrc/discretized_gaussian_math.h). Fake kernels: vdm_fast/ops/discretized_gaussian_nll.py.
//
// Autograd in C++ for the reason given in csrc/q_sample.cpp. x0 is data and gets no gradient.
#include <torch/all.h>
#include <torch/library.h>

#include <array>

TORCH_LIBRARY_FRAGMENT(vdm_fast, m) {
  m.def("discretized_gaussian_nll(Tensor x0, Tensor mean, Tensor log_scale, str cdf=\"erf\") -> Tensor");
  // One pass over x0, mean, log_scale: grad_mean and grad_log_scale elementwise, scaled by the
  // (B,) upstream grad. Outputs whose output_mask entry is false are empty.
  m.def(
      "discretized_gaussian_nll_backward(Tensor grad, Tensor x0, Tensor mean, Tensor log_scale, str cdf,"
      " bool[2] output_mask) -> (Tensor, Tensor)");
}

namespace vdm_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor dgauss_call(const at::Tensor& x0, const at::Tensor& mean, const at::Tensor& log_scale,
                       c10::string_view cdf) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("vdm_fast::discretized_gaussian_nll", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               c10::string_view)>();
  return op.call(x0, mean, log_scale, cdf);
}

std::tuple<at::Tensor, at::Tensor> dgauss_backward_call(const at::Tensor& grad, const at::Tensor& x0,
                                                        const at::Tensor& mean, const at::Tensor& log_scale,
                                                        c10::string_view cdf, std::array<bool, 2> mask) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("vdm_fast::discretized_gaussian_nll_backward", "")
                             .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                       const at::Tensor&, const at::Tensor&,
                                                                       c10::string_view, std::array<bool, 2>)>();
  return op.call(grad, x0, mean, log_scale, cdf, mask);
}

class DiscretizedGaussianNll : public torch::autograd::Function<DiscretizedGaussianNll> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x0, const at::Tensor& mean,
                            const at::Tensor& log_scale, c10::string_view cdf) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({x0, mean, log_scale});
    ctx->saved_data["cdf"] = std::string(cdf);
    return dgauss_call(x0, mean, log_scale, cdf);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const std::string cdf = ctx->saved_data["cdf"].toStringRef();
    const std::array<bool, 2> mask = {ctx->needs_input_grad(1), ctx->needs_input_grad(2)};
    // The upstream (B,) grad may be expanded (from .sum()); the kernels take contiguous (B,).
    auto [gm, gl] = dgauss_backward_call(grads[0].contiguous(), saved[0], saved[1], saved[2], cdf, mask);
    return {at::Tensor(), mask[0] ? gm : at::Tensor(), mask[1] ? gl : at::Tensor(), at::Tensor()};
  }
};

at::Tensor dgauss_autograd(const at::Tensor& x0, const at::Tensor& mean, const at::Tensor& log_scale,
                           c10::string_view cdf) {
  if (!at::GradMode::is_enabled() || !(mean.requires_grad() || log_scale.requires_grad())) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return dgauss_call(x0, mean, log_scale, cdf);
  }
  return DiscretizedGaussianNll::apply(x0, mean, log_scale, cdf);
}

}  // namespace
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, Autograd, m) {
  m.impl("discretized_gaussian_nll", &vdm_fast::dgauss_autograd);
}
