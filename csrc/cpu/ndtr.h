// float32 log Phi(x) (log_ndtr) for the CPU loops that GCC vectorises (csrc/cpu/isa.h), the
// erf form of discretized_gaussian_nll.
//
// Why not ATen's calc_log_ndtr: it is a scalar libm-style function (erfcx, log1p, branches), and a
// call to it keeps the loop scalar (~20 ns an element). This is straight-line float code with
// selects, built on fmath::exp_f / log_f (csrc/cpu/fast_math.h).
//
// The method. With a = |x| and R(a) = Phi(-a) exp(a^2 / 2) (a scaled erfc, 1/2 at 0, ~1/(a sqrt(2 pi))
// for large a; smooth and free of overflow on [0, inf)):
//   x <= 0: log Phi(x) = -x^2/2 + log R(a)   (both terms negative: no cancellation, and no
//           exp(-x^2/2) to underflow: accurate down to x = -2.6e19, where -x^2/2 leaves float)
//   x >  0: log Phi(x) = log1p(-Q), Q = Phi(-x) = exp(-x^2/2) R(a) <= 1/2, log1p by Goldberg's
//           log(w) * Q / (1 - w), w = 1 - Q rounded (exact where w == 1: -Q).
// R(a) = t P(t), t = 1 / (1 + a/2) in (0, 1], P a degree-12 polynomial fitted to R(a)/t for
// relative error (Lawson-weighted least squares on Chebyshev nodes in float64, coefficients rounded
// to float32: fit error 0.8 * 2^-24; R's float32 evaluation, t's rounding included, 5.4 * 2^-24).
// exp(-x^2/2) is taken with its argument split: x = xh + xl with xh the top 12 bits of x, so
// -xh^2/2 is exact and the rest small; the sum's rounding is carried as a relative correction, so
// Q keeps its accuracy for x up to 13 (where x^2/2 itself rounds by up to 85 * 2^-24 relative).
//
// Error bound (tests/test_ndtr.py checks it over every float32 input with --runslow; every 61st
// by default; on every CPU path through tests/test_cpu_paths.py): |got - log Phi(x)| <=
// 12 * 2^-24 |log Phi(x)| where log Phi(x) is a normal float (measured: 8.6 * 2^-24 near x = 0,
// where R's float evaluation, ~5 * 2^-24, dominates; 2 * 2^-24 for x < -2, 6 * 2^-24 for x > 5);
// where it is subnormal (x > 13.1) that bound at the smallest normal plus 2^-150 absolute; -inf
// for x < -2.6e19 (log Phi below -FLT_MAX), 0 for x = +inf, NaN for NaN. ATen's float32
// log_ndtr, for comparison, is 195 * 2^-24 off at x = 13 (log1p of a rounded erfc).
#pragma once

#include <cstdint>

#include "cpu/fast_math.h"

namespace vdm_fast {
namespace fmath {

// R(a) = Phi(-a) exp(a^2/2) for a >= 0 (see above). +inf gives 0, NaN NaN.
inline float ndtr_scaled(float a) {
  const float t = 1.0f / (1.0f + 0.5f * a);
  float p = 4.666106403e-02f;
  p = p * t - 2.225490510e-01f;
  p = p * t + 3.459881842e-01f;
  p = p * t + 1.891244017e-02f;
  p = p * t - 7.160376906e-01f;
  p = p * t + 8.853574991e-01f;
  p = p * t - 3.501164913e-01f;
  p = p * t - 3.343379870e-02f;
  p = p * t - 7.417148352e-02f;
  p = p * t + 5.088748783e-02f;
  p = p * t + 1.495588124e-01f;
  p = p * t + 1.994718909e-01f;
  p = p * t + 1.994711310e-01f;
  return t * p;
}

// -x^2/2 as hi + lo: hi rounded, lo its rounding error (to 2^-34 of hi). xh keeps x's top 12
// significand bits (a mask, the same on every path; no FMA needed): xh^2, xh*xl and xl^2 are exact.
struct NegHalfSquare {
  float hi, lo;
};
inline NegHalfSquare neg_half_square(float x) {
  const float xh = bits_as_float(float_as_bits(x) & 0xfffff000u);
  const float xl = x - xh;
  const float big = -(0.5f * xh) * xh;       // exact (or -inf past 1.8e19)
  const float small = -(xh * xl + 0.5f * (xl * xl));  // |small| <= 2^-10 |big|: its rounding is 2^-34 of hi
  const float hi = big + small;
  return {hi, (big - hi) + small};  // Fast2Sum: |big| >= |small|, the error term is exact
}

// log(1 - q) = log1p(-q) for q in [0, 1], given w = 1 - q rounded and l = log_f(w): Goldberg's
// l * q / (1 - w). 1 - w is exact (Sterbenz for w >= 1/2; below, w = 1 - q itself is exact) and
// the quotient corrects w's rounding,
// so the result keeps log_f's accuracy relative to itself however small q is; w == 1 means
// q <= 2^-25, where log1p(-q) = -q within q^2/2. q = 1 gives -inf, NaN gives NaN.
inline float log1m_given(float q, float w, float l) {
  return w == 1.0f ? -q : l * (q / (w == 1.0f ? 1.0f : 1.0f - w));
}

inline float log1m_f(float q) {
  const float w = 1.0f - q;
  return log1m_given(q, w, log_f(w));
}

inline float log_ndtr_f(float x) {
  const float a = x < 0.0f ? -x : x;  // NaN stays NaN
  const float r = ndtr_scaled(a);
  // x > 0: Q = Phi(-x) = exp(hi + lo) R = exp(hi) (1 + lo) R (|lo| < 2^-16: lo^2 is below 2^-32).
  // Past x = 20, exp(hi) is 0 anyway; the cap keeps x = +inf from making NaN (inf - inf) in the split.
  const NegHalfSquare s = neg_half_square(x < 20.0f ? x : 20.0f);
  const float q = exp_f(s.hi) * (1.0f + s.lo) * r;
  const float w = 1.0f - q;
  const bool pos = x > 0.0f;
  const float l = log_f(pos ? w : r);  // one log serves both sides
  const float pos_val = log1m_given(q, w, l);
  // x <= 0: -x^2/2 rounds once (a relative 2^-24 of the result, which it dominates); -inf past
  // x = -2.6e19, and for x = -inf (R = 0 there too).
  const float neg_val = -(0.5f * x) * x + l;
  return pos ? pos_val : neg_val;
}

}  // namespace fmath
}  // namespace vdm_fast
