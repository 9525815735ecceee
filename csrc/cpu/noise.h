// Drawing Philox noise inside a CPU kernel (DESIGN.md §6; the stream is defined in csrc/philox.h).
//
// How another op draws noise in its CPU kernel, for elements [begin, end) of its output:
//
//     float n[kNoiseTile];
//     for (int64_t i = begin; i < end; i += kNoiseTile) {
//       const int64_t len = std::min(kNoiseTile, end - i);
//       philox_normals(seed, offset, i, len, n);     // n[k] = noise of element i + k
//       ... use n[0..len) ...
//     }
//
// `i` is the element's flat index in the output's memory (the layout rule's b*D + j), so the
// noise does not depend on how the work is split into threads or tiles. seed/offset come from
// seed_value (csrc/noise_args.h) of the op's seed tensor and its offset argument.
#pragma once

#include <cstdint>

namespace vdm_fast {
namespace cpu {

// Elements per tile of the vectorised generator (a multiple of 4); callers' stack buffers.
constexpr int64_t kNoiseTile = 512;

// out[k] = standard normal of element first + k of stream (seed, offset), k in [0, n). Any
// first, any n (not only multiples of 4); vectorised (baseline / AVX2 / AVX-512, chosen at load).
void philox_normals(uint64_t seed, uint64_t offset, int64_t first, int64_t n, float* out);

// The raw stream: 4 * n_blocks words, words 4k..4k+3 being block first_block + k.
void philox_words(uint64_t seed, uint64_t offset, uint64_t first_block, int64_t n_blocks, uint32_t* out);

}  // namespace cpu
}  // namespace vdm_fast
