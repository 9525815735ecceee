// recon_nll on CUDA: VDM's categorical decoder, per-sample sums, and its fused backward. One block
// per (sample, chunk) in grid.x; each thread evaluates the windowed logsumexp of its elements in
// registers (csrc/recon_nll_math.h), so nothing of size B x D x 256 exists. Per-block partials are
// written as doubles and summed in a fixed order. Current stream, 64-bit indices.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "common.h"
#include "cuda/per_sample.cuh"
#include "recon_nll.h"
#include "recon_nll_math.h"

namespace vdm_fast {
namespace cuda {
namespace {

template <typename scalar_t, typename acc_t>
__global__ void recon_nll_kernel(const scalar_t* __restrict__ x0, const scalar_t* __restrict__ z0,
                                 const acc_t* __restrict__ alpha, const acc_t* __restrict__ sigma, int64_t D,
                                 int64_t chunks, double* __restrict__ partial) {
  // Terms in acc_t, summed in double: a float sum (per thread, then the block's tree) absorbs the
  // terms below half an ulp of a large partial, a bias (tests/test_accurate_sums.py). The exps
  // per element dominate; the double adds do not show.
  __shared__ double shared[kThreads / 32];
  const auto [b, begin, end] = reduce_chunk(D, chunks);
  const acc_t a = alpha[b], s = sigma[b];
  const int L = recon::window_bins(a, s);
  double sum = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const int kstar = recon::bin_index(static_cast<double>(x0[i]));
    sum += recon::element<acc_t, false>(static_cast<acc_t>(z0[i]), a, s, kstar, L).nll;
  }
  sum = block_sum(sum, shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = sum;
}

template <typename scalar_t, typename acc_t>
__global__ void recon_nll_backward_kernel(scalar_t* __restrict__ gz, const acc_t* __restrict__ grad,
                                          const scalar_t* __restrict__ x0, const scalar_t* __restrict__ z0,
                                          const acc_t* __restrict__ alpha, const acc_t* __restrict__ sigma, int64_t D,
                                          int64_t chunks, double* __restrict__ partial) {
  __shared__ double shared[kThreads / 32];  // summed in double, as the forward
  const auto [b, begin, end] = reduce_chunk(D, chunks);
  const acc_t a = alpha[b], s = sigma[b], g = grad[b];
  const int L = recon::window_bins(a, s);
  double sa = 0, ss = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const int kstar = recon::bin_index(static_cast<double>(x0[i]));
    const auto e = recon::element<acc_t, true>(static_cast<acc_t>(z0[i]), a, s, kstar, L);
    const auto d = recon::element_grads(e, a, s, kstar);
    if (gz) gz[i] = static_cast<scalar_t>(g * d.dz);
    sa += d.dalpha;
    ss += d.dsigma;
  }
  sa = block_sum(sa, shared);
  ss = block_sum(ss, shared);
  if (threadIdx.x == 0) {
    partial[2 * blockIdx.x] = sa;
    partial[2 * blockIdx.x + 1] = ss;
  }
}

at::Tensor recon_nll_cuda(const at::Tensor& x0, const at::Tensor& z0, const at::Tensor& alpha,
                          const at::Tensor& sigma, c10::string_view decoder) {
  const c10::cuda::CUDAGuard guard(x0.device());
  const ReconNllInputs in = prepare_recon_nll(x0, z0, alpha, sigma, decoder);
  const int64_t B = in.B, D = in.D;
  if (x0.numel() == 0) return at::zeros({B}, alpha.options());
  const int64_t chunks = reduce_chunks("vdm_fast::recon_nll", B, D);
  at::Tensor partial = at::empty({B, chunks}, x0.options().dtype(at::kDouble));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "recon_nll_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const ReconNllPtrs<scalar_t> p = recon_nll_ptrs<scalar_t>(in, alpha, sigma);
    recon_nll_kernel<scalar_t, acc><<<static_cast<unsigned int>(B * chunks), kThreads, 0, stream>>>(
        p.x, p.z, p.alpha, p.sigma, D, chunks, partial.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return partial.sum(1).to(alpha.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> recon_nll_backward_cuda(const at::Tensor& grad, const at::Tensor& x0,
                                                                       const at::Tensor& z0, const at::Tensor& alpha,
                                                                       const at::Tensor& sigma,
                                                                       c10::string_view decoder,
                                                                       std::array<bool, 3> output_mask) {
  const c10::cuda::CUDAGuard guard(x0.device());
  const ReconNllBackwardInputs in = prepare_recon_nll_backward(grad, x0, z0, alpha, sigma, decoder, output_mask);
  if (in.done) return in.outputs();
  const int64_t B = in.B, D = in.D;
  const int64_t chunks = reduce_chunks("vdm_fast::recon_nll_backward", B, D);
  at::Tensor partial = at::empty({B, chunks, 2}, x0.options().dtype(at::kDouble));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "recon_nll_backward_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const ReconNllPtrs<scalar_t> p = recon_nll_backward_ptrs<scalar_t>(in, grad, alpha, sigma);
    recon_nll_backward_kernel<scalar_t, acc><<<static_cast<unsigned int>(B * chunks), kThreads, 0, stream>>>(
        p.gz, p.grad, p.x, p.z, p.alpha, p.sigma, D, chunks, partial.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (in.want_sums) {
    const at::Tensor sums = partial.sum(1);  // (B, 2), reduced in a fixed order
    if (in.want_ga) in.ga.copy_(sums.select(1, 0) * grad);
    if (in.want_gs) in.gs.copy_(sums.select(1, 1) * grad);
  }
  return in.outputs();
}

}  // namespace
}  // namespace cuda
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, CUDA, m) {
  m.impl("recon_nll", &vdm_fast::cuda::recon_nll_cuda);
  m.impl("recon_nll_backward", &vdm_fast::cuda::recon_nll_backward_cuda);
}
