// reverse_step on CUDA (DESIGN.md §4.6): guidance, x̂ (optionally clipped) and the affine update in
// one pass. Launched on the current stream; 64-bit indices; 16-byte vector loads and stores when
// every data pointer is aligned and D is a multiple of the vector width (then a vector never
// straddles two samples). One kernel per combination of optional inputs (CFG, classifier
// guidance, clip, noise), as on the CPU.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "common.h"
#include "cuda/per_sample.cuh"
#include "reverse_step.h"
#include "reverse_step_math.h"

namespace vdm_fast {
namespace cuda {
namespace {

// Pointers of absent inputs are null and never read (the flags are template parameters).
template <typename scalar_t, typename acc_t, int VEC, bool CFG, bool CG, bool CLIP, bool NOISE>
__global__ void reverse_step_kernel(scalar_t* __restrict__ out, const scalar_t* __restrict__ z,
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
    V o;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const acc_t u = CFG ? static_cast<acc_t>(uv.v[k]) : acc_t(0);
      const acc_t g = CG ? static_cast<acc_t>(gv.v[k]) : acc_t(0);
      acc_t r = step_mean<CFG, CG, CLIP, acc_t>(static_cast<acc_t>(zv.v[k]), static_cast<acc_t>(mv.v[k]), u, g, s);
      if constexpr (NOISE) r = r + s.c_n * static_cast<acc_t>(nv.v[k]);
      o.v[k] = static_cast<scalar_t>(r);
    }
    *reinterpret_cast<V*>(out + i) = o;
  }
}

at::Tensor reverse_step_cuda(const at::Tensor& z, const at::Tensor& model_out, const at::Tensor& coeffs,
                             const std::optional<at::Tensor>& uncond,
                             const std::optional<at::Tensor>& guidance_scale,
                             const std::optional<at::Tensor>& classifier_grad,
                             const std::optional<at::Tensor>& grad_scale, std::optional<double> clip,
                             const std::optional<at::Tensor>& noise) {
  const c10::cuda::CUDAGuard guard(z.device());
  StepInputs in = prepare_reverse_step("vdm_fast::reverse_step", z, model_out, coeffs, uncond, guidance_scale,
                                       classifier_grad, grad_scale, clip, noise);
  if (in.out.numel() == 0) return in.out;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "reverse_step_cuda", [&] {
    using acc = acc_t<scalar_t>;
    constexpr int W = vec_width<scalar_t>();
    scalar_t* op = in.out.mutable_data_ptr<scalar_t>();
    const scalar_t* zp = in.z.const_data_ptr<scalar_t>();
    const scalar_t* mp = in.model_out.const_data_ptr<scalar_t>();
    const scalar_t* up = in.flags.cfg ? in.uncond.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* gp = in.flags.cg ? in.grad.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* np = in.flags.noise ? in.noise.const_data_ptr<scalar_t>() : nullptr;
    const acc* cp = in.coeffs.const_data_ptr<acc>();
    const acc* wp = in.flags.cfg ? in.guidance_scale.const_data_ptr<acc>() : nullptr;
    const acc* gsp = in.flags.cg ? in.grad_scale.const_data_ptr<acc>() : nullptr;
    const acc clip_v = static_cast<acc>(in.clip);
    const int64_t N = in.out.numel();
    const bool vec = in.D % W == 0 && aligned16(op) && aligned16(zp) && aligned16(mp) && (!up || aligned16(up)) &&
                     (!gp || aligned16(gp)) && (!np || aligned16(np));
    dispatch_step_flags(in.flags, [&](auto cfg, auto cg, auto clp, auto noi) {
      constexpr bool CFG = decltype(cfg)::value, CG = decltype(cg)::value;
      constexpr bool CLIP = decltype(clp)::value, NOISE = decltype(noi)::value;
      if (vec) {
        reverse_step_kernel<scalar_t, acc, W, CFG, CG, CLIP, NOISE><<<grid_for(N / W), kThreads, 0, stream>>>(
            op, zp, mp, up, gp, np, cp, wp, gsp, clip_v, in.B, in.D, N / W);
      } else {
        reverse_step_kernel<scalar_t, acc, 1, CFG, CG, CLIP, NOISE><<<grid_for(N), kThreads, 0, stream>>>(
            op, zp, mp, up, gp, np, cp, wp, gsp, clip_v, in.B, in.D, N);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return in.out;
}

}  // namespace
}  // namespace cuda
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, CUDA, m) { m.impl("reverse_step", &vdm_fast::cuda::reverse_step_cuda); }
