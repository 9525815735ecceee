// q_sample on CUDA: z = alpha[b] * x0 + sigma[b] * noise, and its fused backward. Launched on the
// current stream; 16-byte vector loads when every pointer is aligned and D is a multiple of the
// vector width (then a vector never straddles two samples).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "common.h"
#include "cuda/per_sample.cuh"
#include "q_sample.h"

namespace vdm_fast {
namespace cuda {
namespace {

template <typename scalar_t, typename acc_t, int VEC>
__global__ void q_sample_kernel(scalar_t* __restrict__ z, const scalar_t* __restrict__ x0,
                                const scalar_t* __restrict__ noise, const acc_t* __restrict__ alpha,
                                const acc_t* __restrict__ sigma, int64_t D, int64_t n_vec) {
  using V = Vec<scalar_t, VEC>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < n_vec; v += stride) {
    const int64_t i = v * VEC;
    const int64_t b = i / D;
    const acc_t a = alpha[b], s = sigma[b];
    const V xv = *reinterpret_cast<const V*>(x0 + i);
    const V nv = *reinterpret_cast<const V*>(noise + i);
    V out;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      out.v[k] = static_cast<scalar_t>(a * static_cast<acc_t>(xv.v[k]) + s * static_cast<acc_t>(nv.v[k]));
    }
    *reinterpret_cast<V*>(z + i) = out;
  }
}

// One block per (sample b, chunk c) (csrc/cuda/per_sample.cuh); it writes its two partial sums to
// partial[b, c, 0:2].
template <typename scalar_t, typename acc_t>
__global__ void q_sample_backward_kernel(scalar_t* __restrict__ gx, scalar_t* __restrict__ gn,
                                         const scalar_t* __restrict__ g, const scalar_t* __restrict__ x0,
                                         const scalar_t* __restrict__ noise, const acc_t* __restrict__ alpha,
                                         const acc_t* __restrict__ sigma, int64_t D, int64_t chunks,
                                         bool want_sums, double* __restrict__ partial) {
  __shared__ acc_t shared[kThreads / 32];
  const auto [b, begin, end] = reduce_chunk(D, chunks);
  const acc_t a = alpha[b], s = sigma[b];
  acc_t sx = 0, sn = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const acc_t gi = static_cast<acc_t>(g[i]);
    if (gx) gx[i] = static_cast<scalar_t>(a * gi);
    if (gn) gn[i] = static_cast<scalar_t>(s * gi);
    if (want_sums) {
      sx += gi * static_cast<acc_t>(x0[i]);
      sn += gi * static_cast<acc_t>(noise[i]);
    }
  }
  if (!want_sums) return;
  sx = block_sum(sx, shared);
  sn = block_sum(sn, shared);
  if (threadIdx.x == 0) {
    const int64_t slot = (b * chunks + blockIdx.x % chunks) * 2;  // partial[b, c, 0]
    partial[slot] = static_cast<double>(sx);
    partial[slot + 1] = static_cast<double>(sn);
  }
}

at::Tensor q_sample_cuda(const at::Tensor& x0, const at::Tensor& alpha, const at::Tensor& sigma,
                         const at::Tensor& noise) {
  const c10::cuda::CUDAGuard guard(x0.device());
  const QSampleInputs in = prepare_q_sample(x0, alpha, sigma, noise);
  if (in.z.numel() == 0) return in.z;
  const int64_t D = in.D, N = in.z.numel();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "q_sample_cuda", [&] {
    using acc = acc_t<scalar_t>;
    constexpr int W = vec_width<scalar_t>();
    const QSamplePtrs<scalar_t> p = q_sample_ptrs<scalar_t>(in, alpha, sigma);
    if (D % W == 0 && aligned16(p.x) && aligned16(p.n) && aligned16(p.z)) {
      q_sample_kernel<scalar_t, acc, W><<<grid_for(N / W), kThreads, 0, stream>>>(p.z, p.x, p.n, p.alpha, p.sigma,
                                                                                  D, N / W);
    } else {
      q_sample_kernel<scalar_t, acc, 1><<<grid_for(N), kThreads, 0, stream>>>(p.z, p.x, p.n, p.alpha, p.sigma, D, N);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return in.z;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> q_sample_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x0, const at::Tensor& alpha, const at::Tensor& sigma,
    const at::Tensor& noise, std::array<bool, 4> output_mask) {
  const c10::cuda::CUDAGuard guard(x0.device());
  const QSampleBackwardInputs in = prepare_q_sample_backward(grad, x0, alpha, sigma, noise, output_mask);
  if (in.done) return in.outputs();
  const int64_t B = in.B, D = in.D;
  const int64_t chunks = reduce_chunks("vdm_fast::q_sample_backward", B, D);
  at::Tensor partial = at::empty({B, chunks, 2}, x0.options().dtype(at::kDouble));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "q_sample_backward_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const QSamplePtrs<scalar_t> p = q_sample_backward_ptrs<scalar_t>(in, alpha, sigma);
    q_sample_backward_kernel<scalar_t, acc><<<static_cast<unsigned int>(B * chunks), kThreads, 0, stream>>>(
        p.gx, p.gn, p.g, p.x, p.n, p.alpha, p.sigma, D, chunks, in.want_sums, partial.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (in.want_sums) {
    const at::Tensor sums = partial.sum(1);  // (B, 2), reduced in a fixed order
    if (in.want_ga) in.ga.copy_(sums.select(1, 0));
    if (in.want_gs) in.gs.copy_(sums.select(1, 1));
  }
  return in.outputs();
}

}  // namespace
}  // namespace cuda
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, CUDA, m) {
  m.impl("q_sample", &vdm_fast::cuda::q_sample_cuda);
  m.impl("q_sample_backward", &vdm_fast::cuda::q_sample_backward_cuda);
}
