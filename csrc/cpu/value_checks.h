// The value preconditions of the public API (vdm_fast/_checks.py: `positive`, `within`), checked by
// the CPU ops themselves, with the same messages.
//
// Why here too: in Python each check is three ATen calls (compare, all, _assert_async), 2-5 us a
// check on a tiny tensor, which made recon_nll's public call 17 us for a 4 us op (issue 18). A loop
// over B coefficients costs nothing, and the scan of x0 is one read of data the kernel then reads
// again from cache (a compare per element, next to the kernel's tens of instructions). The public
// call's direct path (vdm_fast/ops/_spec.py) then leaves the checks to the op. On CUDA the Python
// checks stay (torch._assert_async: no host synchronisation), and the raw ops do not check.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <type_traits>

#include "cpu/isa.h"
#include "cpu/per_sample.h"

namespace vdm_fast {
namespace cpu {

// coeff (1-D, contiguous, float or double) > 0 everywhere; NaN fails.
inline void check_positive(const at::Tensor& coeff, const char* op, const char* name) {
  AT_DISPATCH_FLOATING_TYPES(coeff.scalar_type(), "check_positive", [&] {
    const scalar_t* p = coeff.const_data_ptr<scalar_t>();
    for (int64_t i = 0, n = coeff.numel(); i < n; ++i) {
      TORCH_CHECK(p[i] > scalar_t(0), op, ": ", name, " must be > 0 (its log is taken)");
    }
  });
}

// lo <= x <= hi everywhere, NaN failing (x dense: its numel elements from the data pointer, in any
// order; any floating dtype). `range` is how the message writes the interval, as Python prints it
// ("[-1.0, 1.0]").
inline void check_within(const at::Tensor& x, float lo, float hi, const char* op, const char* name,
                         const char* range) {
  std::atomic<bool> ok{true};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "check_within", [&] {
    const scalar_t* p = x.const_data_ptr<scalar_t>();
    at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
      constexpr int64_t kBlock = 4096;
      for (int64_t i = begin; i < end && ok.load(std::memory_order_relaxed); i += kBlock) {
        const int64_t stop = std::min(end, i + kBlock);
        // Branch-free within a block (vectorises); the comparison is false for NaN, so NaN is bad.
        const bool block_ok = with_cpu_isa([&] {
          // double data compared in double (1 + 1e-12 is out of range), the rest in float
          using cmp_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
          const cmp_t low = lo, high = hi;
          int bad = 0;
          for (int64_t j = i; j < stop; ++j) {
            const cmp_t v = static_cast<cmp_t>(p[j]);
            bad |= !(v >= low && v <= high);
          }
          return bad == 0;
        });
        if (!block_ok) ok.store(false, std::memory_order_relaxed);
      }
    });
  });
  TORCH_CHECK(ok.load(), op, ": ", name, " must lie in ", range, " (data for the decoder), with no NaN");
}

}  // namespace cpu
}  // namespace vdm_fast
