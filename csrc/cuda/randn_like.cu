// randn_like and philox_bits on CUDA (the stream is csrc/philox.h). One thread per
// Philox block of 4 elements, grid-stride, current stream, 64-bit indices; vector stores when
// aligned.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "common.h"
#include "cuda/noise.cuh"
#include "cuda/per_sample.cuh"
#include "noise_args.h"

namespace vdm_fast {
namespace cuda {
namespace {

// VEC: every block of 4 elements is whole and 4-element aligned (N % 4 == 0, aligned pointer).
template <typename scalar_t, bool VEC>
__global__ void randn_like_kernel(scalar_t* __restrict__ out, PhiloxSeed ps, uint64_t offset, int64_t N,
                                  int64_t n_blocks) {
  const uint64_t seed = ps.get();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < n_blocks; j += stride) {
    float n[4];
    philox::philox_normal4(seed, offset, static_cast<uint64_t>(j), n);
    if constexpr (VEC) {
      Vec<scalar_t, 4> v;
#pragma unroll
      for (int k = 0; k < 4; ++k) v.v[k] = static_cast<scalar_t>(n[k]);
      *reinterpret_cast<Vec<scalar_t, 4>*>(out + 4 * j) = v;
    } else {
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        if (4 * j + k < N) out[4 * j + k] = static_cast<scalar_t>(n[k]);
      }
    }
  }
}

__global__ void philox_bits_kernel(uint32_t* __restrict__ out, PhiloxSeed ps, uint64_t offset, uint64_t first,
                                   int64_t n_blocks) {
  const uint64_t seed = ps.get();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n_blocks; k += stride) {
    const philox::Block x = philox::philox_block(seed, offset, first + static_cast<uint64_t>(k));
#pragma unroll
    for (int q = 0; q < 4; ++q) out[4 * k + q] = x.x[q];
  }
}

at::Tensor randn_like_cuda(const at::Tensor& x, const at::Tensor& seed, int64_t offset) {
  constexpr const char* op = "vdm_fast::randn_like";
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble || x.scalar_type() == at::kHalf ||
                  x.scalar_type() == at::kBFloat16,
              op, ": x must be float32, float64, float16 or bfloat16, got ", x.scalar_type());
  check_seed(op, seed, x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = empty_out_like(x);
  const int64_t N = out.numel();
  if (N == 0) return out;
  const PhiloxSeed ps = philox_seed_arg(seed);
  const int64_t n_blocks = (N + 3) / 4;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "randn_like_cuda", [&] {
    scalar_t* p = out.mutable_data_ptr<scalar_t>();
    const bool vec = N % 4 == 0 && reinterpret_cast<uintptr_t>(p) % (4 * sizeof(scalar_t)) == 0;
    if (vec) {
      randn_like_kernel<scalar_t, true><<<grid_for(n_blocks), kThreads, 0, stream>>>(
          p, ps, static_cast<uint64_t>(offset), N, n_blocks);
    } else {
      randn_like_kernel<scalar_t, false><<<grid_for(n_blocks), kThreads, 0, stream>>>(
          p, ps, static_cast<uint64_t>(offset), N, n_blocks);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor philox_bits_cuda(const at::Tensor& seed, int64_t offset, int64_t first_block, int64_t n_blocks) {
  constexpr const char* op = "vdm_fast::philox_bits";
  TORCH_CHECK(n_blocks >= 0, op, ": n_blocks must be >= 0, got ", n_blocks);
  check_seed(op, seed, seed.device());
  const c10::cuda::CUDAGuard guard(seed.device());
  at::Tensor out = at::empty({4 * n_blocks}, seed.options().dtype(at::kInt));
  if (n_blocks == 0) return out;
  philox_bits_kernel<<<grid_for(n_blocks), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<uint32_t*>(out.mutable_data_ptr<int32_t>()), philox_seed_arg(seed),
      static_cast<uint64_t>(offset), static_cast<uint64_t>(first_block), n_blocks);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace
}  // namespace cuda
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, CUDA, m) {
  m.impl("randn_like", &vdm_fast::cuda::randn_like_cuda);
  m.impl("philox_bits", &vdm_fast::cuda::philox_bits_cuda);
}
