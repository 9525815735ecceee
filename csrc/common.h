// Shared host-side helpers for every vdm_fast op: argument checks and the memory-layout rule.
//
// Layout rule (DESIGN.md §4.8): a kernel sees its data as B samples of D
// elements, sample b occupying storage offsets [b*D, (b+1)*D). A tensor is used as it is when it
// is "batch-major dense" (non-overlapping and dense, and dim 0 has stride D: contiguous,
// channels_last, ...); otherwise it is copied once into that layout. Outputs take the strides of
// the first data input when it is batch-major dense, else they are contiguous. The fake (meta)
// kernels in kernels/_layout.py apply the same rule.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace vdm_fast {

inline int64_t per_sample_numel(const at::Tensor& x) {
  return x.dim() == 0 ? 1 : (x.size(0) == 0 ? 0 : x.numel() / x.size(0));
}

inline bool is_batch_major_dense(const at::Tensor& x) {
  if (!x.is_non_overlapping_and_dense()) return false;
  if (x.dim() == 0 || x.size(0) <= 1) return true;
  return x.stride(0) == per_sample_numel(x);
}

// An uninitialised tensor shaped like `x`, in the layout the kernels write.
inline at::Tensor empty_out_like(const at::Tensor& x) {
  if (is_batch_major_dense(x)) return at::empty_like(x);
  return at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
}

// A tensor whose strides name the storage layout the kernels use for data like `x` (the layout
// of empty_out_like(x)), for in_layout_of: `x` itself when it is batch-major dense, so the common
// call allocates nothing (an uninitialised full-size template cost an allocation per call: ~0.5 us
// on a tiny tensor, an mmap and munmap at glibc's default threshold on a large one), else
// empty_out_like(x) (never written).
inline at::Tensor layout_of(const at::Tensor& x) {
  return is_batch_major_dense(x) ? x : empty_out_like(x);
}

// A (B,) per-sample output in `options`: uninitialised when the kernel writes every entry (data
// with elements), zeros when it does not run (no elements: an empty sum is 0).
inline at::Tensor per_sample_output(int64_t B, bool no_elements, const at::TensorOptions& options) {
  return no_elements ? at::zeros({B}, options) : at::empty({B}, options);
}

// Large CPU outputs are fresh mmap'd pages (glibc serves big allocations with mmap): touching
// them costs one page fault per 4 KiB, which at DRAM sizes takes longer than the kernel itself
// (q_sample at 268 MB/tensor: 73 ms with 4 KiB faults, 21 ms with 2 MiB pages). Asking for
// transparent huge pages on the 2 MiB-aligned interior before the first touch removes most of
// them. Advisory only: a no-op where THP is disabled or the pages were already touched.
constexpr int64_t kHugePageAdviceBytes = int64_t(8) << 20;

inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const int64_t nbytes = static_cast<int64_t>(t.storage().nbytes());
  if (!t.device().is_cpu() || nbytes < kHugePageAdviceBytes) return;
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.storage().data());
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t last = (begin + static_cast<uintptr_t>(nbytes)) & ~(kHuge - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#else
  (void)t;
#endif
}

// An uninitialised CPU or CUDA output shaped like `x` (see empty_out_like), with huge pages
// requested for large CPU outputs.
inline at::Tensor new_output_like(const at::Tensor& x) {
  at::Tensor out = empty_out_like(x);
  advise_huge_pages(out);
  return out;
}

// `t` in exactly the storage layout of `like` (a batch-major dense tensor): `t` itself when its
// strides already match, else one copy.
inline at::Tensor in_layout_of(const at::Tensor& t, const at::Tensor& like) {
  if (t.strides() == like.strides() && t.is_non_overlapping_and_dense()) return t;
  at::Tensor out = at::empty_like(like, t.options());
  out.copy_(t);
  return out;
}

// The dtype kernels compute in and take per-sample coefficients in.
inline at::ScalarType compute_dtype(at::ScalarType data) {
  return data == at::kDouble ? at::kDouble : at::kFloat;
}

// The same as a C++ type for the kernels of both backends: acc_t<scalar_t> is float for
// reduced-precision and float32 data, double for float64 data.
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

// The data pointer of a backward op's output, or null when the output is not wanted (kernels
// skip null outputs).
template <typename T>
T* output_ptr(bool wanted, const at::Tensor& t) {
  return wanted ? t.mutable_data_ptr<T>() : nullptr;
}

inline void check_data(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()) &&
                  (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble ||
                   t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16),
              op, ": ", name, " must be float32, float64, float16 or bfloat16, got ", t.scalar_type());
  TORCH_CHECK(t.dim() >= 1, op, ": ", name, " must have a batch dimension, got a 0-d tensor");
}

inline void check_same_data(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref,
                            const char* ref_name) {
  TORCH_CHECK(t.sizes() == ref.sizes(), op, ": ", name, " must have the shape of ", ref_name, " ",
              ref.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " must have the dtype of ", ref_name,
              " (", ref.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " must be on the device of ", ref_name, " (",
              ref.device(), "), got ", t.device());
}

// A per-sample coefficient as the kernels take it: 1-D, length B, contiguous, compute dtype.
inline void check_coeff(const char* op, const char* name, const at::Tensor& c, int64_t B, at::ScalarType dtype,
                        const at::Device& device) {
  TORCH_CHECK(c.dim() == 1 && c.size(0) == B, op, ": ", name, " must be a 1-D tensor of length B=", B,
              ", got shape ", c.sizes());
  TORCH_CHECK(c.scalar_type() == dtype, op, ": ", name, " must be ", dtype, " for this data, got ",
              c.scalar_type());
  TORCH_CHECK(c.device() == device, op, ": ", name, " must be on ", device, ", got ", c.device());
  TORCH_CHECK(c.is_contiguous(), op, ": ", name, " must be contiguous");
}

// The two per-sample coefficients (alpha, sigma, under the op's names for them) of `data`.
inline void check_coeff_pair(const char* op, const at::Tensor& data, const char* a_name, const at::Tensor& a,
                             const char* s_name, const at::Tensor& s) {
  const at::ScalarType cdt = compute_dtype(data.scalar_type());
  check_coeff(op, a_name, a, data.size(0), cdt, data.device());
  check_coeff(op, s_name, s, data.size(0), cdt, data.device());
}

// A backward op's gradient to a data input: a new output like `data` when wanted (all of an op's
// data gradients then share one layout), else an empty placeholder.
inline at::Tensor data_grad_output(bool wanted, const at::Tensor& data) {
  return wanted ? new_output_like(data) : at::empty({0}, data.options());
}

// A backward op's gradient to a per-sample coefficient: zeros of shape (B,) when wanted, else an
// empty placeholder.
inline at::Tensor coeff_grad_output(bool wanted, const at::Tensor& coeff, int64_t B) {
  return wanted ? at::zeros({B}, coeff.options()) : at::empty({0}, coeff.options());
}

}  // namespace vdm_fast
