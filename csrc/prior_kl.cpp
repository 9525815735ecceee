// Schema and autograd of the prior_kl ops (DESIGN.md §3, §4.4). Kernels: csrc/cpu/prior_kl.cpp,
// csrc/cuda/prior_kl.cu. Fake kernels: vdm_fast/ops/prior_kl.py.
//
// L_prior[b] = 1/2 sum_i (a^2 x_i^2 + s^2 - 1 - log s^2) = a^2/2 * sum_i x_i^2 + D/2 (s^2 - 1 - log s^2):
// the only pass over the data is the per-sample sum of squares. Autograd in C++ as for q_sample.
#include <torch/all.h>
#include <torch/library.h>

#include <array>

TORCH_LIBRARY_FRAGMENT(vdm_fast, m) {
  // (B,) in the compute dtype (float32; float64 for float64 data), nats.
  m.def("prior_kl(Tensor x0, Tensor alpha_1, Tensor sigma_1) -> Tensor");
  // For an upstream grad of shape (B,): grad_x0 = grad*a^2*x0 (data dtype and layout),
  // grad_alpha_1 = grad*a*sum(x0^2) (reads x0 only when wanted), grad_sigma_1 = grad*D*(s - 1/s).
  // Outputs whose output_mask entry is false come back as empty tensors.
  m.def(
      "prior_kl_backward(Tensor grad, Tensor x0, Tensor alpha_1, Tensor sigma_1, bool[3] output_mask)"
      " -> (Tensor, Tensor, Tensor)");
}

namespace vdm_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor prior_kl_call(const at::Tensor& x0, const at::Tensor& alpha, const at::Tensor& sigma) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("vdm_fast::prior_kl", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  return op.call(x0, alpha, sigma);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> prior_kl_backward_call(const at::Tensor& grad, const at::Tensor& x0,
                                                                      const at::Tensor& alpha, const at::Tensor& sigma,
                                                                      std::array<bool, 3> mask) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("vdm_fast::prior_kl_backward", "")
                             .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                                 const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                 std::array<bool, 3>)>();
  return op.call(grad, x0, alpha, sigma, mask);
}

class PriorKL : public torch::autograd::Function<PriorKL> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x0, const at::Tensor& alpha,
                            const at::Tensor& sigma) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({x0, alpha, sigma});
    return prior_kl_call(x0, alpha, sigma);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1), ctx->needs_input_grad(2)};
    // The upstream grad of a sum is often an expanded scalar: the kernels take contiguous (B,).
    auto [gx, ga, gs] = prior_kl_backward_call(grads[0].contiguous(), saved[0], saved[1], saved[2], mask);
    return {mask[0] ? gx : at::Tensor(), mask[1] ? ga : at::Tensor(), mask[2] ? gs : at::Tensor()};
  }
};

at::Tensor prior_kl_autograd(const at::Tensor& x0, const at::Tensor& alpha, const at::Tensor& sigma) {
  if (!at::GradMode::is_enabled() || !(x0.requires_grad() || alpha.requires_grad() || sigma.requires_grad())) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return prior_kl_call(x0, alpha, sigma);
  }
  return PriorKL::apply(x0, alpha, sigma);
}

}  // namespace
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, Autograd, m) { m.impl("prior_kl", &vdm_fast::prior_kl_autograd); }
