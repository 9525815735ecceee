// The (seed, offset) arguments of ops that draw Philox noise in-kernel (DESIGN.md §6).
//
// Schema convention: `Tensor seed, int offset`. `seed` is a one-element int64 tensor holding the
// 64-bit Philox key (its bits, read as uint64), drawn from a torch.Generator by the Python layer
// (vdm_fast/ops/noise.py: draw_seed). It lives on the CPU (read on the host) or, for CUDA data, on
// the data's device (a CUDA generator; then the kernel reads it, no host sync). `offset` selects
// the Philox stream (counter words 2, 3); the public ops use 0.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace vdm_fast {

inline void check_seed(const char* op, const at::Tensor& seed, const at::Device& data_device) {
  TORCH_CHECK(seed.scalar_type() == at::kLong, op, ": seed must be an int64 tensor, got ", seed.scalar_type());
  TORCH_CHECK(seed.numel() == 1, op, ": seed must have exactly one element, got shape ", seed.sizes());
  TORCH_CHECK(seed.device().is_cpu() || seed.device() == data_device, op, ": seed must be on the CPU or on ",
              data_device, ", got ", seed.device());
}

// The seed of a CPU seed tensor.
inline uint64_t seed_value(const at::Tensor& seed) {
  return static_cast<uint64_t>(*seed.const_data_ptr<int64_t>());
}

}  // namespace vdm_fast
