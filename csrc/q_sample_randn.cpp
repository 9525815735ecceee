// Schema and autograd of q_sample_randn (DESIGN.md §4.2): (z, noise) with the noise drawn inside
// the kernel (Philox, csrc/philox.h) and z = alpha * x0 + sigma * noise in the same pass.
// Kernels: csrc/cpu/q_sample_randn.cpp, csrc/cuda/q_sample_randn.cu; fakes in
// vdm_fast/ops/q_sample_randn.py. The backward is q_sample_backward with the returned noise
// (the noise is a constant: no gradient flows to it or to the seed).
#include <torch/all.h>
#include <torch/library.h>

#include <array>

TORCH_LIBRARY_FRAGMENT(vdm_fast, m) {
  m.def("q_sample_randn(Tensor x0, Tensor alpha, Tensor sigma, Tensor seed, int offset) -> (Tensor, Tensor)");
}

namespace vdm_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::tuple<at::Tensor, at::Tensor> q_sample_randn_call(const at::Tensor& x0, const at::Tensor& alpha,
                                                       const at::Tensor& sigma, const at::Tensor& seed,
                                                       int64_t offset) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("vdm_fast::q_sample_randn", "")
                             .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                       const at::Tensor&, const at::Tensor&, int64_t)>();
  return op.call(x0, alpha, sigma, seed, offset);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> q_sample_backward_call(
    const at::Tensor& grad, const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& alpha,
    const at::Tensor& sigma, std::array<bool, 4> mask) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("vdm_fast::q_sample_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
              std::array<bool, 4>)>();
  return op.call(grad, x0, noise, alpha, sigma, mask);
}

class QSampleRandn : public torch::autograd::Function<QSampleRandn> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x0, const at::Tensor& alpha,
                               const at::Tensor& sigma, const at::Tensor& seed, int64_t offset) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [z, noise] = q_sample_randn_call(x0, alpha, sigma, seed, offset);
    ctx->save_for_backward({x0, alpha, sigma, noise});
    ctx->mark_non_differentiable({noise});
    return {z, noise};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const std::array<bool, 4> mask = {ctx->needs_input_grad(0), false, ctx->needs_input_grad(1),
                                      ctx->needs_input_grad(2)};
    if (!grads[0].defined() || !(mask[0] || mask[2] || mask[3])) {
      return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    }
    auto [gx, gn, ga, gs] = q_sample_backward_call(grads[0], saved[0], saved[3], saved[1], saved[2], mask);
    return {mask[0] ? gx : at::Tensor(), mask[2] ? ga : at::Tensor(), mask[3] ? gs : at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> q_sample_randn_autograd(const at::Tensor& x0, const at::Tensor& alpha,
                                                           const at::Tensor& sigma, const at::Tensor& seed,
                                                           int64_t offset) {
  if (!at::GradMode::is_enabled() || !(x0.requires_grad() || alpha.requires_grad() || sigma.requires_grad())) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return q_sample_randn_call(x0, alpha, sigma, seed, offset);
  }
  const variable_list out = QSampleRandn::apply(x0, alpha, sigma, seed, offset);
  return {out[0], out[1]};
}

}  // namespace
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, Autograd, m) { m.impl("q_sample_randn", &vdm_fast::q_sample_randn_autograd); }
