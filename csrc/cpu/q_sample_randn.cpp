// q_sample_randn on the CPU: noise n drawn in-kernel (csrc/cpu/noise.h) and
// z = alpha[b] * x0 + sigma[b] * n, one pass. Returns (z, n). The backward is q_sample's.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>

#include "common.h"
#include "cpu/noise.h"
#include "cpu/per_sample.h"
#include "noise_args.h"
#include "q_sample.h"

namespace vdm_fast {
namespace cpu {
namespace {

// The noise is rounded to the data dtype first, so z equals q_sample(x0, alpha, sigma, n) for the
// returned n exactly.
template <typename scalar_t, typename acc_t>
void q_sample_randn_segment(scalar_t* __restrict z, scalar_t* __restrict noise, const scalar_t* __restrict x0,
                            const float* __restrict n32, acc_t alpha, acc_t sigma, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const scalar_t ni = static_cast<scalar_t>(n32[i]);
    noise[i] = ni;
    z[i] = static_cast<scalar_t>(alpha * static_cast<acc_t>(x0[i]) + sigma * static_cast<acc_t>(ni));
  }
}

std::tuple<at::Tensor, at::Tensor> q_sample_randn_cpu(const at::Tensor& x0, const at::Tensor& alpha,
                                                      const at::Tensor& sigma, const at::Tensor& seed,
                                                      int64_t offset) {
  const QSampleRandnInputs in = prepare_q_sample_randn(x0, alpha, sigma, seed);
  const at::Tensor &z = in.z, &noise = in.noise, &x = in.x;
  if (z.numel() == 0) return {z, noise};
  const int64_t B = in.B, D = in.D;
  const uint64_t s = seed_value(seed), off = static_cast<uint64_t>(offset);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "q_sample_randn_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* zp = z.mutable_data_ptr<scalar_t>();
    scalar_t* np = noise.mutable_data_ptr<scalar_t>();
    const acc* ap = alpha.const_data_ptr<acc>();
    const acc* sp = sigma.const_data_ptr<acc>();
    for_each_segment(B, D, [&](int64_t b, int64_t begin, int64_t end) {
      alignas(64) float buf[kNoiseTile];
      for (int64_t i = begin; i < end; i += kNoiseTile) {
        const int64_t len = std::min(kNoiseTile, end - i);
        philox_normals(s, off, i, len, buf);  // element i's noise, whatever the split
        with_cpu_isa([&] { q_sample_randn_segment<scalar_t, acc>(zp + i, np + i, xp + i, buf, ap[b], sp[b], len); });
      }
    });
  });
  return {z, noise};
}

}  // namespace
}  // namespace cpu
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, CPU, m) { m.impl("q_sample_randn", &vdm_fast::cpu::q_sample_randn_cpu); }
