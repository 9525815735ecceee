// q_sample_randn on CUDA: one thread per Philox block of 4 elements draws their noise
// (csrc/cuda/noise.cuh) and writes z = alpha[b] * x0 + sigma[b] * noise and the noise. Vector
// access when D % 4 == 0 and the pointers are aligned (then 4 elements share one sample b).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "common.h"
#include "cuda/noise.cuh"
#include "cuda/per_sample.cuh"
#include "noise_args.h"
#include "q_sample.h"

namespace vdm_fast {
namespace cuda {
namespace {

template <typename scalar_t, typename acc_t, bool VEC>
__global__ void q_sample_randn_kernel(scalar_t* __restrict__ z, scalar_t* __restrict__ noise,
                                      const scalar_t* __restrict__ x0, const acc_t* __restrict__ alpha,
                                      const acc_t* __restrict__ sigma, PhiloxSeed ps, uint64_t offset, int64_t D,
                                      int64_t N, int64_t n_blocks) {
  using V = Vec<scalar_t, 4>;
  const uint64_t seed = ps.get();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < n_blocks; j += stride) {
    float n[4];
    philox::philox_normal4(seed, offset, static_cast<uint64_t>(j), n);
    const int64_t i0 = 4 * j;
    if constexpr (VEC) {
      const int64_t b = i0 / D;
      const acc_t a = alpha[b], s = sigma[b];
      const V xv = *reinterpret_cast<const V*>(x0 + i0);
      V zv, nv;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        nv.v[k] = static_cast<scalar_t>(n[k]);  // rounded first: z == q_sample(x0, alpha, sigma, noise)
        zv.v[k] = static_cast<scalar_t>(a * static_cast<acc_t>(xv.v[k]) + s * static_cast<acc_t>(nv.v[k]));
      }
      *reinterpret_cast<V*>(noise + i0) = nv;
      *reinterpret_cast<V*>(z + i0) = zv;
    } else {
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int64_t i = i0 + k;
        if (i < N) {
          const int64_t b = i / D;
          const scalar_t nk = static_cast<scalar_t>(n[k]);
          noise[i] = nk;
          z[i] = static_cast<scalar_t>(alpha[b] * static_cast<acc_t>(x0[i]) + sigma[b] * static_cast<acc_t>(nk));
        }
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor> q_sample_randn_cuda(const at::Tensor& x0, const at::Tensor& alpha,
                                                       const at::Tensor& sigma, const at::Tensor& seed,
                                                       int64_t offset) {
  const c10::cuda::CUDAGuard guard(x0.device());
  const QSampleRandnInputs in = prepare_q_sample_randn(x0, alpha, sigma, seed);
  const at::Tensor &z = in.z, &noise = in.noise, &x = in.x;
  if (z.numel() == 0) return {z, noise};
  const int64_t D = in.D;
  const PhiloxSeed ps = philox_seed_arg(seed);
  const int64_t N = z.numel(), n_blocks = (N + 3) / 4;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "q_sample_randn_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* zp = z.mutable_data_ptr<scalar_t>();
    scalar_t* np = noise.mutable_data_ptr<scalar_t>();
    const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % (4 * sizeof(scalar_t)) == 0; };
    const acc* ap = alpha.const_data_ptr<acc>();
    const acc* sp = sigma.const_data_ptr<acc>();
    if (D % 4 == 0 && aligned(xp) && aligned(zp) && aligned(np)) {
      q_sample_randn_kernel<scalar_t, acc, true><<<grid_for(n_blocks), kThreads, 0, stream>>>(
          zp, np, xp, ap, sp, ps, static_cast<uint64_t>(offset), D, N, n_blocks);
    } else {
      q_sample_randn_kernel<scalar_t, acc, false><<<grid_for(n_blocks), kThreads, 0, stream>>>(
          zp, np, xp, ap, sp, ps, static_cast<uint64_t>(offset), D, N, n_blocks);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {z, noise};
}

}  // namespace
}  // namespace cuda
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, CUDA, m) { m.impl("q_sample_randn", &vdm_fast::cuda::q_sample_randn_cuda); }
