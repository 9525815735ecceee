// float32 exp and log for the CPU loops that GCC vectorises (csrc/cpu/isa.h).
//
// Why not std::exp / std::log: an extension's loops cannot reach ATen's SLEEF (ATen builds it only
// into its own per-ISA kernels), and a call to libm's expf inside a loop keeps the loop scalar.
// These are straight-line float/int code with selects instead of branches, so a loop over them
// compiles to AVX2 / AVX-512 in the wide copies of with_cpu_isa() (several lanes per instruction),
// provided GCC may if-convert the selects: it does not while it must assume floating-point
// operations can trap, so a file whose loops use these either starts with
// `#pragma GCC optimize("no-trapping-math")` before its includes (fast_math.cpp,
// discretized_gaussian_nll.cpp; nothing here reads FP exception flags) or shapes its loops as
// recon_nll_vec.h explains. Check with -fopt-info-vec or by timing: vectorised, exp_f costs about
// 0.2 ns per element on one AVX-512 core.
//
// Error bounds (tests/test_fast_math.py checks them over every float32 input, --runslow; every
// 61st input by default), in units of the correctly rounded result's ulp:
//   exp_f: <= 2 ulp where exp(x) is a normal float; below that (x < -87.34) the result is the
//          subnormal product rounded once, absolute error <= 2^-149; 0 for x < -103.98, +inf for
//          x > 88.72, NaN for NaN.
//   log_f: <= 2 ulp for every positive finite float (subnormals included); -inf at 0, +inf at
//          +inf, NaN for negative numbers and NaN. log_normal_f: the same for positive normal
//          floats, NaN for NaN.
// The paths of with_cpu_isa round differently (FMA contraction), always within these bounds.
#pragma once

#include <cstdint>
#include <limits>

#include "philox.h"

namespace vdm_fast {
namespace fmath {

using philox::bits_as_float;
using philox::float_as_bits;

// exp(x) = 2^n exp(r), n = round(x / ln 2), r = x - n ln 2 in [-ln2/2, ln2/2] (ln 2 in two parts,
// the first exact in float, so n * kLn2Hi is exact for |n| < 2^15). exp(r) = 1 + r + r^2 P(r), P a
// degree-5 fit of (exp(r) - 1 - r)/r^2 on that interval (Taylor-like coefficients adjusted for
// the minimax error). exp_split gives exp(r) and n for an x already clamped to a finite range.
struct ExpSplit {
  float er;   // exp(r)
  int32_t n;  // the power of two
};

inline ExpSplit exp_split(float xc) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;
  constexpr float kLn2Lo = -2.12194440e-4f;
  constexpr float kShifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer (|v| < 2^22)
  const float t = xc * kLog2e + kShifter;
  const float n = t - kShifter;
  const int32_t ni = static_cast<int32_t>(float_as_bits(t)) - static_cast<int32_t>(float_as_bits(kShifter));
  float r = xc - n * kLn2Hi;
  r = r - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return {(p * (r * r) + r) + 1.0f, ni};
}

inline float pow2_f(int32_t n) {  // 2^n for n in [-126, 127]
  return bits_as_float(static_cast<uint32_t>(n + 127) << 23);
}

constexpr float kExpHi = 88.7228394f;  // above: exp(x) > FLT_MAX

// exp(x) over the whole float range. 2^n is applied in two factors so that n from -150 to 128
// needs no special case: each factor is a normal float, and only the last product rounds (to a
// subnormal if needed).
inline float exp_f(float x) {
  constexpr float kLo = -103.972084f;  // below: exp(x) < 2^-150, rounds to 0
  const float xc = x < kLo ? kLo : (x > kExpHi ? kExpHi : x);  // NaN passes through
  const ExpSplit e = exp_split(xc);
  const int32_t n1 = e.n >> 1;  // floor(n / 2); n in [-150, 128] -> both halves in [-75, 64]
  const float y = (e.er * pow2_f(n1)) * pow2_f(e.n - n1);
  return x < kLo ? 0.0f : (x > kExpHi ? std::numeric_limits<float>::infinity() : y);
}

// exp(x) where only normal results matter: x is first clamped to [kExpNormalLo, kExpHi], so the
// result is never below exp(kExpNormalLo) = 4.4e-38 (nor a subnormal or 0) and the scaling is one
// exact power of two. exp_f's bound (<= 2 ulp) for x >= kExpNormalLo; NaN and +inf as exp_f. For
// callers to whom anything below 2^-124 is nothing, e.g. a CDF tail next to 1 or a probability
// floored at 1e-12. Why: a subnormal result costs a microcode assist per vector on x86 (exp_f
// itself: 0.18 ns an element, 0.53 with subnormal results; the tanh form of
// discretized_gaussian_nll ran 1.7x slower at log_scale near -6, where most of its CDF tails are
// below 2^-126).
constexpr float kExpNormalLo = -86.0f;  // n >= -124 here: the result stays >= 2^-125

inline float exp_normal_f(float x) {
  // Above 89, n = 128 still and the product overflows to +inf as it should (+inf included).
  const ExpSplit e = exp_split(x < kExpNormalLo ? kExpNormalLo : (x > 89.0f ? 89.0f : x));
  // 2^n as 2^(n-1) * 2 (n - 1 in [-125, 127]: a normal factor), the last product exact unless it
  // overflows, so exp(x) just below FLT_MAX (n = 128) stays finite.
  return (e.er * pow2_f(e.n - 1)) * 2.0f;
}

// log(x): philox::log_unit's polynomial (valid for every positive normal float, not only (0, 1]),
// with subnormals scaled by 2^23 first and the special values selected at the end.
inline float log_f(float x) {
  constexpr float kTwo23 = 8388608.0f;
  constexpr float kLog2To23 = 15.9423851528787f;  // 23 ln 2
  const bool sub = x < 1.17549435e-38f;           // subnormal, zero or negative
  const float xs = sub ? x * kTwo23 : x;
  // Non-positive, infinite and NaN inputs give garbage here; the selects below replace it.
  const float y = philox::log_unit(xs) - (sub ? kLog2To23 : 0.0f);
  const float inf = std::numeric_limits<float>::infinity();
  return x > 0.0f ? (x < inf ? y : inf) : (x == 0.0f ? -inf : std::numeric_limits<float>::quiet_NaN());
}

// log(x) for x a positive normal float (up to +inf excluded) or NaN: log_f without its cases for
// subnormals, zero, negatives and infinity, for callers whose argument cannot be one, e.g. a
// probability floored at 1e-12. log_f's bound there; NaN for NaN (anything else outside that
// domain gives a wrong number). Why: those cases' selects made the tanh form of
// discretized_gaussian_nll's forward loop a quarter slower on an AVX-512 Xeon (3.7 against 2.8 ns
// an element, one core, in a standalone copy of the loop).
inline float log_normal_f(float x) {
  const float y = philox::log_unit(x);
  return x == x ? y : x;
}

}  // namespace fmath
}  // namespace vdm_fast
