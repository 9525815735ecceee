// Counter-based Philox4x32-10 noise (DESIGN.md §6), shared by the CPU and CUDA kernels: every
// function here is inline and compiles for host and device. kernels/philox.py is the same
// algorithm in Triton, vdm_fast/reference.py the same stream in integer torch math.
//
// The stream (DESIGN.md §6): for a 64-bit seed and a 64-bit offset, element i
// (a flat index into the output's memory) is output lane i % 4 of the Philox4x32-10 block
//     counter = (lo32(i / 4), hi32(i / 4), lo32(offset), hi32(offset)),  key = (lo32(seed), hi32(seed)).
// A block's four words x0..x3 become uniforms u = ((x >> 8) + 1) * 2^-24 in (0, 1] (exact in
// float32) and then normals by Box–Muller on the pairs (x0, x1) and (x2, x3):
//     n[4j+0] = r cos(2 pi u1), n[4j+1] = r sin(2 pi u1), r = sqrt(-2 log u0)   (u0 = u(x0), u1 = u(x1))
//     n[4j+2], n[4j+3] likewise from (x2, x3).
// log, sin and cos are the float32 polynomials below (not libm): they vectorise on the CPU and
// are the same code on every backend, so backends differ only by FMA contraction (a few ulps).
//
// To draw noise inside another op's kernel see philox_normal4 (any backend), and
// csrc/cpu/noise.h (vectorised CPU tiles) / csrc/cuda/noise.cuh (CUDA).
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define VDM_FAST_HD __host__ __device__ __forceinline__
#else
#define VDM_FAST_HD inline
#endif

namespace vdm_fast {
namespace philox {

constexpr uint32_t kMul0 = 0xD2511F53u;   // multiplies counter word 0
constexpr uint32_t kMul1 = 0xCD9E8D57u;   // multiplies counter word 2
constexpr uint32_t kWeyl0 = 0x9E3779B9u;  // key bump, word 0 (golden ratio)
constexpr uint32_t kWeyl1 = 0xBB67AE85u;  // key bump, word 1 (sqrt(3) - 1)
constexpr int kRounds = 10;

struct Block {
  uint32_t x[4];
};

VDM_FAST_HD uint32_t lo32(uint64_t v) { return static_cast<uint32_t>(v); }
VDM_FAST_HD uint32_t hi32(uint64_t v) { return static_cast<uint32_t>(v >> 32); }

// Philox4x32 with 10 rounds (Salmon et al., SC'11; Random123's philox4x32_R(10, ...)).
VDM_FAST_HD Block philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int r = 0; r < kRounds; ++r) {
    const uint64_t p0 = static_cast<uint64_t>(kMul0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kMul1) * c2;
    const uint32_t n0 = hi32(p1) ^ c1 ^ k0;
    const uint32_t n2 = hi32(p0) ^ c3 ^ k1;
    c1 = lo32(p1);
    c3 = lo32(p0);
    c0 = n0;
    c2 = n2;
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return Block{{c0, c1, c2, c3}};
}

// The block that holds elements [4*block, 4*block + 4) of stream (seed, offset).
VDM_FAST_HD Block philox_block(uint64_t seed, uint64_t offset, uint64_t block) {
  return philox4x32_10(lo32(block), hi32(block), lo32(offset), hi32(offset), lo32(seed), hi32(seed));
}

// The 32 bits of v read as type To (float <-> uint32): CUDA's intrinsics on the device, a union on
// the host (GCC folds it into a register move, also in vectorised loops).
template <typename To, typename From>
VDM_FAST_HD To bit_cast32(From v) {
  static_assert(sizeof(To) == 4 && sizeof(From) == 4, "bit_cast32: 32-bit types only");
#if defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<To, float>) {
    return __uint_as_float(v);
  } else {
    return __float_as_uint(v);
  }
#else
  union {
    From from;
    To to;
  } c;
  c.from = v;
  return c.to;
#endif
}

VDM_FAST_HD float bits_as_float(uint32_t v) { return bit_cast32<float>(v); }
VDM_FAST_HD uint32_t float_as_bits(float v) { return bit_cast32<uint32_t>(v); }

// uint32 -> float32 in (0, 1]: the top 24 bits plus one, times 2^-24. Exact (no rounding), so
// every backend gets the same uniform.
VDM_FAST_HD float uniform(uint32_t x) { return static_cast<float>((x >> 8) + 1u) * 5.9604644775390625e-8f; }

// Natural log of u in (0, 1] (a normal float32), Cephes' logf polynomial: u = 2^e m with m in
// [sqrt(1/2), sqrt(2)), log(m) = f - f^2/2 + f^3 P(f), f = m - 1 (exact). Max error ~1 ulp over
// all 2^24 uniforms (tests/test_noise.py checks every one of them).
VDM_FAST_HD float log_unit(float u) {
  const int32_t ix = static_cast<int32_t>(float_as_bits(u)) - 0x3f3504f3;  // bits of sqrt(1/2)
  const float e = static_cast<float>(ix >> 23);                               // arithmetic shift
  const float f = bits_as_float(static_cast<uint32_t>((ix & 0x007fffff) + 0x3f3504f3)) - 1.0f;
  const float z = f * f;
  float p = 7.0376836292e-2f;
  p = p * f - 1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f - 1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f - 1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f - 2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  float y = f * z * p;
  y += e * -2.12194440e-4f;  // log(2) = 0.693359375 - 2.12194440e-4, the first part exact in float
  y += -0.5f * z;
  return (f + y) + e * 0.693359375f;
}

// cos and sin of 2 pi u for u in (0, 1] (multiples of 2^-24). Range reduction is exact in
// quarter turns: q = round(4u), f = u - q/4 in [-1/8, 1/8], a = 2 pi f in [-pi/4, pi/4]; Cephes'
// sinf/cosf polynomials on a; the quadrant q swaps and negates.
VDM_FAST_HD void sincos_turns(float u, float* s_out, float* c_out) {
  const float qf = static_cast<float>(static_cast<int32_t>(u * 4.0f + 0.5f));  // u >= 0: round half up
  const int32_t q = static_cast<int32_t>(qf);
  const float a = (u - qf * 0.25f) * 6.28318530717958647692f;
  const float z = a * a;
  float s = -1.9515295891e-4f;
  s = s * z + 8.3321608736e-3f;
  s = s * z - 1.6666654611e-1f;
  s = s * z * a + a;
  float c = 2.443315711809948e-5f;
  c = c * z - 1.388731625493765e-3f;
  c = c * z + 4.166664568298827e-2f;
  c = c * z * z - 0.5f * z + 1.0f;
  const bool swap = (q & 1) != 0;
  const float sv = swap ? c : s, cv = swap ? s : c;
  *s_out = (q & 2) ? -sv : sv;             // quadrants 2, 3
  *c_out = ((q + 1) & 2) ? -cv : cv;       // quadrants 1, 2
}

// Box–Muller on one pair of words: r cos(2 pi u(b)), r sin(2 pi u(b)), r = sqrt(-2 log u(a)).
VDM_FAST_HD void box_muller(uint32_t a, uint32_t b, float* n0, float* n1) {
  const float r = sqrtf(-2.0f * log_unit(uniform(a)));
  float s, c;
  sincos_turns(uniform(b), &s, &c);
  *n0 = r * c;
  *n1 = r * s;
}

// The four standard normals of elements [4*block, 4*block + 4) of stream (seed, offset).
// This is the one call another op's kernel needs to draw noise for element i: block = i / 4,
// take out[i % 4]. (On the CPU prefer the vectorised tiles of csrc/cpu/noise.h.)
VDM_FAST_HD void philox_normal4(uint64_t seed, uint64_t offset, uint64_t block, float out[4]) {
  const Block x = philox_block(seed, offset, block);
  box_muller(x.x[0], x.x[1], &out[0], &out[1]);
  box_muller(x.x[2], x.x[3], &out[2], &out[3]);
}

}  // namespace philox
}  // namespace vdm_fast
