// reverse_step: its schema and inference-only Autograd kernel, and on the CPU (DESIGN.md §4.6): guidance, x̂ (optionally clipped) and the affine update
// in one pass. One loop per combination of optional inputs (CFG, classifier guidance, clip, noise),
// so the common cases carry no dead loads or branches and GCC vectorises each of them. With a
// seed, the noise is drawn in-kernel (csrc/cpu/noise.h) tile by tile, only for samples with c_n != 0.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>

#include "autograd.h"
#include "common.h"
#include "cpu/noise.h"
#include "cpu/per_sample.h"
#include "reverse_step.h"
#include "reverse_step_math.h"
#include <torch/all.h>
#include <optional>

namespace vdm_fast {
namespace cpu {
namespace {

// One run of elements of one sample. Pointers of absent inputs are null and never read. The noise
// is a tensor of the data dtype, or float32 Philox normals (noise_t = float), rounded to the data
// dtype before use so that the result equals the step with that noise as a tensor. X0: x̂ is
// written to x0_out too (reverse_step_with_x0), in the same pass.
template <typename scalar_t, typename acc_t, bool CFG, bool CG, bool CLIP, bool NOISE, bool X0,
          typename noise_t = scalar_t>
void reverse_step_segment(scalar_t* __restrict out, scalar_t* __restrict x0_out, const scalar_t* __restrict z,
                          const scalar_t* __restrict model_out, const scalar_t* __restrict uncond,
                          const scalar_t* __restrict grad, const noise_t* __restrict noise, const StepScalars<acc_t> s,
                          int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const acc_t u = CFG ? static_cast<acc_t>(uncond[i]) : acc_t(0);
    const acc_t g = CG ? static_cast<acc_t>(grad[i]) : acc_t(0);
    acc_t x_hat;
    acc_t v = step_mean<CFG, CG, CLIP, acc_t>(static_cast<acc_t>(z[i]), static_cast<acc_t>(model_out[i]), u, g, s,
                                              X0 ? &x_hat : nullptr);
    if constexpr (NOISE) v = v + s.c_n * static_cast<acc_t>(static_cast<scalar_t>(noise[i]));
    out[i] = static_cast<scalar_t>(v);
    if constexpr (X0) x0_out[i] = static_cast<scalar_t>(x_hat);
  }
}

// Both ops: z_next, and x̂ when with_x0 (a second output written in the same pass).
StepInputs reverse_step_run(const char* op, const at::Tensor& z, const at::Tensor& model_out, const at::Tensor& coeffs,
                            const std::optional<at::Tensor>& uncond, const std::optional<at::Tensor>& guidance_scale,
                            const std::optional<at::Tensor>& classifier_grad,
                            const std::optional<at::Tensor>& grad_scale, std::optional<double> clip,
                            const std::optional<at::Tensor>& noise, const std::optional<at::Tensor>& seed,
                            int64_t offset, bool with_x0) {
  StepInputs in = prepare_reverse_step(op, z, model_out, coeffs, uncond, guidance_scale, classifier_grad, grad_scale,
                                       clip, noise, seed, offset, with_x0);
  if (in.out.numel() == 0) return in;
  const uint64_t seed_v = in.flags.noise == NoiseSource::kPhilox ? seed_value(in.seed) : 0;
  const uint64_t off = in.offset;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "reverse_step_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const StepPtrs<scalar_t> p = step_ptrs<scalar_t>(in);
    const int64_t B = in.B;
    const auto with_x0_flag = [&](auto x0) {
      constexpr bool X0 = decltype(x0)::value;
      dispatch_step_flags(in.flags, [&](auto cfg, auto cg, auto clp, auto noi) {
        constexpr bool CFG = decltype(cfg)::value, CG = decltype(cg)::value, CLIP = decltype(clp)::value;
        constexpr NoiseSource NOISE = decltype(noi)::value;
        for_each_segment(B, in.D, [&](int64_t b, int64_t begin, int64_t end) {
          const StepScalars<acc> s = load_step_scalars<acc>(p.coeffs, B, b, p.guidance_scale, p.grad_scale, p.clip);
          scalar_t* o = p.out + begin;
          scalar_t* xo = X0 ? p.x0_out + begin : nullptr;
          const scalar_t* zs = p.z + begin;
          const scalar_t* ms = p.model_out + begin;
          const scalar_t* us = p.uncond ? p.uncond + begin : nullptr;
          const scalar_t* gs = p.grad ? p.grad + begin : nullptr;
          if constexpr (NOISE == NoiseSource::kPhilox) {
            if (needs_noise(s.c_n)) {
              // Tiles of Philox normals on the stack: element i's noise whatever the thread split.
              alignas(64) float buf[kNoiseTile];
              for (int64_t i = begin; i < end; i += kNoiseTile) {
                const int64_t len = std::min(kNoiseTile, end - i);
                philox_normals(seed_v, off, i, len, buf);
                const int64_t k = i - begin;
                with_cpu_isa([&] {
                  reverse_step_segment<scalar_t, acc, CFG, CG, CLIP, true, X0, float>(
                      o + k, X0 ? xo + k : nullptr, zs + k, ms + k, us ? us + k : nullptr, gs ? gs + k : nullptr, buf,
                      s, len);
                });
              }
            } else {  // c_n == 0: nothing to draw
              with_cpu_isa([&] {
                reverse_step_segment<scalar_t, acc, CFG, CG, CLIP, false, X0>(
                    o, xo, zs, ms, us, gs, static_cast<const scalar_t*>(nullptr), s, end - begin);
              });
            }
          } else {
            constexpr bool TENSOR = NOISE == NoiseSource::kTensor;
            with_cpu_isa([&] {
              reverse_step_segment<scalar_t, acc, CFG, CG, CLIP, TENSOR, X0>(
                  o, xo, zs, ms, us, gs, TENSOR ? p.noise + begin : nullptr, s, end - begin);
            });
          }
        });
      });
    };
    if (with_x0)
      with_x0_flag(std::true_type{});
    else
      with_x0_flag(std::false_type{});
  });
  return in;
}

}  // namespace
}  // namespace cpu
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, CPU, m) {
  m.impl("reverse_step", &vdm_fast::reverse_step_kernel_of<&vdm_fast::cpu::reverse_step_run>);
  m.impl("reverse_step_with_x0", &vdm_fast::reverse_step_with_x0_kernel_of<&vdm_fast::cpu::reverse_step_run>);
}

// --- schema and autograd ----------------------------------------------------------------------
// Schema of the reverse_step op (DESIGN.md §4.6). Kernels: csrc/cpu/reverse_step.cpp,
// csrc/cuda/reverse_step.cu. Fake kernel: vdm_fast/ops/reverse_step.py.
//
// Inference only: sampling needs no gradients, so there is no backward. The Autograd kernel below
// makes that explicit instead of returning an output silently cut from the graph: with grad mode
// on and any input requiring grad, or an input carrying a forward-mode tangent, it raises, naming
// the input; otherwise (no_grad, inference_mode, or plain tensors) it goes straight to the device
// kernel.

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
  // The same step returning x̂ too (clamped when clip is given), written in the same pass: what
  // diffusers' step returns as pred_original_sample next to prev_sample.
  m.def(
      "reverse_step_with_x0(Tensor z, Tensor model_out, Tensor coeffs, Tensor? uncond=None,"
      " Tensor? guidance_scale=None, Tensor? classifier_grad=None, Tensor? grad_scale=None, float? clip=None,"
      " Tensor? noise=None, Tensor? seed=None, int offset=0) -> (Tensor, Tensor)");
}

namespace vdm_fast {
namespace {

using OptT = std::optional<at::Tensor>;

// Raises on an input that requires grad (grad mode on) or carries a tangent, naming it.
void reject_derivatives(const char* op, const char* name_of_op, const at::Tensor& z, const at::Tensor& model_out, const at::Tensor& coeffs,
                        const OptT& uncond, const OptT& guidance_scale, const OptT& classifier_grad,
                        const OptT& grad_scale, const OptT& noise) {
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
  const bool grad_mode = at::GradMode::is_enabled();
  for (const auto& [name, t] : inputs) {
    if (t == nullptr || !t->defined()) continue;
    TORCH_CHECK_VALUE(!(grad_mode && t->requires_grad()), op, ": ", name, " requires grad, but ", name_of_op,
                      " is inference-only (no backward); detach it, or call under torch.no_grad() or "
                      "torch.inference_mode()");
    TORCH_CHECK_NOT_IMPLEMENTED(!autograd_detail::has_tangent(*t), op, ": ", name,
                                " carries a forward-mode tangent (torch.func.jvp, torch.autograd.forward_ad), but ",
                                name_of_op, " is inference-only and has no derivative; pass the primal");
  }
}

at::Tensor reverse_step_autograd(const at::Tensor& z, const at::Tensor& model_out, const at::Tensor& coeffs,
                                 const OptT& uncond, const OptT& guidance_scale, const OptT& classifier_grad,
                                 const OptT& grad_scale, std::optional<double> clip, const OptT& noise,
                                 const OptT& seed, int64_t offset) {
  reject_derivatives("vdm_fast::reverse_step", "reverse_step", z, model_out, coeffs, uncond, guidance_scale, classifier_grad,
                     grad_scale, noise);
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("vdm_fast::reverse_step", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptT&,
                                               const OptT&, const OptT&, const OptT&, std::optional<double>,
                                               const OptT&, const OptT&, int64_t)>();
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(z, model_out, coeffs, uncond, guidance_scale, classifier_grad, grad_scale, clip, noise, seed,
                 offset);
}

std::tuple<at::Tensor, at::Tensor> reverse_step_with_x0_autograd(
    const at::Tensor& z, const at::Tensor& model_out, const at::Tensor& coeffs, const OptT& uncond,
    const OptT& guidance_scale, const OptT& classifier_grad, const OptT& grad_scale, std::optional<double> clip,
    const OptT& noise, const OptT& seed, int64_t offset) {
  reject_derivatives("vdm_fast::reverse_step_with_x0", "reverse_step_with_x0", z, model_out, coeffs, uncond, guidance_scale, classifier_grad,
                     grad_scale, noise);
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("vdm_fast::reverse_step_with_x0", "")
                             .typed<std::tuple<at::Tensor, at::Tensor>(
                                 const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptT&, const OptT&,
                                 const OptT&, const OptT&, std::optional<double>, const OptT&, const OptT&, int64_t)>();
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(z, model_out, coeffs, uncond, guidance_scale, classifier_grad, grad_scale, clip, noise, seed,
                 offset);
}

}  // namespace
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, Autograd, m) {
  m.impl("reverse_step", &vdm_fast::reverse_step_autograd);
  m.impl("reverse_step_with_x0", &vdm_fast::reverse_step_with_x0_autograd);
}
