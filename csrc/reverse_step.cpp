// Schema of the reverse_step op (DESIGN.md §4.6). Kernels: csrc/cpu/reverse_step.cpp,
// csrc/cuda/reverse_step.cu. Fake kernel: vdm_fast/ops/reverse_step.py.
//
// Inference only: sampling needs no gradients, so there is no backward. The Autograd kernel below
// makes that explicit instead of returning an output silently cut from the graph: with grad mode
// on and any input requiring grad it raises, naming the input; otherwise (no_grad,
// inference_mode, or plain tensors) it goes straight to the device kernel.
#include <torch/all.h>
#include <torch/library.h>

#include <optional>

TORCH_LIBRARY_FRAGMENT(vdm_fast, m) {
  // z_next = c_z z + c_m m + c_x x̂ + c_n noise with m the (guided) model output and
  // x̂ = a_z z + a_m m (clamped to [-clip, clip] when clip is given). coeffs: (6, B) rows
  // (a_z, a_m, c_z, c_m, c_x, c_n). The noise n: the `noise` tensor; or, with `seed` (noise None),
  // drawn in-kernel from Philox stream (seed, offset) (csrc/noise_args.h), only for samples whose
  // c_n is non-zero; with neither, the c_n term is left out.
  m.def(
      "reverse_step(Tensor z, Tensor model_out, Tensor coeffs, Tensor? uncond=None, Tensor? guidance_scale=None,"
      " Tensor? classifier_grad=None, Tensor? grad_scale=None, float? clip=None, Tensor? noise=None,"
      " Tensor? seed=None, int offset=0) -> Tensor");
}

namespace vdm_fast {
namespace {

using OptT = std::optional<at::Tensor>;

at::Tensor reverse_step_autograd(const at::Tensor& z, const at::Tensor& model_out, const at::Tensor& coeffs,
                                 const OptT& uncond, const OptT& guidance_scale, const OptT& classifier_grad,
                                 const OptT& grad_scale, std::optional<double> clip, const OptT& noise,
                                 const OptT& seed, int64_t offset) {
  if (at::GradMode::is_enabled()) {
    const std::pair<const char*, const at::Tensor*> inputs[] = {
        {"z", &z},
        {"model_out", &model_out},
        {"coeffs", &coeffs},
        {"uncond", uncond ? &*uncond : nullptr},
        {"guidance_scale", guidance_scale ? &*guidance_scale : nullptr},
        {"classifier_grad", classifier_grad ? &*classifier_grad : nullptr},
        {"grad_scale", grad_scale ? &*grad_scale : nullptr},
        {"noise", noise ? &*noise : nullptr},
    };
    for (const auto& [name, t] : inputs) {
      TORCH_CHECK_VALUE(t == nullptr || !t->defined() || !t->requires_grad(), "vdm_fast::reverse_step: ", name,
                        " requires grad, but reverse_step is inference-only (no backward); detach it, or call "
                        "under torch.no_grad() or torch.inference_mode()");
    }
  }
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("vdm_fast::reverse_step", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptT&,
                                               const OptT&, const OptT&, const OptT&, std::optional<double>,
                                               const OptT&, const OptT&, int64_t)>();
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(z, model_out, coeffs, uncond, guidance_scale, classifier_grad, grad_scale, clip, noise, seed,
                 offset);
}

}  // namespace
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, Autograd, m) { m.impl("reverse_step", &vdm_fast::reverse_step_autograd); }
