// Philox noise on the CPU: the vectorised generator other kernels call (csrc/cpu/noise.h), and
// the ops randn_like and philox_bits.
//
// Vectorisation: a tile of blocks is generated structure-of-arrays (one array per counter word,
// one lane per block) — AVX2 intrinsics when the CPU has AVX2 (checked at run time), else a loop
// GCC vectorises — then turned into normals by a second loop, VDM_FAST_CPU_CLONES (baseline /
// AVX2 / AVX-512, chosen at load time). No -march=native anywhere.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>

#include "common.h"
#include "cpu/noise.h"
#include "cpu/per_sample.h"
#include "noise_args.h"
#include "philox.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(VDM_FAST_NO_CLONES)
#include <immintrin.h>
#define VDM_FAST_PHILOX_AVX2 1  // an AVX2 Philox, chosen at run time (__builtin_cpu_supports)
#endif

namespace vdm_fast {
namespace cpu {
namespace {

constexpr int64_t kTileBlocks = kNoiseTile / 4;

// w0..w3[k] = words of block first_block + k, k < n (n <= kTileBlocks). Portable version.
VDM_FAST_CPU_CLONES void words_soa_generic(uint64_t seed, uint64_t offset, uint64_t first_block, int64_t n,
                                   uint32_t* __restrict w0, uint32_t* __restrict w1, uint32_t* __restrict w2,
                                   uint32_t* __restrict w3) {
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

#if defined(VDM_FAST_PHILOX_AVX2)
// (hi, lo) halves of the 32x32->64 products a * m, 8 lanes: vpmuludq on the even lanes and on the
// odd lanes shifted down, then the halves blended back into place.
__attribute__((target("avx2"))) inline void mulhilo8(__m256i a, __m256i m, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, m);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

// words_soa_generic with AVX2 intrinsics, 8 blocks at a time: GCC's own vectorisation of the
// widening multiplies costs about twice as many instructions.
__attribute__((target("avx2"))) void words_soa_avx2(uint64_t seed, uint64_t offset, uint64_t first_block,
                                                    int64_t n, uint32_t* __restrict w0, uint32_t* __restrict w1,
                                                    uint32_t* __restrict w2, uint32_t* __restrict w3) {
  __m256i key0[philox::kRounds], key1[philox::kRounds];
  uint32_t k0 = philox::lo32(seed), k1 = philox::hi32(seed);
  for (int r = 0; r < philox::kRounds; ++r, k0 += philox::kWeyl0, k1 += philox::kWeyl1) {
    key0[r] = _mm256_set1_epi32(static_cast<int>(k0));
    key1[r] = _mm256_set1_epi32(static_cast<int>(k1));
  }
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(philox::kMul0));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(philox::kMul1));
  const __m256i o0 = _mm256_set1_epi32(static_cast<int>(philox::lo32(offset)));
  const __m256i o1 = _mm256_set1_epi32(static_cast<int>(philox::hi32(offset)));
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    alignas(32) uint32_t lo[8], hi[8];
    for (int j = 0; j < 8; ++j) {
      const uint64_t block = first_block + static_cast<uint64_t>(k + j);
      lo[j] = philox::lo32(block);
      hi[j] = philox::hi32(block);
    }
    __m256i c0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(lo));
    __m256i c1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(hi));
    __m256i c2 = o0, c3 = o1;
    for (int r = 0; r < philox::kRounds; ++r) {
      __m256i hi0, lo0, hi1, lo1;
      mulhilo8(c0, m0, hi0, lo0);
      mulhilo8(c2, m1, hi1, lo1);
      c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), key0[r]);
      c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), key1[r]);
      c1 = lo1;
      c3 = lo0;
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w0 + k), c0);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w1 + k), c1);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w2 + k), c2);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w3 + k), c3);
  }
  if (k < n) words_soa_generic(seed, offset, first_block + static_cast<uint64_t>(k), n - k, w0 + k, w1 + k, w2 + k, w3 + k);
}
#endif

void words_soa(uint64_t seed, uint64_t offset, uint64_t first_block, int64_t n, uint32_t* w0, uint32_t* w1,
               uint32_t* w2, uint32_t* w3) {
#if defined(VDM_FAST_PHILOX_AVX2)
  static const bool avx2 = __builtin_cpu_supports("avx2");
  if (avx2) return words_soa_avx2(seed, offset, first_block, n, w0, w1, w2, w3);
#endif
  words_soa_generic(seed, offset, first_block, n, w0, w1, w2, w3);
}

// out[4k .. 4k+4) = normals of the words of block k. Vectorises thanks to -fno-math-errno
// (setup.py): otherwise sqrtf keeps a scalar errno branch.
VDM_FAST_CPU_CLONES void normals_from_words(const uint32_t* __restrict w0, const uint32_t* __restrict w1,
                                            const uint32_t* __restrict w2, const uint32_t* __restrict w3,
                                            int64_t n, float* __restrict out) {
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
    normals_from_words(w[0], w[1], w[2], w[3], len, out + 4 * k);
  }
}

}  // namespace

void philox_normals(uint64_t seed, uint64_t offset, int64_t first, int64_t n, float* out) {
  int64_t i = first;
  const int64_t end = first + n;
  float part[4];
  // Partial blocks go through normals_blocks too, never the scalar philox::philox_normal4: the
  // clones of normals_from_words may contract to FMA, so only one code path gives every element
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

namespace {

template <typename scalar_t>
VDM_FAST_CPU_CLONES void cast_segment(scalar_t* __restrict out, const float* __restrict in, int64_t n) {
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
          cast_segment<scalar_t>(op_ + i, buf, len);
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
