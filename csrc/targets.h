// Regression targets of sq_error (DESIGN.md §2, §4.3), shared by the CPU and CUDA kernels.
//
// The schema takes the target as a string ("eps", "x0", "v", "score"); kernels are compiled once
// per target. Every target is linear in (x0, noise) with per-sample coefficients:
//   target = tx * x0 + tn * noise,
//   eps: (0, 1)   x0: (1, 0)   v = alpha*noise - sigma*x0: (-sigma, alpha)   score = -noise/sigma: (0, -1/sigma)
// A term whose coefficient is structurally zero is never loaded (eps and score do not read x0,
// x0 does not read noise), so those forwards read two tensors, not three, and no 0*inf makes a NaN.
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <string>
#include <type_traits>

namespace vdm_fast {

enum Target : int { kEps = 0, kX0 = 1, kV = 2, kScore = 3 };

inline Target parse_target(const char* op, c10::string_view name) {
  if (name == "eps") return kEps;
  if (name == "x0") return kX0;
  if (name == "v") return kV;
  if (name == "score") return kScore;
  TORCH_CHECK_VALUE(false, op, ": target must be one of 'eps', 'x0', 'v', 'score', got '", std::string(name), "'");
}

// Which of x0 / noise the target reads, and whether it depends on alpha / sigma (its coefficients
// are not constants), for a runtime target (host code) ...
constexpr bool target_uses_x0(int t) { return t == kX0 || t == kV; }
constexpr bool target_uses_noise(int t) { return t != kX0; }
constexpr bool target_uses_alpha_sigma(int t) { return t == kV || t == kScore; }

// ... and as compile-time constants of a kernel instantiated for target T.
template <int T>
constexpr bool target_uses_x0() {
  return target_uses_x0(T);
}
template <int T>
constexpr bool target_uses_noise() {
  return target_uses_noise(T);
}

// Per-sample coefficients (tx, tn) of the target and their derivatives in alpha and sigma.
template <typename acc_t>
struct TargetCoeffs {
  acc_t tx, tn;                // target = tx * x0 + tn * noise
  acc_t dtx_da, dtn_da;        // d(tx, tn)/d alpha
  acc_t dtx_ds, dtn_ds;        // d(tx, tn)/d sigma
};

template <int T, typename acc_t>
C10_HOST_DEVICE inline TargetCoeffs<acc_t> target_coeffs(acc_t a, acc_t s) {
  if (T == kEps) return {acc_t(0), acc_t(1), acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
  if (T == kX0) return {acc_t(1), acc_t(0), acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
  if (T == kV) return {-s, a, acc_t(0), acc_t(1), acc_t(-1), acc_t(0)};
  const acc_t inv_s = acc_t(1) / s;  // score
  return {acc_t(0), -inv_s, acc_t(0), acc_t(0), acc_t(0), inv_s * inv_s};
}

// The target at one element (only the terms the target uses are read).
template <int T, typename acc_t>
C10_HOST_DEVICE inline acc_t target_value(acc_t x, acc_t n, acc_t tx, acc_t tn) {
  if (T == kEps) return n;
  if (T == kX0) return x;
  if (T == kV) return tx * x + tn * n;
  return tn * n;
}

// Calls fn(std::integral_constant<int, T>{}) for the runtime target t.
template <typename F>
inline void dispatch_target(Target t, const F& fn) {
  switch (t) {
    case kEps: fn(std::integral_constant<int, kEps>{}); break;
    case kX0: fn(std::integral_constant<int, kX0>{}); break;
    case kV: fn(std::integral_constant<int, kV>{}); break;
    case kScore: fn(std::integral_constant<int, kScore>{}); break;
  }
}

}  // namespace vdm_fast
