// Schema and autograd of the sq_error ops (DESIGN.md §4.3). Kernels: csrc/cpu/sq_error.cpp,
// csrc/cuda/sq_error.cu. Fake kernels: vdm_fast/ops/sq_error.py. Targets: csrc/targets.h.
//
// Autograd is registered in C++ (as for q_sample, csrc/q_sample.cpp): no autograd node is built
// when nothing requires grad, and the backward is one more dispatcher op, so torch.compile traces both.
#include <torch/all.h>
#include <torch/library.h>

#include <array>
#include <string>

TORCH_LIBRARY_FRAGMENT(vdm_fast, m) {
  // out[b] = sum_i (pred - target)^2 over sample b, in the compute dtype (float32; float64 for
  // float64 data). target is "eps", "x0", "v" or "score", built in-kernel from x0, noise, alpha, sigma.
  m.def("sq_error(Tensor pred, Tensor x0, Tensor noise, Tensor alpha, Tensor sigma, str target) -> Tensor");
  // One pass over pred, x0, noise (only those the target reads) for an upstream grad of shape (B,):
  // grads to pred, x0, noise (elementwise, in the data dtype and layout) and to alpha, sigma
  // (per-sample sums, compute dtype). Outputs whose output_mask entry is false come back empty;
  // a wanted grad that is structurally zero (x0 for "eps", say) comes back as zeros.
  m.def(
      "sq_error_backward(Tensor grad, Tensor pred, Tensor x0, Tensor noise, Tensor alpha, Tensor sigma, str target,"
      " bool[5] output_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

namespace vdm_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor sq_error_call(const at::Tensor& pred, const at::Tensor& x0, const at::Tensor& noise,
                         const at::Tensor& alpha, const at::Tensor& sigma, c10::string_view target) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("vdm_fast::sq_error", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const at::Tensor&, const at::Tensor&, c10::string_view)>();
  return op.call(pred, x0, noise, alpha, sigma, target);
}

using Grads5 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

Grads5 sq_error_backward_call(const at::Tensor& grad, const at::Tensor& pred, const at::Tensor& x0,
                              const at::Tensor& noise, const at::Tensor& alpha, const at::Tensor& sigma,
                              c10::string_view target, std::array<bool, 5> mask) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("vdm_fast::sq_error_backward", "")
                             .typed<Grads5(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                           const at::Tensor&, const at::Tensor&, c10::string_view,
                                           std::array<bool, 5>)>();
  return op.call(grad, pred, x0, noise, alpha, sigma, target, mask);
}

class SqError : public torch::autograd::Function<SqError> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& pred, const at::Tensor& x0,
                            const at::Tensor& noise, const at::Tensor& alpha, const at::Tensor& sigma,
                            c10::string_view target) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({pred, x0, noise, alpha, sigma});
    ctx->saved_data["target"] = std::string(target);
    return sq_error_call(pred, x0, noise, alpha, sigma, target);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const std::string target = ctx->saved_data["target"].toStringRef();
    std::array<bool, 5> mask;
    for (int i = 0; i < 5; ++i) mask[i] = ctx->needs_input_grad(i);
    // The upstream grad of a sum is often an expanded scalar: the kernels take contiguous (B,).
    auto [gp, gx, gn, ga, gs] =
        sq_error_backward_call(grads[0].contiguous(), saved[0], saved[1], saved[2], saved[3], saved[4], target, mask);
    return {mask[0] ? gp : at::Tensor(), mask[1] ? gx : at::Tensor(), mask[2] ? gn : at::Tensor(),
            mask[3] ? ga : at::Tensor(), mask[4] ? gs : at::Tensor(), at::Tensor()};
  }
};

at::Tensor sq_error_autograd(const at::Tensor& pred, const at::Tensor& x0, const at::Tensor& noise,
                             const at::Tensor& alpha, const at::Tensor& sigma, c10::string_view target) {
  // Evaluation loops call this with nothing requiring grad: skip building an autograd node.
  if (!at::GradMode::is_enabled() || !(pred.requires_grad() || x0.requires_grad() || noise.requires_grad() ||
                                       alpha.requires_grad() || sigma.requires_grad())) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return sq_error_call(pred, x0, noise, alpha, sigma, target);
  }
  return SqError::apply(pred, x0, noise, alpha, sigma, target);
}

}  // namespace
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, Autograd, m) { m.impl("sq_error", &vdm_fast::sq_error_autograd); }
