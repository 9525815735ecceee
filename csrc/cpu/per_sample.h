// CPU loop helpers shared by every op: data is B samples of D contiguous elements (see
// csrc/common.h); per-sample scalars are indexed by b, in the compute type acc_t (common.h).
//
// Instruction sets: the inner loops are plain loops over raw pointers that GCC auto-vectorises;
// callers run each one through with_cpu_isa (csrc/cpu/isa.h), which compiles it for baseline
// x86-64, AVX2+FMA and AVX-512 and picks one at run time, so a shipped wheel uses the widest
// vectors the machine has without -march=native.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <array>
#include <type_traits>
#include <vector>

#include "common.h"
#include "cpu/isa.h"

namespace vdm_fast {
namespace cpu {

// Elements per parallel task: large enough to amortise task overhead, small enough for two
// cores to share an L2-sized tensor.
constexpr int64_t kGrain = 32768;
// The same for compute-bound kernels (recon_nll, discretized_gaussian_nll: several ns an element and
// up): below this many elements a call runs on one thread.
constexpr int64_t kComputeSerial = 1024;

// Calls fn(b, begin, end) over flat element ranges [begin, end) that never cross a sample
// boundary (begin, end are flat offsets in [0, B*D)), in parallel.
template <typename F>
void for_each_segment(int64_t B, int64_t D, const F& fn) {
  const int64_t N = B * D;
  if (N == 0) return;
  at::parallel_for(0, N, kGrain, [&](int64_t lo, int64_t hi) {
    int64_t b = lo / D;
    while (lo < hi) {
      const int64_t seg_end = std::min(hi, (b + 1) * D);
      fn(b, lo, seg_end);
      lo = seg_end;
      ++b;
    }
  });
}

// Per-sample reductions of K quantities: fn(b, begin, end, acc) adds the partial sums of one
// segment into acc[0..K). Segments are reduced in parallel into double partials and combined in
// a fixed order, so the result does not depend on the thread count. Returns B*K doubles,
// sample-major. The work runs on one thread below `serial_elements` elements: kGrain for the
// bandwidth-bound ops (as for_each_segment), fewer for the compute-bound ones.
template <int K, typename F>
std::vector<double> reduce_per_sample(int64_t B, int64_t D, const F& fn, int64_t serial_elements = kGrain) {
  std::vector<double> out(static_cast<size_t>(B * K), 0.0);
  if (B == 0) return out;
  const int64_t chunk = std::max<int64_t>(kGrain, 1);
  const int64_t chunks = D == 0 ? 0 : (D + chunk - 1) / chunk;
  const int64_t tasks = B * chunks;
  std::vector<double> partial(static_cast<size_t>(tasks * K), 0.0);
  // One task per (sample, chunk); below serial_elements in all, one thread (a parallel region
  // costs ~2 us to open: most of a tiny call).
  at::parallel_for(0, tasks, B * D <= serial_elements ? tasks : 1, [&](int64_t lo, int64_t hi) {
    for (int64_t task = lo; task < hi; ++task) {
      const int64_t b = task / chunks, c = task % chunks;
      const int64_t begin = b * D + c * chunk, end = b * D + std::min(D, (c + 1) * chunk);
      double acc[K] = {};
      fn(b, begin, end, acc);
      for (int k = 0; k < K; ++k) partial[task * K + k] = acc[k];
    }
  });
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < chunks; ++c)
      for (int k = 0; k < K; ++k) out[b * K + k] += partial[(b * chunks + c) * K + k];
  return out;
}

// sum_{i < n} term(i) in double, vectorised: kSumLanes double partials, lane l taking the terms
// i = l (mod kSumLanes), then added up in lane order. Double, because a float partial absorbs every
// later term below half an ulp of it (DESIGN.md §4.10); several lanes per vector and several vectors
// of lanes, because one accumulator per vector makes a loop of cheap terms wait on the add's latency
// (4 cycles per vector of terms: prior_kl ran at half the triad's bandwidth). The order depends only
// on n, not on the vector width, so every CPU path sums alike. Call inside with_cpu_isa.
constexpr int kSumLanes = 32;
// Float terms reach their lane kFloatGroup at a time: terms i + l + g kSumLanes (g < kFloatGroup) of
// one lane added in float, then once into the lane's double. Why: the float -> double conversion
// and the double add were the loop's cost, not the data (a sum of squares in L2 ran 97 ps/element
// a core on a Xeon with AVX-512 against 56 in groups of four). A group of four has no running sum
// to absorb small terms into: its error is at most 3 float roundings of the four terms'
// magnitudes, inside the 8 * 2^-24 bound of tests/test_accurate_sums.py with the terms' own.
constexpr int kFloatGroup = 4;

// The lane partials themselves, for sums that run over several calls (tiles of a segment).
struct LaneSum {
  double lanes[kSumLanes] = {};

  // Adds term(0..n) (a fresh lane cycle: term 0 goes to lane 0).
  template <typename Term>
  void add(int64_t n, const Term& term) {
    int64_t i = 0;
    if constexpr (std::is_same_v<decltype(term(i)), float>) {
      constexpr int64_t kStride = kFloatGroup * kSumLanes;
      for (; i + kStride <= n; i += kStride) {
        for (int l = 0; l < kSumLanes; ++l) {
          float group = term(i + l);
          for (int g = 1; g < kFloatGroup; ++g) group += term(i + l + g * kSumLanes);
          lanes[l] += static_cast<double>(group);
        }
      }
    }
    for (; i + kSumLanes <= n; i += kSumLanes) {
      for (int l = 0; l < kSumLanes; ++l) lanes[l] += static_cast<double>(term(i + l));
    }
    for (int l = 0; i < n; ++i, ++l) lanes[l] += static_cast<double>(term(i));
  }

  // The lanes added in a fixed tree (lane l + lane l + w, halving w), the same on every CPU path.
  // Not a chain: 32 dependent adds take ~128 cycles, as long as the loop over a 1024-element block
  // of cheap terms itself.
  double total() const {
    double t[kSumLanes];
    for (int l = 0; l < kSumLanes; ++l) t[l] = lanes[l];
    for (int w = kSumLanes / 2; w >= 1; w /= 2) {
      for (int l = 0; l < w; ++l) t[l] += t[l + w];
    }
    return t[0];
  }
};

template <typename Term>
inline double lane_sum(int64_t n, const Term& term) {
  LaneSum sum;
  sum.add(n, term);
  return sum.total();
}

}  // namespace cpu
}  // namespace vdm_fast
