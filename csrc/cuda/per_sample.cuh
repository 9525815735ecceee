// CUDA helpers shared by every op: launch geometry, vectorised access, block reductions.
// Data is B samples of D contiguous elements (csrc/common.h); all indexing is 64-bit.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>

#include <array>
#include <cstdint>

#include "common.h"

namespace vdm_fast {
namespace cuda {

constexpr int kThreads = 256;

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

// Blocks of kThreads for one thread per item.
inline unsigned int blocks_for(int64_t n) { return static_cast<unsigned int>((n + kThreads - 1) / kThreads); }

// Per-sample reductions run one block per (sample b, chunk c), flattened into grid.x = B * chunks
// (no 65535 limit on B): block (b, c) covers elements [c*kReduceChunk, (c+1)*kReduceChunk) of
// sample b and writes its partial sums as doubles, which a second kernel adds up per sample in
// chunk order (a fixed order, so the result does not depend on scheduling).
constexpr int64_t kReduceChunk = 16384;

// The chunks of one sample of D elements, checked against the grid size of one launch.
inline int64_t reduce_chunks(const char* op, int64_t B, int64_t D) {
  const int64_t chunks = (D + kReduceChunk - 1) / kReduceChunk;
  TORCH_CHECK(B * chunks < (int64_t(1) << 31), op, ": tensor too large for one launch");
  return chunks;
}

// The sample b of this block and the flat offsets [begin, end) of its elements.
struct ReduceChunk {
  int64_t b, begin, end;
};

__device__ inline ReduceChunk reduce_chunk(int64_t D, int64_t chunks) {
  const int64_t b = blockIdx.x / chunks, c = blockIdx.x % chunks;
  return {b, b * D + c * kReduceChunk, b * D + min(D, (c + 1) * kReduceChunk)};
}

// In an unnamed namespace like the ops' kernels: each .cu file launches its own copy (kernels are
// not shared between translation units without relocatable device code).
namespace {

// out[b] = scale * the sum of sample b's partials partial[b * chunks + c], in chunk order.
template <typename acc_t>
__global__ void sum_chunks_kernel(acc_t* __restrict__ out, const double* __restrict__ partial, int64_t B,
                                  int64_t chunks, double scale) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= B) return;
  double s = 0;
  for (int64_t c = 0; c < chunks; ++c) s += partial[b * chunks + c];
  out[b] = static_cast<acc_t>(scale * s);
}

}  // namespace

}  // namespace cuda
}  // namespace vdm_fast
