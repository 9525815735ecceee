"""Philox4x32-10 noise in Triton (DESIGN.md §6): the stream of csrc/philox.h, written out in
uint32 math (not ``tl.randn``, whose counter mapping and transforms differ): the functions the
kernels that draw noise call (randn_like's: kernels/randn_like.py).

The stream: element i (flat index in the output's memory) of stream (seed, offset) is lane i % 4 of
the block ``philox4x32_10(counter=(lo(i/4), hi(i/4), lo(offset), hi(offset)), key=(lo(seed), hi(seed)))``;
words become uniforms ``((x >> 8) + 1) * 2^-24`` and normals by Box–Muller on the pairs (x0, x1),
(x2, x3), with the same float32 log/sin/cos polynomials as csrc/philox.h.

How another Triton kernel draws noise (see ``randn_tile``)::

    k0, k1 = philox.seed_key(seed_ptr)                 # seed: one-element int64 tensor on the device
    start = pid * BLOCK                                # a multiple of 4 (BLOCK a power of two >= 4)
    noise = philox.randn_tile(k0, k1, off_lo, off_hi, start, BLOCK)   # elements [start, start + BLOCK)

with ``off_lo, off_hi = philox.split_offset(offset)`` passed as kernel arguments (mark them
``do_not_specialize``).
"""

from __future__ import annotations

import triton
import triton.language as tl

_MUL0 = tl.constexpr(0xD2511F53)
_MUL1 = tl.constexpr(0xCD9E8D57)
_WEYL0 = tl.constexpr(0x9E3779B9)
_WEYL1 = tl.constexpr(0xBB67AE85)


def split_offset(offset: int) -> tuple[int, int]:
    """(lo, hi) 32-bit halves of a 64-bit stream offset, as kernel arguments."""
    offset %= 2**64
    return offset & 0xFFFFFFFF, offset >> 32


@triton.jit
def seed_key(seed_ptr):
    """The Philox key (lo, hi) held by a one-element int64 seed tensor."""
    s = tl.load(seed_ptr)
    return (s & 0xFFFFFFFF).to(tl.uint32), ((s >> 32) & 0xFFFFFFFF).to(tl.uint32)


@triton.jit
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on uint32 tensors (Random123's philox4x32_R(10, ...))."""
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(c0, _MUL0)
        hi1 = tl.umulhi(c2, _MUL1)
        lo0 = tl.mul(c0, _MUL0, sanitize_overflow=False)
        lo1 = tl.mul(c2, _MUL1, sanitize_overflow=False)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = tl.add(k0, _WEYL0, sanitize_overflow=False)
        k1 = tl.add(k1, _WEYL1, sanitize_overflow=False)
    return c0, c1, c2, c3


@triton.jit
def philox_block(k0, k1, off_lo, off_hi, block):
    """The 4 words of blocks ``block`` (int64 tensor, read as uint64) of stream (key, offset)."""
    c0 = (block & 0xFFFFFFFF).to(tl.uint32)
    c1 = ((block >> 32) & 0xFFFFFFFF).to(tl.uint32)
    c2 = tl.zeros_like(c0) + off_lo.to(tl.uint32)
    c3 = tl.zeros_like(c0) + off_hi.to(tl.uint32)
    return philox4x32_10(c0, c1, c2, c3, tl.zeros_like(c0) + k0, tl.zeros_like(c0) + k1)


@triton.jit
def uniform(x):
    """uint32 -> float32 in (0, 1]: ((x >> 8) + 1) * 2^-24, exact."""
    return ((x >> 8) + 1).to(tl.float32) * 5.9604644775390625e-8


@triton.jit
def log_unit(u):
    """log(u) for u in (0, 1]: Cephes' logf polynomial, as csrc/philox.h."""
    ix = u.to(tl.int32, bitcast=True) - 0x3F3504F3
    e = (ix >> 23).to(tl.float32)
    f = ((ix & 0x007FFFFF) + 0x3F3504F3).to(tl.float32, bitcast=True) - 1.0
    z = f * f
    p = 7.0376836292e-2 * f - 1.1514610310e-1
    p = p * f + 1.1676998740e-1
    p = p * f - 1.2420140846e-1
    p = p * f + 1.4249322787e-1
    p = p * f - 1.6668057665e-1
    p = p * f + 2.0000714765e-1
    p = p * f - 2.4999993993e-1
    p = p * f + 3.3333331174e-1
    y = f * z * p
    y += e * -2.12194440e-4
    y += -0.5 * z
    return (f + y) + e * 0.693359375


@triton.jit
def sincos_turns(u):
    """(sin, cos) of 2 pi u for u in (0, 1], reduced exactly in quarter turns, as csrc/philox.h."""
    q = (u * 4.0 + 0.5).to(tl.int32)  # u >= 0: truncation is floor
    a = (u - q.to(tl.float32) * 0.25) * 6.28318530717958647692
    z = a * a
    s = -1.9515295891e-4 * z + 8.3321608736e-3
    s = s * z - 1.6666654611e-1
    s = s * z * a + a
    c = 2.443315711809948e-5 * z - 1.388731625493765e-3
    c = c * z + 4.166664568298827e-2
    c = c * z * z - 0.5 * z + 1.0
    swap = (q & 1) != 0
    sv = tl.where(swap, c, s)
    cv = tl.where(swap, s, c)
    return tl.where((q & 2) != 0, -sv, sv), tl.where(((q + 1) & 2) != 0, -cv, cv)


@triton.jit
def box_muller(a, b):
    """Normals (r cos, r sin) of 2 pi u(b), r = sqrt(-2 log u(a)), from two uint32 words."""
    r = tl.sqrt_rn(-2.0 * log_unit(uniform(a)))
    s, c = sincos_turns(uniform(b))
    return r * c, r * s


@triton.jit
def philox_normal4(k0, k1, off_lo, off_hi, block):
    """The 4 normals of blocks ``block`` (elements 4*block .. 4*block + 3)."""
    x0, x1, x2, x3 = philox_block(k0, k1, off_lo, off_hi, block)
    n0, n1 = box_muller(x0, x1)
    n2, n3 = box_muller(x2, x3)
    return n0, n1, n2, n3


@triton.jit
def randn_tile(k0, k1, off_lo, off_hi, start, BLOCK: tl.constexpr):
    """Float32 normals of elements [start, start + BLOCK) (start a multiple of 4, int64), in order."""
    block = start // 4 + tl.arange(0, BLOCK // 4).to(tl.int64)
    n0, n1, n2, n3 = philox_normal4(k0, k1, off_lo, off_hi, block)
    # join(join(n0, n2), join(n1, n3))[j, p, q] = n_{2p+q}[j]: row-major order is n0 n1 n2 n3.
    return tl.reshape(tl.join(tl.join(n0, n2), tl.join(n1, n3)), (BLOCK,))
