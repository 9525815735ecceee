// Shared host-side helpers for every vdm_fast op: argument checks and the memory-layout rule.
//
// Layout rule (DESIGN.md §4, docs/DESIGN_NOTES.md): a kernel sees its data as B samples of D
// elements, sample b occupying storage offsets [b*D, (b+1)*D). A tensor is used as it is when it
// is "batch-major dense" (non-overlapping and dense, and dim 0 has stride D: contiguous,
// channels_last, ...); otherwise it is copied once into that layout. Outputs take the strides of
// the first data input when it is batch-major dense, else they are contiguous. The fake (meta)
// kernels in vdm_fast/_layout.py apply the same rule.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

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

}  // namespace vdm_fast
