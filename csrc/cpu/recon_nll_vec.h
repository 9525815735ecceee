// recon_nll's float32 CPU kernel, vectorised across elements. csrc/cpu/isa.h compiles it three
// ways; GCC 12 vectorises every loop below in the AVX2 and AVX-512 copies (-fopt-info-vec), while
// in the baseline (SSE2) copy the loops that call exp_f / log_f stay scalar, as fast_math's own
// probe loop does.
//
// The math is csrc/recon_nll_math.h's (window of L bins around the nearest bin m, sums relative to
// m, differences of squares as products); what changes is the order of work. element() runs the
// bin loop per element and calls libm's exp per bin, which keeps the loop scalar. Here a tile of
// kTile elements goes through straight-line loops, one per step: bins of x0 and of z0, then for
// j = 0..L-1 one term of every element of the tile (the bin lo_i + j), then the per-element
// results. L is fixed per sample, so the bin loop has no data-dependent trip count, and the
// all-bins case is the same loop with lo = 0, L = 256. exp and log are fmath::exp_f / log_f
// (<= 2 ulp, as the error bounds of tests/numerics.py allow for any library exp and log).
//
// The exponent is formed without a division per bin. With u_k = z - alpha c_k,
//   l_k - l_m = (q_m^2 - q_k^2) / 2 = [r (k - m) / 256] * [(u_m + u_k) / sigma]      (r = alpha/sigma)
// and u_m + u_k = 2z - alpha (c_m + c_k), where c_m + c_k = (m + k + 1)/128 - 2 is exact: one
// rounding (with FMA) where q_m + q_k takes five. The second factor is symmetric in m and k,
// which is what the nearest-bin correction (issue 15) needs: m steps to a neighbour k exactly when
// the computed term of k relative to m is positive, and then the computed term of the old m
// relative to the new one is the same factor with the sign of (k - m) flipped, so negative. m is
// the argmax of what is summed and no term overflows, as in nearest_bin() (there judged on
// q_m + q_k, the same sign up to rounding; each kernel is consistent with its own terms).
#pragma once

#include <algorithm>
#include <cstdint>

#include "cpu/fast_math.h"
#include "cpu/per_sample.h"
#include "recon_nll_math.h"

namespace vdm_fast {
namespace cpu {
namespace recon_vec {

// Elements per tile: the per-element state (a dozen arrays of kTile) stays in L1 and each bin
// step runs over several vectors. The per-sample sums go into double lane partials (LaneSum,
// csrc/cpu/per_sample.h; DESIGN.md §4.10).
constexpr int kTile = 128;

// Per-sample constants.
struct Coeffs {
  float alpha, sigma;
  float half_r_bin;  // r / 256 = (r / 2) * h, h = 1/128 the bin width: l_k - l_m = half_r_bin (k-m) (w / sigma)
  float inv_sigma;
  int L;  // bins summed per element (recon::window_bins)
};

inline Coeffs coeffs(float alpha, float sigma) {
  const float r = alpha / sigma;
  return {alpha, sigma, r * (1.0f / 256.0f), 1.0f / sigma, recon::window_bins(alpha, sigma)};
}

// w(a, b) = u_a + u_b = 2z - alpha (c_a + c_b) from z2 = 2z (exact) and a + b + 1 (an integer, as a
// float); one expression used for every pair, so that w(m, k) and w(k, m) are the same float. z2
// is always read from the tile, never 2 * z formed in the same expression: FMA contraction could
// then fuse 2 * z instead of alpha * cc, and one loop would round w differently from another.
inline float pair_sum(float z2, float alpha, float ab1) {
  const float cc = ab1 * (1.0f / 128.0f) - 2.0f;  // c_a + c_b, exact
  return z2 - alpha * cc;
}

// l_k - l_m from k - m (an integer, as a float) and w(m, k) (see the top of the file); 0 at k = m.
inline float log_ratio(const Coeffs& c, float k_minus_m, float w) {
  return (c.half_r_bin * k_minus_m) * (c.inv_sigma * w);
}

// recon::bin_index for a tile: round((x + 1) * 128 - 1/2) in float64, ties to even, clamped
// (NaN -> 0). Adding and subtracting 1.5 * 2^52 rounds to an integer in the current (nearest-even)
// mode: nearbyint for |v| < 2^51, and beyond that still on the right side of the clamps
// (std::nearbyint itself is a libm call in the baseline copy, which keeps a loop scalar).
template <typename scalar_t>
inline void bins_of_x(const scalar_t* __restrict x, int n, int* __restrict kstar) {
  constexpr double kRound = 6755399441055744.0;  // 1.5 * 2^52
  for (int i = 0; i < n; ++i) {
    const double v = (static_cast<double>(static_cast<float>(x[i])) + 1.0) * 128.0 - 0.5;
    const double f = (v + kRound) - kRound;
    kstar[i] = f >= 255.0 ? 255 : (f >= 0.0 ? static_cast<int>(f) : 0);
  }
}

// recon::nearest_bin for a tile, with the correction judged on this kernel's terms (top of file),
// and the window start. Written with integer min/max and arithmetic on comparisons rather than
// selects: GCC turns a select that feeds later float arithmetic into branches that it cannot
// vectorise (it duplicates the arithmetic into them). floor(y) for the clamp to 0..255:
// y + 1.5 * 2^23 rounds y to an integer (nearest-even) held in the low bits of the sum, exact for
// |y| < 2^22 and on the right side of the clamp beyond that (a negative sum, y <= -1.5 * 2^23, is
// taken as 0); one is subtracted where that rounded up. NaN gives bin 0, as in nearest_bin.
inline void nearest_bins(const float* __restrict z, const float* __restrict z2, const Coeffs& c, int n,
                         int* __restrict m_out, int* __restrict lo_out) {
  constexpr float kShifter = 12582912.0f;  // 1.5 * 2^23
  const int32_t shifter_bits = static_cast<int32_t>(fmath::float_as_bits(kShifter));
  const int L = c.L;
  for (int i = 0; i < n; ++i) {
    const float t = (z[i] / c.alpha + 1.0f) * 128.0f - 0.5f;
    const float y = t + 0.5f;
    const float sum = y + kShifter;
    const int32_t bits = static_cast<int32_t>(fmath::float_as_bits(sum));
    const int32_t rounded = (bits & ~(bits >> 31)) - shifter_bits;
    const int fl = rounded - static_cast<int>(sum - kShifter > y);
    const int m0 = std::min(std::max(fl, 0), recon::kBins - 1) & -static_cast<int>(y == y);
    // l_{m0 +- 1} - l_{m0} has the sign of +-w(m0, m0 +- 1)
    const int up = static_cast<int>(m0 < recon::kBins - 1) &
                   static_cast<int>(pair_sum(z2[i], c.alpha, static_cast<float>(2 * m0 + 2)) > 0.0f);
    const int down = static_cast<int>(m0 > 0) &
                     static_cast<int>(pair_sum(z2[i], c.alpha, static_cast<float>(2 * m0)) < 0.0f) & (1 - up);
    const int m = m0 + up - down;
    m_out[i] = m;
    lo_out[i] = std::min(std::max(m - (L - 1) / 2, 0), recon::kBins - L);
  }
}

// The sums of one tile: s = sum_k exp(l_k - l_m) over the window and, when GRAD, sd = sum e d_k,
// sd2 = sum e d_k^2 with d_k = c_k - c* = (k - k*)/128.
//
// Every loop here runs to the tile's length n, not to the constant kTile: with a constant trip
// count GCC 12's PRE splits exp_f's range selects into branches around trapping arithmetic, and
// then only the AVX-512 copy (masked operations) vectorises.
template <bool GRAD>
inline void window_sums(const float* __restrict z2, const float* __restrict lo_m1, const float* __restrict lo_m,
                        const float* __restrict lo_ks, const Coeffs& c, int n, float* __restrict s,
                        float* __restrict sd, float* __restrict sd2) {
  for (int i = 0; i < n; ++i) {
    s[i] = 0.0f;
    if (GRAD) {
      sd[i] = 0.0f;
      sd2[i] = 0.0f;
    }
  }
  for (int j = 0; j < c.L; ++j) {
    const float fj = static_cast<float>(j);  // bin k = lo + j; these integer sums are exact in float
    for (int i = 0; i < n; ++i) {
      const float e = fmath::exp_f(log_ratio(c, lo_m[i] + fj, pair_sum(z2[i], c.alpha, lo_m1[i] + fj)));
      s[i] += e;
      if (GRAD) {
        const float d = (lo_ks[i] + fj) * (1.0f / 128.0f);
        const float ed = e * d;
        sd[i] += ed;
        sd2[i] += ed * d;
      }
    }
  }
}

// The state of one tile.
struct Tile {
  float z[kTile], z2[kTile];
  int kstar[kTile], m[kTile], lo[kTile];
  float lo_m1[kTile], lo_m[kTile], lo_ks[kTile];  // lo + m + 1, lo - m, lo - k*: k - m = lo - m + j, ...
  float s[kTile], sd[kTile], sd2[kTile];
  float t0[kTile], t1[kTile];  // per-element terms of the per-sample sums
};

// Loads z0 into the tile as float, bins both x0 and z0 and forms what the bin loop reads per element.
template <typename scalar_t>
inline void load(Tile& t, const scalar_t* __restrict x, const scalar_t* __restrict z, const Coeffs& c, int n) {
  for (int i = 0; i < n; ++i) {
    t.z[i] = static_cast<float>(z[i]);
    t.z2[i] = 2.0f * t.z[i];
  }
  bins_of_x(x, n, t.kstar);
  nearest_bins(t.z, t.z2, c, n, t.m, t.lo);
  for (int i = 0; i < n; ++i) {
    t.lo_m1[i] = static_cast<float>(t.lo[i] + t.m[i] + 1);
    t.lo_m[i] = static_cast<float>(t.lo[i] - t.m[i]);
    t.lo_ks[i] = static_cast<float>(t.lo[i] - t.kstar[i]);
  }
}

// Sum of the per-element nll over n elements.
template <typename scalar_t>
double forward_segment(const scalar_t* __restrict x, const scalar_t* __restrict z, const Coeffs& c, int64_t n) {
  Tile t;
  LaneSum lanes;
  for (int64_t i0 = 0; i0 < n; i0 += kTile) {
    const int len = static_cast<int>(std::min<int64_t>(n - i0, kTile));
    load(t, x + i0, z + i0, c, len);
    window_sums<false>(t.z2, t.lo_m1, t.lo_m, t.lo_ks, c, len, t.s, nullptr, nullptr);
    for (int i = 0; i < len; ++i) {
      // nll = l_m - l_* + log S
      const float w = pair_sum(t.z2[i], c.alpha, static_cast<float>(t.m[i] + t.kstar[i] + 1));
      t.t0[i] = fmath::log_f(t.s[i]) - log_ratio(c, static_cast<float>(t.kstar[i] - t.m[i]), w);
    }
    lanes.add(len, [&](int64_t i) { return t.t0[i]; });
  }
  return lanes.total();
}

// Writes g * d nll/d z0 (when gz) and adds the segment's sums of d nll/d alpha, d nll/d sigma to
// sums[0], sums[1] (recon::element_grads per element).
template <typename scalar_t>
void backward_segment(scalar_t* __restrict gz, const scalar_t* __restrict x, const scalar_t* __restrict z,
                      const Coeffs& c, float g, int64_t n, double* sums) {
  Tile t;
  LaneSum lanes_a, lanes_s;
  for (int64_t i0 = 0; i0 < n; i0 += kTile) {
    const int len = static_cast<int>(std::min<int64_t>(n - i0, kTile));
    load(t, x + i0, z + i0, c, len);
    window_sums<true>(t.z2, t.lo_m1, t.lo_m, t.lo_ks, c, len, t.s, t.sd, t.sd2);
    for (int i = 0; i < len; ++i) {
      recon::Sums<float> e;
      e.ed = t.sd[i] / t.s[i];
      e.ed2 = t.sd2[i] / t.s[i];
      e.qs = recon::q_of(t.z[i], c.alpha, c.sigma, t.kstar[i]);
      const recon::Grads<float> d = recon::element_grads(e, c.alpha, c.sigma, t.kstar[i]);
      t.s[i] = g * d.dz;  // s is spent: it now holds the z0 gradient
      t.t0[i] = d.dalpha;
      t.t1[i] = d.dsigma;
    }
    if (gz) {
      for (int i = 0; i < len; ++i) gz[i0 + i] = static_cast<scalar_t>(t.s[i]);
    }
    lanes_a.add(len, [&](int64_t i) { return t.t0[i]; });
    lanes_s.add(len, [&](int64_t i) { return t.t1[i]; });
  }
  sums[0] += lanes_a.total();
  sums[1] += lanes_s.total();
}

}  // namespace recon_vec
}  // namespace cpu
}  // namespace vdm_fast
