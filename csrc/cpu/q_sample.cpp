// q_sample on the CPU: z = alpha[b] * x0 + sigma[b] * noise, one pass, and its fused backward.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "common.h"
#include "cpu/per_sample.h"
#include "q_sample.h"

namespace vdm_fast {
namespace cpu {
namespace {

template <typename scalar_t, typename acc_t>
void q_sample_segment(scalar_t* __restrict z, const scalar_t* __restrict x0, const scalar_t* __restrict noise,
                      acc_t alpha, acc_t sigma, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    z[i] = static_cast<scalar_t>(alpha * static_cast<acc_t>(x0[i]) + sigma * static_cast<acc_t>(noise[i]));
  }
}

// Writes grad_x0 / grad_noise (either may be null) and returns the segment's sums of grad*x0 and
// grad*noise (computed only when wanted).
template <typename scalar_t, typename acc_t>
void q_sample_backward_segment(scalar_t* __restrict gx, scalar_t* __restrict gn, const scalar_t* __restrict g,
                               const scalar_t* __restrict x0, const scalar_t* __restrict noise, acc_t alpha,
                               acc_t sigma, bool want_sums, int64_t n, acc_t* sums) {
  if (gx) {
    for (int64_t i = 0; i < n; ++i) gx[i] = static_cast<scalar_t>(alpha * static_cast<acc_t>(g[i]));
  }
  if (gn) {
    for (int64_t i = 0; i < n; ++i) gn[i] = static_cast<scalar_t>(sigma * static_cast<acc_t>(g[i]));
  }
  if (want_sums) {
    acc_t sx = 0, sn = 0;
    for (int64_t i = 0; i < n; ++i) {
      const acc_t gi = static_cast<acc_t>(g[i]);
      sx += gi * static_cast<acc_t>(x0[i]);
      sn += gi * static_cast<acc_t>(noise[i]);
    }
    sums[0] = sx;
    sums[1] = sn;
  }
}

// Sub-segment length for the per-sample sums: short enough that a float accumulator stays
// accurate, long enough to vectorise well. Partials are combined in double.
constexpr int64_t kSumBlock = 1024;

at::Tensor q_sample_cpu(const at::Tensor& x0, const at::Tensor& alpha, const at::Tensor& sigma,
                        const at::Tensor& noise) {
  const QSampleInputs in = prepare_q_sample(x0, alpha, sigma, noise);
  const at::Tensor &z = in.z, &x = in.x, &n = in.n;
  if (z.numel() == 0) return z;
  const int64_t B = in.B, D = in.D;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "q_sample_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* np = n.const_data_ptr<scalar_t>();
    scalar_t* zp = z.mutable_data_ptr<scalar_t>();
    const acc* ap = alpha.const_data_ptr<acc>();
    const acc* sp = sigma.const_data_ptr<acc>();
    for_each_segment(B, D, [&](int64_t b, int64_t begin, int64_t end) {
      with_cpu_isa([&] {
        q_sample_segment<scalar_t, acc>(zp + begin, xp + begin, np + begin, ap[b], sp[b], end - begin);
      });
    });
  });
  return z;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> q_sample_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& alpha,
    const at::Tensor& sigma, std::array<bool, 4> output_mask) {
  const QSampleBackwardInputs in = prepare_q_sample_backward(grad, x0, noise, alpha, sigma, output_mask);
  const at::Tensor &gx = in.gx, &gn = in.gn, &ga = in.ga, &gs = in.gs;
  if (in.done) return {gx, gn, ga, gs};
  const at::Tensor &g = in.g, &x = in.x, &n = in.n;
  const bool want_gx = in.want_gx, want_gn = in.want_gn, want_sums = in.want_sums;
  const int64_t B = in.B, D = in.D;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "q_sample_backward_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* np = n.const_data_ptr<scalar_t>();
    scalar_t* gxp = want_gx ? gx.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* gnp = want_gn ? gn.mutable_data_ptr<scalar_t>() : nullptr;
    const acc* ap = alpha.const_data_ptr<acc>();
    const acc* sp = sigma.const_data_ptr<acc>();
    const std::vector<double> sums = reduce_per_sample<2>(B, D, [&](int64_t b, int64_t begin, int64_t end, double* out) {
      for (int64_t i = begin; i < end; i += kSumBlock) {
        const int64_t len = std::min(kSumBlock, end - i);
        acc part[2] = {0, 0};
        with_cpu_isa([&] {
          q_sample_backward_segment<scalar_t, acc>(gxp ? gxp + i : nullptr, gnp ? gnp + i : nullptr, gp + i, xp + i,
                                                   np + i, ap[b], sp[b], want_sums, len, part);
        });
        out[0] += part[0];
        out[1] += part[1];
      }
    });
    if (output_mask[2] || output_mask[3]) {
      acc* gap = output_mask[2] ? ga.mutable_data_ptr<acc>() : nullptr;
      acc* gsp = output_mask[3] ? gs.mutable_data_ptr<acc>() : nullptr;
      for (int64_t b = 0; b < B; ++b) {
        if (gap) gap[b] = static_cast<acc>(sums[2 * b]);
        if (gsp) gsp[b] = static_cast<acc>(sums[2 * b + 1]);
      }
    }
  });
  return {gx, gn, ga, gs};
}

}  // namespace
}  // namespace cpu
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, CPU, m) {
  m.impl("q_sample", &vdm_fast::cpu::q_sample_cpu);
  m.impl("q_sample_backward", &vdm_fast::cpu::q_sample_backward_cpu);
}
