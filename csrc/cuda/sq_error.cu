// sq_error on CUDA: out[b] = sum_i (pred - target)^2 over sample b, and its fused backward.
// The target (csrc/targets.h) is a template parameter, so a tensor it does not use is never read.
// Per-sample reductions: one block per (sample b, chunk c), flattened into grid.x = B * chunks (no
// 65535 limit on B), each writing double partials that a second small kernel sums per sample in
// a fixed order. 16-byte vector loads when every pointer is aligned and D is a multiple of the
// vector width (then a vector never straddles two samples). Launched on the current stream.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "common.h"
#include "cuda/per_sample.cuh"
#include "sq_error.h"
#include "targets.h"

namespace vdm_fast {
namespace cuda {
namespace {

template <int T, typename scalar_t, typename acc_t, int VEC>
__global__ void sq_error_kernel(const scalar_t* __restrict__ p, const scalar_t* __restrict__ x,
                                const scalar_t* __restrict__ n, const acc_t* __restrict__ alpha,
                                const acc_t* __restrict__ sigma, int64_t D, int64_t chunks,
                                double* __restrict__ partial) {
  using V = Vec<scalar_t, VEC>;
  __shared__ acc_t shared[kThreads / 32];
  const auto [b, begin, end] = reduce_chunk(D, chunks);
  const TargetCoeffs<acc_t> tc = target_coeffs<T, acc_t>(alpha[b], sigma[b]);
  acc_t sum = 0;
  for (int64_t i = begin + static_cast<int64_t>(threadIdx.x) * VEC; i < end; i += static_cast<int64_t>(blockDim.x) * VEC) {
    const V pv = *reinterpret_cast<const V*>(p + i);
    V xv{}, nv{};
    if constexpr (target_uses_x0<T>()) xv = *reinterpret_cast<const V*>(x + i);
    if constexpr (target_uses_noise<T>()) nv = *reinterpret_cast<const V*>(n + i);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const acc_t r = static_cast<acc_t>(pv.v[k]) - target_value<T, acc_t>(static_cast<acc_t>(xv.v[k]),
                                                                           static_cast<acc_t>(nv.v[k]), tc.tx, tc.tn);
      sum += r * r;
    }
  }
  sum = block_sum(sum, shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = static_cast<double>(sum);
}

// Writes gp = kp*r, gx = kx*r, gn = kn*r (each when its pointer is non-null; k* per sample) and,
// when want_sums, the block's partial sums of r*x0 and r*noise to partial[(b*chunks + c)*2 + 0:2].
template <int T, typename scalar_t, typename acc_t, int VEC>
__global__ void sq_error_backward_kernel(scalar_t* __restrict__ gp, scalar_t* __restrict__ gx,
                                         scalar_t* __restrict__ gn, const acc_t* __restrict__ up,
                                         const scalar_t* __restrict__ p, const scalar_t* __restrict__ x,
                                         const scalar_t* __restrict__ n, const acc_t* __restrict__ alpha,
                                         const acc_t* __restrict__ sigma, int64_t D, int64_t chunks, bool want_sums,
                                         double* __restrict__ partial) {
  using V = Vec<scalar_t, VEC>;
  __shared__ acc_t shared[kThreads / 32];
  const auto [b, begin, end] = reduce_chunk(D, chunks);
  const TargetCoeffs<acc_t> tc = target_coeffs<T, acc_t>(alpha[b], sigma[b]);
  const acc_t kp = acc_t(2) * up[b], kx = -kp * tc.tx, kn = -kp * tc.tn;
  acc_t srx = 0, srn = 0;
  for (int64_t i = begin + static_cast<int64_t>(threadIdx.x) * VEC; i < end; i += static_cast<int64_t>(blockDim.x) * VEC) {
    const V pv = *reinterpret_cast<const V*>(p + i);
    V xv{}, nv{}, op, ox, on;
    if constexpr (target_uses_x0<T>()) xv = *reinterpret_cast<const V*>(x + i);
    if constexpr (target_uses_noise<T>()) nv = *reinterpret_cast<const V*>(n + i);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const acc_t xk = static_cast<acc_t>(xv.v[k]), nk = static_cast<acc_t>(nv.v[k]);
      const acc_t r = static_cast<acc_t>(pv.v[k]) - target_value<T, acc_t>(xk, nk, tc.tx, tc.tn);
      op.v[k] = static_cast<scalar_t>(kp * r);
      ox.v[k] = static_cast<scalar_t>(kx * r);
      on.v[k] = static_cast<scalar_t>(kn * r);
      srx += r * xk;
      srn += r * nk;
    }
    if (gp) *reinterpret_cast<V*>(gp + i) = op;
    if (gx) *reinterpret_cast<V*>(gx + i) = ox;
    if (gn) *reinterpret_cast<V*>(gn + i) = on;
  }
  if (!want_sums) return;
  srx = block_sum(srx, shared);
  srn = block_sum(srn, shared);
  if (threadIdx.x == 0) {
    partial[blockIdx.x * 2] = static_cast<double>(srx);
    partial[blockIdx.x * 2 + 1] = static_cast<double>(srn);
  }
}

// ga, gs (either may be null) from the partial sums: d/dtheta sum(r^2) = -2 sum(r * dtarget/dtheta).
template <int T, typename acc_t>
__global__ void sq_error_param_grads_kernel(acc_t* __restrict__ ga, acc_t* __restrict__ gs,
                                            const double* __restrict__ partial, const acc_t* __restrict__ up,
                                            const acc_t* __restrict__ alpha, const acc_t* __restrict__ sigma,
                                            int64_t B, int64_t chunks) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= B) return;
  double srx = 0, srn = 0;
  for (int64_t c = 0; c < chunks; ++c) {
    srx += partial[(b * chunks + c) * 2];
    srn += partial[(b * chunks + c) * 2 + 1];
  }
  const TargetCoeffs<acc_t> tc = target_coeffs<T, acc_t>(alpha[b], sigma[b]);
  const double k = -2.0 * static_cast<double>(up[b]);
  if (ga) ga[b] = static_cast<acc_t>(k * (tc.dtx_da * srx + tc.dtn_da * srn));
  if (gs) gs[b] = static_cast<acc_t>(k * (tc.dtx_ds * srx + tc.dtn_ds * srn));
}

at::Tensor sq_error_cuda(const at::Tensor& pred, const at::Tensor& x0, const at::Tensor& noise,
                         const at::Tensor& alpha, const at::Tensor& sigma, c10::string_view target_name) {
  const c10::cuda::CUDAGuard guard(pred.device());
  const SqErrorInputs in = prepare_sq_error(pred, x0, noise, alpha, sigma, target_name);
  if (pred.numel() == 0) return in.out;
  const int64_t B = in.B, D = in.D;
  const int64_t chunks = reduce_chunks("vdm_fast::sq_error", B, D);
  at::Tensor partial = at::empty({B, chunks}, pred.options().dtype(at::kDouble));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "sq_error_cuda", [&] {
    using acc = acc_t<scalar_t>;
    constexpr int W = vec_width<scalar_t>();
    const SqErrorPtrs<scalar_t> ptr = sq_error_ptrs<scalar_t>(in, alpha, sigma);
    const bool vec = D % W == 0 && aligned16(ptr.p) && aligned16(ptr.x) && aligned16(ptr.n);
    dispatch_target(in.target, [&](auto tag) {
      constexpr int T = decltype(tag)::value;
      const auto grid = static_cast<unsigned int>(B * chunks);
      if (vec) {
        sq_error_kernel<T, scalar_t, acc, W><<<grid, kThreads, 0, stream>>>(
            ptr.p, ptr.x, ptr.n, ptr.alpha, ptr.sigma, D, chunks, partial.mutable_data_ptr<double>());
      } else {
        sq_error_kernel<T, scalar_t, acc, 1><<<grid, kThreads, 0, stream>>>(
            ptr.p, ptr.x, ptr.n, ptr.alpha, ptr.sigma, D, chunks, partial.mutable_data_ptr<double>());
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    sum_chunks_kernel<acc><<<blocks_for(B), kThreads, 0, stream>>>(in.out.mutable_data_ptr<acc>(),
                                                                  partial.const_data_ptr<double>(), B, chunks, 1.0);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return in.out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sq_error_backward_cuda(
    const at::Tensor& grad, const at::Tensor& pred, const at::Tensor& x0, const at::Tensor& noise,
    const at::Tensor& alpha, const at::Tensor& sigma, c10::string_view target_name, std::array<bool, 5> output_mask) {
  const c10::cuda::CUDAGuard guard(pred.device());
  const SqErrorBackwardInputs in =
      prepare_sq_error_backward(grad, pred, x0, noise, alpha, sigma, target_name, output_mask);
  if (in.done) return in.outputs();
  const int64_t B = in.B, D = in.D;
  const int64_t chunks = reduce_chunks("vdm_fast::sq_error_backward", B, D);
  at::Tensor partial = at::empty({B, chunks, 2}, pred.options().dtype(at::kDouble));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "sq_error_backward_cuda", [&] {
    using acc = acc_t<scalar_t>;
    constexpr int W = vec_width<scalar_t>();
    const SqErrorPtrs<scalar_t> ptr = sq_error_backward_ptrs<scalar_t>(in, grad, alpha, sigma);
    const bool vec = D % W == 0 && aligned16(ptr.p) && aligned16(ptr.x) && aligned16(ptr.n) &&
                     (!ptr.gp || aligned16(ptr.gp)) && (!ptr.gx || aligned16(ptr.gx)) && (!ptr.gn || aligned16(ptr.gn));
    dispatch_target(in.target, [&](auto tag) {
      constexpr int T = decltype(tag)::value;
      const auto grid = static_cast<unsigned int>(B * chunks);
      if (vec) {
        sq_error_backward_kernel<T, scalar_t, acc, W><<<grid, kThreads, 0, stream>>>(
            ptr.gp, ptr.gx, ptr.gn, ptr.up, ptr.p, ptr.x, ptr.n, ptr.alpha, ptr.sigma, D, chunks, in.want_sums,
            partial.mutable_data_ptr<double>());
      } else {
        sq_error_backward_kernel<T, scalar_t, acc, 1><<<grid, kThreads, 0, stream>>>(
            ptr.gp, ptr.gx, ptr.gn, ptr.up, ptr.p, ptr.x, ptr.n, ptr.alpha, ptr.sigma, D, chunks, in.want_sums,
            partial.mutable_data_ptr<double>());
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (in.want_sums) {
        sq_error_param_grads_kernel<T, acc><<<blocks_for(B), kThreads, 0, stream>>>(
            ptr.ga, ptr.gs, partial.const_data_ptr<double>(), ptr.up, ptr.alpha, ptr.sigma, B, chunks);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  });
  return in.outputs();
}

}  // namespace
}  // namespace cuda
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, CUDA, m) {
  m.impl("sq_error", &vdm_fast::cuda::sq_error_cuda);
  m.impl("sq_error_backward", &vdm_fast::cuda::sq_error_backward_cuda);
}
