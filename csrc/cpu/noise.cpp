// Philox noise on the CPU: the vectorised generator every CPU kernel that draws noise calls
// (csrc/cpu/noise.h: randn_like, q_sample_randn, reverse_step).
//
// Vectorisation: a tile of blocks is generated structure-of-arrays (one array per counter word,
// one lane per block) — AVX-512F or AVX2 intrinsics, else a scalar loop — then turned into normals
// by a second loop compiled for baseline / AVX2 / AVX-512. Both choose by cpu_isa() (csrc/cpu/isa.h:
// the CPU's widest level, capped by ATEN_CPU_CAPABILITY). The words are integers, exact on every
// path, so the path taken never changes a bit of the stream. No -march=native anywhere.

#include <algorithm>
#include <cstring>

#include "common.h"
#include "cpu/isa.h"
#include "cpu/noise.h"
#include "philox.h"

#if defined(VDM_FAST_X86_DISPATCH)
#include <immintrin.h>
#include <torch/all.h>
#define VDM_FAST_PHILOX_X86 1  // AVX-512 / AVX2 Philox, chosen at run time (cpu_isa())
#endif

namespace vdm_fast {
namespace cpu {
namespace {

constexpr int64_t kTileBlocks = kNoiseTile / 4;

// w0..w3[k] = words of block first_block + k, k < n (n <= kTileBlocks). Portable version.
void words_soa_generic(uint64_t seed, uint64_t offset, uint64_t first_block, int64_t n, uint32_t* __restrict w0,
                       uint32_t* __restrict w1, uint32_t* __restrict w2, uint32_t* __restrict w3) {
  const uint32_t o0 = philox::lo32(offset), o1 = philox::hi32(offset);
  const uint32_t k0 = philox::lo32(seed), k1 = philox::hi32(seed);
  for (int64_t k = 0; k < n; ++k) {
    const uint64_t block = first_block + static_cast<uint64_t>(k);
    const philox::Block x = philox::philox4x32_10(philox::lo32(block), philox::hi32(block), o0, o1, k0, k1);
    w0[k] = x.x[0];
    w1[k] = x.x[1];
    w2[k] = x.x[2];
    w3[k] = x.x[3];
  }
}

#if defined(VDM_FAST_PHILOX_X86)
// The SIMD Philox keeps each counter word in the low half of a 64-bit lane: vpmuludq then yields a
// round's whole 32x32->64 product in one instruction, its high half is one shift away, and the
// garbage the xors leave in the upper halves never reaches a low half (vpmuludq ignores it).
// Blocks first+0, +2, +4, ... go in the `even` registers, +1, +3, ... in the `odd` ones; at the
// end the odd words are shifted up and blended in, so lane j holds block first + j. A round of
// 8 blocks is 16 AVX2 instructions (18 when 32-bit lanes have their products split and
// re-blended); with AVX-512 a round of 16 blocks is 12, vpternlogd doing each three-way xor.

// words_soa_generic with AVX-512F, 16 blocks per step (vpternlogd does each round's three-way xor).
__attribute__((target("avx512f"))) void words_soa_avx512(uint64_t seed, uint64_t offset, uint64_t first_block,
                                                         int64_t n, uint32_t* __restrict w0, uint32_t* __restrict w1,
                                                         uint32_t* __restrict w2, uint32_t* __restrict w3) {
  __m512i key0[philox::kRounds], key1[philox::kRounds];
  uint32_t k0 = philox::lo32(seed), k1 = philox::hi32(seed);
  for (int r = 0; r < philox::kRounds; ++r, k0 += philox::kWeyl0, k1 += philox::kWeyl1) {
    key0[r] = _mm512_set1_epi32(static_cast<int>(k0));
    key1[r] = _mm512_set1_epi32(static_cast<int>(k1));
  }
  const __m512i m0 = _mm512_set1_epi64(philox::kMul0), m1 = _mm512_set1_epi64(philox::kMul1);
  const __m512i o0 = _mm512_set1_epi32(static_cast<int>(philox::lo32(offset)));
  const __m512i o1 = _mm512_set1_epi32(static_cast<int>(philox::hi32(offset)));
  const __m512i even_steps = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
  const __m512i odd_steps = _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15);
  uint32_t* const w[4] = {w0, w1, w2, w3};
  constexpr int kXor3 = 0x96;  // vpternlogd truth table of a ^ b ^ c
  for (int64_t k = 0; k < n; k += 16) {
    const __m512i block = _mm512_set1_epi64(static_cast<long long>(first_block + static_cast<uint64_t>(k)));
    __m512i e[4], o[4];
    e[0] = _mm512_add_epi64(block, even_steps);  // low half: lo32(block); the high half is ignored
    o[0] = _mm512_add_epi64(block, odd_steps);
    e[1] = _mm512_srli_epi64(e[0], 32);  // hi32(block), carries included
    o[1] = _mm512_srli_epi64(o[0], 32);
    e[2] = o[2] = o0;
    e[3] = o[3] = o1;
    for (int r = 0; r < philox::kRounds; ++r) {
      const __m512i pe0 = _mm512_mul_epu32(e[0], m0), pe2 = _mm512_mul_epu32(e[2], m1);
      const __m512i po0 = _mm512_mul_epu32(o[0], m0), po2 = _mm512_mul_epu32(o[2], m1);
      e[0] = _mm512_ternarylogic_epi32(_mm512_srli_epi64(pe2, 32), e[1], key0[r], kXor3);
      e[2] = _mm512_ternarylogic_epi32(_mm512_srli_epi64(pe0, 32), e[3], key1[r], kXor3);
      o[0] = _mm512_ternarylogic_epi32(_mm512_srli_epi64(po2, 32), o[1], key0[r], kXor3);
      o[2] = _mm512_ternarylogic_epi32(_mm512_srli_epi64(po0, 32), o[3], key1[r], kXor3);
      e[1] = pe2;
      e[3] = pe0;
      o[1] = po2;
      o[3] = po0;
    }
    const __mmask16 keep = n - k >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (n - k)) - 1);
    for (int q = 0; q < 4; ++q)
      _mm512_mask_storeu_epi32(w[q] + k, keep, _mm512_mask_blend_epi32(0xAAAA, e[q], _mm512_slli_epi64(o[q], 32)));
  }
}

// The same with AVX2, 8 blocks per step.
__attribute__((target("avx2"))) void words_soa_avx2(uint64_t seed, uint64_t offset, uint64_t first_block,
                                                    int64_t n, uint32_t* __restrict w0, uint32_t* __restrict w1,
                                                    uint32_t* __restrict w2, uint32_t* __restrict w3) {
  __m256i key0[philox::kRounds], key1[philox::kRounds];
  uint32_t k0 = philox::lo32(seed), k1 = philox::hi32(seed);
  for (int r = 0; r < philox::kRounds; ++r, k0 += philox::kWeyl0, k1 += philox::kWeyl1) {
    key0[r] = _mm256_set1_epi32(static_cast<int>(k0));
    key1[r] = _mm256_set1_epi32(static_cast<int>(k1));
  }
  const __m256i m0 = _mm256_set1_epi64x(philox::kMul0), m1 = _mm256_set1_epi64x(philox::kMul1);
  const __m256i o0 = _mm256_set1_epi32(static_cast<int>(philox::lo32(offset)));
  const __m256i o1 = _mm256_set1_epi32(static_cast<int>(philox::hi32(offset)));
  const __m256i even_steps = _mm256_setr_epi64x(0, 2, 4, 6), odd_steps = _mm256_setr_epi64x(1, 3, 5, 7);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  uint32_t* const w[4] = {w0, w1, w2, w3};
  for (int64_t k = 0; k < n; k += 8) {
    const __m256i block = _mm256_set1_epi64x(static_cast<long long>(first_block + static_cast<uint64_t>(k)));
    __m256i e[4], o[4];
    e[0] = _mm256_add_epi64(block, even_steps);
    o[0] = _mm256_add_epi64(block, odd_steps);
    e[1] = _mm256_srli_epi64(e[0], 32);
    o[1] = _mm256_srli_epi64(o[0], 32);
    e[2] = o[2] = o0;
    e[3] = o[3] = o1;
    for (int r = 0; r < philox::kRounds; ++r) {
      const __m256i pe0 = _mm256_mul_epu32(e[0], m0), pe2 = _mm256_mul_epu32(e[2], m1);
      const __m256i po0 = _mm256_mul_epu32(o[0], m0), po2 = _mm256_mul_epu32(o[2], m1);
      e[0] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(pe2, 32), e[1]), key0[r]);
      e[2] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(pe0, 32), e[3]), key1[r]);
      o[0] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(po2, 32), o[1]), key0[r]);
      o[2] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(po0, 32), o[3]), key1[r]);
      e[1] = pe2;
      e[3] = pe0;
      o[1] = po2;
      o[3] = po0;
    }
    const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(std::min<int64_t>(n - k, 8))), lane);
    for (int q = 0; q < 4; ++q)
      _mm256_maskstore_epi32(reinterpret_cast<int*>(w[q] + k), keep,
                             _mm256_blend_epi32(e[q], _mm256_slli_epi64(o[q], 32), 0xAA));
  }
}
#endif

// The words with the widest intrinsics cpu_isa() allows (so the tests can run every path on one
// machine through ATEN_CPU_CAPABILITY).
void words_soa(uint64_t seed, uint64_t offset, uint64_t first_block, int64_t n, uint32_t* w0, uint32_t* w1,
               uint32_t* w2, uint32_t* w3) {
#if defined(VDM_FAST_PHILOX_X86)
  const Isa isa = cpu_isa();
  if (isa == Isa::kAvx512) return words_soa_avx512(seed, offset, first_block, n, w0, w1, w2, w3);
  if (isa == Isa::kAvx2) return words_soa_avx2(seed, offset, first_block, n, w0, w1, w2, w3);
#endif
  words_soa_generic(seed, offset, first_block, n, w0, w1, w2, w3);
}

// out[4k .. 4k+4) = normals of the words of block k. Vectorises thanks to -fno-math-errno
// (setup.py): otherwise sqrtf keeps a scalar errno branch.
void normals_from_words(const uint32_t* __restrict w0, const uint32_t* __restrict w1, const uint32_t* __restrict w2,
                        const uint32_t* __restrict w3, int64_t n, float* __restrict out) {
  for (int64_t k = 0; k < n; ++k) {
    float a, b, c, d;
    philox::box_muller(w0[k], w1[k], &a, &b);
    philox::box_muller(w2[k], w3[k], &c, &d);
    out[4 * k] = a;
    out[4 * k + 1] = b;
    out[4 * k + 2] = c;
    out[4 * k + 3] = d;
  }
}

// Normals of whole blocks [first_block, first_block + n_blocks) into out (4 * n_blocks floats).
void normals_blocks(uint64_t seed, uint64_t offset, uint64_t first_block, int64_t n_blocks, float* out) {
  alignas(64) uint32_t w[4][kTileBlocks];
  for (int64_t k = 0; k < n_blocks; k += kTileBlocks) {
    const int64_t len = std::min(kTileBlocks, n_blocks - k);
    words_soa(seed, offset, first_block + static_cast<uint64_t>(k), len, w[0], w[1], w[2], w[3]);
    with_cpu_isa([&] { normals_from_words(w[0], w[1], w[2], w[3], len, out + 4 * k); });
  }
}

}  // namespace

void philox_normals(uint64_t seed, uint64_t offset, int64_t first, int64_t n, float* out) {
  int64_t i = first;
  const int64_t end = first + n;
  float part[4];
  // Partial blocks go through normals_blocks too, never the scalar philox::philox_normal4: the
  // wide copies of normals_from_words may contract to FMA, so only one code path gives every element
  // the same bits whatever the split (tiles, threads, samples).
  if (i % 4 != 0 && i < end) {  // head: the rest of a partly wanted block
    normals_blocks(seed, offset, static_cast<uint64_t>(i / 4), 1, part);
    const int64_t len = std::min<int64_t>(4 - i % 4, end - i);
    std::memcpy(out, part + i % 4, sizeof(float) * len);
    i += len;
  }
  const int64_t whole = (end - i) / 4;
  if (whole > 0) {
    normals_blocks(seed, offset, static_cast<uint64_t>(i / 4), whole, out + (i - first));
    i += 4 * whole;
  }
  if (i < end) {  // tail: the start of a partly wanted block
    normals_blocks(seed, offset, static_cast<uint64_t>(i / 4), 1, part);
    std::memcpy(out + (i - first), part, sizeof(float) * (end - i));
  }
}

void philox_words(uint64_t seed, uint64_t offset, uint64_t first_block, int64_t n_blocks, uint32_t* out) {
  alignas(64) uint32_t w[4][kTileBlocks];
  for (int64_t k = 0; k < n_blocks; k += kTileBlocks) {
    const int64_t len = std::min(kTileBlocks, n_blocks - k);
    words_soa(seed, offset, first_block + static_cast<uint64_t>(k), len, w[0], w[1], w[2], w[3]);
    for (int64_t j = 0; j < len; ++j)
      for (int q = 0; q < 4; ++q) out[4 * (k + j) + q] = w[q][j];
  }
}

}  // namespace cpu
}  // namespace vdm_fast
