// randn_like and philox_bits: their schemas and autograd, and on the CPU the ops, filling the
// output tile by tile from the vectorised Philox generator (csrc/cpu/noise.cpp, DESIGN.md §6).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>

#include "common.h"
#include "cpu/isa.h"
#include "cpu/noise.h"
#include "cpu/per_sample.h"
#include "noise_args.h"

namespace vdm_fast {
namespace cpu {
namespace {

template <typename scalar_t>
void cast_segment(scalar_t* __restrict out, const float* __restrict in, int64_t n) {
  for (int64_t k = 0; k < n; ++k) out[k] = static_cast<scalar_t>(in[k]);
}

// Elements per parallel task of the generators: each costs ~20 ns/element of arithmetic, so far
// fewer than the memory-bound kGrain.
constexpr int64_t kNoiseGrain = 4 * kNoiseTile;

at::Tensor randn_like_cpu(const at::Tensor& x, const at::Tensor& seed, int64_t offset) {
  constexpr const char* op = "vdm_fast::randn_like";
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble || x.scalar_type() == at::kHalf ||
                  x.scalar_type() == at::kBFloat16,
              op, ": x must be float32, float64, float16 or bfloat16, got ", x.scalar_type());
  check_seed(op, seed, x.device());
  const uint64_t s = seed_value(seed), off = static_cast<uint64_t>(offset);
  at::Tensor out = new_output_like(x);
  const int64_t N = out.numel();
  if (N == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "randn_like_cpu", [&] {
    scalar_t* op_ = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N, kNoiseGrain, [&](int64_t lo, int64_t hi) {
      if constexpr (std::is_same_v<scalar_t, float>) {
        philox_normals(s, off, lo, hi - lo, reinterpret_cast<float*>(op_) + lo);  // scalar_t is float here
      } else {
        alignas(64) float buf[kNoiseTile];
        for (int64_t i = lo; i < hi; i += kNoiseTile) {
          const int64_t len = std::min(kNoiseTile, hi - i);
          philox_normals(s, off, i, len, buf);
          with_cpu_isa([&] { cast_segment<scalar_t>(op_ + i, buf, len); });
        }
      }
    });
  });
  return out;
}

// 4 * n_blocks words of blocks [first_block, first_block + n_blocks), as int32 bit patterns.
at::Tensor philox_bits_cpu(const at::Tensor& seed, int64_t offset, int64_t first_block, int64_t n_blocks) {
  constexpr const char* op = "vdm_fast::philox_bits";
  TORCH_CHECK(n_blocks >= 0, op, ": n_blocks must be >= 0, got ", n_blocks);
  check_seed(op, seed, seed.device());
  at::Tensor out = at::empty({4 * n_blocks}, seed.options().dtype(at::kInt));
  philox_words(seed_value(seed), static_cast<uint64_t>(offset), static_cast<uint64_t>(first_block), n_blocks,
               reinterpret_cast<uint32_t*>(out.mutable_data_ptr<int32_t>()));
  return out;
}

}  // namespace
}  // namespace cpu
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, CPU, m) {
  m.impl("randn_like", &vdm_fast::cpu::randn_like_cpu);
  m.impl("philox_bits", &vdm_fast::cpu::philox_bits_cpu);
}

// --- schema and autograd ----------------------------------------------------------------------
// Schema of the Philox noise ops (DESIGN.md §6). Kernels: here and csrc/cuda/randn_like.cu.
// Fake kernels and the public randn_like: vdm_fast/ops/randn_like.py. Seed convention: noise_args.h.

TORCH_LIBRARY_FRAGMENT(vdm_fast, m) {
  // Standard normal noise shaped like x (dtype of x, drawn in float32), element i (flat index in
  // the output's memory) of Philox stream (seed, offset).
  m.def("randn_like(Tensor x, Tensor seed, int offset) -> Tensor");
  // The raw stream, for tests and tools: words of blocks [first_block, first_block + n_blocks) as
  // int32 bit patterns, 4 per block. first_block is read as uint64.
  m.def("philox_bits(Tensor seed, int offset, int first_block, int n_blocks) -> Tensor");
}

namespace vdm_fast {
namespace {

// Noise is a constant: it never requires grad, whatever x does.
at::Tensor randn_like_autograd(const at::Tensor& x, const at::Tensor& seed, int64_t offset) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("vdm_fast::randn_like", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t)>();
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(x, seed, offset);
}

}  // namespace
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, Autograd, m) { m.impl("randn_like", &vdm_fast::randn_like_autograd); }
