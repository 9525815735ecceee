// Per-element math of recon_nll (VDM's categorical decoder, DESIGN.md §3), shared verbatim by the
// CPU and CUDA kernels; kernels/recon_nll.py is the same algorithm in Triton.
//
// Per element, with q_k = (z - alpha c_k) / sigma and bin centres c_k = (k + 1/2)/128 - 1:
//   logits l_k = -q_k^2 / 2,  nll = logsumexp_k l_k - l_{k*},  k* = the bin of x0.
// The 256 logits are never stored: in units of the bin width h = 1/128 they are a parabola,
//   l_k - l_m = -(kappa / 2) ((t - k)^2 - (t - m)^2),  kappa = (alpha h / sigma)^2,  t = z/alpha in bins,
// whose maximum is at the bin m nearest to t. For |k - m| = j >= 1, (t-k)^2 - (t-m)^2 >= j (j - 1)
// (|t - m| <= 1/2 inside the grid; outside it the distances only grow). So every bin with
// |k - m| > W has exp(l_k - l_m) <= exp(-kappa W (W+1) / 2) <= exp(-T) once W(W+1) >= 2T/kappa,
// and the at most 256 bins left out change the sum S = sum_k exp(l_k - l_m) >= 1 by a relative
// 256 e^-T: 1.1e-15 for T = 40 (float32, eps 6.0e-8) and 4.1e-26 for T = 64 (float64, eps 1.1e-16),
// far below the rounding of S itself, so log S is the full sum's to working precision. The same
// bound (times q^2 <= 2T + O(1), also tiny) covers the expectations the gradients need. When
// sigma/alpha is large the window reaches 256 bins and every bin is summed.
//
// Cancellation: z far outside [-1, 1] or sigma tiny make q huge while the differences that matter
// stay small, so differences of squares are formed as products:
//   q_a^2 - q_b^2 = (q_a - q_b)(q_a + q_b),  q_a - q_b = r (c_b - c_a),  r = alpha / sigma,
// with c_b - c_a = (b - a)/128 exact. The gradients use d_k = c_k - c_{k*} likewise:
//   d nll/d z     = r E[d] / sigma
//   d nll/d alpha = (q* E[d] - r c* E[d] - r E[d^2]) / sigma
//   d nll/d sigma = (r^2 E[d^2] - 2 r q* E[d]) / sigma
// (E under the softmax p_k), which equal (q* - E q)/sigma, (E[q c] - q* c*)/sigma and
// (E[q^2] - q*^2)/sigma without subtracting large numbers.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace vdm_fast {
namespace recon {

constexpr int kBins = 256;

// Truncation exponent T (see above): float32 and float64 compute types.
template <typename acc_t>
struct Tail {
  static constexpr double value = 40.0;
};
template <>
struct Tail<double> {
  static constexpr double value = 64.0;
};

// reference.bin_index: round((x + 1) * 128 - 1/2) in float64, ties to even, clamped to 0..255
// (NaN -> 0). (x + 1) * 128 is exact, so FMA contraction cannot change the result.
C10_HOST_DEVICE inline int bin_index(double x) {
  const double v = std::nearbyint((x + 1.0) * 128.0 - 0.5);
  return v >= 255.0 ? 255 : (v >= 0.0 ? static_cast<int>(v) : 0);
}

template <typename acc_t>
C10_HOST_DEVICE inline acc_t centre(int k) {
  return (static_cast<acc_t>(k) + acc_t(0.5)) / acc_t(128) - acc_t(1);  // exact in float32
}

// Number of bins summed for one sample: 2W + 1 with W the smallest integer with
// W (W + 1) >= 2T / kappa, or all 256 (kappa zero, tiny or not a number).
template <typename acc_t>
C10_HOST_DEVICE inline int window_bins(acc_t alpha, acc_t sigma) {
  const double r = static_cast<double>(alpha) / (static_cast<double>(sigma) * 128.0);
  const double need = 2.0 * Tail<acc_t>::value / (r * r);
  if (!(need < 127.0 * 128.0)) return kBins;  // also NaN
  int w = static_cast<int>(std::sqrt(need));
  while (w > 0 && static_cast<double>(w - 1) * w >= need) --w;
  while (static_cast<double>(w) * (w + 1) < need) ++w;
  return 2 * w + 1 < kBins ? 2 * w + 1 : kBins;
}

// q_k = (z - alpha c_k) / sigma, formed the same way everywhere, so that comparisons of logits
// agree with the terms summed.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t q_of(acc_t z, acc_t alpha, acc_t sigma, int k) {
  return (z - alpha * centre<acc_t>(k)) / sigma;
}

// The bin of the largest computed logit. t = z/alpha in bins rounds: next to a bin edge the bin
// nearest t can come out as the neighbour of the maximum, and with a tiny sigma (gamma_0 = -30:
// sigma = 3e-7) the maximum's term exp(l_k - l_m) then overflows (issue 15). One step towards the
// larger neighbour, judged by the sign of l_{m+-1} - l_m = +-r h (q_m + q_{m+-1}) / 2 exactly as
// element() computes it, makes m the argmax of what is summed: bins further away are below by
// r h per bin, far more than the rounding of q (ulp(z) / sigma), so one step is enough.
template <typename acc_t>
C10_HOST_DEVICE inline int nearest_bin(acc_t z, acc_t alpha, acc_t sigma) {
  const acc_t t = (z / alpha + acc_t(1)) * acc_t(128) - acc_t(0.5);
  const acc_t f = std::floor(t + acc_t(0.5));
  const int m = f >= acc_t(255) ? 255 : (f >= acc_t(0) ? static_cast<int>(f) : 0);  // NaN -> 0
  const acc_t qm = q_of(z, alpha, sigma, m);
  if (m < kBins - 1 && qm + q_of(z, alpha, sigma, m + 1) > acc_t(0)) return m + 1;
  if (m > 0 && qm + q_of(z, alpha, sigma, m - 1) < acc_t(0)) return m - 1;
  return m;
}

// First bin of the L-bin window around nearest_bin, shifted to stay inside 0..255.
template <typename acc_t>
C10_HOST_DEVICE inline int window_start(acc_t z, acc_t alpha, acc_t sigma, int L, int* nearest) {
  const int m = nearest_bin(z, alpha, sigma);
  *nearest = m;
  int lo = m - (L - 1) / 2;
  lo = lo < 0 ? 0 : lo;
  return lo > kBins - L ? kBins - L : lo;
}

template <typename acc_t>
struct Sums {
  acc_t nll;  // per-element negative log-likelihood
  acc_t ed;   // E[c_k - c*]
  acc_t ed2;  // E[(c_k - c*)^2]
  acc_t qs;   // q* = (z - alpha c*) / sigma
};

// One element: nll and, when GRAD, the expectations the gradients need.
template <typename acc_t, bool GRAD>
C10_HOST_DEVICE inline Sums<acc_t> element(acc_t z, acc_t alpha, acc_t sigma, int kstar, int L) {
  int m;
  const int lo = window_start(z, alpha, sigma, L, &m);
  const acc_t r = alpha / sigma;
  const acc_t cs = centre<acc_t>(kstar);
  const acc_t qs = q_of(z, alpha, sigma, kstar);
  const acc_t qm = q_of(z, alpha, sigma, m);
  acc_t s = 0, sd = 0, sd2 = 0;
  for (int k = lo; k < lo + L; ++k) {
    const acc_t q = q_of(z, alpha, sigma, k);
    // l_k - l_m = (q_m^2 - q_k^2)/2 = (q_m - q_k)(q_m + q_k)/2, q_m - q_k = r (c_k - c_m)
    const acc_t e = std::exp(acc_t(0.5) * r * (static_cast<acc_t>(k - m) / acc_t(128)) * (qm + q));
    s += e;
    if (GRAD) {
      const acc_t d = static_cast<acc_t>(k - kstar) / acc_t(128);
      sd += e * d;
      sd2 += e * d * d;
    }
  }
  Sums<acc_t> out;
  // nll = l_m - l_* + log S = (q*^2 - q_m^2)/2 + log S, q* - q_m = r (c_m - c*)
  out.nll = acc_t(0.5) * r * (static_cast<acc_t>(m - kstar) / acc_t(128)) * (qs + qm) + std::log(s);
  out.ed = GRAD ? sd / s : acc_t(0);
  out.ed2 = GRAD ? sd2 / s : acc_t(0);
  out.qs = qs;
  return out;
}

// Contributions of one element to the gradients (before the upstream factor).
template <typename acc_t>
struct Grads {
  acc_t dz, dalpha, dsigma;
};

template <typename acc_t>
C10_HOST_DEVICE inline Grads<acc_t> element_grads(const Sums<acc_t>& e, acc_t alpha, acc_t sigma, int kstar) {
  const acc_t r = alpha / sigma;
  const acc_t cs = centre<acc_t>(kstar);
  Grads<acc_t> g;
  g.dz = r * e.ed / sigma;
  g.dalpha = (e.qs * e.ed - r * cs * e.ed - r * e.ed2) / sigma;
  g.dsigma = (r * r * e.ed2 - acc_t(2) * r * e.qs * e.ed) / sigma;
  return g;
}

}  // namespace recon
}  // namespace vdm_fast
