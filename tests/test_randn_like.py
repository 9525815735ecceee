"""Philox noise (DESIGN.md §6): randn_like and the stream every backend shares.

The uint32 stream is checked against Random123's published Philox4x32-10 known answers, and those
against two implementations independent of ours (plain Python integers here, and Triton's own
``tl.random.philox``); then every backend against the integer-math reference, bit for bit; the
normals against the exact Box–Muller of the same uniforms; the statistics against N(0, 1).
"""

from __future__ import annotations

import math
import os

import pytest
import torch

import vdm_fast
from vdm_fast import backends, reference
from vdm_fast.ops.randn_like import SPEC, draw_seed
from helpers import backend_params

try:  # test kernels must live at module level: the interpreter resolves names in the module
    import triton
    import triton.language as tl

    from vdm_fast.kernels import philox as tk
except ImportError:
    tk = None

if tk is not None:

    @triton.jit
    def _tritons_own_philox_kernel(out, c0, c1, c2, c3, seed):
        x0, x1, x2, x3 = tl.random.philox(seed, c0, c1, c2, c3)
        tl.store(out + 0, x0.to(tl.int32, bitcast=True))
        tl.store(out + 1, x1.to(tl.int32, bitcast=True))
        tl.store(out + 2, x2.to(tl.int32, bitcast=True))
        tl.store(out + 3, x3.to(tl.int32, bitcast=True))

    @triton.jit
    def _transcendentals_kernel(log_ptr, sin_ptr, cos_ptr, n, stride, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        k = tl.minimum(i * stride, n - 1)  # the last uniform, 1.0, always included
        u = tk.uniform((k << 8).to(tl.uint32))
        tl.store(log_ptr + i, tk.log_unit(u))
        s, c = tk.sincos_turns(u)
        tl.store(sin_ptr + i, s)
        tl.store(cos_ptr + i, c)

BACKENDS = backend_params("randn_like", include_reference=True)
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
U32 = 0xFFFFFFFF

# Random123 kat_vectors, philox4x32 10: (counter c0..c3, key k0 k1) -> 4 words.
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((U32, U32, U32, U32), (U32, U32), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def philox_python(counter, key):
    """Philox4x32-10 in arbitrary-precision Python integers: a second, independent oracle."""
    c, k = list(counter), list(key)
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k[0], p1 & U32, (p0 >> 32) ^ c[3] ^ k[1], p0 & U32]
        k = [(k[0] + 0x9E3779B9) & U32, (k[1] + 0xBB67AE85) & U32]
    return tuple(c)


def seed_tensor(seed: int, device="cpu") -> torch.Tensor:
    seed %= 2**64
    return torch.tensor(seed - 2**64 if seed >= 2**63 else seed, dtype=torch.int64, device=device)


def as_u32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.int64) & U32


def kat_args(counter, key):
    """(seed, offset, first_block) of our stream that hold this Philox counter and key."""
    return key[0] | key[1] << 32, counter[2] | counter[3] << 32, counter[0] | counter[1] << 32


def _signed(v: int) -> int:
    v %= 2**64
    return v - 2**64 if v >= 2**63 else v


def native_bits(seed, offset, first, n):
    return as_u32(torch.ops.vdm_fast.philox_bits(seed_tensor(seed), _signed(offset), _signed(first), n))


def triton_bits(seed, offset, first, n):
    from vdm_fast.kernels import randn_like as triton_randn_like

    return as_u32(triton_randn_like.philox_bits(seed_tensor(seed), offset, first, n))


def reference_bits(seed, offset, first, n):
    return reference.philox_words(seed, offset, first, n).reshape(-1)


def bit_sources():
    params = [pytest.param(reference_bits, id="reference")]
    native = vdm_fast._library.has_native_kernel("philox_bits", "CPU")
    params.append(pytest.param(native_bits, id="cpu", marks=[] if native else [pytest.mark.skip("not built")]))
    why = backends.unavailable_reason("triton", "cpu", "randn_like")
    params.append(pytest.param(triton_bits, id="triton", marks=[pytest.mark.skip(why)] if why else []))
    return params


# --- the uint32 stream --------------------------------------------------------------------------


@pytest.mark.parametrize("counter, key, want", KAT)
def test_python_oracle_matches_published_vectors(counter, key, want):
    assert philox_python(counter, key) == want


@pytest.mark.skipif(backends.triton_status() is not None, reason="triton unavailable")
@pytest.mark.parametrize("counter, key, want", KAT)
def test_tritons_own_philox_matches_published_vectors(counter, key, want):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = torch.zeros(4, dtype=torch.int32, device=device)
    _tritons_own_philox_kernel[(1,)](out, *[v - 2**32 if v >= 2**31 else v for v in counter], key[0] | key[1] << 32)
    assert tuple(as_u32(out).tolist()) == want


@pytest.mark.parametrize("source", bit_sources())
@pytest.mark.parametrize("counter, key, want", KAT)
def test_stream_matches_published_vectors(source, counter, key, want):
    seed, offset, first = kat_args(counter, key)
    assert tuple(source(seed, offset, first, 1).tolist()) == want


@pytest.mark.parametrize("source", bit_sources())
@pytest.mark.parametrize(
    "seed, offset, first, n",
    [
        (0, 0, 0, 1000),
        (0x0123456789ABCDEF, 7, 2**32 - 300, 601),  # the block counter carries into its high word
        (2**64 - 1, 2**63 + 5, 2**64 - 10, 20),     # and wraps mod 2^64
        (987654321, 2**40 + 3, 12345, 257),
    ],
)
def test_stream_bit_identical_to_python_oracle(source, seed, offset, first, n):
    got = source(seed, offset, first, n).reshape(n, 4)
    for k in list(range(0, n, max(1, n // 37))) + [n - 1]:
        block = (first + k) % 2**64
        counter = (block & U32, block >> 32, offset & U32, offset >> 32)
        assert tuple(got[k].tolist()) == philox_python(counter, (seed & U32, seed >> 32)), f"block {k}"


@pytest.mark.parametrize("source", bit_sources())
def test_stream_bit_identical_across_backends(source):
    g = torch.Generator().manual_seed(3)
    for _ in range(4):
        seed, offset, first = (int(v) % 2**64 for v in torch.randint(-(2**63), 2**63 - 1, (3,), generator=g))
        n = int(torch.randint(1, 700, (), generator=g))
        assert torch.equal(source(seed, offset, first, n), reference_bits(seed, offset, first, n))


_CPU_PATHS_SCRIPT = """
import sys, torch, vdm_fast
cases = [(0x0123456789ABCDEF, 7, 2**32 - 300, 601), (5, 2**40 + 3, 2**64 - 9, 17), (1, 2, 3, 1), (9, 0, 0, 7)]
signed = lambda v: v - 2**64 if v >= 2**63 else v
words = [torch.ops.vdm_fast.philox_bits(torch.tensor(signed(s)), signed(o), signed(f), n) for s, o, f, n in cases]
normals = vdm_fast.randn_like(torch.empty(4099), generator=torch.Generator().manual_seed(8))
torch.save({"cases": cases, "words": words, "normals": normals}, sys.argv[1])
"""


@pytest.mark.skipif(not vdm_fast._library.has_native_kernel("philox_bits", "CPU"), reason="not built")
def test_every_cpu_philox_path_gives_the_same_stream(tmp_path):
    """The CPU Philox has scalar, AVX2 and AVX-512 paths, picked by the CPU and capped by
    ATEN_CPU_CAPABILITY: each (that this CPU runs) gives the oracle's words, tails of 1..15 blocks
    and counter carries included. The normals of those words are one loop compiled per instruction
    set, and the FMA-contracting versions round differently from the baseline one (DESIGN.md §6,
    §7.1): each path's normals are the exact Box–Muller's within its float32 allowance."""
    import subprocess
    import sys

    results = {}
    for cap in ("default", "avx2", ""):
        env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
        if cap:
            env["ATEN_CPU_CAPABILITY"] = cap
        path = tmp_path / f"{cap or 'best'}.pt"
        subprocess.run([sys.executable, "-c", _CPU_PATHS_SCRIPT, str(path)], env=env, check=True, timeout=300)
        results[cap] = torch.load(path)
    for cap, res in results.items():
        for (seed, offset, first, n), got in zip(res["cases"], res["words"]):
            assert torch.equal(as_u32(got), reference_bits(seed, offset, first, n)), (cap, seed, first, n)
        seed = int(draw_seed(torch.Generator().manual_seed(8))) % 2**64  # the script's generator
        want = reference.philox_normals(seed, 0, res["normals"].numel())
        assert_normals_close(res["normals"], want, box_muller_allowance(seed, 0, want), msg=cap or "best")


def test_words_are_uniform_bits():
    words = reference_bits(0xDEADBEEF, 0, 0, 1 << 16)
    bits = torch.stack([(words >> k) & 1 for k in range(32)], 1).double()
    # 2^18 words: each bit's mean is 1/2 within 5 standard errors (1/(2 sqrt(n))).
    assert (bits.mean(0) - 0.5).abs().max() < 5 * 0.5 / math.sqrt(words.numel())


# --- normals: mapping and accuracy ----------------------------------------------------------------


# The accuracy of the float32 Box–Muller (DESIGN.md §6), as test_float32_transcendentals_over_every_uniform
# checks it over the 2^24 uniforms: log u within LOG_REL relative, sin and cos (|.| <= 1) within
# TRIG_ABS absolute; sqrt and the products are correctly rounded (F32_U each).
F32_U = 2.0**-24  # float32 unit roundoff
LOG_REL = 3 * F32_U
TRIG_ABS = 4 * F32_U
F64_U = 2.0**-53


def box_muller_allowance(seed, offset, want, first=0):
    """The largest |kernel normal - reference.philox_normals| the float32 Box–Muller allows, per
    element of ``want`` (reference normals of elements first .., any shape, read in memory order).

    With the exact uniforms u0, u1 of the element's pair, r = sqrt(-2 log u0) and c = cos(2 pi u1)
    (or sin), the kernel's n~ = fl(fl(sqrt(-2 L~)) c~) with |L~ - L| <= dL = LOG_REL max(|L|, 2^-24)
    (the transcendentals test's relative bound, absolute at u0 = 1) and |c~ - c| <= TRIG_ABS:
      |r~ - r| <= dr + F32_U r, dr = sqrt(r^2 + 2 dL) - r (the log's error through the sqrt,
                  about LOG_REL r / 2; finite at r = 0), plus the sqrt's rounding;
      |n~ - n| <= (dr + F32_U r)(|c| + TRIG_ABS) + r TRIG_ABS + F32_U |n|   (the product's rounding);
    the reference is the float64 Box–Muller (a few float64 ulps: 16 F64_U r) rounded to float32
    (F32_U |n|). For r >> 0 this is r F32_U (4.5 |c| + 4): with r <= sqrt(2 * 24 ln 2) = 5.77, at
    most 3.0e-6, the "~2e-6 absolute" of DESIGN.md §6."""
    n = want.numel()
    words = reference_bits(seed, offset, first // 4, (n + 3) // 4).reshape(-1, 4)
    u = ((words >> 8) + 1).double() * 2.0**-24  # exact
    log_u = torch.log(u[:, [0, 0, 2, 2]]).reshape(-1)[:n]
    theta = 2 * math.pi * u[:, [1, 1, 3, 3]].reshape(-1)[:n]
    lanes = torch.arange(n) % 2  # even elements take cos, odd ones sin
    c = torch.where(lanes == 0, theta.cos(), theta.sin()).abs()
    r = torch.sqrt(-2 * log_u)
    d_log = LOG_REL * log_u.abs().clamp(min=2.0**-24)
    dr = 2 * d_log / (torch.sqrt(r * r + 2 * d_log) + r)
    allowed = ((dr + F32_U * r) * (c + TRIG_ABS) + r * TRIG_ABS + 2 * F32_U * r * c + 16 * F64_U * r)
    return allowed.reshape(want.shape)


def assert_normals_close(got, want, allowed, msg=""):
    err = (got.detach().cpu().double() - want.double()).abs()
    bad = ~(err <= allowed)
    assert not bad.any(), (f"{msg}: {int(bad.sum())} of {err.numel()} normals exceed the Box–Muller allowance; "
                           f"worst {(err / allowed.clamp(min=1e-300)).max().item():.2f}x, max |diff| {err.max().item():.3e}")


def normals(backend, shape, seed, offset=0, dtype=torch.float32):
    name, device = backend
    x = torch.empty(shape, dtype=dtype, device=device)
    if name == "triton":
        SPEC.load_triton()  # the Triton ops are registered on first use
    return SPEC.impls[name](x, seed_tensor(seed, "cpu"), offset)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1,), (3,), (7, 13), (5, 3, 11, 7), (2, 2053)], ids=str)
def test_normals_match_exact_box_muller(backend, shape):
    got = normals(backend, shape, seed=0x5EED, offset=3)
    want = reference.philox_normals(0x5EED, 3, math.prod(shape)).reshape(shape)
    assert got.dtype == torch.float32 and got.shape == shape
    assert_normals_close(got, want, box_muller_allowance(0x5EED, 3, want), msg=backend[0])


def test_normals_exact_mapping_of_elements():
    """Element 4j+k is lane k of block j, Box–Muller on (x0, x1) and (x2, x3), cos before sin."""
    seed, offset = 0xABCDEF, 9
    words = reference_bits(seed, offset, 0, 3).reshape(3, 4)
    u = ((words >> 8) + 1).double() * 2.0**-24
    got = reference.philox_normals(seed, offset, 12).double().reshape(3, 4)
    for j in range(3):
        for pair in (0, 1):
            r = math.sqrt(-2 * math.log(u[j, 2 * pair]))
            theta = 2 * math.pi * u[j, 2 * pair + 1]
            for k, want in ((2 * pair, r * math.cos(theta)), (2 * pair + 1, r * math.sin(theta))):
                # The reference is the float64 Box–Muller rounded to float32 (within 2^-24 of it,
                # relative); it and math's differ by a few float64 ulps of r (16 2^-53 r in each
                # covers log, sqrt, the 2 pi u product, cos/sin and the product with r).
                allowed = F32_U * abs(want) + 2 * 16 * F64_U * r
                assert abs(got[j, k].item() - want) <= allowed, (j, k, got[j, k].item(), want)


def test_reference_normals_from_any_block():
    """reference.philox_normals(first=...) is the same stream read from a later block."""
    assert torch.equal(reference.philox_normals(9, 2, 12, first=8), reference.philox_normals(9, 2, 20)[8:])
    with pytest.raises(ValueError, match="first"):
        reference.philox_normals(9, 2, 4, first=6)


@pytest.mark.skipif(not vdm_fast._library.has_native_kernel("randn_like", "CPU"), reason="not built")
def test_cpu_normals_many_elements_and_thread_splits():
    """2^21 + 3 elements: every tile / thread boundary, one partial block, each within the float32
    Box–Muller allowance (box_muller_allowance: a few ulps of the radius r <= 5.77)."""
    n = (1 << 21) + 3
    got = normals(("cpu", "cpu"), (n,), seed=77)
    want = reference.philox_normals(77, 0, n)
    assert_normals_close(got, want, box_muller_allowance(77, 0, want))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(normals(("cpu", "cpu"), (n,), seed=77), got)  # independent of the split
    finally:
        torch.set_num_threads(threads)


@pytest.mark.skipif(backends.triton_status() is not None, reason="triton unavailable")
@pytest.mark.parametrize("stride", [pytest.param(1, marks=pytest.mark.slow, id="all"), pytest.param(61, id="every61st")])
def test_float32_transcendentals_over_every_uniform(stride):
    """log_unit and sincos_turns of kernels/philox.py (the constants of csrc/philox.h) on all 2^24
    uniforms u = k 2^-24 (--runslow; every 61st by default), against float64: a few ulps."""
    if torch.cuda.is_available():
        pytest.skip("interpreter check")
    n, block = 1 << 24, 1 << 20
    m = triton.cdiv(n, stride) + 1
    lg, sn, cs = (torch.empty(triton.cdiv(m, block) * block) for _ in range(3))
    _transcendentals_kernel[(triton.cdiv(m, block),)](lg, sn, cs, n, stride, BLOCK=block)
    k = (torch.arange(lg.numel(), dtype=torch.int64) * stride).clamp(max=n - 1)
    u = (k + 1).double() * 2.0**-24
    # These are the accuracy claims of DESIGN.md §6 that box_muller_allowance builds on; the float64
    # truth's own error (a few 2^-53) is far below them. log: LOG_REL = 3 2^-24 relative, below 3
    # ulps (an ulp of x is more than 2^-24 |x|); at u = 1 (log u = 0) absolute, 3 2^-48.
    log_err = ((lg.double() - torch.log(u)).abs() / torch.log(u).abs().clamp(min=2.0**-24)).max()
    assert log_err < LOG_REL, log_err  # relative
    theta = 2 * math.pi * u
    # sin, cos: TRIG_ABS = 4 2^-24 absolute, 4 ulps of the values in [1/2, 1] (an ulp there is 2^-24).
    assert (sn.double() - torch.sin(theta)).abs().max() < TRIG_ABS
    assert (cs.double() - torch.cos(theta)).abs().max() < TRIG_ABS


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_other_dtypes_are_float32_noise_cast(backend, dtype):
    got = normals(backend, (3, 37), seed=11, dtype=dtype)
    want32 = reference.philox_normals(11, 0, 3 * 37).reshape(3, 37)
    assert got.dtype == dtype
    allowed = box_muller_allowance(11, 0, want32)  # the float32 normal (float64 widens it exactly)
    if dtype != torch.float64:  # then rounded once to the dtype, faithfully: within one unit in its last place
        fi = torch.finfo(dtype)
        allowed = allowed + fi.eps * (want32.double().abs() + allowed) + fi.tiny * fi.eps  # (the last: subnormals)
    assert_normals_close(got, want32, allowed, msg=str(dtype))


# --- statistics -----------------------------------------------------------------------------------


def _stats_sample(n=1 << 20, seed=1234, offset=0):
    if vdm_fast._library.has_native_kernel("randn_like", "CPU"):
        return normals(("cpu", "cpu"), (n,), seed=seed, offset=offset).double()
    return reference.philox_normals(seed, offset, n).double()


def test_moments_and_distribution():
    scipy_stats = pytest.importorskip("scipy.stats")
    x = _stats_sample()
    n = x.numel()
    assert abs(x.mean().item()) < 5 / math.sqrt(n)
    assert abs(x.var().item() - 1) < 5 * math.sqrt(2 / n)
    assert abs(((x**3).mean()).item()) < 5 * math.sqrt(15 / n)    # skewness
    assert abs(((x**4).mean()).item() - 3) < 5 * math.sqrt(96 / n)  # kurtosis
    assert scipy_stats.kstest(x.numpy(), "norm").pvalue > 1e-3
    ad = scipy_stats.anderson(x[: 1 << 16].numpy(), dist="norm")
    assert ad.statistic < ad.critical_values[-1]  # not rejected at the 1% level
    # Tails: P(|x| > 4) = 6.3e-5; the Box–Muller radius reaches sqrt(-2 log 2^-24) = 5.77.
    tail = (x.abs() > 4).double().mean().item()
    assert abs(tail - 6.334e-5) < 5 * math.sqrt(6.334e-5 / n)


def _corr(a, b):
    a, b = a - a.mean(), b - b.mean()
    return ((a * b).mean() / (a.std() * b.std())).item()


def test_no_correlation_between_neighbours_seeds_offsets():
    n = 1 << 20
    x = _stats_sample(n)
    bound = 5 / math.sqrt(n)
    for lag in (1, 2, 3, 4, 5, 8):
        assert abs(_corr(x[:-lag], x[lag:])) < bound * math.sqrt(n / (n - lag)), lag
    # the two members of a Box–Muller pair, and their squares (dependence through the radius)
    assert abs(_corr(x[0::4], x[1::4])) < 2 * bound
    assert abs(_corr(x[0::4] ** 2, x[1::4] ** 2)) < 2 * bound * 2
    for other in (_stats_sample(n, seed=1235), _stats_sample(n, seed=1234 ^ (1 << 63)), _stats_sample(n, offset=1)):
        assert abs(_corr(x, other)) < bound


# --- generators and the public function -----------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_generator_state_same_noise_fresh_noise_after(backend):
    name, device = backend
    x = torch.empty(5, 3, 7, device=device)
    g = torch.Generator().manual_seed(42)
    a = vdm_fast.randn_like(x, g, backend=name)
    b = vdm_fast.randn_like(x, g, backend=name)
    assert not torch.equal(a, b)  # the generator advanced: fresh noise
    c = vdm_fast.randn_like(x, torch.Generator().manual_seed(42), backend=name)
    assert torch.equal(a, c)
    torch.manual_seed(7)
    d = vdm_fast.randn_like(x, backend=name)  # the default generator
    torch.manual_seed(7)
    assert torch.equal(d, vdm_fast.randn_like(x, backend=name))
    assert a.shape == x.shape and a.dtype == x.dtype and not a.requires_grad


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_noise_on_every_backend(backend):
    name, device = backend
    x = torch.empty(4, 3, 9, 5, device=device)
    got = vdm_fast.randn_like(x, torch.Generator().manual_seed(5), backend=name)
    want = vdm_fast.randn_like(x.cpu(), torch.Generator().manual_seed(5), backend="reference")
    seed = int(draw_seed(torch.Generator().manual_seed(5))) % 2**64
    assert_normals_close(got, want, box_muller_allowance(seed, 0, want), msg=name)  # x is contiguous


@pytest.mark.parametrize("backend", BACKENDS)
def test_never_requires_grad(backend):
    """Only x's shape and dtype are read: no autograd node, on any path (direct or checked)."""
    name, device = backend
    x = torch.randn(3, 4, device=device, requires_grad=True)
    for like in (x, x.double(), x.half(), x[:, ::2]):
        out = vdm_fast.randn_like(like, torch.Generator().manual_seed(1), backend=name)
        assert not out.requires_grad and out.grad_fn is None, (name, like.dtype)


def test_generator_advances_by_one_draw():
    g = torch.Generator().manual_seed(3)
    vdm_fast.randn_like(torch.empty(100), g, backend="reference")
    h = torch.Generator().manual_seed(3)
    draw_seed(h)
    assert torch.equal(g.get_state(), h.get_state())


@pytest.mark.parametrize("backend", BACKENDS)
def test_layouts_empty_and_0d(backend):
    name, device = backend
    cl = torch.empty(2, 3, 4, 5, device=device).contiguous(memory_format=torch.channels_last)
    out = vdm_fast.randn_like(cl, torch.Generator().manual_seed(1), backend=name)
    assert out.is_contiguous(memory_format=torch.channels_last)
    # element i of the output's memory is element i of the stream
    flat = out.permute(0, 2, 3, 1).reshape(-1)
    seed = int(draw_seed(torch.Generator().manual_seed(1))) % 2**64
    want = reference.philox_normals(seed, 0, flat.numel())
    assert_normals_close(flat, want, box_muller_allowance(seed, 0, want), msg=name)
    g = torch.Generator().manual_seed(2)
    sliced = torch.empty(4, 6, device=device)[:, ::2]
    assert vdm_fast.randn_like(sliced, g, backend=name).is_contiguous()
    assert vdm_fast.randn_like(torch.empty(0, 3, device=device), g, backend=name).shape == (0, 3)
    assert vdm_fast.randn_like(torch.empty((), device=device), g, backend=name).shape == ()


@pytest.mark.skipif(not vdm_fast._library.has_native_kernel("randn_like", "CPU"), reason="not built")
def test_native_seed_checks():
    x = torch.empty(3)
    with pytest.raises(RuntimeError, match="seed"):
        torch.ops.vdm_fast.randn_like(x, torch.zeros(2, dtype=torch.int64), 0)
    with pytest.raises(RuntimeError, match="seed"):
        torch.ops.vdm_fast.randn_like(x, torch.zeros((), dtype=torch.int32), 0)


@pytest.mark.skipif(not vdm_fast._library.has_native_kernel("randn_like", "CPU"), reason="not built")
def test_opcheck_native():
    seed = seed_tensor(99)
    for x in (torch.empty(3, 4, 5), torch.empty(7), torch.empty(0, 2), torch.empty(2, 3, 4, 5).to(
            memory_format=torch.channels_last), torch.empty(3, 5, dtype=torch.float16)):
        torch.library.opcheck(torch.ops.vdm_fast.randn_like.default, (x, seed, 5))
    torch.library.opcheck(torch.ops.vdm_fast.philox_bits.default, (seed, 3, 2**40, 9))


@pytest.mark.parametrize("backend", backend_params("randn_like"))  # the integer oracle takes minutes to compile
def test_compile_fullgraph(backend):
    name, device = backend
    if name == "triton" and INTERPRETED:
        pytest.skip("torch.compile cannot run the Triton interpreter on fake tensors; runs on a GPU")
    torch._dynamo.reset()

    def fn(x):
        return x + vdm_fast.randn_like(x, backend=name)

    x = torch.zeros(4, 3, 8, 8, device=device)
    torch.manual_seed(0)  # the default generator (and Inductor's RNG) seeds the draw
    out = torch.compile(fn, fullgraph=True)(x)
    # A statistical check: the sample std of 768 normals has a standard error 1/sqrt(2 * 768) = 0.026.
    assert out.shape == x.shape and out.std().item() == pytest.approx(1.0, abs=0.1)
