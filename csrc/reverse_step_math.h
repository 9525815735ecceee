// The per-element math of reverse_step (DESIGN.md §4.6), shared by the CPU and CUDA kernels so
// both compute exactly the same expression in the same order as vdm_fast/reference.py.
//
// The update is split in two on purpose: step_mean() is everything except the noise term, and the
// kernels add c_n * n themselves. A noise source other than a tensor (an in-kernel Philox draw,
// DESIGN.md §6) then only changes where n comes from, never this function.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>
#include <type_traits>

namespace vdm_fast {

// Row order of the (6, B) coefficient tensor: (a_z, a_m, c_z, c_m, c_x, c_n).
enum StepRow { kAZ = 0, kAM, kCZ, kCM, kCX, kCN, kStepRows };

// The per-sample scalars of one sample, in the compute type.
template <typename acc_t>
struct StepScalars {
  acc_t a_z, a_m, c_z, c_m, c_x, c_n;
  acc_t w;     // classifier-free guidance scale (CFG only)
  acc_t gs;    // classifier-guidance scale (CG only)
  acc_t clip;  // clamp bound of x̂ (CLIP only)
};

// Where the noise n of the c_n term comes from: nowhere (the term is left out), a tensor, or an
// in-kernel Philox draw (DESIGN.md §6: element i of the output's memory is element i of stream
// (seed, offset), rounded to the data dtype, so it equals randn_like's noise for the same seed).
enum class NoiseSource { kNone = 0, kTensor, kPhilox };

// Which optional parts of the update a kernel instantiation applies.
struct StepFlags {
  bool cfg, cg, clip;
  NoiseSource noise;
};

// Whether a sample's noise must be drawn: not where c_n == 0 (the term is then exactly 0 for any
// finite n); a NaN c_n draws, so the NaN reaches the output as it would with a noise tensor.
template <typename acc_t>
C10_HOST_DEVICE inline bool needs_noise(acc_t c_n) {
  return !(c_n == acc_t(0));
}

template <typename acc_t>
C10_HOST_DEVICE inline StepScalars<acc_t> load_step_scalars(const acc_t* coeffs, int64_t B, int64_t b,
                                                                  const acc_t* w, const acc_t* gs, acc_t clip) {
  StepScalars<acc_t> s;
  s.a_z = coeffs[kAZ * B + b];
  s.a_m = coeffs[kAM * B + b];
  s.c_z = coeffs[kCZ * B + b];
  s.c_m = coeffs[kCM * B + b];
  s.c_x = coeffs[kCX * B + b];
  s.c_n = coeffs[kCN * B + b];
  s.w = w ? w[b] : acc_t(0);
  s.gs = gs ? gs[b] : acc_t(0);
  s.clip = clip;
  return s;
}

// c_z z + c_m m + c_x x̂ for one element, with m the guided model output and x̂ = a_z z + a_m m,
// clamped to [-clip, clip] when CLIP. The comparisons keep a NaN x̂ NaN, as torch.clamp does.
// x̂ is also stored to *x_hat_out when that is not null (reverse_step_with_x0's second output;
// inlined with a null constant, the store disappears).
template <bool CFG, bool CG, bool CLIP, typename acc_t>
C10_HOST_DEVICE inline acc_t step_mean(acc_t z, acc_t model_out, acc_t uncond, acc_t grad,
                                            const StepScalars<acc_t>& s, acc_t* x_hat_out = nullptr) {
  acc_t m = model_out;
  if constexpr (CFG) m = uncond + s.w * (model_out - uncond);
  if constexpr (CG) m = m + s.gs * grad;
  acc_t x_hat = s.a_z * z + s.a_m * m;
  if constexpr (CLIP) x_hat = x_hat < -s.clip ? -s.clip : (x_hat > s.clip ? s.clip : x_hat);
  if (x_hat_out != nullptr) *x_hat_out = x_hat;
  return s.c_z * z + s.c_m * m + s.c_x * x_hat;
}

// Calls fn(cfg, cg, clip, noise) with std::bool_constant arguments for cfg, cg, clip and a
// std::integral_constant<NoiseSource, ...> for noise, so the callee instantiates one tight loop per
// combination of optional inputs (read them back with decltype(cfg)::value).
template <typename F>
void dispatch_step_flags(const StepFlags& f, const F& fn) {
  auto with_noise = [&](auto cfg, auto cg, auto clip) {
    switch (f.noise) {
      case NoiseSource::kTensor:
        fn(cfg, cg, clip, std::integral_constant<NoiseSource, NoiseSource::kTensor>{});
        break;
      case NoiseSource::kPhilox:
        fn(cfg, cg, clip, std::integral_constant<NoiseSource, NoiseSource::kPhilox>{});
        break;
      default:
        fn(cfg, cg, clip, std::integral_constant<NoiseSource, NoiseSource::kNone>{});
    }
  };
  auto with_clip = [&](auto cfg, auto cg) {
    if (f.clip)
      with_noise(cfg, cg, std::true_type{});
    else
      with_noise(cfg, cg, std::false_type{});
  };
  auto with_cg = [&](auto cfg) {
    if (f.cg)
      with_clip(cfg, std::true_type{});
    else
      with_clip(cfg, std::false_type{});
  };
  if (f.cfg)
    with_cg(std::true_type{});
  else
    with_cg(std::false_type{});
}

}  // namespace vdm_fast
