// reverse_step on the CPU (DESIGN.md §4.6): guidance, x̂ (optionally clipped) and the affine update
// in one pass. One loop per combination of optional inputs (CFG, classifier guidance, clip, noise),
// so the common cases carry no dead loads or branches and GCC vectorises each of them. With a
// seed, the noise is drawn in-kernel (csrc/cpu/noise.h) tile by tile, only for samples with c_n != 0.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>

#include "common.h"
#include "cpu/noise.h"
#include "cpu/per_sample.h"
#include "reverse_step.h"
#include "reverse_step_math.h"

namespace vdm_fast {
namespace cpu {
namespace {

// One run of elements of one sample. Pointers of absent inputs are null and never read. The noise
// is a tensor of the data dtype, or float32 Philox normals (noise_t = float), rounded to the data
// dtype before use so that the result equals the step with that noise as a tensor.
template <typename scalar_t, typename acc_t, bool CFG, bool CG, bool CLIP, bool NOISE, typename noise_t = scalar_t>
void reverse_step_segment(scalar_t* __restrict out, const scalar_t* __restrict z,
                          const scalar_t* __restrict model_out, const scalar_t* __restrict uncond,
                          const scalar_t* __restrict grad, const noise_t* __restrict noise, const StepScalars<acc_t> s,
                          int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const acc_t u = CFG ? static_cast<acc_t>(uncond[i]) : acc_t(0);
    const acc_t g = CG ? static_cast<acc_t>(grad[i]) : acc_t(0);
    acc_t v = step_mean<CFG, CG, CLIP, acc_t>(static_cast<acc_t>(z[i]), static_cast<acc_t>(model_out[i]), u, g, s);
    if constexpr (NOISE) v = v + s.c_n * static_cast<acc_t>(static_cast<scalar_t>(noise[i]));
    out[i] = static_cast<scalar_t>(v);
  }
}

at::Tensor reverse_step_cpu(const at::Tensor& z, const at::Tensor& model_out, const at::Tensor& coeffs,
                            const std::optional<at::Tensor>& uncond, const std::optional<at::Tensor>& guidance_scale,
                            const std::optional<at::Tensor>& classifier_grad,
                            const std::optional<at::Tensor>& grad_scale, std::optional<double> clip,
                            const std::optional<at::Tensor>& noise, const std::optional<at::Tensor>& seed,
                            int64_t offset) {
  StepInputs in = prepare_reverse_step("vdm_fast::reverse_step", z, model_out, coeffs, uncond, guidance_scale,
                                       classifier_grad, grad_scale, clip, noise, seed, offset);
  if (in.out.numel() == 0) return in.out;
  const uint64_t seed_v = in.flags.noise == NoiseSource::kPhilox ? seed_value(in.seed) : 0;
  const uint64_t off = in.offset;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "reverse_step_cpu", [&] {
    using acc = acc_t<scalar_t>;
    scalar_t* op = in.out.mutable_data_ptr<scalar_t>();
    const scalar_t* zp = in.z.const_data_ptr<scalar_t>();
    const scalar_t* mp = in.model_out.const_data_ptr<scalar_t>();
    const scalar_t* up = in.flags.cfg ? in.uncond.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* gp = in.flags.cg ? in.grad.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* np = in.flags.noise == NoiseSource::kTensor ? in.noise.const_data_ptr<scalar_t>() : nullptr;
    const acc* cp = in.coeffs.const_data_ptr<acc>();
    const acc* wp = in.flags.cfg ? in.guidance_scale.const_data_ptr<acc>() : nullptr;
    const acc* gsp = in.flags.cg ? in.grad_scale.const_data_ptr<acc>() : nullptr;
    const acc clip_v = static_cast<acc>(in.clip);
    const int64_t B = in.B;
    dispatch_step_flags(in.flags, [&](auto cfg, auto cg, auto clp, auto noi) {
      constexpr bool CFG = decltype(cfg)::value, CG = decltype(cg)::value, CLIP = decltype(clp)::value;
      constexpr NoiseSource NOISE = decltype(noi)::value;
      for_each_segment(B, in.D, [&](int64_t b, int64_t begin, int64_t end) {
        const StepScalars<acc> s = load_step_scalars<acc>(cp, B, b, wp, gsp, clip_v);
        scalar_t* o = op + begin;
        const scalar_t* zs = zp + begin;
        const scalar_t* ms = mp + begin;
        const scalar_t* us = up ? up + begin : nullptr;
        const scalar_t* gs = gp ? gp + begin : nullptr;
        if constexpr (NOISE == NoiseSource::kPhilox) {
          if (needs_noise(s.c_n)) {
            // Tiles of Philox normals on the stack: element i's noise whatever the thread split.
            alignas(64) float buf[kNoiseTile];
            for (int64_t i = begin; i < end; i += kNoiseTile) {
              const int64_t len = std::min(kNoiseTile, end - i);
              philox_normals(seed_v, off, i, len, buf);
              const int64_t k = i - begin;
              with_cpu_isa([&] {
                reverse_step_segment<scalar_t, acc, CFG, CG, CLIP, true, float>(
                    o + k, zs + k, ms + k, us ? us + k : nullptr, gs ? gs + k : nullptr, buf, s, len);
              });
            }
          } else {  // c_n == 0: nothing to draw
            with_cpu_isa([&] {
              reverse_step_segment<scalar_t, acc, CFG, CG, CLIP, false>(
                  o, zs, ms, us, gs, static_cast<const scalar_t*>(nullptr), s, end - begin);
            });
          }
        } else {
          constexpr bool TENSOR = NOISE == NoiseSource::kTensor;
          with_cpu_isa([&] {
            reverse_step_segment<scalar_t, acc, CFG, CG, CLIP, TENSOR>(o, zs, ms, us, gs,
                                                                       TENSOR ? np + begin : nullptr, s, end - begin);
          });
        }
      });
    });
  });
  return in.out;
}

}  // namespace
}  // namespace cpu
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, CPU, m) { m.impl("reverse_step", &vdm_fast::cpu::reverse_step_cpu); }
