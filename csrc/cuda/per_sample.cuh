// CUDA helpers shared by every op: launch geometry, vectorised access, block reductions.
// Data is B samples of D contiguous elements (csrc/common.h); all indexing is 64-bit.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>

#include <array>
#include <cstdint>

namespace vdm_fast {
namespace cuda {

constexpr int kThreads = 256;

template <typename scalar_t>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};
template <typename scalar_t>
using acc_t = typename Acc<scalar_t>::type;

// Elements per 16-byte vector access.
template <typename scalar_t>
constexpr int vec_width() {
  return 16 / static_cast<int>(sizeof(scalar_t));
}

template <typename scalar_t, int N>
struct alignas(sizeof(scalar_t) * N) Vec {
  scalar_t v[N];
};

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Grid size for a grid-stride loop over `work` items: enough blocks to fill the device, no more.
inline unsigned int grid_for(int64_t work) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t cap = static_cast<int64_t>(sms) * 8;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min(blocks, cap)));
}

// Sum of `v` over the block; the result is valid in thread 0. `shared` holds kThreads/32 values.
template <typename T>
__device__ inline T block_sum(T v, T* shared) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = threadIdx.x < (blockDim.x >> 5) ? shared[lane] : T(0);
  if (warp == 0) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  __syncthreads();
  return v;
}

// Elements of one sample handled by one block in per-sample reductions.
constexpr int64_t kReduceChunk = 16384;

}  // namespace cuda
}  // namespace vdm_fast
