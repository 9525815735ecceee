// recon_nll on CUDA: VDM's categorical decoder, per-sample sums, and its fused backward. One block
// per (sample, chunk) in grid.x; each thread evaluates the windowed logsumexp of its elements in
// registers (csrc/recon_nll_math.h), so nothing of size B x D x 256 exists. Per-block partials are
// written as doubles and summed in a fixed order. Current stream, 64-bit indices.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "common.h"
#include "cuda/per_sample.cuh"
#include "recon_nll_math.h"

namespace vdm_fast {
namespace cuda {
namespace {

template <typename scalar_t, typename acc_t>
__global__ void recon_nll_kernel(const scalar_t* __restrict__ x0, const scalar_t* __restrict__ z0,
                                 const acc_t* __restrict__ alpha, const acc_t* __restrict__ sigma, int64_t D,
                                 int64_t chunks, double* __restrict__ partial) {
  __shared__ acc_t shared[kThreads / 32];
  const int64_t b = blockIdx.x / chunks, c = blockIdx.x % chunks;
  const int64_t begin = b * D + c * kReduceChunk;
  const int64_t end = b * D + min(D, (c + 1) * kReduceChunk);
  const acc_t a = alpha[b], s = sigma[b];
  const int L = recon::window_bins(a, s);
  acc_t sum = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const int kstar = recon::bin_index(static_cast<double>(x0[i]));
    sum += recon::element<acc_t, false>(static_cast<acc_t>(z0[i]), a, s, kstar, L).nll;
  }
  sum = block_sum(sum, shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = static_cast<double>(sum);
}

template <typename scalar_t, typename acc_t>
__global__ void recon_nll_backward_kernel(scalar_t* __restrict__ gz, const acc_t* __restrict__ grad,
                                          const scalar_t* __restrict__ x0, const scalar_t* __restrict__ z0,
                                          const acc_t* __restrict__ alpha, const acc_t* __restrict__ sigma, int64_t D,
                                          int64_t chunks, double* __restrict__ partial) {
  __shared__ acc_t shared[kThreads / 32];
  const int64_t b = blockIdx.x / chunks, c = blockIdx.x % chunks;
  const int64_t begin = b * D + c * kReduceChunk;
  const int64_t end = b * D + min(D, (c + 1) * kReduceChunk);
  const acc_t a = alpha[b], s = sigma[b], g = grad[b];
  const int L = recon::window_bins(a, s);
  acc_t sa = 0, ss = 0;
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
    partial[2 * blockIdx.x] = static_cast<double>(sa);
    partial[2 * blockIdx.x + 1] = static_cast<double>(ss);
  }
}

void check_recon_args(const char* op, const at::Tensor& x0, const at::Tensor& z0, const at::Tensor& alpha,
                      const at::Tensor& sigma, c10::string_view decoder) {
  TORCH_CHECK(decoder == "categorical", op, ": decoder must be \"categorical\", got \"", decoder, "\"");
  check_data(op, "x0", x0);
  check_same_data(op, "z0", z0, x0, "x0");
  const auto cdt = compute_dtype(x0.scalar_type());
  check_coeff(op, "alpha_0", alpha, x0.size(0), cdt, x0.device());
  check_coeff(op, "sigma_0", sigma, x0.size(0), cdt, x0.device());
}

at::Tensor recon_nll_cuda(const at::Tensor& x0, const at::Tensor& z0, const at::Tensor& alpha,
                          const at::Tensor& sigma, c10::string_view decoder) {
  constexpr const char* op = "vdm_fast::recon_nll";
  check_recon_args(op, x0, z0, alpha, sigma, decoder);
  const c10::cuda::CUDAGuard guard(x0.device());
  const int64_t B = x0.size(0), D = per_sample_numel(x0);
  if (x0.numel() == 0) return at::zeros({B}, alpha.options());
  const at::Tensor layout = empty_out_like(x0);  // never written: it only names the layout
  const at::Tensor x = in_layout_of(x0, layout), z = in_layout_of(z0, layout);
  const int64_t chunks = (D + kReduceChunk - 1) / kReduceChunk;
  TORCH_CHECK(B * chunks < (int64_t(1) << 31), op, ": tensor too large for one launch");
  at::Tensor partial = at::empty({B, chunks}, x0.options().dtype(at::kDouble));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "recon_nll_cuda", [&] {
    using acc = acc_t<scalar_t>;
    recon_nll_kernel<scalar_t, acc><<<static_cast<unsigned int>(B * chunks), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), z.const_data_ptr<scalar_t>(), alpha.const_data_ptr<acc>(),
        sigma.const_data_ptr<acc>(), D, chunks, partial.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return partial.sum(1).to(alpha.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> recon_nll_backward_cuda(const at::Tensor& grad, const at::Tensor& x0,
                                                                       const at::Tensor& z0, const at::Tensor& alpha,
                                                                       const at::Tensor& sigma,
                                                                       c10::string_view decoder,
                                                                       std::array<bool, 3> output_mask) {
  constexpr const char* op = "vdm_fast::recon_nll_backward";
  check_recon_args(op, x0, z0, alpha, sigma, decoder);
  const int64_t B = x0.size(0), D = per_sample_numel(x0);
  check_coeff(op, "grad", grad, B, compute_dtype(x0.scalar_type()), x0.device());
  const c10::cuda::CUDAGuard guard(x0.device());
  const bool want_gz = output_mask[0], want_sums = output_mask[1] || output_mask[2];
  at::Tensor gz = want_gz ? empty_out_like(x0) : at::empty({0}, x0.options());
  at::Tensor ga = output_mask[1] ? at::zeros({B}, alpha.options()) : at::empty({0}, alpha.options());
  at::Tensor gs = output_mask[2] ? at::zeros({B}, sigma.options()) : at::empty({0}, sigma.options());
  if (x0.numel() == 0 || !(want_gz || want_sums)) return {gz, ga, gs};

  const at::Tensor layout = want_gz ? gz : empty_out_like(x0);
  const at::Tensor x = in_layout_of(x0, layout), z = in_layout_of(z0, layout);
  const int64_t chunks = (D + kReduceChunk - 1) / kReduceChunk;
  TORCH_CHECK(B * chunks < (int64_t(1) << 31), op, ": tensor too large for one launch");
  at::Tensor partial = at::empty({B, chunks, 2}, x0.options().dtype(at::kDouble));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "recon_nll_backward_cuda", [&] {
    using acc = acc_t<scalar_t>;
    recon_nll_backward_kernel<scalar_t, acc><<<static_cast<unsigned int>(B * chunks), kThreads, 0, stream>>>(
        want_gz ? gz.mutable_data_ptr<scalar_t>() : nullptr, grad.const_data_ptr<acc>(),
        x.const_data_ptr<scalar_t>(), z.const_data_ptr<scalar_t>(), alpha.const_data_ptr<acc>(),
        sigma.const_data_ptr<acc>(), D, chunks, partial.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (want_sums) {
    const at::Tensor sums = partial.sum(1);  // (B, 2), reduced in a fixed order
    if (output_mask[1]) ga.copy_(sums.select(1, 0) * grad);
    if (output_mask[2]) gs.copy_(sums.select(1, 1) * grad);
  }
  return {gz, ga, gs};
}

}  // namespace
}  // namespace cuda
}  // namespace vdm_fast

TORCH_LIBRARY_IMPL(vdm_fast, CUDA, m) {
  m.impl("recon_nll", &vdm_fast::cuda::recon_nll_cuda);
  m.impl("recon_nll_backward", &vdm_fast::cuda::recon_nll_backward_cuda);
}
