// Per-element math of discretized_gaussian_nll (DESIGN.md §3), shared by the CPU and CUDA kernels;
// kernels/discretized_gaussian_nll.py is the same in Triton. It follows vdm_fast.reference
// operation for operation, and its derivatives are those autograd takes of the reference:
//   u± = exp(-log_scale) ((x - mean) ± 1/255),
//   log P = log Phi(u+) (x < -0.999), log(1 - Phi(u-)) (x > 0.999), log(Phi(u+) - Phi(u-)) else;
//   d log P / d u± = ±phi(u±) / P = ±exp(-u±^2/2 - log P) / sqrt(2 pi)  (stable in log space),
//   d u± / d mean = -exp(-log_scale),  d u± / d log_scale = -u±.
// cdf = tanh: Phi is improved-diffusion's 0.5 (1 + tanh(sqrt(2/pi) (u + 0.044715 u^3))) and every
// probability is clamped below at 1e-12 before the log; a clamped probability passes no gradient
// (torch.clamp's derivative, 1 where the input >= min).
//
// log Phi is passed in (LogNdtr): ATen's calc_log_ndtr on the CPU, the same algorithm with CUDA's
// erfcx on the GPU, so both equal torch.special.log_ndtr.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>

namespace vdm_fast {
namespace dgauss {

template <typename acc_t>
struct LogProb {
  acc_t lp;     // log P of the element's bin
  acc_t dmean;  // d lp / d mean
  acc_t dls;    // d lp / d log_scale
};

template <typename acc_t>
C10_HOST_DEVICE inline acc_t log1p_neg_exp(acc_t v) {  // log(1 - exp(v)), v <= 0, as the reference
  return std::log1p(-std::exp(v));
}

// improved-diffusion's tanh approximation of Phi and its derivative (with tanh' = 1 - tanh^2 as
// autograd computes it), operation for operation as the reference.
template <typename acc_t>
C10_HOST_DEVICE inline void approx_cdf(acc_t u, acc_t* cdf, acc_t* pdf) {
  const acc_t k = std::sqrt(acc_t(2.0 / 3.14159265358979323846));
  // tanh rounded once from double: cdf = (1 + th)/2 and 1 - th^2 cancel near the tails, where one
  // ulp of tanh is a relative 1e-3 of the result, so every backend uses a correctly rounded th.
  const acc_t w = k * (u + acc_t(0.044715) * (u * u * u));
  const acc_t th = static_cast<acc_t>(std::tanh(static_cast<double>(w)));
  *cdf = acc_t(0.5) * (acc_t(1) + th);
  // 1 - th^2 as (1 - th)(1 + th): both factors are exact for |th| >= 1/2 (Sterbenz), so pdf/cdf
  // keeps the accuracy PyTorch's fused tanh backward has in the tails.
  *pdf = acc_t(0.5) * ((acc_t(1) - th) * (acc_t(1) + th)) * k * (acc_t(1) + acc_t(3) * acc_t(0.044715) * (u * u));
}

template <typename acc_t, bool TANH, bool GRAD, typename LogNdtr>
C10_HOST_DEVICE inline LogProb<acc_t> element(acc_t x, acc_t mean, acc_t log_scale, const LogNdtr& log_ndtr) {
  const acc_t inv = std::exp(-log_scale);
  const acc_t centred = x - mean;
  const acc_t plus = inv * (centred + acc_t(1.0 / 255));
  const acc_t minus = inv * (centred - acc_t(1.0 / 255));
  const bool left = x < acc_t(-0.999), right = !left && x > acc_t(0.999);
  acc_t lp, dplus = 0, dminus = 0;  // d lp / d u+, d lp / d u-
  if (TANH) {
    const acc_t min_p = acc_t(1e-12);
    acc_t cp = 0, pp = 0, cm = 0, pm = 0;
    if (!right) approx_cdf(plus, &cp, &pp);
    if (!left) approx_cdf(minus, &cm, &pm);
    const acc_t p = left ? cp : (right ? acc_t(1) - cm : cp - cm);
    const bool live = p >= min_p;  // clamp(min=1e-12) passes gradient only here
    lp = std::log(p < min_p ? min_p : p);  // NaN stays NaN, as with clamp
    if (GRAD && live) {
      if (!right) dplus = pp / p;
      if (!left) dminus = -pm / p;
    }
  } else {
    if (left) {
      lp = log_ndtr(plus);
    } else if (right) {
      lp = log_ndtr(-minus);
    } else {
      // log(Phi(hi) - Phi(lo)) on the side of 0 where both tails are small.
      const bool flip = minus > acc_t(0);
      const acc_t hi = flip ? -minus : plus, lo = flip ? -plus : minus;
      const acc_t lh = log_ndtr(hi);
      lp = lh + log1p_neg_exp(log_ndtr(lo) - lh);
    }
    if (GRAD) {
      const acc_t inv_sqrt_2pi = acc_t(0.39894228040143267794);
      if (!right) dplus = inv_sqrt_2pi * std::exp(-(lp + plus * plus / acc_t(2)));
      if (!left) dminus = -inv_sqrt_2pi * std::exp(-(lp + minus * minus / acc_t(2)));
    }
  }
  LogProb<acc_t> out;
  out.lp = lp;
  out.dmean = GRAD ? -inv * (dplus + dminus) : acc_t(0);
  out.dls = GRAD ? -(plus * dplus + minus * dminus) : acc_t(0);
  return out;
}

}  // namespace dgauss
}  // namespace vdm_fast
