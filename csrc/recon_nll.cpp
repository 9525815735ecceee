// Schema and autograd of the recon_nll ops (DESIGN.md §3, §4.5): L_recon per sample with VDM's
// categorical 256-bin decoder. Kernels: csrc/cpu/recon_nll.cpp, csrc/cuda/recon_nll.cu (math in
// csrc/recon_nll_math.h). Fake kernels: vdm_fast/ops/recon_nll.py.
//
// Autograd in C++ for the reason given in csrc/q_sample.cpp. x0 is data and gets no gradient.
#include <torch/all.h>
#include <torch/library.h>

#include <array>

TORCH_LIBRARY_FRAGMENT(vdm_fast, m) {
  m.def("recon_nll(Tensor x0, Tensor z0, Tensor alpha_0, Tensor sigma_0, str decoder=\"categorical\") -> Tensor");
  // One pass over x0 and z0: grad_z0 elementwise, grad_alpha_0 / grad_sigma_0 per-sample sums,
  // each scaled by the (B,) upstream grad. Outputs whose output_mask entry is false are empty.
  m.def(
      "recon_nll_backward(Tensor grad, Tensor x0, Tensor z0, Tensor alpha_0, Tensor sigma_0, str decoder,"
      " bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}

namespace vdm_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor recon_nll_call(const at::Tensor& x0, const at::Tensor& z0, const at::Tensor& alpha, const at::Tensor& sigma,
                          c10::string_view decoder) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("vdm_fast::recon_nll", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const at::Tensor&, c10::string_view)>();
  return op.call(x0, z0, alpha, sigma, decoder);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> recon_nll_backward_call(const at::Tensor& grad, const at::Tensor& x0,
                                                                       const at::Tensor& z0, const at::Tensor& alpha,
                                                                       const at::Tensor& sigma,
                                                                       c10::string_view decoder,
                                                                       std::array<bool, 3> mask) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("vdm_fast::recon_nll_backward", "")
                             .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                                 const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                 const at::Tensor&, c10::string_view, std::array<bool, 3>)>();
  return op.call(grad, x0, z0, alpha, sigma, decoder, mask);
}

class ReconNll : public torch::autograd::Function<ReconNll> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x0, const at::Tensor& z0, const at::Tensor& alpha,
                            const at::Tensor& sigma, c10::string_view decoder) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({x0, z0, alpha, sigma});
    ctx->saved_data["decoder"] = std::string(decoder);
    return recon_nll_call(x0, z0, alpha, sigma, decoder);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const std::string decoder = ctx->saved_data["decoder"].toStringRef();
    const std::array<bool, 3> mask = {ctx->needs_input_grad(1), ctx->needs_input_grad(2), ctx->needs_input_grad(3)};
    // The upstream (B,) grad may be expanded (from .sum()); the kernels take contiguous (B,).
    auto [gz, ga, gs] =
        recon_nll_backward_call(grads[0].contiguous(), saved[0], saved[1], saved[2], saved[3], decoder, mask);
    return {at::Tensor(), mask[0] ? gz : at::Tensor(), mask[1] ? ga : at::Tensor(), mask[2] ? gs : at::Tensor(),
            at::Tensor()};
  }
};

at::Tensor recon_nll_autograd(const at::Tensor& x0, const at::Tensor& z0, const at::Tensor& alpha,
                              const at::Tensor& sigma, c10::string_view decoder) {
  if (!at::GradMode::is_enabled() || !(z0.requires_grad() || alpha.requires_grad() || sigma.requires_grad())) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return recon_nll_call(x0, z0, alpha, sigma, decoder);
  }
  return ReconNll::apply(x0, z0, alpha, sigma, decoder);
}

}  // namespace
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, Autograd, m) { m.impl("recon_nll", &vdm_fast::recon_nll_autograd); }
