// Drawing Philox noise inside a CUDA kernel (DESIGN.md §6; the stream is csrc/philox.h).
//
// How another op draws noise in its CUDA kernel:
//
//   host:   const PhiloxSeed ps = philox_seed_arg(seed);   // after check_seed(op, seed, data.device())
//           my_kernel<<<...>>>(..., ps, static_cast<uint64_t>(offset));
//   device: const uint64_t s = ps.get();                     // once per thread
//           float n[4];
//           philox::philox_normal4(s, offset, i / 4, n);     // noise of elements 4*(i/4) .. +3
//           ... element i uses n[i % 4] ...
//
// A thread that owns the four elements [4j, 4j + 4) of the output's flat memory computes one
// Philox block and uses all four normals; `i` is the flat index in the output's memory (the layout
// rule's b*D + j), so the noise does not depend on the launch geometry.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "philox.h"

namespace vdm_fast {
namespace cuda {

// The seed as a kernel argument: read from device memory when the seed tensor is on the GPU (a
// CUDA generator: no host sync, CUDA-graph safe), passed by value when it is on the CPU.
struct PhiloxSeed {
  const int64_t* ptr;
  uint64_t value;
  __device__ __forceinline__ uint64_t get() const { return ptr ? static_cast<uint64_t>(*ptr) : value; }
};

inline PhiloxSeed philox_seed_arg(const at::Tensor& seed) {
  if (seed.device().is_cpu()) return PhiloxSeed{nullptr, static_cast<uint64_t>(*seed.const_data_ptr<int64_t>())};
  return PhiloxSeed{seed.const_data_ptr<int64_t>(), 0};
}

}  // namespace cuda
}  // namespace vdm_fast
