// Schema and autograd of the q_sample ops (DESIGN.md §4.1). Kernels: csrc/cpu/q_sample.cpp,
// csrc/cuda/q_sample.cu. Fake kernels: vdm_fast/ops/q_sample.py.
//
// Autograd is registered here, in C++, rather than with torch.library.register_autograd: the
// Python autograd kernel costs ~3 µs per call even when no input requires grad, more than the
// whole op on small tensors. The backward is one more dispatcher op, so torch.compile traces both.
#include <torch/all.h>
#include <torch/library.h>

#include <array>

TORCH_LIBRARY_FRAGMENT(vdm_fast, m) {
  m.def("q_sample(Tensor x0, Tensor alpha, Tensor sigma, Tensor noise) -> Tensor");
  // One pass over grad, x0 and noise: grad_x0 = alpha*grad, grad_noise = sigma*grad,
  // grad_alpha[b] = sum(grad*x0), grad_sigma[b] = sum(grad*noise). Outputs whose
  // output_mask entry is false come back as empty tensors.
  m.def(
      "q_sample_backward(Tensor grad, Tensor x0, Tensor noise, Tensor alpha, Tensor sigma, bool[4] output_mask)"
      " -> (Tensor, Tensor, Tensor, Tensor)");
}

namespace vdm_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor q_sample_call(const at::Tensor& x0, const at::Tensor& alpha, const at::Tensor& sigma,
                         const at::Tensor& noise) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("vdm_fast::q_sample", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const at::Tensor&)>();
  return op.call(x0, alpha, sigma, noise);
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

class QSample : public torch::autograd::Function<QSample> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x0, const at::Tensor& alpha,
                            const at::Tensor& sigma, const at::Tensor& noise) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({x0, alpha, sigma, noise});
    return q_sample_call(x0, alpha, sigma, noise);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const std::array<bool, 4> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(3), ctx->needs_input_grad(1),
                                      ctx->needs_input_grad(2)};
    auto [gx, gn, ga, gs] = q_sample_backward_call(grads[0], saved[0], saved[3], saved[1], saved[2], mask);
    return {mask[0] ? gx : at::Tensor(), mask[2] ? ga : at::Tensor(), mask[3] ? gs : at::Tensor(),
            mask[1] ? gn : at::Tensor()};
  }
};

at::Tensor q_sample_autograd(const at::Tensor& x0, const at::Tensor& alpha, const at::Tensor& sigma,
                             const at::Tensor& noise) {
  // Sampling loops call this with nothing requiring grad: skip building an autograd node.
  if (!at::GradMode::is_enabled() ||
      !(x0.requires_grad() || alpha.requires_grad() || sigma.requires_grad() || noise.requires_grad())) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return q_sample_call(x0, alpha, sigma, noise);
  }
  return QSample::apply(x0, alpha, sigma, noise);
}

}  // namespace
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, Autograd, m) { m.impl("q_sample", &vdm_fast::q_sample_autograd); }
