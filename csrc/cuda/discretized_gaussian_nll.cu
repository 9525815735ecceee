// discretized_gaussian_nll on CUDA: per-sample sums of -log P(x0's bin) as (sample, chunk) blocks
// with double partials, and an elementwise backward (grid-stride). Math:
// csrc/discretized_gaussian_math.h, with log Phi computed as torch.special.log_ndtr does
// (erfcx below -1, log1p(-erfc/2) above) from CUDA's erfcx/erfc. Current stream, 64-bit indices.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "common.h"
#include "cuda/per_sample.cuh"
#include "discretized_gaussian_math.h"
#include "discretized_gaussian_nll.h"

namespace vdm_fast {
namespace cuda {
namespace {

struct LogNdtr {
  __device__ float operator()(float x) const {
    const float t = x * 0.70710678118654752f;
    return x < -1.0f ? logf(erfcxf(-t) / 2) - t * t : log1pf(-erfcf(t) / 2);
  }
  __device__ double operator()(double x) const {
    const double t = x * 0.70710678118654752440;
    return x < -1.0 ? log(erfcx(-t) / 2) - t * t : log1p(-erfc(t) / 2);
  }
};

template <typename scalar_t, typename acc_t, bool TANH>
__global__ void dgauss_kernel(const scalar_t* __restrict__ x0, const scalar_t* __restrict__ mean,
                              const scalar_t* __restrict__ log_scale, int64_t D, int64_t chunks,
                              double* __restrict__ partial) {
  __shared__ double shared[kThreads / 32];  // terms summed in double (see recon_nll.cu)
  const auto [b, begin, end] = reduce_chunk(D, chunks);
  double sum = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    sum += dgauss::element<acc_t, TANH, false>(static_cast<acc_t>(x0[i]), static_cast<acc_t>(mean[i]),
                                               static_cast<acc_t>(log_scale[i]), LogNdtr{})
               .lp;
  }
  sum = block_sum(sum, shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = -sum;
}

template <typename scalar_t, typename acc_t, bool TANH>
__global__ void dgauss_backward_kernel(scalar_t* __restrict__ gm, scalar_t* __restrict__ gl,
                                       const acc_t* __restrict__ grad, const scalar_t* __restrict__ x0,
                                       const scalar_t* __restrict__ mean, const scalar_t* __restrict__ log_scale,
                                       int64_t D, int64_t N) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < N; i += stride) {
    const acc_t g = grad[i / D];
    const auto e = dgauss::element<acc_t, TANH, true>(static_cast<acc_t>(x0[i]), static_cast<acc_t>(mean[i]),
                                                      static_cast<acc_t>(log_scale[i]), LogNdtr{});
    if (gm) gm[i] = static_cast<scalar_t>(-g * e.dmean);  // nll = -sum lp
    if (gl) gl[i] = static_cast<scalar_t>(-g * e.dls);
  }
}

at::Tensor dgauss_cuda(const at::Tensor& x0, const at::Tensor& mean, const at::Tensor& log_scale,
                       c10::string_view cdf) {
  constexpr const char* op = "vdm_fast::discretized_gaussian_nll";
  const c10::cuda::CUDAGuard guard(x0.device());
  const DgaussInputs in = prepare_dgauss(x0, mean, log_scale, cdf);
  const int64_t B = in.B, D = in.D;
  const bool tanh = in.tanh;
  const auto cdt = compute_dtype(x0.scalar_type());
  if (x0.numel() == 0) return at::zeros({B}, x0.options().dtype(cdt));
  const at::Tensor &x = in.x, &m = in.m, &l = in.l;
  const int64_t chunks = reduce_chunks(op, B, D);
  at::Tensor partial = at::empty({B, chunks}, x0.options().dtype(at::kDouble));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "discretized_gaussian_nll_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const auto blocks = static_cast<unsigned int>(B * chunks);
    if (tanh) {
      dgauss_kernel<scalar_t, acc, true><<<blocks, kThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), m.const_data_ptr<scalar_t>(), l.const_data_ptr<scalar_t>(), D, chunks,
          partial.mutable_data_ptr<double>());
    } else {
      dgauss_kernel<scalar_t, acc, false><<<blocks, kThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), m.const_data_ptr<scalar_t>(), l.const_data_ptr<scalar_t>(), D, chunks,
          partial.mutable_data_ptr<double>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return partial.sum(1).to(cdt);
}

std::tuple<at::Tensor, at::Tensor> dgauss_backward_cuda(const at::Tensor& grad, const at::Tensor& x0,
                                                        const at::Tensor& mean, const at::Tensor& log_scale,
                                                        c10::string_view cdf, std::array<bool, 2> output_mask) {
  const c10::cuda::CUDAGuard guard(x0.device());
  const DgaussBackwardInputs in = prepare_dgauss_backward(grad, x0, mean, log_scale, cdf, output_mask);
  const at::Tensor &gm = in.gm, &gl = in.gl;
  if (in.done) return {gm, gl};
  const at::Tensor &x = in.x, &m = in.m, &l = in.l;
  const bool tanh = in.tanh, want_gm = in.want_gm, want_gl = in.want_gl;
  const int64_t D = in.D, N = x0.numel();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(),
                                  "discretized_gaussian_nll_backward_cuda", [&] {
    using acc = acc_t<scalar_t>;
    scalar_t* gmp = want_gm ? gm.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* glp = want_gl ? gl.mutable_data_ptr<scalar_t>() : nullptr;
    if (tanh) {
      dgauss_backward_kernel<scalar_t, acc, true><<<grid_for(N), kThreads, 0, stream>>>(
          gmp, glp, grad.const_data_ptr<acc>(), x.const_data_ptr<scalar_t>(), m.const_data_ptr<scalar_t>(),
          l.const_data_ptr<scalar_t>(), D, N);
    } else {
      dgauss_backward_kernel<scalar_t, acc, false><<<grid_for(N), kThreads, 0, stream>>>(
          gmp, glp, grad.const_data_ptr<acc>(), x.const_data_ptr<scalar_t>(), m.const_data_ptr<scalar_t>(),
          l.const_data_ptr<scalar_t>(), D, N);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {gm, gl};
}

}  // namespace
}  // namespace cuda
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, CUDA, m) {
  m.impl("discretized_gaussian_nll", &vdm_fast::cuda::dgauss_cuda);
  m.impl("discretized_gaussian_nll_backward", &vdm_fast::cuda::dgauss_backward_cuda);
}
