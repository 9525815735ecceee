// gaussian_kl on CUDA: per-sample sums of KL(N(mean_q, exp(log_var_q)) || N(mean_p, exp(log_var_p)))
// as one block per (sample b, chunk c), flattened into grid.x = B * chunks, writing double partials
// that a second small kernel sums per sample in chunk order; the backward is elementwise
// (grid-stride). 16-byte vector access when every pointer is aligned and D is a multiple of the
// vector width. Math: csrc/gaussian_kl.h. Current stream, 64-bit indices.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <initializer_list>

#include "common.h"
#include "cuda/per_sample.cuh"
#include "gaussian_kl.h"

namespace vdm_fast {
namespace cuda {
namespace {

template <typename scalar_t, typename acc_t, int VEC>
__global__ void gaussian_kl_kernel(const scalar_t* __restrict__ mq, const scalar_t* __restrict__ lq,
                                   const scalar_t* __restrict__ mp, const scalar_t* __restrict__ lp, int64_t D,
                                   int64_t chunks, double* __restrict__ partial) {
  using V = Vec<scalar_t, VEC>;
  __shared__ acc_t shared[kThreads / 32];
  const auto [b, begin, end] = reduce_chunk(D, chunks);
  acc_t sum = 0;
  for (int64_t i = begin + static_cast<int64_t>(threadIdx.x) * VEC; i < end;
       i += static_cast<int64_t>(blockDim.x) * VEC) {
    const V a = *reinterpret_cast<const V*>(mq + i);
    const V s = *reinterpret_cast<const V*>(lq + i);
    const V m = *reinterpret_cast<const V*>(mp + i);
    const V l = *reinterpret_cast<const V*>(lp + i);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      sum += gaussian_kl_math::twice_kl<acc_t>(static_cast<acc_t>(a.v[j]), static_cast<acc_t>(s.v[j]),
                                               static_cast<acc_t>(m.v[j]), static_cast<acc_t>(l.v[j]));
    }
  }
  sum = block_sum(sum, shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = static_cast<double>(sum);
}

// A null output is not wanted. With VEC > 1, D is a multiple of VEC: a vector never spans samples.
template <typename scalar_t, typename acc_t, int VEC>
__global__ void gaussian_kl_backward_kernel(scalar_t* __restrict__ gmq, scalar_t* __restrict__ glq,
                                            scalar_t* __restrict__ gmp, scalar_t* __restrict__ glp,
                                            const acc_t* __restrict__ grad, const scalar_t* __restrict__ mq,
                                            const scalar_t* __restrict__ lq, const scalar_t* __restrict__ mp,
                                            const scalar_t* __restrict__ lp, int64_t D, int64_t N) {
  using V = Vec<scalar_t, VEC>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * VEC;
  for (int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * VEC; i < N; i += stride) {
    const acc_t g = grad[i / D];
    const V a = *reinterpret_cast<const V*>(mq + i);
    const V s = *reinterpret_cast<const V*>(lq + i);
    const V m = *reinterpret_cast<const V*>(mp + i);
    const V l = *reinterpret_cast<const V*>(lp + i);
    V o_mq, o_lq, o_mp, o_lp;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const auto d = gaussian_kl_math::grads<acc_t>(static_cast<acc_t>(a.v[j]), static_cast<acc_t>(s.v[j]),
                                                    static_cast<acc_t>(m.v[j]), static_cast<acc_t>(l.v[j]), g);
      o_mq.v[j] = static_cast<scalar_t>(d.mq);
      o_lq.v[j] = static_cast<scalar_t>(d.lq);
      o_mp.v[j] = static_cast<scalar_t>(-d.mq);
      o_lp.v[j] = static_cast<scalar_t>(d.lp);
    }
    if (gmq) *reinterpret_cast<V*>(gmq + i) = o_mq;
    if (glq) *reinterpret_cast<V*>(glq + i) = o_lq;
    if (gmp) *reinterpret_cast<V*>(gmp + i) = o_mp;
    if (glp) *reinterpret_cast<V*>(glp + i) = o_lp;
  }
}

template <typename scalar_t>
bool all_aligned(std::initializer_list<const scalar_t*> ptrs) {
  for (const scalar_t* p : ptrs) {
    if (p && !aligned16(p)) return false;
  }
  return true;
}

at::Tensor gaussian_kl_cuda(const at::Tensor& mean_q, const at::Tensor& log_var_q, const at::Tensor& mean_p,
                            const at::Tensor& log_var_p) {
  const c10::cuda::CUDAGuard guard(mean_q.device());
  const GaussianKlInputs in = prepare_gaussian_kl(mean_q, log_var_q, mean_p, log_var_p);
  if (in.done) return in.out;
  const int64_t B = in.B, D = in.D;
  const int64_t chunks = reduce_chunks("vdm_fast::gaussian_kl", B, D);
  at::Tensor partial = at::empty({B, chunks}, mean_q.options().dtype(at::kDouble));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mean_q.scalar_type(), "gaussian_kl_cuda", [&] {
    using acc = acc_t<scalar_t>;
    constexpr int W = vec_width<scalar_t>();
    const GaussianKlPtrs<scalar_t> p = gaussian_kl_ptrs<scalar_t>(in);
    const auto grid = static_cast<unsigned int>(B * chunks);
    double* pp = partial.mutable_data_ptr<double>();
    if (D % W == 0 && all_aligned<scalar_t>({p.mq, p.lq, p.mp, p.lp})) {
      gaussian_kl_kernel<scalar_t, acc, W><<<grid, kThreads, 0, stream>>>(p.mq, p.lq, p.mp, p.lp, D, chunks, pp);
    } else {
      gaussian_kl_kernel<scalar_t, acc, 1><<<grid, kThreads, 0, stream>>>(p.mq, p.lq, p.mp, p.lp, D, chunks, pp);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    // KL = 1/2 the sum of the twice_kl terms.
    sum_chunks_kernel<acc><<<blocks_for(B), kThreads, 0, stream>>>(in.out.mutable_data_ptr<acc>(),
                                                                  partial.const_data_ptr<double>(), B, chunks, 0.5);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return in.out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gaussian_kl_backward_cuda(
    const at::Tensor& grad, const at::Tensor& mean_q, const at::Tensor& log_var_q, const at::Tensor& mean_p,
    const at::Tensor& log_var_p, std::array<bool, 4> output_mask) {
  const c10::cuda::CUDAGuard guard(mean_q.device());
  const GaussianKlBackwardInputs in =
      prepare_gaussian_kl_backward(grad, mean_q, log_var_q, mean_p, log_var_p, output_mask);
  if (in.done) return {in.gmq, in.glq, in.gmp, in.glp};
  const int64_t D = in.D, N = mean_q.numel();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mean_q.scalar_type(), "gaussian_kl_backward_cuda", [&] {
    using acc = acc_t<scalar_t>;
    constexpr int W = vec_width<scalar_t>();
    const GaussianKlPtrs<scalar_t> p = gaussian_kl_backward_ptrs<scalar_t>(in, grad);
    if (D % W == 0 && all_aligned<scalar_t>({p.mq, p.lq, p.mp, p.lp, p.gmq, p.glq, p.gmp, p.glp})) {
      gaussian_kl_backward_kernel<scalar_t, acc, W><<<grid_for(N / W), kThreads, 0, stream>>>(
          p.gmq, p.glq, p.gmp, p.glp, p.grad, p.mq, p.lq, p.mp, p.lp, D, N);
    } else {
      gaussian_kl_backward_kernel<scalar_t, acc, 1><<<grid_for(N), kThreads, 0, stream>>>(
          p.gmq, p.glq, p.gmp, p.glp, p.grad, p.mq, p.lq, p.mp, p.lp, D, N);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {in.gmq, in.glq, in.gmp, in.glp};
}

}  // namespace
}  // namespace cuda
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, CUDA, m) {
  m.impl("gaussian_kl", &vdm_fast::cuda::gaussian_kl_cuda);
  m.impl("gaussian_kl_backward", &vdm_fast::cuda::gaussian_kl_backward_cuda);
}
