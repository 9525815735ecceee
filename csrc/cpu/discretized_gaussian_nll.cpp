// discretized_gaussian_nll: its schema and autograd (csrc/autograd.h), and on the CPU per-sample sums of -log P(x0's bin), and the fused
// backward (elementwise grads to mean and log_scale). Math: csrc/discretized_gaussian_math.h.
// float64 runs that header's scalar code with ATen's own log_ndtr. float32 (and float16/bfloat16,
// converted to float tiles) runs the same formulas branch-free in float (dgauss_f below) on
// fmath's exp_f / log_f / log_ndtr_f (csrc/cpu/fast_math.h, csrc/cpu/ndtr.h), so the loops
// vectorise (csrc/cpu/isa.h).
// GCC may not if-convert (so not vectorise) a loop whose ?: arms hold floating-point operations
// while it must assume they trap; nothing here reads FP exception flags, and results are the same
// (no reassociation). Before every #include, so each function of this file gets it alike (GCC does
// not inline across differing options).
#pragma GCC optimize("no-trapping-math")
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/native/Math.h>
#include <torch/library.h>

#include <type_traits>

#include "autograd.h"
#include "common.h"
#include "cpu/fast_math.h"
#include "cpu/ndtr.h"
#include "cpu/per_sample.h"
#include "cpu/value_checks.h"
#include "discretized_gaussian_math.h"
#include "discretized_gaussian_nll.h"

// The schema (DESIGN.md §4.5). The backward follows csrc/autograd.h: the forward's arguments in
// order; x0 is data and gets no gradient.
TORCH_LIBRARY_FRAGMENT(vdm_fast, m) {
  m.def("discretized_gaussian_nll(Tensor x0, Tensor mean, Tensor log_scale, str cdf=\"erf\") -> Tensor");
  // One pass over x0, mean, log_scale: grad_mean and grad_log_scale elementwise, scaled by the
  // (B,) upstream grad.
  m.def(
      "discretized_gaussian_nll_backward(Tensor grad, Tensor x0, Tensor mean, Tensor log_scale, str cdf,"
      " bool[2] output_mask) -> (Tensor, Tensor)");
}

namespace vdm_fast {
namespace cpu {
namespace {

constexpr int64_t kSumBlock = 1024;

struct LogNdtr {
  template <typename T>
  T operator()(T x) const {
    return calc_log_ndtr(x);  // ATen/native/Math.h, global namespace
  }
};

// Terms in acc_t, summed in double (scalar loop, compute-bound: a float running sum would absorb
// the small terms, a bias; see recon_nll.cpp).
template <typename scalar_t, typename acc_t, bool TANH>
double dgauss_segment(const scalar_t* __restrict x, const scalar_t* __restrict m, const scalar_t* __restrict ls,
                      int64_t n) {
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    sum += dgauss::element<acc_t, TANH, false>(static_cast<acc_t>(x[i]), static_cast<acc_t>(m[i]),
                                               static_cast<acc_t>(ls[i]), LogNdtr{})
               .lp;
  }
  return sum;
}

template <typename scalar_t, typename acc_t, bool TANH>
void dgauss_backward_segment(scalar_t* __restrict gm, scalar_t* __restrict gl, const scalar_t* __restrict x,
                             const scalar_t* __restrict m, const scalar_t* __restrict ls, acc_t g, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const auto e = dgauss::element<acc_t, TANH, true>(static_cast<acc_t>(x[i]), static_cast<acc_t>(m[i]),
                                                      static_cast<acc_t>(ls[i]), LogNdtr{});
    // nll = -sum lp: the gradients carry a minus sign.
    if (gm) gm[i] = static_cast<scalar_t>(-g * e.dmean);
    if (gl) gl[i] = static_cast<scalar_t>(-g * e.dls);
  }
}

// --- float32: branch-free elements and tiled loops ------------------------------------------

// Elements per tile: the float terms (or gradients) of one tile sit in stack arrays between the
// vectorised element loop and the summation (or the store).
constexpr int64_t kTile = 256;

// improved-diffusion's Phi(u) ~ 0.5 (1 + tanh(w)), w = sqrt(2/pi) (u + 0.044715 u^3), in logistic
// form: 0.5 (1 + tanh(w)) = 1 / (1 + exp(-2w)). With e = exp(-2|w|) <= 1 the larger of cdf and
// 1 - cdf is 1 / (1 + e) and the smaller e / (1 + e): a few roundings relative to each, however
// deep the tail (0.5 (1 + th) itself cancels there). The density is its derivative in u,
// 0.5 (1 - th^2) w' = 2 cdf (1 - cdf) w', the same product without the cancellation of 1 - th^2.
struct TanhCdf {
  float cdf, ccdf, pdf;  // Phi(u), 1 - Phi(u), Phi'(u) of the approximation
};

inline TanhCdf tanh_cdf(float u) {
  constexpr float k = 0.797884560802865356f;  // sqrt(2 / pi)
  const float w = k * (u + 0.044715f * (u * u * u));
  // exp_normal_f: a tail below 4e-38 is held there (nothing next to the 1e-12 floor of the bin's
  // probability), and no subnormal is formed (csrc/cpu/fast_math.h says what that costs).
  const float e = fmath::exp_normal_f(-2.0f * (w < 0.0f ? -w : w));
  const float big = 1.0f / (1.0f + e);
  const float small = e * big;
  const bool up = w >= 0.0f;  // NaN: both NaN anyway
  return {up ? big : small, up ? small : big, 2.0f * (big * small) * (k * (1.0f + 3.0f * 0.044715f * (u * u)))};
}

// One element in float: log P and, with GRAD, d log P / d mean and d log P / d log_scale. The same
// cases and formulas as dgauss::element (csrc/discretized_gaussian_math.h), each branch computed
// and the result selected, so a loop of these vectorises. Differences, both no less accurate than
// the reference formula (the tests bound them by its running error): the tanh CDF in logistic
// form (above), and its bin mass in the upper tail as (1 - Phi(u-)) - (1 - Phi(u+)), the side of
// 0 where both terms are small, as the erf form does.
template <bool TANH, bool GRAD>
inline float dgauss_f(float x, float mean, float log_scale, float* dmean, float* dls) {
  // The forward of the tanh form may hold exp(-log_scale) at 4e-38 (exp_normal_f): below that the
  // bin edges are within 1e-37 of 0, both CDFs are 1/2 exactly either way, and exp_f's extra
  // scaling step is a tenth of the loop. Everything else takes exp_f (a gradient is scaled by it).
  const float inv = TANH && !GRAD ? fmath::exp_normal_f(-log_scale) : fmath::exp_f(-log_scale);
  const float centred = x - mean;
  const float plus = inv * (centred + 1.0f / 255);
  const float minus = inv * (centred - 1.0f / 255);
  const bool left = x < -0.999f, right = !left && x > 0.999f;
  const bool flip = minus > 0.0f;
  float lp, dplus, dminus;  // d lp / d u+, d lp / d u-
  if (TANH) {
    const TanhCdf cp = tanh_cdf(plus), cm = tanh_cdf(minus);
    const float mid = flip ? cm.ccdf - cp.ccdf : cp.cdf - cm.cdf;
    const float p = left ? cp.cdf : (right ? cm.ccdf : mid);
    constexpr float min_p = 1e-12f;
    // clamp(min=1e-12); NaN stays NaN. p <= 1, so the clamped p is a normal float or NaN.
    lp = fmath::log_normal_f(p < min_p ? min_p : p);
    // The clamp passes gradient only where p >= 1e-12 (torch.clamp's derivative). (Every arm is
    // computed and then selected: a division or exp inside one arm of a ?: is control flow that
    // GCC does not vectorise.)
    const float rp = 1.0f / p;
    const float r = p >= min_p ? rp : 0.0f;
    const float gp = cp.pdf * r, gm = -cm.pdf * r;
    dplus = right ? 0.0f : gp;
    dminus = left ? 0.0f : gm;
  } else {
    // log(Phi(hi) - Phi(lo)) on the side of 0 where both tails are small: hi's log Phi is the edge
    // bins' value too, so two log Phi an element.
    const float hi = flip ? -minus : plus, lo = flip ? -plus : minus;
    const float lh = fmath::log_ndtr_f(left ? plus : (right ? -minus : hi));
    const float ll = fmath::log_ndtr_f(lo);
    lp = (left || right) ? lh : lh + fmath::log1m_f(fmath::exp_f(ll - lh));
    // d lp / d u = +-phi(u) / P = +-exp(-u^2/2 - lp) / sqrt(2 pi) (selected away in the open bin)
    constexpr float inv_sqrt_2pi = 0.398942280401432678f;
    const float gp = inv_sqrt_2pi * fmath::exp_f(-(lp + plus * plus / 2.0f));
    const float gm = -inv_sqrt_2pi * fmath::exp_f(-(lp + minus * minus / 2.0f));
    dplus = right ? 0.0f : gp;
    dminus = left ? 0.0f : gm;
  }
  if (GRAD) {
    *dmean = -inv * (dplus + dminus);  // d u / d mean = -inv
    *dls = -(plus * dplus + minus * dminus);  // d u / d log_scale = -u
  }
  return lp;
}

// Pointers to a tile's inputs as float: float data in place, float16/bfloat16 converted into `buf`.
template <typename scalar_t>
const float* float_tile(const scalar_t* src, float* buf, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return src;
  } else {
    for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<float>(src[i]);
    return buf;
  }
}

// Sum of the log P of a segment (any length), in double. The terms of each tile go to a float
// array, then into double lane partials (LaneSum, csrc/cpu/per_sample.h; DESIGN.md §4.10: no
// small term is lost, and the lanes vectorise without reassociating a sum).
template <typename scalar_t, bool TANH>
double dgauss_segment_f(const scalar_t* __restrict x, const scalar_t* __restrict m, const scalar_t* __restrict ls,
                        int64_t n) {
  return with_cpu_isa([&] {
    alignas(64) float xb[kTile], mb[kTile], lb[kTile], lp[kTile];
    LaneSum acc;
    for (int64_t i = 0; i < n; i += kTile) {
      const int64_t len = std::min(kTile, n - i);
      const float* __restrict xf = float_tile(x + i, xb, len);
      const float* __restrict mf = float_tile(m + i, mb, len);
      const float* __restrict lf = float_tile(ls + i, lb, len);
      for (int64_t j = 0; j < len; ++j) lp[j] = dgauss_f<TANH, false>(xf[j], mf[j], lf[j], nullptr, nullptr);
      acc.add(len, [&](int64_t j) { return lp[j]; });
    }
    return acc.total();
  });
}

// The backward of a segment: gm = -g d lp / d mean, gl = -g d lp / d log_scale (nll = -sum lp),
// each stored when wanted (non-null).
template <typename scalar_t, bool TANH>
void dgauss_backward_segment_f(scalar_t* __restrict gm, scalar_t* __restrict gl, const scalar_t* __restrict x,
                               const scalar_t* __restrict m, const scalar_t* __restrict ls, float g, int64_t n) {
  with_cpu_isa([&] {
    alignas(64) float xb[kTile], mb[kTile], lb[kTile], dm[kTile], dl[kTile];
    for (int64_t i = 0; i < n; i += kTile) {
      const int64_t len = std::min(kTile, n - i);
      const float* __restrict xf = float_tile(x + i, xb, len);
      const float* __restrict mf = float_tile(m + i, mb, len);
      const float* __restrict lf = float_tile(ls + i, lb, len);
      for (int64_t j = 0; j < len; ++j) {
        float dmean, dls;
        dgauss_f<TANH, true>(xf[j], mf[j], lf[j], &dmean, &dls);
        dm[j] = -g * dmean;
        dl[j] = -g * dls;
      }
      if (gm)
        for (int64_t j = 0; j < len; ++j) gm[i + j] = static_cast<scalar_t>(dm[j]);
      if (gl)
        for (int64_t j = 0; j < len; ++j) gl[i + j] = static_cast<scalar_t>(dl[j]);
    }
  });
}

at::Tensor dgauss_cpu(const at::Tensor& x0, const at::Tensor& mean, const at::Tensor& log_scale,
                      c10::string_view cdf) {
  const DgaussInputs in = prepare_dgauss(x0, mean, log_scale, cdf);
  const int64_t B = in.B, D = in.D;
  const bool tanh = in.tanh;
  at::Tensor out = per_sample_output(B, x0.numel() == 0, x0.options().dtype(compute_dtype(x0.scalar_type())));
  if (x0.numel() == 0) return out;
  check_within(in.x, -1.0f, 1.0f, "discretized_gaussian_nll", "x0", "[-1.0, 1.0]");
  const at::Tensor &x = in.x, &m = in.m, &l = in.l;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "discretized_gaussian_nll_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* mp = m.const_data_ptr<scalar_t>();
    const scalar_t* lp = l.const_data_ptr<scalar_t>();
    const std::vector<double> sums = reduce_per_sample<1>(B, D, [&](int64_t, int64_t begin, int64_t end, double* o) {
      for (int64_t i = begin; i < end; i += kSumBlock) {
        const int64_t len = std::min(kSumBlock, end - i);
        if constexpr (std::is_same_v<scalar_t, double>) {
          o[0] += tanh ? dgauss_segment<scalar_t, acc, true>(xp + i, mp + i, lp + i, len)
                       : dgauss_segment<scalar_t, acc, false>(xp + i, mp + i, lp + i, len);
        } else {
          o[0] += tanh ? dgauss_segment_f<scalar_t, true>(xp + i, mp + i, lp + i, len)
                       : dgauss_segment_f<scalar_t, false>(xp + i, mp + i, lp + i, len);
        }
      }
    }, kComputeSerial);
    acc* outp = out.mutable_data_ptr<acc>();
    for (int64_t b = 0; b < B; ++b) outp[b] = static_cast<acc>(-sums[b]);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> dgauss_backward_cpu(const at::Tensor& grad, const at::Tensor& x0,
                                                       const at::Tensor& mean, const at::Tensor& log_scale,
                                                       c10::string_view cdf, std::array<bool, 2> output_mask) {
  const DgaussBackwardInputs in = prepare_dgauss_backward(grad, x0, mean, log_scale, cdf, output_mask);
  const at::Tensor &gm = in.gm, &gl = in.gl;
  if (in.done) return {gm, gl};
  const at::Tensor &x = in.x, &m = in.m, &l = in.l;
  const bool tanh = in.tanh, want_gm = in.want_gm, want_gl = in.want_gl;
  const int64_t B = in.B, D = in.D;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "discretized_gaussian_nll_backward_cpu",
                                  [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* mp = m.const_data_ptr<scalar_t>();
    const scalar_t* lp = l.const_data_ptr<scalar_t>();
    scalar_t* gmp = want_gm ? gm.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* glp = want_gl ? gl.mutable_data_ptr<scalar_t>() : nullptr;
    const acc* gp = grad.const_data_ptr<acc>();
    for_each_segment(B, D, [&](int64_t b, int64_t begin, int64_t end) {
      const int64_t n = end - begin;
      scalar_t* gmi = gmp ? gmp + begin : nullptr;
      scalar_t* gli = glp ? glp + begin : nullptr;
      if constexpr (std::is_same_v<scalar_t, double>) {
        if (tanh) {
          dgauss_backward_segment<scalar_t, acc, true>(gmi, gli, xp + begin, mp + begin, lp + begin, gp[b], n);
        } else {
          dgauss_backward_segment<scalar_t, acc, false>(gmi, gli, xp + begin, mp + begin, lp + begin, gp[b], n);
        }
      } else if (tanh) {
        dgauss_backward_segment_f<scalar_t, true>(gmi, gli, xp + begin, mp + begin, lp + begin, gp[b], n);
      } else {
        dgauss_backward_segment_f<scalar_t, false>(gmi, gli, xp + begin, mp + begin, lp + begin, gp[b], n);
      }
    });
  });
  return {gm, gl};
}

}  // namespace
}  // namespace cpu
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, CPU, m) {
  m.impl("discretized_gaussian_nll", &vdm_fast::cpu::dgauss_cpu);
  m.impl("discretized_gaussian_nll_backward", &vdm_fast::cpu::dgauss_backward_cpu);
}

namespace vdm_fast {
struct DiscretizedGaussianNllOp {
  static constexpr const char* kName = "vdm_fast::discretized_gaussian_nll";
  static constexpr const char* kBackward = "vdm_fast::discretized_gaussian_nll_backward";
  static constexpr std::array<bool, 4> kDifferentiable = {false, true, true, false};
  using Signature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::string_view);
};
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, Autograd, m) { vdm_fast::register_autograd<vdm_fast::DiscretizedGaussianNllOp>(m); }
