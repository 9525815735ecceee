// Schema of the Philox noise ops (DESIGN.md §6). Kernels: csrc/cpu/noise.cpp, csrc/cuda/noise.cu.
// Fake kernels and the public randn_like: vdm_fast/ops/noise.py. Seed convention: noise_args.h.
#include <torch/all.h>
#include <torch/library.h>

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
