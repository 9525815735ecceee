// prior_kl on CUDA: L_prior[b] = a^2/2 * sum_i x_i^2 + D/2 (s^2 - 1 - log s^2), and its fused
// backward. The data pass (sum of squares, and grad_x0 = grad*a^2*x0 in the backward) runs one block
// per (sample b, chunk c), flattened into grid.x = B * chunks; a second small kernel sums the
// double partials per sample in a fixed order and applies the per-sample formulas.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "common.h"
#include "cuda/per_sample.cuh"
#include "prior_kl.h"

namespace vdm_fast {
namespace cuda {
namespace {

// gx = grad[b]*a[b]^2 * x when gx is non-null; the chunk's sum of squares to partial[blockIdx.x]
// when want_sum.
template <typename scalar_t, typename acc_t, int VEC>
__global__ void prior_kl_pass_kernel(scalar_t* __restrict__ gx, const scalar_t* __restrict__ x,
                                     const acc_t* __restrict__ up, const acc_t* __restrict__ alpha, int64_t D,
                                     int64_t chunks, bool want_sum, double* __restrict__ partial) {
  using V = Vec<scalar_t, VEC>;
  __shared__ acc_t shared[kThreads / 32];
  const auto [b, begin, end] = reduce_chunk(D, chunks);
  const acc_t k = gx ? up[b] * alpha[b] * alpha[b] : acc_t(0);
  acc_t sum = 0;
  for (int64_t i = begin + static_cast<int64_t>(threadIdx.x) * VEC; i < end; i += static_cast<int64_t>(blockDim.x) * VEC) {
    const V xv = *reinterpret_cast<const V*>(x + i);
    V out;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const acc_t xj = static_cast<acc_t>(xv.v[j]);
      out.v[j] = static_cast<scalar_t>(k * xj);
      sum += xj * xj;
    }
    if (gx) *reinterpret_cast<V*>(gx + i) = out;
  }
  if (!want_sum) return;
  sum = block_sum(sum, shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = static_cast<double>(sum);
}

// Forward (out non-null): out = a^2/2 S + D/2 (s^2 - 1 - log s^2). Backward: ga = grad*a*S,
// gs = grad*D*(s - 1/s) (each when non-null). S = the per-sample sum of the partials, in chunk order.
template <typename acc_t>
__global__ void prior_kl_finish_kernel(acc_t* __restrict__ out, acc_t* __restrict__ ga, acc_t* __restrict__ gs,
                                       const double* __restrict__ partial, const acc_t* __restrict__ up,
                                       const acc_t* __restrict__ alpha, const acc_t* __restrict__ sigma, int64_t B,
                                       int64_t D, int64_t chunks) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= B) return;
  double S = 0;
  if (out || ga) {
    for (int64_t c = 0; c < chunks; ++c) S += partial[b * chunks + c];
  }
  const acc_t a = alpha[b], s = sigma[b], Dt = static_cast<acc_t>(D);
  if (out) {
    const acc_t s2 = s * s;
    out[b] = acc_t(0.5) * a * a * static_cast<acc_t>(S) + acc_t(0.5) * Dt * (s2 - acc_t(1) - log(s2));
  }
  if (ga) ga[b] = up[b] * a * static_cast<acc_t>(S);
  if (gs) gs[b] = up[b] * Dt * (s - acc_t(1) / s);
}

// Runs the data pass (when there is data and something to do) into `partial` (B, chunks).
template <typename scalar_t>
void launch_pass(scalar_t* gx, const at::Tensor& x, const at::Tensor& up, const at::Tensor& alpha,
                 int64_t B, int64_t D, int64_t chunks, bool want_sum, at::Tensor& partial, cudaStream_t stream) {
  using acc = acc_t<scalar_t>;
  if (B * chunks == 0 || !(gx || want_sum)) return;
  constexpr int W = vec_width<scalar_t>();
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const acc* upp = up.defined() ? up.const_data_ptr<acc>() : nullptr;
  const auto grid = static_cast<unsigned int>(B * chunks);
  if (D % W == 0 && aligned16(xp) && (!gx || aligned16(gx))) {
    prior_kl_pass_kernel<scalar_t, acc, W><<<grid, kThreads, 0, stream>>>(
        gx, xp, upp, alpha.const_data_ptr<acc>(), D, chunks, want_sum, partial.mutable_data_ptr<double>());
  } else {
    prior_kl_pass_kernel<scalar_t, acc, 1><<<grid, kThreads, 0, stream>>>(
        gx, xp, upp, alpha.const_data_ptr<acc>(), D, chunks, want_sum, partial.mutable_data_ptr<double>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor prior_kl_cuda(const at::Tensor& x0, const at::Tensor& alpha, const at::Tensor& sigma) {
  constexpr const char* op = "vdm_fast::prior_kl";
  const c10::cuda::CUDAGuard guard(x0.device());
  const PriorKlInputs in = prepare_prior_kl(x0, alpha, sigma);
  const at::Tensor &out = in.out, &x = in.x;
  const int64_t B = in.B, D = in.D;
  if (B == 0) return out;
  const int64_t chunks = reduce_chunks(op, B, D);
  at::Tensor partial = at::empty({B, chunks}, x0.options().dtype(at::kDouble));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "prior_kl_cuda", [&] {
    using acc = acc_t<scalar_t>;
    launch_pass<scalar_t>(nullptr, x, at::Tensor(), alpha, B, D, chunks, true, partial, stream);
    prior_kl_finish_kernel<acc><<<blocks_for(B), kThreads, 0, stream>>>(
        out.mutable_data_ptr<acc>(), nullptr, nullptr, partial.const_data_ptr<double>(), nullptr,
        alpha.const_data_ptr<acc>(), sigma.const_data_ptr<acc>(), B, D, chunks);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> prior_kl_backward_cuda(const at::Tensor& grad, const at::Tensor& x0,
                                                                      const at::Tensor& alpha, const at::Tensor& sigma,
                                                                      std::array<bool, 3> output_mask) {
  constexpr const char* op = "vdm_fast::prior_kl_backward";
  const c10::cuda::CUDAGuard guard(x0.device());
  const PriorKlBackwardInputs in = prepare_prior_kl_backward(grad, x0, alpha, sigma, output_mask);
  const at::Tensor &gx = in.gx, &ga = in.ga, &gs = in.gs, &x = in.x;
  if (in.done) return {gx, ga, gs};
  const bool want_gx = in.want_gx, want_sum = in.want_sum;
  const int64_t B = in.B, D = in.D;
  const int64_t chunks = reduce_chunks(op, B, D);
  at::Tensor partial = at::empty({B, chunks}, x0.options().dtype(at::kDouble));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "prior_kl_backward_cuda", [&] {
    using acc = acc_t<scalar_t>;
    launch_pass<scalar_t>(want_gx ? gx.mutable_data_ptr<scalar_t>() : nullptr, x, grad, alpha, B, D, chunks,
                          want_sum, partial, stream);
    if (output_mask[1] || output_mask[2]) {
      prior_kl_finish_kernel<acc><<<blocks_for(B), kThreads, 0, stream>>>(
          nullptr, output_mask[1] ? ga.mutable_data_ptr<acc>() : nullptr,
          output_mask[2] ? gs.mutable_data_ptr<acc>() : nullptr, partial.const_data_ptr<double>(),
          grad.const_data_ptr<acc>(), alpha.const_data_ptr<acc>(), sigma.const_data_ptr<acc>(), B, D, chunks);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {gx, ga, gs};
}

}  // namespace
}  // namespace cuda
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, CUDA, m) {
  m.impl("prior_kl", &vdm_fast::cuda::prior_kl_cuda);
  m.impl("prior_kl_backward", &vdm_fast::cuda::prior_kl_backward_cuda);
}
