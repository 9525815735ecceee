// reverse_step on CUDA (DESIGN.md §4.6): guidance, x̂ (optionally clipped) and the affine update in
// one pass. Launched on the current stream; 64-bit indices; 16-byte vector loads and stores when
// every data pointer is aligned and D is a multiple of the vector width (then a vector never
// straddles two samples). One kernel per combination of optional inputs (CFG, classifier
// guidance, clip, noise), as on the CPU. With a seed, a second kernel draws the noise in-kernel:
// one thread per Philox block of 4 elements (csrc/cuda/noise.cuh), drawing only where c_n != 0.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "common.h"
#include "cuda/noise.cuh"
#include "cuda/per_sample.cuh"
#include "reverse_step.h"
#include "reverse_step_math.h"

namespace vdm_fast {
namespace cuda {
namespace {

// Pointers of absent inputs are null and never read (the flags are template parameters).
// x0_out: x̂'s output (reverse_step_with_x0), or null; a uniform branch, so one kernel serves both ops.
template <typename scalar_t, typename acc_t, int VEC, bool CFG, bool CG, bool CLIP, bool NOISE>
__global__ void reverse_step_kernel(scalar_t* __restrict__ out, scalar_t* __restrict__ x0_out,
                                    const scalar_t* __restrict__ z,
                                    const scalar_t* __restrict__ model_out, const scalar_t* __restrict__ uncond,
                                    const scalar_t* __restrict__ grad, const scalar_t* __restrict__ noise,
                                    const acc_t* __restrict__ coeffs, const acc_t* __restrict__ w,
                                    const acc_t* __restrict__ gs, acc_t clip, int64_t B, int64_t D, int64_t n_vec) {
  using V = Vec<scalar_t, VEC>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < n_vec; v += stride) {
    const int64_t i = v * VEC;
    const StepScalars<acc_t> s = load_step_scalars<acc_t>(coeffs, B, i / D, w, gs, clip);
    const V zv = *reinterpret_cast<const V*>(z + i);
    const V mv = *reinterpret_cast<const V*>(model_out + i);
    V uv, gv, nv;
    if constexpr (CFG) uv = *reinterpret_cast<const V*>(uncond + i);
    if constexpr (CG) gv = *reinterpret_cast<const V*>(grad + i);
    if constexpr (NOISE) nv = *reinterpret_cast<const V*>(noise + i);
    V o, xo;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const acc_t u = CFG ? static_cast<acc_t>(uv.v[k]) : acc_t(0);
      const acc_t g = CG ? static_cast<acc_t>(gv.v[k]) : acc_t(0);
      acc_t x_hat;
      acc_t r = step_mean<CFG, CG, CLIP, acc_t>(static_cast<acc_t>(zv.v[k]), static_cast<acc_t>(mv.v[k]), u, g, s,
                                                &x_hat);
      if constexpr (NOISE) r = r + s.c_n * static_cast<acc_t>(nv.v[k]);
      o.v[k] = static_cast<scalar_t>(r);
      xo.v[k] = static_cast<scalar_t>(x_hat);
    }
    *reinterpret_cast<V*>(out + i) = o;
    if (x0_out != nullptr) *reinterpret_cast<V*>(x0_out + i) = xo;
  }
}

// The update of element i with noise from n[] (Philox normals, rounded to the data dtype first so
// the result equals the step with that noise as a tensor).
template <typename scalar_t, typename acc_t, bool CFG, bool CG, bool CLIP>
__device__ __forceinline__ scalar_t philox_step_element(acc_t z, acc_t m, acc_t u, acc_t g, float n,
                                                        const StepScalars<acc_t>& s, scalar_t* x_hat_out) {
  acc_t x_hat;
  acc_t r = step_mean<CFG, CG, CLIP, acc_t>(z, m, u, g, s, &x_hat);
  *x_hat_out = static_cast<scalar_t>(x_hat);
  r = r + s.c_n * static_cast<acc_t>(static_cast<scalar_t>(n));
  return static_cast<scalar_t>(r);
}

// One thread per Philox block j: elements [4j, 4j + 4) of the output's memory. VEC4: D % 4 == 0
// and 4-element-aligned pointers, so the 4 elements are one vector of one sample; otherwise each
// element finds its own sample (a block may straddle two) and the tail block is masked. The draw
// is skipped when no element of the block needs it (c_n == 0).
template <typename scalar_t, typename acc_t, bool VEC4, bool CFG, bool CG, bool CLIP>
__global__ void reverse_step_philox_kernel(scalar_t* __restrict__ out, scalar_t* __restrict__ x0_out,
                                           const scalar_t* __restrict__ z,
                                           const scalar_t* __restrict__ model_out,
                                           const scalar_t* __restrict__ uncond, const scalar_t* __restrict__ grad,
                                           const acc_t* __restrict__ coeffs, const acc_t* __restrict__ w,
                                           const acc_t* __restrict__ gs, acc_t clip, PhiloxSeed ps,
                                           uint64_t offset, int64_t B, int64_t D, int64_t N, int64_t n_blocks) {
  using V = Vec<scalar_t, 4>;
  const uint64_t seed = ps.get();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < n_blocks; j += stride) {
    const int64_t i0 = 4 * j;
    float n[4] = {0.f, 0.f, 0.f, 0.f};
    if constexpr (VEC4) {
      const StepScalars<acc_t> s = load_step_scalars<acc_t>(coeffs, B, i0 / D, w, gs, clip);
      if (needs_noise(s.c_n)) philox::philox_normal4(seed, offset, static_cast<uint64_t>(j), n);
      const V zv = *reinterpret_cast<const V*>(z + i0);
      const V mv = *reinterpret_cast<const V*>(model_out + i0);
      V uv, gv, o, xo;
      if constexpr (CFG) uv = *reinterpret_cast<const V*>(uncond + i0);
      if constexpr (CG) gv = *reinterpret_cast<const V*>(grad + i0);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const acc_t u = CFG ? static_cast<acc_t>(uv.v[k]) : acc_t(0);
        const acc_t g = CG ? static_cast<acc_t>(gv.v[k]) : acc_t(0);
        o.v[k] = philox_step_element<scalar_t, acc_t, CFG, CG, CLIP>(
            static_cast<acc_t>(zv.v[k]), static_cast<acc_t>(mv.v[k]), u, g, n[k], s, &xo.v[k]);
      }
      *reinterpret_cast<V*>(out + i0) = o;
      if (x0_out != nullptr) *reinterpret_cast<V*>(x0_out + i0) = xo;
    } else {
      bool draw = false;  // a block spans up to 4 samples when D < 4
#pragma unroll
      for (int k = 0; k < 4; ++k) draw = draw || (i0 + k < N && needs_noise(coeffs[kCN * B + (i0 + k) / D]));
      if (draw) philox::philox_normal4(seed, offset, static_cast<uint64_t>(j), n);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int64_t i = i0 + k;
        if (i < N) {
          const StepScalars<acc_t> s = load_step_scalars<acc_t>(coeffs, B, i / D, w, gs, clip);
          const acc_t u = CFG ? static_cast<acc_t>(uncond[i]) : acc_t(0);
          const acc_t g = CG ? static_cast<acc_t>(grad[i]) : acc_t(0);
          scalar_t x_hat;
          out[i] = philox_step_element<scalar_t, acc_t, CFG, CG, CLIP>(
              static_cast<acc_t>(z[i]), static_cast<acc_t>(model_out[i]), u, g, n[k], s, &x_hat);
          if (x0_out != nullptr) x0_out[i] = x_hat;
        }
      }
    }
  }
}

StepInputs reverse_step_run(const char* op, const at::Tensor& z, const at::Tensor& model_out, const at::Tensor& coeffs,
                            const std::optional<at::Tensor>& uncond,
                            const std::optional<at::Tensor>& guidance_scale,
                            const std::optional<at::Tensor>& classifier_grad,
                            const std::optional<at::Tensor>& grad_scale, std::optional<double> clip,
                            const std::optional<at::Tensor>& noise, const std::optional<at::Tensor>& seed,
                            int64_t offset, bool with_x0) {
  const c10::cuda::CUDAGuard guard(z.device());
  StepInputs in = prepare_reverse_step(op, z, model_out, coeffs, uncond, guidance_scale, classifier_grad, grad_scale,
                                       clip, noise, seed, offset, with_x0);
  if (in.out.numel() == 0) return in;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "reverse_step_cuda", [&] {
    using acc = acc_t<scalar_t>;
    constexpr int W = vec_width<scalar_t>();
    const StepPtrs<scalar_t> p = step_ptrs<scalar_t>(in);
    const int64_t N = in.out.numel();
    const bool vec = in.D % W == 0 && aligned16(p.out) && (!p.x0_out || aligned16(p.x0_out)) && aligned16(p.z) &&
                     aligned16(p.model_out) &&
                     (!p.uncond || aligned16(p.uncond)) && (!p.grad || aligned16(p.grad)) &&
                     (!p.noise || aligned16(p.noise));
    dispatch_step_flags(in.flags, [&](auto cfg, auto cg, auto clp, auto noi) {
      constexpr bool CFG = decltype(cfg)::value, CG = decltype(cg)::value;
      constexpr bool CLIP = decltype(clp)::value;
      constexpr bool NOISE = decltype(noi)::value == NoiseSource::kTensor;
      if constexpr (decltype(noi)::value == NoiseSource::kPhilox) {
        const PhiloxSeed ps = philox_seed_arg(in.seed);
        const int64_t n_blocks = (N + 3) / 4;
        const auto aligned4 = [](const void* p) {
          return reinterpret_cast<uintptr_t>(p) % (4 * sizeof(scalar_t)) == 0;
        };
        if (in.D % 4 == 0 && aligned4(p.out) && (!p.x0_out || aligned4(p.x0_out)) && aligned4(p.z) &&
            aligned4(p.model_out) &&
            (!p.uncond || aligned4(p.uncond)) && (!p.grad || aligned4(p.grad))) {
          reverse_step_philox_kernel<scalar_t, acc, true, CFG, CG, CLIP><<<grid_for(n_blocks), kThreads, 0, stream>>>(
              p.out, p.x0_out, p.z, p.model_out, p.uncond, p.grad, p.coeffs, p.guidance_scale, p.grad_scale, p.clip, ps,
              in.offset, in.B, in.D, N, n_blocks);
        } else {
          reverse_step_philox_kernel<scalar_t, acc, false, CFG, CG, CLIP><<<grid_for(n_blocks), kThreads, 0, stream>>>(
              p.out, p.x0_out, p.z, p.model_out, p.uncond, p.grad, p.coeffs, p.guidance_scale, p.grad_scale, p.clip, ps,
              in.offset, in.B, in.D, N, n_blocks);
        }
      } else if (vec) {
        reverse_step_kernel<scalar_t, acc, W, CFG, CG, CLIP, NOISE><<<grid_for(N / W), kThreads, 0, stream>>>(
            p.out, p.x0_out, p.z, p.model_out, p.uncond, p.grad, p.noise, p.coeffs, p.guidance_scale, p.grad_scale, p.clip,
            in.B, in.D, N / W);
      } else {
        reverse_step_kernel<scalar_t, acc, 1, CFG, CG, CLIP, NOISE><<<grid_for(N), kThreads, 0, stream>>>(
            p.out, p.x0_out, p.z, p.model_out, p.uncond, p.grad, p.noise, p.coeffs, p.guidance_scale, p.grad_scale, p.clip,
            in.B, in.D, N);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return in;
}

}  // namespace
}  // namespace cuda
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, CUDA, m) {
  m.impl("reverse_step", &vdm_fast::reverse_step_kernel_of<&vdm_fast::cuda::reverse_step_run>);
  m.impl("reverse_step_with_x0", &vdm_fast::reverse_step_with_x0_kernel_of<&vdm_fast::cuda::reverse_step_run>);
}
